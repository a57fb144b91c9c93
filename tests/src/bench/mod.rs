//! `cargo xtask bench`: vipr against kube-proxy's iptables and nftables
//! shapes and against no load balancer, in one run and one topology shape.
//!
//! Honesty rules: every contender gets a fresh topology per measurement;
//! contenders are interleaved round by round; figures are medians with
//! min–max over rounds; ratios to `direct` are taken within a round; a
//! measurement with failed requests, or that did not take the intended path
//! (vipr's counters), is reported as such; a contender that fails (rather
//! than being out over the install budget) fails the run once the report is
//! written. Nothing here asserts on timing.
pub mod contenders;
pub mod cpu;
pub mod dsr_cost;
pub mod http;
pub mod load;
pub mod maglev;
pub mod packet_cost;
mod plan;
pub mod report;
mod report_workload;
pub mod rules;
pub mod tools;
mod workload;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::Result;
use contenders::{Contender, Installed, install};
pub use plan::Plan;

use crate::netns::Topology;

/// One contender at one N in one round.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sample {
    pub contender: Contender,
    pub services: usize,
    pub round: usize,
    pub tcp_conn_per_s: f64,
    pub tcp_p50_us: f64,
    pub tcp_p99_us: f64,
    pub tcp_failed: u64,
    pub udp_req_per_s: f64,
    pub udp_failed: u64,
    pub install_s: f64,
    pub one_change_s: Option<f64>,
    pub agent_rss_bytes: Option<u64>,
    pub map_memory_bytes: Option<u64>,
    /// vipr only: its counters after the load, to confirm the path.
    #[serde(flatten)]
    pub counters: Option<PathCounters>,
    /// Set when those counters say a load did not take the intended path.
    pub off_path: Option<String>,
    /// At [`Plan::workload_service_counts`] only.
    pub cpu: Option<cpu::CpuPerConn>,
    pub http: Vec<http::HttpSample>,
}

/// vipr's datapath counters after a load.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct PathCounters {
    /// New flows translated by the TC programs; a SYN on a tuple that
    /// conntrack still holds (a reused source port) counts as reselected.
    pub dnat_new: u64,
    pub dnat_reselected: u64,
    /// Sockets translated by the cgroup hooks.
    pub sock_translated: u64,
}

impl PathCounters {
    /// What was counted since `before`.
    pub fn since(&self, before: &Self) -> Self {
        Self {
            dnat_new: self.dnat_new.saturating_sub(before.dnat_new),
            dnat_reselected: self.dnat_reselected.saturating_sub(before.dnat_reselected),
            sock_translated: self.sock_translated.saturating_sub(before.sock_translated),
        }
    }

