//! Conntrack under pressure, end to end: with a small table, idle long-lived
//! connections (direct, masqueraded to the other node, and a pod hairpinning
//! to itself) outlive twenty tables' worth of short connections, the server
//! speaking first after the silence; and a table that is really full drops
//! new flows, counted, while the established ones go on.
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use proxy_common::Counter;
use vipr_tests::{
    echo::{ClientError, TcpSession, tcp_request},
    external::*,
};

/// Entries (two per flow) in node1's conntrack.
const TABLE: usize = 256;
const TIMEOUT: Duration = Duration::from_secs(3);
const CLUSTER_IP: [u8; 4] = [10, 96, 0, 50];

struct Idle {
    session: TcpSession,
    backend: String,
    what: &'static str,
}

fn open_idle(netns: &str, addr: SocketAddr, what: &'static str) -> Idle {
    let mut session = TcpSession::connect(netns, addr, TIMEOUT).expect("connect");
    let backend = session.request().expect("first request");
    session.hold().expect("hold request");
    Idle {
        session,
        backend,
        what,
    }
}

/// The held answer arrives first (the server speaks after the silence),
/// then a request and its answer; both from the same backend as before.
fn check_both_ways(idle: &mut [Idle]) {
    for (i, c) in idle.iter_mut().enumerate() {
        let first = c.session.held_reply();
        assert!(
            first.as_ref().is_ok_and(|name| *name == c.backend),
            "idle {} #{i}: server-first reply {first:?}, expected {}",
            c.what,
            c.backend
        );
        let again = c.session.request();
        assert!(
            again.as_ref().is_ok_and(|name| *name == c.backend),
            "idle {} #{i}: request {again:?}, expected {}",
            c.what,
            c.backend
        );
    }
}

#[test]
fn idle_connections_outlive_twenty_tables_of_short_ones_and_a_full_table_keeps_them() {
    let table = TABLE.to_string();
    let cluster = ExternalCluster::start_with_args(
        &vipr_tests::vipr_bin(),
        "off",
        &[
            "--max-conntrack",
            &table,
            // Closed flows leave at the next sweep: the table is tiny.
            "--conntrack-tcp-timeout-close",
            "0s",
            "--poll-interval",
            "50ms",
        ],
    )
    .expect("cluster");
    let nodeport = SocketAddr::from((NODE_IPS[0], NODE_PORT_TCP));
    let cluster_ip = SocketAddr::from((CLUSTER_IP, 80));
    let web1 = cluster.topology.netns("web-1").unwrap();

    // Through node1's agent: from outside (to web-1 directly, or masqueraded
    // to web-2 on node2), and web-1 to its own Service (hairpin: masqueraded).
    let mut idle: Vec<Idle> = (0..16)
        .map(|_| open_idle(&cluster.client, nodeport, "nodeport"))
        .chain((0..8).map(|_| open_idle(&web1, cluster_ip, "pod")))
        .collect();
    let masqueraded = idle.iter().filter(|c| c.backend == "web-2").count();
    let hairpin = idle
        .iter()
        .filter(|c| c.what == "pod" && c.backend == "web-1")
        .count();
    assert!(masqueraded > 0 && hairpin > 0, "both kinds of masquerade");

    let short = 20 * TABLE;
    let started = Instant::now();
    let mut failed = 0;
    for i in 0..short {
        if let Err(error) = tcp_request(&cluster.client, nodeport, TIMEOUT) {
            failed += 1;
            eprintln!("short connection {i}: {error}");
        }
    }
    let took = started.elapsed();
    let full_drops = cluster
        .counter("node1", Counter::DropConntrackFull)
        .unwrap();
    eprintln!(
        "{short} short connections in {:.1} s ({:.0}/s), {failed} failed, \
         {full_drops} SYNs dropped on a full table; {} idle connections \
         ({masqueraded} masqueraded to node2, {hairpin} hairpin)",
        took.as_secs_f64(),
        short as f64 / took.as_secs_f64(),
        idle.len()
    );
    assert_eq!(failed, 0, "short connections failed");
    for pod in ["web-1", "web-2"] {
        cluster.server(pod).release_held();
    }
    check_both_ways(&mut idle);

    // Really full: hold connections open until a new one is refused room.
    let mut filled = 0;
    let mut timed_out = None;
    while timed_out.is_none() && filled <= TABLE {
        match TcpSession::connect(&cluster.client, nodeport, Duration::from_secs(1)) {
            Ok(mut session) => {
                session.request().expect("request on a fresh connection");
                idle.push(Idle {
                    backend: String::new(),
                    session,
                    what: "filler",
                });
                filled += 1;
            }
            Err(error) => timed_out = Some(error),
        }
    }
    assert!(
        matches!(timed_out, Some(ClientError::Timeout)),
        "a connection beyond the table times out: {timed_out:?} after {filled}"
    );
    let drops_now = cluster
        .counter("node1", Counter::DropConntrackFull)
        .unwrap();
    assert!(drops_now > full_drops, "the refused SYN is counted");
    eprintln!(
        "table full after {filled} more connections; drop_conntrack_full {full_drops} -> {drops_now}"
    );
    for (i, c) in idle.iter_mut().enumerate() {
        let reply = c.session.request();
        assert!(
            reply.is_ok(),
            "{} #{i} with a full table: {reply:?}",
            c.what
        );
    }
}
