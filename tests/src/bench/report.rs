//! Aggregation (medians, min–max, within-round ratios), the JSON result file,
//! the Markdown report and its SVG plots.
use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::Result;
use plotters::prelude::*;

use super::{Results, Sample, contenders::Contender};

/// Median with min and max.
#[derive(Clone, Copy, Debug)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(mut values: Vec<f64>) -> Option<Self> {
        values.retain(|v| v.is_finite());
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        Some(Self {
            median: values[values.len() / 2],
            min: values[0],
            max: values[values.len() - 1],
        })
    }
}

type Key = (Contender, usize);

fn group(results: &Results) -> BTreeMap<Key, Vec<&Sample>> {
    let mut groups: BTreeMap<Key, Vec<&Sample>> = BTreeMap::new();
    for s in &results.samples {
        groups.entry((s.contender, s.services)).or_default().push(s);
    }
    groups
}

/// Ratio of a contender's TCP connection rate to direct's in the same round.
fn ratios_to_direct(results: &Results, key: Key) -> Option<Spread> {
    let direct: BTreeMap<usize, f64> = results
        .samples
        .iter()
        .filter(|s| s.contender == Contender::Direct && s.services == key.1)
        .map(|s| (s.round, s.tcp_conn_per_s))
        .collect();
    Spread::of(
        results
            .samples
            .iter()
            .filter(|s| (s.contender, s.services) == key)
            .filter_map(|s| Some(s.tcp_conn_per_s / direct.get(&s.round)?))
            .collect(),
    )
}

pub(super) fn fmt_spread(s: Option<Spread>, scale: f64, digits: usize) -> String {
    match s {
        Some(s) => format!(
            "{:.d$} ({:.d$}–{:.d$})",
            s.median * scale,
            s.min * scale,
            s.max * scale,
            d = digits
        ),
        None => "–".into(),
    }
}

/// One line per measurement that failed or was left out, with why.
fn list_not_measured(md: &mut String, items: &[super::Skipped]) {
    for s in items {
        let _ = writeln!(
            md,
            "- {} at {} Services: {}",
            s.contender.name(),
            s.services,
            s.reason
        );
    }
}

