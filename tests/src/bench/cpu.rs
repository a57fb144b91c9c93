//! CPU time per new connection, from /proc/stat (hardware counters are not
//! available on every VM): the machine's busy, system and softirq time over
//! a fixed number of connections, divided by that number. Everything on the
//! machine counts, so the load generator and the servers' user time are in
//! "busy" too, the same for every contender; the difference between two
//! contenders is what their datapaths cost.
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use super::load::LoadResult;

/// /proc/stat's clock ticks (USER_HZ): 100 on every Linux architecture
/// that matters here, and what `churn::cpu_time` assumes too.
const USER_HZ: f64 = 100.0;
/// How long the machine is watched before a measurement, to report what
/// else was running (a build, another benchmark) beside it.
const BACKGROUND_WINDOW: Duration = Duration::from_millis(300);

/// The all-CPU `cpu` line of /proc/stat, in ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl CpuTimes {
    /// Parses the first (all-CPU) line of /proc/stat. Guest time is left
    /// out: the kernel already counts it in user and nice.
    pub fn parse(stat: &str) -> Result<Self> {
        let line = stat
            .lines()
            .find(|l| l.split_whitespace().next() == Some("cpu"))
            .context("no cpu line in /proc/stat")?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("bad /proc/stat line {line:?}"))?;
        ensure!(v.len() >= 8, "short /proc/stat line {line:?}");
        Ok(Self {
            user: v[0],
            nice: v[1],
            system: v[2],
            idle: v[3],
            iowait: v[4],
            irq: v[5],
            softirq: v[6],
            steal: v[7],
        })
    }

    pub fn now() -> Result<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat")?)
    }

    /// What happened since `before` (saturating: the counters only grow,
    /// but a hot-unplugged CPU takes its counts away).
    pub fn since(&self, before: &Self) -> Self {
        Self {
            user: self.user.saturating_sub(before.user),
            nice: self.nice.saturating_sub(before.nice),
            system: self.system.saturating_sub(before.system),
            idle: self.idle.saturating_sub(before.idle),
            iowait: self.iowait.saturating_sub(before.iowait),
            irq: self.irq.saturating_sub(before.irq),
            softirq: self.softirq.saturating_sub(before.softirq),
            steal: self.steal.saturating_sub(before.steal),
        }
    }

    /// Everything but idle and iowait.
    pub fn busy(&self) -> u64 {
        self.user + self.nice + self.system + self.irq + self.softirq + self.steal
    }

    pub fn total(&self) -> u64 {
        self.busy() + self.idle + self.iowait
    }

    /// Kernel time spent for the network: system calls and softirqs (the
    /// veth hops, forwarding, netfilter and vipr's TC programs run there).
    pub fn system_softirq(&self) -> u64 {
        self.system + self.softirq
    }
}

pub fn ticks_to_us(ticks: u64) -> f64 {
    ticks as f64 * 1e6 / USER_HZ
}

/// CPU spent by the machine (and the vipr agent) per connection.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CpuPerConn {
    pub connections: u64,
    pub failed: u64,
    pub seconds: f64,
    pub busy_us_per_conn: f64,
    pub system_softirq_us_per_conn: f64,
    /// The vipr agent's own user+system time per connection (vipr only):
    /// it handles no packet, but its conntrack sweeper walks new flows.
    pub agent_us_per_conn: Option<f64>,
    /// The agent's share of one CPU in the idle window before (vipr only).
    pub agent_idle_busy: Option<f64>,
    /// Share (0–1) of the whole machine busy in the window just before,
    /// with the topology idle: anything else running skews the figures.
    pub background_busy: f64,
}

/// Per-connection figures from a /proc/stat delta over `completed`
/// connections; `agent_us` is the agent's CPU over the same time.
pub fn per_connection(
    delta: &CpuTimes,
    load: &LoadResult,
    agent_us: Option<f64>,
    background_busy: f64,
    agent_idle_busy: Option<f64>,
) -> CpuPerConn {
    let n = load.completed.max(1) as f64;
    CpuPerConn {
        connections: load.completed,
        failed: load.failed,
        seconds: load.seconds,
        busy_us_per_conn: ticks_to_us(delta.busy()) / n,
        system_softirq_us_per_conn: ticks_to_us(delta.system_softirq()) / n,
        agent_us_per_conn: agent_us.map(|us| us / n),
        agent_idle_busy,
        background_busy,
    }
}

