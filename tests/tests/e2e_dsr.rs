//! DSR end to end (`--lb-mode dsr`): an outside client reaches node1's
//! NodePort, whose only endpoint runs on node2. The request crosses node1
//! with the client's address (web-2 sees the client); the reply leaves
//! node2 straight for the client from node1's address and NodePort, and
//! never crosses node1: shown by both nodes' counters and by packet
//! captures on both nodes.
use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use proxy_common::{Counter, IPPROTO_TCP, IPPROTO_UDP};
use vipr_tests::{
    capture::{Capture, Frame},
    demo::wait_until,
    echo::{tcp_request_full, udp_request},
    external::*,
};

const TIMEOUT: Duration = Duration::from_secs(2);
const DSR_TCP: u16 = 30_090;
const DSR_UDP: u16 = 30_091;
const WEB2: Ipv4Addr = PODS[1].2;
const FLOWS: usize = 10;

/// A NodePort Service whose one endpoint is web-2, on node2.
fn manifest() -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: dsr, namespace: ext}}\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.60\n  ports:\n  - {{name: http, port: 80, targetPort: 8080, nodePort: {DSR_TCP}, protocol: TCP}}\n  - {{name: dns, port: 53, targetPort: 5353, nodePort: {DSR_UDP}, protocol: UDP}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: dsr-x, namespace: ext, labels: {{kubernetes.io/service-name: dsr}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: 5353, protocol: UDP}}]\nendpoints:\n- {{addresses: [{WEB2}], nodeName: node2, conditions: {{ready: true}}}}\n"
    )
}

fn counters(c: &ExternalCluster, node: &str) -> [u64; 5] {
    [
        Counter::DsrOptionAdded,
        Counter::DsrFrontendLearnt,
        Counter::RevNat,
        Counter::RevSnat,
        Counter::DropDsrOptionFailed,
    ]
    .map(|counter| c.counter(node, counter).expect("counter"))
}

/// Frames of the client's flows `ports` (client side) coming back to it.
fn replies<'a>(frames: &'a [Frame], proto: u8, ports: &BTreeSet<u16>) -> Vec<&'a Frame> {
    frames
        .iter()
        .filter(|f| f.dst() == CLIENT_IP && f.proto() == proto)
        .filter(|f| f.ports().is_some_and(|(_, dst)| ports.contains(&dst)))
        .collect()
}

