//! Agent restarts and upgrades under load: new connections without pause
//! from outside (NodePorts of both nodes, some masqueraded to the other
//! node) and from pods (ClusterIP), 50 long-lived TCP connections and 20
//! UDP flows, while each node's agent is restarted three times: SIGTERM,
//! SIGKILL, and a switch to another build of the binary. Nothing may fail,
//! reset, or move to another backend. Once with TCX links, once with clsact
//! filters.
use std::{net::SocketAddr, time::Duration};

use vipr_tests::{
    external::*,
    soak::{LongLived, NewConnections},
};

const CLUSTER_IP: [u8; 4] = [10, 96, 0, 50];
/// Threads opening connections, per (client, target).
const LOAD_THREADS: usize = 2;
const SETTLE: Duration = Duration::from_secs(2);

fn restarts_under_load(tc_attach: &str) {
    let args = ["--tc-attach", tc_attach];
    let (vipr, other) = (vipr_tests::vipr_bin(), vipr_tests::vipr_release_bin());
    let mut cluster = ExternalCluster::start_with_args(&vipr, "off", &args).expect("cluster");
    let pod = |name| cluster.topology.netns(name).unwrap();
    let (client, web1, web2) = (cluster.client.clone(), pod("web-1"), pod("web-2"));
    let tcp_to = |node: usize| SocketAddr::from((NODE_IPS[node], NODE_PORT_TCP));
    let udp_to = |node: usize| SocketAddr::from((NODE_IPS[node], NODE_PORT_UDP));
    let (cluster_tcp, cluster_udp) = (
        SocketAddr::from((CLUSTER_IP, 80)),
        SocketAddr::from((CLUSTER_IP, 53)),
    );
    let tcp_sources = vec![
        (client.clone(), tcp_to(0)),
        (client.clone(), tcp_to(1)),
        (web1.clone(), cluster_tcp),
        (web2.clone(), cluster_tcp),
    ];
    let udp_sources = [
        (client.clone(), udp_to(0)),
        (client.clone(), udp_to(1)),
        (web1, cluster_udp),
        (web2, cluster_udp),
    ];
    let long_tcp: Vec<_> = tcp_sources.iter().cycle().take(50).cloned().collect();
    let long_udp: Vec<_> = udp_sources.iter().cycle().take(20).cloned().collect();
    let steady = LongLived::start(&long_tcp, &long_udp).expect("long-lived flows");
    let load = NewConnections::start(&tcp_sources, LOAD_THREADS, None).expect("load");

    let began = std::time::Instant::now();
    std::thread::sleep(SETTLE);
    let mut restarts = Vec::new();
    for node in ["node1", "node2"] {
        for (stop, binary, what) in [
            (Stop::Term, &vipr, "SIGTERM"),
            (Stop::Kill, &vipr, "SIGKILL"),
            (Stop::Term, &other, "other build"),
        ] {
            let started = std::time::Instant::now();
            cluster
                .restart_agent(node, stop, binary, &args)
                .unwrap_or_else(|e| panic!("{node} {what}: {e:#}"));
            restarts.push(format!(
                "{node} {what} at {:.2} s took {:.1} s",
                started.duration_since(began).as_secs_f64(),
                started.elapsed().as_secs_f64()
            ));
            std::thread::sleep(SETTLE);
        }
    }
    let (new, took) = load.finish();
    let mut spread = std::collections::BTreeMap::<String, usize>::new();
    for backend in &steady.spread {
        *spread.entry(backend.clone()).or_default() += 1;
    }
    let long = steady.finish();
    eprintln!(
        "--tc-attach {tc_attach}: restarts (to healthy) {restarts:?}\n\
         new connections: {} in {:.1} s ({:.0}/s), {} failed, {} resets\n\
         long-lived: {} TCP + {} UDP flows (on {spread:?}), {} answers, {} failed, {} resets, {} moved",
        new.completed,
        took.as_secs_f64(),
        new.completed as f64 / took.as_secs_f64(),
        new.failed,
        new.resets,
        long_tcp.len(),
        long_udp.len(),
        long.completed,
        long.failed,
        long.resets,
        long.moved,
    );
    for node in ["node1", "node2"] {
        let drops: Vec<_> = proxy_common::Counter::ALL
            .iter()
            .filter(|c| c.is_drop())
            .filter_map(|&c| Some((c.name(), cluster.counter(node, c).ok()?)))
            .filter(|(_, n)| *n > 0)
            .collect();
        eprintln!("{node} drops: {drops:?}");
    }
    assert_eq!(new.failed, 0, "new connections failed: {:?}", new.errors);
    assert_eq!(long.failed, 0, "long-lived flows failed: {:?}", long.errors);
    assert!(new.completed > 0 && long.completed > 0);
}

#[test]
fn agents_restart_and_upgrade_under_load_with_tcx() {
    restarts_under_load("tcx");
}

#[test]
fn agents_restart_and_upgrade_under_load_with_clsact() {
    restarts_under_load("clsact");
}
