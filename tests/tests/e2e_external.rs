//! External traffic end to end: a host outside the cluster, two nodes with
//! their agents, backends on both. Every scenario runs three times: the XDP
//! fast path in native mode on the nodes' veth `eth0` (with a pass-through
//! program on the underlay end, which a veth needs to receive XDP_TX frames),
//! in generic mode, and the TC path alone.
use std::{net::SocketAddr, time::Duration};

use proxy_common::Counter;
use vipr_tests::{
    demo::wait_until,
    echo::{tcp_request_full, udp_request},
    external::*,
};

const TIMEOUT: Duration = Duration::from_secs(2);

fn each_path(test: impl Fn(&ExternalCluster)) {
    let modes =
        std::env::var("VIPR_TEST_XDP_MODES").unwrap_or_else(|_| "native,generic,off".into());
    for xdp in modes.split(',') {
        let cluster = ExternalCluster::start(&vipr_tests::vipr_bin(), xdp).expect("cluster");
        eprintln!("-- with --xdp {xdp}");
        test(&cluster);
    }
}

#[test]
fn nodeport_reaches_every_backend_from_either_node_and_replies_come_from_the_node() {
    each_path(|c| {
        for node in NODE_IPS {
            let addr = SocketAddr::from((node, NODE_PORT_TCP));
            let mut served = std::collections::BTreeSet::new();
            for _ in 0..40 {
                let reply = tcp_request_full(&c.client, addr, TIMEOUT).expect("nodeport request");
                assert_eq!(reply.peer, addr, "the reply comes from the node's NodePort");
                served.insert(reply.name);
            }
            assert_eq!(served.len(), 2, "via {node}: {served:?}");
        }
        // Half the flows went to the other node's backend: with XDP on, the
        // XDP program sent them back out itself instead of leaving it to TC.
        let transmitted: u64 = ["node1", "node2"]
            .iter()
            .map(|n| c.counter(n, Counter::XdpTransmitted).unwrap())
            .sum();
        match c.xdp.as_str() {
            "off" => assert_eq!(transmitted, 0),
            mode => assert!(transmitted > 0, "--xdp {mode}: no frame sent by XDP_TX"),
        }
        // A backend on the other node sees the node, not the client (masquerade).
        let remote_peers: Vec<_> = c.server("web-2").peers();
        assert!(
            remote_peers.iter().any(|p| p.ip() == NODE_IPS[0]),
            "web-2 should see node1 for traffic that entered on node1: {remote_peers:?}"
        );
    });
}

#[test]
fn udp_through_a_nodeport() {
    each_path(|c| {
        let addr = SocketAddr::from((NODE_IPS[0], NODE_PORT_UDP));
        let (name, from) = udp_request(&c.client, addr, TIMEOUT).expect("udp through nodeport");
        assert!(name.starts_with("web-"), "{name}");
        assert_eq!(from, addr, "the reply comes from the NodePort");
    });
}

#[test]
fn traffic_policy_local_keeps_the_client_ip_and_nodes_without_endpoints_do_not_answer() {
    each_path(|c| {
        // The LoadBalancer IP is routed to node2, where the only endpoint runs.
        let reply = tcp_request_full(&c.client, SocketAddr::from((LB_LOCAL, 80)), TIMEOUT)
            .expect("lb with policy Local");
        assert_eq!(reply.name, "web-2");
        assert!(
            c.server("web-2")
                .peers()
                .iter()
                .any(|p| p.ip() == CLIENT_IP),
            "client address preserved"
        );
        // node1 has no endpoint of it: its NodePort drops (a timeout, not a refusal).
        let err = tcp_request_full(
            &c.client,
            SocketAddr::from((NODE_IPS[0], NODE_PORT_LOCAL)),
            TIMEOUT,
        )
        .expect_err("node without local endpoints must not answer");
        assert!(err.is_timeout(), "{err}");
    });
}

#[test]
fn health_check_node_port_follows_the_local_endpoints() {
    each_path(|c| {
        let wait = |node: usize, code: u16| {
            wait_until(
                Duration::from_secs(5),
                || matches!(c.health_check(node), Ok((got, _)) if got == code),
            )
        };
        assert!(
            wait(0, 503),
            "node1 has no local endpoint: {:?}",
            c.health_check(0)
        );
        assert!(wait(1, 200), "node2 has one: {:?}", c.health_check(1));
        let (_, body) = c.health_check(1).unwrap();
        assert!(body.contains(r#""localEndpoints": 1"#), "{body}");
        c.set_local_endpoints(&["web-1"]).unwrap();
        assert!(
            wait(0, 200),
            "after the move node1 serves: {:?}",
            c.health_check(0)
        );
        assert!(wait(1, 503), "and node2 does not: {:?}", c.health_check(1));
    });
}

#[test]
fn load_balancer_source_ranges_allow_and_block() {
    each_path(|c| {
        let ok = tcp_request_full(&c.client, SocketAddr::from((LB_ALLOWED, 80)), TIMEOUT);
        assert!(ok.is_ok(), "client inside the ranges: {ok:?}");
        let blocked = tcp_request_full(&c.client, SocketAddr::from((LB_BLOCKED, 80)), TIMEOUT)
            .expect_err("client outside the ranges");
        assert!(blocked.is_timeout(), "{blocked}");
    });
}

#[test]
fn xdp_auto_leaves_a_veth_uplink_to_tc() {
    let c = ExternalCluster::start(&vipr_tests::vipr_bin(), "auto").expect("cluster");
    for _ in 0..10 {
        tcp_request_full(
            &c.client,
            SocketAddr::from((NODE_IPS[0], NODE_PORT_TCP)),
            TIMEOUT,
        )
        .expect("nodeport request");
    }
    assert_eq!(c.counter("node1", Counter::XdpTransmitted).unwrap(), 0);
    assert!(
        c.logs()
            .contains("virtual interface: no XDP under --xdp auto"),
        "{}",
        c.logs()
    );
}
