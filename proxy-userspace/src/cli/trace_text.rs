//! `vipr trace` as text: one line per decision, in the order the programs
//! took them.
use std::fmt::Write;
use std::net::SocketAddr;

use super::services::{ServiceRow, conditions};
use super::trace::{Choice, PacketView, TraceReport};

fn packet(view: &PacketView) -> String {
    let flags = if view.flags.is_empty() {
        String::new()
    } else {
        format!(" [{}]", view.flags)
    };
    format!("{} -> {} {}{flags}", view.src, view.dst, view.protocol)
}

fn service(row: &ServiceRow) -> String {
    let name = match (row.service.as_str(), row.port_name.as_str()) {
        ("", _) => "(not in the name index)".to_string(),
        (service, "") => service.to_string(),
        (service, port) => format!("{service} port {port}"),
    };
    format!("{name}, {}", row.kind)
}

fn policy(row: &ServiceRow) -> String {
    let ranges = if row.source_ranges.is_empty() {
        "any".to_string()
    } else {
        row.source_ranges.join(",")
    };
    let affinity = row
        .affinity_timeout
        .map_or_else(|| "none".to_string(), |t| format!("ClientIP for {t}s"));
    let draining = if row.draining {
        ", draining (Service deleted)"
    } else {
        ""
    };
    format!(
        "traffic {}, masquerade {}, affinity {affinity}, source ranges {ranges}{draining}",
        row.traffic_policy,
        if row.masquerade { "yes" } else { "no" },
    )
}

fn candidates(row: &ServiceRow) -> String {
    let active: Vec<String> = row
        .backends
        .iter()
        .filter(|b| b.active)
        .map(|b| {
            let at = SocketAddr::new(b.ip, b.port);
            format!("{at} ({})", conditions(b).join(", "))
        })
        .collect();
    format!("{}: {}", active.len(), active.join(", "))
}

fn chosen(choice: &Choice, candidates: usize) -> String {
    let why = match (choice.by, choice.slot, choice.hash) {
        ("slot", Some(slot), Some(hash)) => {
            format!("slot {slot} of {candidates}, by hash {hash:#010x}")
        }
        ("maglev", Some(position), Some(hash)) => {
            format!("position {position} of the frontend's Maglev table, by hash {hash:#010x}")
        }
        ("conntrack", ..) => "the flow's conntrack entry".to_string(),
        ("affinity", ..) => "the client's session affinity".to_string(),
        (by, ..) => by.to_string(),
    };
    format!("{} ({why})", SocketAddr::new(choice.ip, choice.port))
}

pub fn render(report: &TraceReport) -> String {
    let mut out = String::new();
    let mut line = |label: &str, text: String| {
        let _ = writeln!(out, "{label:<11} {text}");
    };
    line(
        "packet",
        format!(
            "{} from {} ({})",
            packet(&report.packet),
            report.from.name(),
            report.program
        ),
    );
    line(
        "frontend",
        report
            .frontend_looked_up
            .clone()
            .unwrap_or_else(|| "none looked up".into()),
    );
    if let Some(row) = &report.service {
        line("service", service(row));
        line("policy", policy(row));
        line("candidates", candidates(row));
    }
    if report.conntrack_entries > 0 {
        line(
            "conntrack",
            format!("{} live entries of this flow", report.conntrack_entries),
        );
    }
    if let Some(choice) = &report.chosen {
        let count = report
            .service
            .as_ref()
            .map_or(0, |row| row.backends.iter().filter(|b| b.active).count());
        line("chosen", chosen(choice, count));
    }
    if let Some(masquerade) = &report.masquerade {
        line("masquerade", format!("as {masquerade}"));
    }
    if report.dsr {
        line(
            "dsr",
            "keeps the client's address; the endpoint answers it directly".into(),
        );
    }
    line("counted", report.counted.join(", "));
    line("verdict", report.verdict.clone());
    if let Some(output) = &report.output {
        line("output", packet(output));
    }
    for note in &report.notes {
        line("note", note.clone());
    }
    out
}
