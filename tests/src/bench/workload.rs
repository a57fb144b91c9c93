//! The workload phases of a measurement at [`Plan::workload_service_counts`],
//! on the contender already installed: CPU per new connection with the
//! home-made load, then nginx + wrk once the load servers have given up the
//! target port (so every contender's rules lead to nginx unchanged).
use std::path::Path;

use anyhow::Result;

use super::{
    PathCounters, Plan, Sample,
    contenders::{BACKEND_IPS, Contender, Installed, TARGET_PORT},
    cpu::{self, CpuPerConn},
    http::{self, HttpMode, HttpSample, Nginx},
    load::{self, LoadServer},
};
use crate::netns::Topology;

/// Runs both phases; `servers` are stopped in between. A phase that left
/// vipr's intended path adds its reason to `off_path`.
pub(super) fn run(
    plan: &Plan,
    contender: Contender,
    topo: &Topology,
    installed: &Installed,
    servers: Vec<LoadServer>,
    work: &Path,
    off_path: &mut Vec<String>,
) -> Result<(Option<CpuPerConn>, Vec<HttpSample>)> {
    let client = topo.netns("client")?;
    let agent = installed.agent.as_ref().and_then(|a| a.child.pid());
    // vipr's counters over one phase against that phase's connections.
    let mut check = |phase: &str, before: Option<PathCounters>, connections| -> Result<()> {
        if let (Some(before), Some(after)) = (before, installed.path_counters()?) {
            let why = after.since(&before).off_path(contender, connections);
            off_path.extend(why.map(|w| format!("{phase}: {w}")));
        }
        Ok(())
    };

    let before = installed.path_counters()?;
    let cpu = {
        let _inside = installed.enter_client_group()?;
        cpu::measure(agent, || {
            let (targets, threads) = (&installed.targets, plan.client_threads);
            load::tcp_connection_count(&client, targets, threads, plan.cpu_connections)
        })?
    };
    check("CPU load", before, cpu.connections)?;

    drop(servers);
    let nginx = (1..=BACKEND_IPS.len())
        .map(|i| {
            let pod = format!("be-{i}");
            Nginx::start(
                &topo.netns(&pod)?,
                TARGET_PORT,
                &work.join(format!("nginx-{pod}")),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let mut samples = Vec::new();
    for mode in HttpMode::ALL {
        let before = installed.path_counters()?;
        let (result, machine) = {
            let _inside = installed.enter_client_group()?;
            http::wrk(&client, &installed.targets, mode, plan.wrk, work)?
        };
        // Keep-alive: wrk's connections carry every request.
        let connections = match mode {
            HttpMode::Close => result.requests,
            HttpMode::KeepAlive => plan.wrk.connections as u64,
        };
        check(&format!("wrk {}", mode.name()), before, connections)?;
        samples.push(HttpSample::new(mode, result, &machine));
    }
    drop(nginx);
    Ok((Some(cpu), samples))
}

/// The workload figures of a sample, under its main line.
pub(super) fn print(s: &Sample) {
    if let Some(c) = &s.cpu {
        println!(
            "{:<16}   CPU: {} conn in {:.2}s, busy {:.0} us/conn, sys+softirq {:.0} us/conn, agent {} us/conn, background {:.0}%, failed {}",
            "",
            c.connections,
            c.seconds,
            c.busy_us_per_conn,
            c.system_softirq_us_per_conn,
            c.agent_us_per_conn
                .map_or("-".into(), |v| format!("{v:.1}")),
            c.background_busy * 100.0,
            c.failed
        );
    }
    for h in &s.http {
        println!(
            "{:<16}   nginx+wrk {:<10}: {:>7.0} req/s p50={:>6.0}us p99={:>6.0}us busy {:.0} us/req, errors {}",
            "",
            h.mode.name(),
            h.req_per_s,
            h.wrk.p50_us,
            h.wrk.p99_us,
            h.busy_us_per_req,
            h.wrk.errors
        );
    }
}