    /// Why a load of `connections` TCP connections to `contender` did not
    /// take its intended path, if it did not: that path saw every
    /// connection (UDP adds a few), the other next to none (1 %).
    pub fn off_path(&self, contender: Contender, connections: u64) -> Option<String> {
        let tc = self.dnat_new + self.dnat_reselected;
        let (on, other) = match contender {
            Contender::ViprSocketLb => (self.sock_translated, tc),
            _ => (tc, self.sock_translated),
        };
        (on < connections || other > connections / 100).then(|| {
            format!(
                "dnat_new+dnat_reselected={tc} and sock_translated={} for {connections} TCP connections",
                self.sock_translated
            )
        })
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Skipped {
    pub contender: Contender,
    pub services: usize,
    pub reason: String,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Results {
    pub machine: String,
    pub kernel: String,
    pub mode: String,
    pub samples: Vec<Sample>,
    /// Out: over the install budget (by design, with the reason).
    pub skipped: Vec<Skipped>,
    /// Failed: the run exits non-zero when this is not empty.
    pub failures: Vec<Skipped>,
    pub packet_cost: Vec<packet_cost::PacketCost>,
    pub nodeport_cost: Option<packet_cost::NodePortCost>,
    /// The pod paths in IPv6 and, beside it, IPv4 on the same two services.
    pub packet_cost_by_family: Option<[packet_cost::PacketCost; 2]>,
    pub maglev: Option<maglev::MaglevFigures>,
    /// XDP NodePort to a remote endpoint: DSR against masquerade.
    pub dsr_cost: Option<dsr_cost::DsrCost>,
    /// The same in IPv6.
    pub dsr_cost6: Option<dsr_cost::DsrCost>,
}

fn topology() -> Result<Topology> {
    let mut topo = Topology::new()?;
    topo.add_node("node1")?;
    for (i, ip) in contenders::BACKEND_IPS.iter().enumerate() {
        topo.add_pod("node1", &format!("be-{}", i + 1), &ip.to_string())?;
    }
    topo.add_pod("node1", "client", &contenders::CLIENT_IP.to_string())?;
    Ok(topo)
}

fn measure(
    plan: &Plan,
    contender: Contender,
    n: usize,
    round: usize,
    vipr: &Path,
    work: &Path,
) -> Result<Sample> {
    let topo = topology()?;
    let servers = contenders::BACKEND_IPS
        .iter()
        .enumerate()
        .map(|(i, _)| {
            load::LoadServer::start(
                &topo.netns(&format!("be-{}", i + 1))?,
                contenders::TARGET_PORT,
                plan.client_threads,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work)?;
    let installed: Installed = install(contender, &topo, n, vipr, work, plan.install_budget)?;
    let client = topo.netns("client")?;
    let (tcp, udp) = {
        // Socket-LB: the client makes its sockets inside the hooks' group;
        // the process leaves it before the agent and the group go.
        let _inside = installed.enter_client_group()?;
        let (targets, threads) = (&installed.targets, plan.client_threads);
        (
            load::tcp_connections(&client, targets, threads, plan.load_duration)?,
            load::udp_requests(&client, targets, threads, plan.load_duration)?,
        )
    };
    let counters = installed.path_counters()?;
    let mut off_path: Vec<String> = counters
        .and_then(|c| c.off_path(contender, tcp.completed))
        .into_iter()
        .collect();
    let (cpu, http) = if plan.workload_service_counts.contains(&n) {
        workload::run(
            plan,
            contender,
            &topo,
            &installed,
            servers,
            work,
            &mut off_path,
        )?
    } else {
        drop(servers);
        (None, Vec::new())
    };
    drop(installed.agent);
    Ok(Sample {
        contender,
        services: n,
        round,
        tcp_conn_per_s: tcp.rate(),
        tcp_p50_us: tcp.percentile_us(0.5),
        tcp_p99_us: tcp.percentile_us(0.99),
        tcp_failed: tcp.failed,
        udp_req_per_s: udp.rate(),
        udp_failed: udp.failed,
        install_s: installed.install.as_secs_f64(),
        one_change_s: installed.one_change.map(|d| d.as_secs_f64()),
        agent_rss_bytes: installed.agent_rss,
        map_memory_bytes: installed.map_memory,
        counters,
        off_path: (!off_path.is_empty()).then(|| off_path.join("; ")),
        cpu,
        http,
    })
}

/// Runs the plan, printing each sample as it lands.
pub fn run(plan: &Plan, vipr: &Path, work_root: &Path) -> Result<Results> {
    let mut results = Results {
        machine: machine(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        ..Default::default()
    };
    // Last install time per contender, to skip what would blow the budget.
    let mut last_install: BTreeMap<Contender, (usize, f64)> = BTreeMap::new();
    // Contenders whose loader was killed at the budget: out from there on.
    let mut over_budget: BTreeMap<Contender, String> = BTreeMap::new();
    for &n in &plan.service_counts {
        let mut active: Vec<Contender> = Vec::new();
        for c in Contender::ALL {
            if let Some(reason) = over_budget.get(&c) {
                println!("skip {:<16} at {n:>7}: {reason}", c.name());
                results.skipped.push(Skipped {
                    contender: c,
                    services: n,
                    reason: reason.clone(),
                });
                continue;
            }
            // Extrapolate only from a size where the rules dominate the
            // fixed start-up cost (agent start, program load).
            if let Some(&(prev_n, secs)) = last_install.get(&c).filter(|(n, _)| *n >= 1_000) {
                let estimate = secs * n as f64 / prev_n.max(1) as f64;
                if estimate > plan.install_budget.as_secs_f64() {
                    let reason =
                        format!("estimated {estimate:.0} s to load (took {secs:.1} s at {prev_n})");
                    println!("skip {:<16} at {n:>7}: {reason}", c.name());
                    results.skipped.push(Skipped {
                        contender: c,
                        services: n,
                        reason,
                    });
                    continue;
                }
            }
            active.push(c);
        }
        for round in 0..plan.rounds {
            for &c in &active {
                if over_budget.contains_key(&c) {
                    continue;
                }
                let work: PathBuf = work_root.join(format!("{}-{n}", c.name().replace(' ', "-")));
                let started = Instant::now();
                match measure(plan, c, n, round, vipr, &work) {
                    Ok(s) => {
                        println!(
                            "{:<16} n={n:<7} round={round} tcp={:>8.0}/s p50={:>6.0}us p99={:>6.0}us udp={:>8.0}/s install={:>8.3}s change={} failed={}/{} ({:.0}s)",
                            c.name(),
                            s.tcp_conn_per_s,
                            s.tcp_p50_us,
                            s.tcp_p99_us,
                            s.udp_req_per_s,
                            s.install_s,
                            s.one_change_s.map_or("-".into(), |v| format!("{:.6}s", v)),
                            s.tcp_failed,
                            s.udp_failed,
                            started.elapsed().as_secs_f64()
                        );
                        workload::print(&s);
                        if let Some(why) = &s.off_path {
                            println!(
                                "{:<16} n={n:<7} round={round} NOT ON ITS PATH: {why}",
                                c.name()
                            );
                        }
                        last_install.insert(c, (n, s.install_s));
                        results.samples.push(s);
                    }
                    Err(e) if e.downcast_ref::<contenders::OverBudget>().is_some() => {
                        let reason = format!("{e:#} at {n} Services");
                        println!("{:<16} n={n:<7} round={round} OUT: {reason}", c.name());
                        results.skipped.push(Skipped {
                            contender: c,
                            services: n,
                            reason: reason.clone(),
                        });
                        over_budget.insert(c, reason);
                    }
                    Err(e) => {
                        println!("{:<16} n={n:<7} round={round} FAILED: {e:#}", c.name());
                        results.failures.push(Skipped {
                            contender: c,
                            services: n,
                            reason: format!("round {round} failed: {e:#}"),
                        });
                    }
                }
            }
        }
    }
    Ok(results)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kb = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    format!("{cores} cores ({cpu}), {} GiB", mem_kb / (1024 * 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_path_holds_each_vipr_contender_to_its_own_counter() {
        let counters = |dnat_new, dnat_reselected, sock_translated| PathCounters {
            dnat_new,
            dnat_reselected,
            sock_translated,
        };
        let (tc, sock) = (Contender::Vipr, Contender::ViprSocketLb);
        assert_eq!(counters(700, 304, 0).off_path(tc, 1000), None);
        assert_eq!(counters(0, 0, 1002).off_path(sock, 1000), None);
        // Hooks not attached: the TC path served the socket-LB contender.
        assert!(counters(1004, 0, 0).off_path(sock, 1000).is_some());
        // The default scope translated the pod client.
        assert!(counters(0, 0, 1004).off_path(tc, 1000).is_some());
    }
}
