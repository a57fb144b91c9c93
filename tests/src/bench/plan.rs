//! What a bench run measures: the quick, smoke and full plans.
use std::time::Duration;

use super::http;

/// One connection per wrk thread: wrk ties a thread's connections to one
/// address, so `direct` can spread keep-alive connections over the pods
/// only a thread at a time (see the script in `http`). One second (wrk
/// takes whole seconds) keeps the quick run under 10 minutes; runs vary
/// with how the connections fall on the pods, which rounds cover, not a
/// longer run.
const WRK_QUICK: http::WrkLoad = http::WrkLoad {
    threads: 8,
    connections: 8,
    duration: Duration::from_secs(1),
};

/// What to run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub service_counts: Vec<usize>,
    pub rounds: usize,
    pub load_duration: Duration,
    pub client_threads: usize,
    /// Skip a contender at N when its estimated install time exceeds this.
    pub install_budget: Duration,
    pub packet_service_counts: Vec<u32>,
    pub conntrack_fill: u32,
    /// Where CPU per connection and nginx + wrk are measured too.
    pub workload_service_counts: Vec<usize>,
    /// New connections per CPU measurement (a count, not a duration).
    pub cpu_connections: u64,
    /// One wrk run per HTTP mode.
    pub wrk: http::WrkLoad,
}

impl Plan {
    pub fn quick() -> Self {
        Self {
            service_counts: vec![1, 1_000, 10_000],
            rounds: 3,
            // 1 s (was 2 s) leaves room for the workload phases at 1 and
            // 10,000; a second is still tens of thousands of connections.
            load_duration: Duration::from_secs(1),
            client_threads: 4,
            // `nft -f` took 35–40 s for 10,000 Services on the 2-core VM:
            // 60 s keeps nftables in at 10,000 (the workload figures are
            // there) without letting a slow machine stall the run.
            install_budget: Duration::from_secs(60),
            // The 1,000,000 rows are the full run's.
            packet_service_counts: vec![1, 10_000],
            conntrack_fill: 100_000,
            workload_service_counts: vec![1, 10_000],
            // ~0.3 s at 1 Service here: the kernel charges CPU by 4 ms
            // ticks, so fewer connections leave the figure to chance.
            cpu_connections: 10_000,
            wrk: WRK_QUICK,
        }
    }
    /// A minute-long functional check of every contender and path.
    pub fn smoke() -> Self {
        Self {
            service_counts: vec![1, 100],
            rounds: 1,
            load_duration: Duration::from_millis(500),
            client_threads: 2,
            install_budget: Duration::from_secs(60),
            packet_service_counts: vec![1],
            conntrack_fill: 1_000,
            workload_service_counts: vec![1, 100],
            cpu_connections: 5_000,
            wrk: WRK_QUICK,
        }
    }
    pub fn full() -> Self {
        Self {
            service_counts: vec![1, 1_000, 10_000, 100_000],
            // Three rounds keep the run near 45 minutes on 2 cores (before
            // the workload phases, which add minutes): the iptables
            // contenders spend minutes per load at 100,000.
            rounds: 3,
            load_duration: Duration::from_secs(4),
            client_threads: 4,
            install_budget: Duration::from_secs(400),
            packet_service_counts: vec![1, 1_000, 10_000, 100_000, 1_000_000],
            conntrack_fill: 1_000_000,
            workload_service_counts: vec![1, 10_000],
            cpu_connections: 50_000,
            wrk: http::WrkLoad {
                duration: Duration::from_secs(3),
                ..WRK_QUICK
            },
        }
    }
}