pub fn markdown(results: &Results, plots: &[(&str, &str)]) -> String {
    let groups = group(results);
    let mut md = String::new();
    let _ = writeln!(md, "# vipr benchmarks\n");
    let _ = writeln!(
        md,
        "Mode `{}`, machine: {}, kernel {}. Written by `cargo xtask bench`; medians with (min–max) over rounds, \
         contenders interleaved round by round, each measurement in a fresh network-namespace topology \
         (one node, one client pod, four backend pods with real servers). The measured Service is the **last** \
         of N in every rule set (the worst case for iptables' linear chain), and every Service has 10 endpoints \
         (the measured one: the four real pods). `direct` has no load balancer: the client itself takes the four pod IPs in turn, so every contender keeps the same servers busy. \
         `vipr` is the TC path (per-packet NAT on the pod's veth; the default `--socket-lb host` leaves pods to it); \
         `vipr socket-LB` runs `--socket-lb all`, so the client's sockets are translated once at connect() \
         (UDP: connect()/sendmsg()) by cgroup hooks and its packets need no NAT. vipr's counters (`dnat_new`, \
         `sock_translated`) confirm which path each measurement took.\n",
        results.mode, results.machine, results.kernel
    );
    if !results.failures.is_empty() {
        let _ = writeln!(
            md,
            "## FAILED\n\nThese measurements failed (the run exited non-zero):\n"
        );
        list_not_measured(&mut md, &results.failures);
        let _ = writeln!(md);
    }
    for (title, file) in plots {
        let _ = writeln!(md, "![{title}]({file})\n");
    }
    let _ = writeln!(
        md,
        "## New TCP connections (connect, request, response, close)\n"
    );
    let _ = writeln!(
        md,
        "| contender | Services | conn/s | ratio to direct (same round) | p50 µs | p99 µs | failed |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
    for (key, samples) in &groups {
        let off_path = samples.iter().any(|s| s.off_path.is_some());
        let _ = writeln!(
            md,
            "| {}{} | {} | {} | {} | {} | {} | {} |",
            key.0.name(),
            if off_path { " *" } else { "" },
            key.1,
            fmt_spread(
                Spread::of(samples.iter().map(|s| s.tcp_conn_per_s).collect()),
                1.0,
                0
            ),
            fmt_spread(ratios_to_direct(results, *key), 1.0, 2),
            fmt_spread(
                Spread::of(samples.iter().map(|s| s.tcp_p50_us).collect()),
                1.0,
                0
            ),
            fmt_spread(
                Spread::of(samples.iter().map(|s| s.tcp_p99_us).collect()),
                1.0,
                0
            ),
            samples.iter().map(|s| s.tcp_failed).sum::<u64>(),
        );
    }
    let off_path: Vec<_> = results
        .samples
        .iter()
        .filter(|s| s.off_path.is_some())
        .collect();
    if !off_path.is_empty() {
        let _ = writeln!(md, "\n\\* Not on the intended path (vipr's counters):\n");
        for s in off_path {
            let _ = writeln!(
                md,
                "- {} at {} Services, round {}: {}",
                s.contender.name(),
                s.services,
                s.round,
                s.off_path.as_deref().unwrap_or_default()
            );
        }
    }
    let _ = writeln!(md, "\n## UDP request/response\n");
    let _ = writeln!(md, "| contender | Services | req/s | failed |");
    let _ = writeln!(md, "|---|---:|---:|---:|");
    for (key, samples) in &groups {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            key.0.name(),
            key.1,
            fmt_spread(
                Spread::of(samples.iter().map(|s| s.udp_req_per_s).collect()),
                1.0,
                0
            ),
            samples.iter().map(|s| s.udp_failed).sum::<u64>(),
        );
    }
    let _ = writeln!(md, "\n## Programming cost and memory\n");
    let _ = writeln!(
        md,
        "Install: N Services × 10 endpoints from cold (vipr: agent start to /healthz 200, including YAML parsing, \
         loading and attaching; iptables: one `iptables-restore`; nftables: one `nft -f`). One change: one endpoint \
         added to the measured Service (vipr: the agent's own sync time; iptables: `iptables-restore --noflush` of \
         KUBE-SERVICES and the changed Service's chains, as kube-proxy's partial sync; nftables: the incremental transaction kube-proxy's nftables mode sends).\n"
    );
    let _ = writeln!(
        md,
        "| contender | Services | install s | one change ms | agent RSS MiB | BPF map MiB |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
    for (key, samples) in &groups {
        if key.0 == Contender::Direct {
            continue;
        }
        let mib = 1.0 / (1024.0 * 1024.0);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            key.0.name(),
            key.1,
            fmt_spread(
                Spread::of(samples.iter().map(|s| s.install_s).collect()),
                1.0,
                3
            ),
            fmt_spread(
                Spread::of(samples.iter().filter_map(|s| s.one_change_s).collect()),
                1e3,
                3
            ),
            fmt_spread(
                Spread::of(
                    samples
                        .iter()
                        .filter_map(|s| s.agent_rss_bytes.map(|b| b as f64))
                        .collect()
                ),
                mib,
                0
            ),
            fmt_spread(
                Spread::of(
                    samples
                        .iter()
                        .filter_map(|s| s.map_memory_bytes.map(|b| b as f64))
                        .collect()
                ),
                mib,
                1
            ),
        );
    }
    if !results.skipped.is_empty() {
        let _ = writeln!(md, "\nOut (over the install budget), not measured:\n");
        list_not_measured(&mut md, &results.skipped);
    }
    super::report_workload::markdown(results, &mut md);
    let _ = writeln!(
        md,
        "\n## Kernel cost per packet (BPF_PROG_TEST_RUN, vipr's TC programs)\n"
    );
    let _ = writeln!(
        md,
        "Established, reply and non-service: `repeat` = 20,000 on one packet (ping-pong services keep every repetition \
         on the translated path; counters checked). New flow: one run per packet with a fresh source port; the \
         \"single run\" column is a non-service packet run the same way, i.e. the per-invocation overhead that the \
         new-flow figure includes.\n"
    );
    let _ = writeln!(
        md,
        "| Services | conntrack entries | new flow ns | single run ns | established ns | reply ns | non-service ns |"
    );
    let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|");
    for p in &results.packet_cost {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            p.services,
            p.conntrack_entries,
            p.new_flow_ns,
            p.single_run_overhead_ns,
            p.established_ns,
            p.reply_ns,
            p.non_service_ns
        );
    }
    if let Some([v4, v6]) = &results.packet_cost_by_family {
        let _ = writeln!(md, "\n## IPv6 against IPv4\n");
        let _ = writeln!(
            md,
            "The same pod paths on two Services pointing at each other, measured in one run per family.\n"
        );
        let _ = writeln!(md, "| path | IPv4 ns | IPv6 ns | IPv6/IPv4 |");
        let _ = writeln!(md, "|---|---:|---:|---:|");
        for (path, four, six) in [
            ("new flow", v4.new_flow_ns, v6.new_flow_ns),
            ("established", v4.established_ns, v6.established_ns),
            ("reply", v4.reply_ns, v6.reply_ns),
            ("non-service", v4.non_service_ns, v6.non_service_ns),
        ] {
            let _ = writeln!(md, "| {path} | {four:.0} | {six:.0} | {:.2} |", six / four);
        }
    }
    if let Some(n) = &results.nodeport_cost {
        let _ = writeln!(md, "\n## NodePort: XDP against TC\n");
        let _ = writeln!(
            md,
            "A new masqueraded NodePort flow to an endpoint on another node, one run per packet. XDP includes the \
             FIB lookup and the redirect to the next hop; TC hands the translated packet to the stack, whose \
             forwarding work (routing, neighbour, skb) is not in its figure — XDP saves that too.\n"
        );
        let _ = writeln!(md, "| path | ns/packet | single-run overhead ns |");
        let _ = writeln!(md, "|---|---:|---:|");
        let _ = writeln!(
            md,
            "| XDP | {:.0} | {:.0} |",
            n.xdp_ns, n.xdp_single_run_overhead_ns
        );
        let _ = writeln!(
            md,
            "| TC | {:.0} | {:.0} |",
            n.tc_ns, n.tc_single_run_overhead_ns
        );
        let _ = writeln!(md, "\nXDP/TC: {:.2}", n.xdp_ns / n.tc_ns);
    }
    if let Some(d) = &results.dsr_cost {
        let _ = writeln!(md, "\n## XDP NodePort: DSR against SNAT\n");
        let _ = writeln!(
            md,
            "A NodePort flow to an endpoint on another node through `vipr_xdp_external`, one run per packet, \
             FIB lookup and `XDP_TX` included: `--lb-mode dsr` (the opening packet grows by the option) \
             against `snat` (a source port claimed). Packets/s are per core, from ns/packet.\n\n```"
        );
        for line in d.lines() {
            let _ = writeln!(md, "{line}");
        }
        if let Some(d6) = &results.dsr_cost6 {
            let _ = writeln!(md, "\nIPv6 (the DSR header: 24 bytes):");
            for line in d6.lines() {
                let _ = writeln!(md, "{line}");
            }
        }
        let _ = writeln!(md, "```");
    }
    if let Some(f) = &results.maglev {
        let _ = writeln!(md, "\n## Maglev against random\n\n```");
        for line in super::maglev::lines(f) {
            let _ = writeln!(md, "{line}");
        }
        let _ = writeln!(md, "```");
    }
    md
}