/// Runs `load` (a fixed number of connections) and measures the machine's
/// CPU over it; `agent` is the vipr agent's pid, if any.
pub fn measure(
    agent: Option<u32>,
    load: impl FnOnce() -> Result<LoadResult>,
) -> Result<CpuPerConn> {
    let agent_cpu = || agent.map(crate::churn::cpu_time).transpose();
    let (idle_start, agent_idle_start) = (CpuTimes::now()?, agent_cpu()?);
    std::thread::sleep(BACKGROUND_WINDOW);
    let (before, agent_before) = (CpuTimes::now()?, agent_cpu()?);
    let background = before.since(&idle_start);
    let background_busy = background.busy() as f64 / background.total().max(1) as f64;
    let agent_idle_busy = agent_idle_start
        .zip(agent_before)
        .map(|(start, end)| (end - start).as_secs_f64() / BACKGROUND_WINDOW.as_secs_f64());
    let started = Instant::now();
    let result = load()?;
    let delta = CpuTimes::now()?.since(&before);
    let agent_us = match (agent, agent_before) {
        (Some(pid), Some(before)) => {
            Some((crate::churn::cpu_time(pid)? - before).as_secs_f64() * 1e6)
        }
        _ => None,
    };
    ensure!(
        result.completed > 0,
        "no connection completed in {:.1} s ({} failed)",
        started.elapsed().as_secs_f64(),
        result.failed
    );
    Ok(per_connection(
        &delta,
        &result,
        agent_us,
        background_busy,
        agent_idle_busy,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "cpu  702 0 500 21023 73 0 16 0 0 0\n\
        cpu0 253 0 207 10684 5 0 7 0 0 0\n\
        cpu1 448 0 293 10339 68 0 9 0 0 0\n\
        intr 66217 0 0\n";
    // 10 user, 2 nice, 30 system, 100 idle, 5 iowait, 1 irq, 40 softirq, 0
    // steal and 7 guest (already inside user) later.
    const AFTER: &str = "cpu  712 2 530 21123 78 1 56 0 7 0\n\
        cpu0 258 1 222 10734 7 0 27 0 3 0\n";

    #[test]
    fn busy_is_everything_but_idle_and_iowait_without_counting_guest_twice() {
        let delta = CpuTimes::parse(AFTER)
            .unwrap()
            .since(&CpuTimes::parse(BEFORE).unwrap());
        assert_eq!(delta.busy(), 10 + 2 + 30 + 1 + 40);
        assert_eq!(delta.system_softirq(), 70);
        assert_eq!(delta.total(), 83 + 100 + 5);
    }

    #[test]
    fn per_connection_divides_ticks_by_completed_connections() {
        let delta = CpuTimes::parse(AFTER)
            .unwrap()
            .since(&CpuTimes::parse(BEFORE).unwrap());
        let load = LoadResult {
            completed: 1_000,
            failed: 3,
            seconds: 0.5,
            latencies_us: Vec::new(),
        };
        let c = per_connection(&delta, &load, Some(20_000.0), 0.01, Some(0.0));
        // 83 ticks of 10 ms over 1,000 connections.
        assert_eq!(c.busy_us_per_conn, 830.0);
        assert_eq!(c.system_softirq_us_per_conn, 700.0);
        assert_eq!(c.agent_us_per_conn, Some(20.0));
        assert_eq!(c.failed, 3);
    }

    #[test]
    fn a_line_without_the_all_cpu_sum_or_with_junk_is_an_error() {
        assert!(CpuTimes::parse("cpu0 1 2 3 4 5 6 7 8 9 10\n").is_err());
        assert!(CpuTimes::parse("cpu  1 2 x 4 5 6 7 8\n").is_err());
        assert!(CpuTimes::parse("cpu  1 2 3 4\n").is_err());
    }
}