#[test]
fn dsr_replies_leave_the_endpoints_node_straight_for_the_client() {
    for xdp in ["off", "native"] {
        eprintln!("-- with --xdp {xdp}");
        let c =
            ExternalCluster::start_with_args(&vipr_tests::vipr_bin(), xdp, &["--lb-mode", "dsr"])
                .expect("cluster");
        c.write_manifest("dsr.yaml", &manifest()).expect("manifest");
        let tcp_frontend = SocketAddr::from((NODE_IPS[0], DSR_TCP));
        let udp_frontend = SocketAddr::from((NODE_IPS[0], DSR_UDP));
        assert!(
            wait_until(Duration::from_secs(20), || {
                tcp_request_full(&c.client, tcp_frontend, TIMEOUT).is_ok()
            }),
            "the DSR NodePort never answered:\n{}",
            c.logs()
        );
        let before = [counters(&c, "node1"), counters(&c, "node2")];
        let node1 = Capture::start(&c.topology.netns("node1").unwrap()).expect("capture node1");
        let node2 = Capture::start(&c.topology.netns("node2").unwrap()).expect("capture node2");

        let mut tcp_ports = BTreeSet::new();
        for _ in 0..FLOWS {
            let reply = tcp_request_full(&c.client, tcp_frontend, TIMEOUT).expect("tcp request");
            assert_eq!(reply.name, "web-2");
            assert_eq!(
                reply.peer, tcp_frontend,
                "the reply comes from the frontend"
            );
            tcp_ports.insert(reply.local.port());
        }
        let mut udp_ports = BTreeSet::new();
        for _ in 0..FLOWS {
            let (name, from) = udp_request(&c.client, udp_frontend, TIMEOUT).expect("udp request");
            assert_eq!(name, "web-2");
            assert_eq!(from, udp_frontend, "the reply comes from the frontend");
        }
        // Settle: the last frames reach the captures.
        std::thread::sleep(Duration::from_millis(300));
        let seen1 = node1.stop().expect("node1 frames");
        let seen2 = node2.stop().expect("node2 frames");
        let after = [counters(&c, "node1"), counters(&c, "node2")];
        let delta = |node: usize, i: usize| after[node][i] - before[node][i];
        eprintln!(
            "node1 [dsr_option_added, dsr_frontend_learnt, rev_nat, rev_snat, drop_dsr_option_failed] +{:?}, node2 +{:?}",
            (0..5).map(|i| delta(0, i)).collect::<Vec<_>>(),
            (0..5).map(|i| delta(1, i)).collect::<Vec<_>>()
        );

        // web-2 saw the client itself, not node1.
        let peers = c.server("web-2").peers();
        assert!(peers.iter().any(|p| p.ip() == CLIENT_IP), "{peers:?}");

        // Counters: node1 added the option to every SYN and datagram, node2
        // learnt each and restored the frontend on the replies; nothing was
        // masqueraded, and node1 restored no reply.
        assert!(delta(0, 0) >= (2 * FLOWS) as u64, "node1 dsr_option_added");
        assert!(
            delta(1, 1) >= (2 * FLOWS) as u64,
            "node2 dsr_frontend_learnt"
        );
        assert!(delta(1, 2) >= (2 * FLOWS) as u64, "node2 rev_nat");
        assert_eq!(delta(0, 2), 0, "node1 rev_nat");
        assert_eq!(delta(0, 3), 0, "node1 rev_snat");
        assert_eq!(delta(0, 4), 0, "node1 drop_dsr_option_failed");

        // Captures: no reply of these flows went through node1...
        let udp_client_ports: BTreeSet<u16> = seen2
            .iter()
            .filter(|f| f.src() == CLIENT_IP && f.proto() == IPPROTO_UDP && !f.outgoing)
            .filter_map(|f| f.ports().map(|(src, _)| src))
            .collect();
        udp_ports.extend(udp_client_ports);
        assert_eq!(udp_ports.len(), FLOWS, "every datagram reached node2");
        for (proto, ports) in [(IPPROTO_TCP, &tcp_ports), (IPPROTO_UDP, &udp_ports)] {
            let through_node1 = replies(&seen1, proto, ports);
            assert!(
                through_node1.is_empty(),
                "replies crossed node1: {through_node1:?}"
            );
            // ...they left node2, from the frontend, for every flow (what
            // node2 received of them came from web-2's interface).
            let from_node2: Vec<&Frame> = replies(&seen2, proto, ports)
                .into_iter()
                .filter(|f| f.outgoing)
                .collect();
            assert!(
                from_node2.iter().all(|f| f.src() == NODE_IPS[0]),
                "{from_node2:?}"
            );
            let answered: BTreeSet<u16> = from_node2
                .iter()
                .filter_map(|f| f.ports())
                .inspect(|(src, _)| {
                    assert_eq!(
                        *src,
                        if proto == IPPROTO_TCP {
                            DSR_TCP
                        } else {
                            DSR_UDP
                        }
                    )
                })
                .map(|(_, dst)| dst)
                .collect();
            assert_eq!(
                &answered, ports,
                "proto {proto}: every flow answered by node2"
            );
        }
        // The requests reached node2 with the client's address, the
        // opening ones carrying the frontend in the DSR option. (node1's
        // capture sees what TC forwards, not what XDP_TX sends.)
        let arrived: Vec<&Frame> = seen2
            .iter()
            .filter(|f| !f.outgoing && f.src() == CLIENT_IP && f.dst() == WEB2)
            .collect();
        let option = |port: u16| {
            let mut option = vec![proxy_common::DSR_OPTION_TYPE, proxy_common::DSR_OPTION_LEN];
            option.extend_from_slice(&port.to_be_bytes());
            option.extend_from_slice(&NODE_IPS[0].octets());
            option
        };
        for (proto, port) in [(IPPROTO_TCP, DSR_TCP), (IPPROTO_UDP, DSR_UDP)] {
            let with_option = arrived
                .iter()
                .filter(|f| f.proto() == proto && f.ip_options() == option(port).as_slice())
                .count();
            assert!(
                with_option >= FLOWS,
                "proto {proto}: {with_option} with the option"
            );
        }
        let forwarded_by_tc = seen1
            .iter()
            .filter(|f| f.outgoing && f.src() == CLIENT_IP && f.dst() == WEB2)
            .count();
        let xdp_sent = c
            .counter("node1", Counter::XdpTransmitted)
            .expect("counter");
        match xdp {
            "off" => assert!(forwarded_by_tc >= 2 * FLOWS, "{forwarded_by_tc}"),
            _ => assert!(xdp_sent >= (2 * FLOWS) as u64, "xdp_transmitted {xdp_sent}"),
        }
        eprintln!(
            "captured: node1 {} frames ({forwarded_by_tc} forwarded by TC, xdp_transmitted {xdp_sent}, 0 replies), node2 {} frames ({} requests arrived from the client)",
            seen1.len(),
            seen2.len(),
            arrived.len()
        );
        if let Err(e) = c.tools_show_dsr(tcp_frontend, CLIENT_IP.into(), "web-2") {
            panic!("--xdp {xdp}: {e:?}\n{}", c.logs());
        }
    }
}