/// One line per contender of `metric`'s median against N (log x axis).
pub fn plot(
    results: &Results,
    path: &Path,
    title: &str,
    y_label: &str,
    log_y: bool,
    metric: impl Fn(&Sample) -> Option<f64>,
) -> Result<()> {
    let groups = group(results);
    let mut lines: BTreeMap<Contender, Vec<(f64, f64)>> = BTreeMap::new();
    for ((c, n), samples) in &groups {
        if let Some(s) = Spread::of(samples.iter().filter_map(|s| metric(s)).collect()) {
            lines.entry(*c).or_default().push((*n as f64, s.median));
        }
    }
    let (mut y_min, mut y_max) = (f64::MAX, f64::MIN);
    for (_, y) in lines.values().flatten() {
        y_min = y_min.min(*y);
        y_max = y_max.max(*y);
    }
    if y_min > y_max {
        return Ok(());
    }
    let x_max = results
        .samples
        .iter()
        .map(|s| s.services)
        .max()
        .unwrap_or(1)
        .max(10) as f64
        * 2.0;
    let root = SVGBackend::new(path, (760, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let colours = [BLACK, RED, CYAN, BLUE, MAGENTA, GREEN];
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc("Services")
                .y_desc(y_label)
                .draw()?;
            for (i, (c, points)) in lines.iter().enumerate() {
                let colour = colours[i % colours.len()];
                chart
                    .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?
                    .label(c.name())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                    });
                chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, colour.filled())))?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }};
    }
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70);
    if log_y {
        draw!(builder.build_cartesian_2d(
            (0.5f64..x_max).log_scale(),
            (y_min * 0.5..y_max * 2.0).log_scale()
        )?);
    } else {
        draw!(builder.build_cartesian_2d((0.5f64..x_max).log_scale(), 0.0..y_max * 1.15)?);
    }
    root.present()?;
    Ok(())
}

pub fn write_all(results: &Results, out_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(out_dir)?;
    std::fs::write(
        out_dir.join("benchmarks.json"),
        serde_json::to_string_pretty(results)?,
    )?;
    plot(
        results,
        &out_dir.join("bench-conn-rate.svg"),
        "New TCP connections per second",
        "conn/s",
        false,
        |s| Some(s.tcp_conn_per_s),
    )?;
    plot(
        results,
        &out_dir.join("bench-install.svg"),
        "Time to program N Services x 10 endpoints",
        "seconds",
        true,
        |s| (s.contender != Contender::Direct).then_some(s.install_s),
    )?;
    plot(
        results,
        &out_dir.join("bench-one-change.svg"),
        "Time to apply one endpoint change",
        "seconds",
        true,
        |s| s.one_change_s,
    )?;
    let md = markdown(
        results,
        &[
            ("connection rate", "bench-conn-rate.svg"),
            ("install time", "bench-install.svg"),
            ("one change", "bench-one-change.svg"),
        ],
    );
    std::fs::write(out_dir.join("benchmarks.md"), md)?;
    Ok(())
}
