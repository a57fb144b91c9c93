//! Direct server return (`--lb-mode dsr|hybrid`) through the real programs
//! (BPF_PROG_TEST_RUN): the ingress node's frames with the DSR option,
//! byte for byte (so every checksum is checked), and the endpoint's node
//! learning the frontend from them and restoring it on the replies.
use std::net::Ipv4Addr;

use proxy_common::{
    BackendValue, CT_FLAG_DSR, CT_FLAG_REPLIED, CtKey, IPPROTO_TCP, IPPROTO_UDP, SCOPE_EXTERNAL,
    SVC_FLAG_HAS_ENDPOINTS, SVC_FLAG_MASQUERADE, ServiceKey,
    programs::{FROM_EXTERNAL, TO_EXTERNAL},
};
use vipr::{conntrack::FlowState, datapath::LbMode};
use vipr_tests::{netns, packet::*};

/// The ingress node (the frontend's address) and the endpoint's node.
const NODE: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
const NODE2: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);
const NODE_PORT: u16 = 30_080;
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 11);
const LOCAL_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);

fn node(address: Ipv4Addr, mode: LbMode) -> Harness {
    Harness::with_options(|o| {
        o.node_ipv4 = Some(address);
        o.lb_mode = mode;
    })
    .expect("load programs (needs root)")
}

/// The ingress node: NodePort `NODE_PORT` (TCP and UDP) under
/// externalTrafficPolicy Cluster, its one endpoint on node2.
fn ingress(mode: LbMode) -> Harness {
    RemoteNodePort {
        node: NODE,
        node_port: NODE_PORT,
        endpoint: (REMOTE_POD, 8080),
    }
    .harness(&[IPPROTO_TCP, IPPROTO_UDP], |o| o.lb_mode = mode)
    .expect("load programs (needs root)")
}

fn client(port: u16) -> Tuple {
    Tuple {
        src: (CLIENT, port),
        dst: (NODE, NODE_PORT),
    }
}

fn to_pod(port: u16) -> Tuple {
    Tuple {
        src: (CLIENT, port),
        dst: (REMOTE_POD, 8080),
    }
}

fn from_pod(port: u16) -> Tuple {
    Tuple {
        src: (REMOTE_POD, 8080),
        dst: (CLIENT, port),
    }
}

fn source(frame: &[u8]) -> (Ipv4Addr, u16) {
    let ip = &frame[14..];
    let l4 = &ip[((ip[0] & 0x0f) as usize) * 4..];
    (
        Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        u16::from_be_bytes([l4[0], l4[1]]),
    )
}

#[test]
fn a_tcp_syn_keeps_the_client_address_and_carries_the_frontend_later_segments_do_not() {
    let mut h = ingress(LbMode::Dsr);
    let syn = tcp(client(40_000), 7, true, false, b"");
    let run = h.run(FROM_EXTERNAL, &syn).unwrap();
    assert_eq!(run.verdict, TC_ACT_OK, "no FIB here: on to the stack");
    assert_eq!(run.counted, vec![("dnat_new", 1), ("dsr_option_added", 1)]);
    let expected = with_dsr_option(&tcp(to_pod(40_000), 7, true, false, b""), (NODE, NODE_PORT));
    assert_eq!(checksum_errors(&run.output), Vec::<String>::new());
    assert_eq!(run.output, expected);

    // The forward entry says DSR: never masqueraded.
    let key = CtKey {
        src_addr: u32::from_ne_bytes(CLIENT.octets()),
        dst_addr: u32::from_ne_bytes(NODE.octets()),
        src_port: 40_000u16.to_be(),
        dst_port: NODE_PORT.to_be(),
        proto: IPPROTO_TCP,
        direction: proxy_common::CT_FORWARD,
        _pad: [0; 2],
    };
    let entry = h.conntrack.get(&key, 0).expect("forward entry");
    assert_eq!(entry.flags & CT_FLAG_DSR, CT_FLAG_DSR);
    assert_eq!(entry.flags & proxy_common::CT_FLAG_SNAT, 0);
    let reverse = h.conntrack.get(&key.partner(&entry), 0).ok();
    assert_eq!(
        FlowState::of(&key, &entry, reverse.as_ref()),
        FlowState::Opening
    );

    // Data segments: translated only, same size.
    let data = tcp(client(40_000), 8, false, true, b"GET / HTTP/1.1\r\n");
    let run = h.run(FROM_EXTERNAL, &data).unwrap();
    assert_eq!(run.counted, vec![("dnat_established", 1)]);
    assert_eq!(
        run.output,
        tcp(to_pod(40_000), 8, false, true, b"GET / HTTP/1.1\r\n")
    );
    // The client's ACK proves the handshake: no reply ever comes this way,
    // yet the sweep must keep the flow as established, not opening (60 s).
    let entry = h.conntrack.get(&key, 0).expect("forward entry");
    assert_eq!(entry.flags & CT_FLAG_REPLIED, CT_FLAG_REPLIED);
    assert_eq!(
        FlowState::of(&key, &entry, reverse.as_ref()),
        FlowState::Established
    );

    // A retransmitted SYN carries the option again.
    let run = h.run(FROM_EXTERNAL, &syn).unwrap();
    assert_eq!(
        run.counted,
        vec![("dnat_reselected", 1), ("dsr_option_added", 1)]
    );
    assert_eq!(run.output, expected);
}

#[test]
fn every_udp_datagram_carries_the_frontend_in_dsr_mode() {
    let mut h = ingress(LbMode::Dsr);
    for (i, payload) in [&b"query"[..], b"another"].into_iter().enumerate() {
        let run = h.run(FROM_EXTERNAL, &udp(client(5_300), payload)).unwrap();
        let verdict = if i == 0 {
            "dnat_new"
        } else {
            "dnat_established"
        };
        assert_eq!(run.counted, vec![(verdict, 1), ("dsr_option_added", 1)]);
        assert_eq!(checksum_errors(&run.output), Vec::<String>::new());
        assert_eq!(
            run.output,
            with_dsr_option(&udp(to_pod(5_300), payload), (NODE, NODE_PORT))
        );
    }
    // A datagram without a checksum keeps none.
    let run = h
        .run(FROM_EXTERNAL, &udp_without_checksum(client(5_301), b"q"))
        .unwrap();
    assert_eq!(
        run.output,
        with_dsr_option(
            &udp_without_checksum(to_pod(5_301), b"q"),
            (NODE, NODE_PORT)
        )
    );
}

#[test]
fn hybrid_mode_sends_tcp_by_dsr_and_masquerades_udp() {
    let mut h = ingress(LbMode::Hybrid);
    let run = h
        .run(FROM_EXTERNAL, &tcp(client(40_000), 7, true, false, b""))
        .unwrap();
    assert_eq!(run.counted, vec![("dnat_new", 1), ("dsr_option_added", 1)]);
    assert_eq!(source(&run.output), (CLIENT, 40_000));
    let run = h.run(FROM_EXTERNAL, &udp(client(5_300), b"q")).unwrap();
    assert_eq!(run.counted, vec![("dnat_new", 1)]);
    assert_eq!(source(&run.output).0, NODE, "masqueraded");
    assert_eq!(run.output.len(), udp(to_pod(5_300), b"q").len());
}

/// A node without an IPv4 address of its own cannot masquerade, but DSR
/// needs no node address (the IPv6 twin is in packets_dsr6).
#[test]
fn without_a_node_address_dsr_still_carries_what_masquerade_cannot() {
    let mut h = RemoteNodePort {
        node: NODE,
        node_port: NODE_PORT,
        endpoint: (REMOTE_POD, 8080),
    }
    .harness(&[IPPROTO_TCP, IPPROTO_UDP], |o| {
        o.lb_mode = LbMode::Hybrid;
        o.node_ipv4 = None;
    })
    .expect("load programs (needs root)");
    let run = h
        .run(FROM_EXTERNAL, &tcp(client(40_000), 7, true, false, b""))
        .unwrap();
    assert_eq!(run.counted, vec![("dnat_new", 1), ("dsr_option_added", 1)]);
    assert_eq!(source(&run.output), (CLIENT, 40_000));

    // Hybrid masquerades UDP, which needs the address this node lacks.
    let run = h.run(FROM_EXTERNAL, &udp(client(5_300), b"q")).unwrap();
    assert_eq!(run.verdict, TC_ACT_SHOT);
    assert_eq!(run.counted, vec![("drop_snat_ports_exhausted", 1)]);
}

#[test]
fn snat_mode_and_what_dsr_cannot_carry_stay_masqueraded() {
    // The default: no option, masqueraded.
    let mut h = ingress(LbMode::Snat);
    let run = h
        .run(FROM_EXTERNAL, &tcp(client(40_000), 7, true, false, b""))
        .unwrap();
    assert_eq!(run.counted, vec![("dnat_new", 1)]);
    assert_eq!(source(&run.output).0, NODE);

    // A header with options already: no room for one more, masqueraded.
    let mut h = ingress(LbMode::Dsr);
    let run = h
        .run(FROM_EXTERNAL, &tcp_with_ip_options(client(40_001), 7))
        .unwrap();
    assert_eq!(run.counted, vec![("dnat_new", 1)]);
    assert_eq!(source(&run.output).0, NODE);

    // A local endpoint keeps the client address as before: no option.
    let mut h = node(NODE, LbMode::Dsr);
    let key = ServiceKey::scoped(NODE, NODE_PORT, IPPROTO_TCP, SCOPE_EXTERNAL);
    let local = (3, BackendValue::new(LOCAL_POD, 8080, IPPROTO_TCP).local());
    h.add_frontend(
        3,
        key,
        SVC_FLAG_MASQUERADE | SVC_FLAG_HAS_ENDPOINTS,
        &[local],
    )
    .unwrap();
    let run = h
        .run(FROM_EXTERNAL, &tcp(client(40_002), 7, true, false, b""))
        .unwrap();
    assert_eq!(run.counted, vec![("dnat_new", 1)]);
    assert_eq!(
        run.output,
        tcp(
            Tuple {
                src: (CLIENT, 40_002),
                dst: (LOCAL_POD, 8080)
            },
            7,
            true,
            false,
            b""
        )
    );
}

#[test]
fn the_endpoints_node_learns_the_frontend_and_restores_it_on_the_replies() {
    for mode in [LbMode::Dsr, LbMode::Hybrid] {
        let mut ingress = ingress(mode);
        let mut endpoint_node = node(NODE2, mode);
        let sent = ingress
            .run(FROM_EXTERNAL, &tcp(client(40_000), 7, true, false, b""))
            .unwrap()
            .output;
        // At the endpoint's node: learnt, passed on to the pod as it came.
        let run = endpoint_node.run(FROM_EXTERNAL, &sent).unwrap();
        assert_eq!(run.verdict, TC_ACT_OK, "{mode:?}");
        assert_eq!(run.counted, vec![("dsr_frontend_learnt", 1)], "{mode:?}");
        assert_eq!(run.output, sent, "{mode:?}");

        // The pod's SYN-ACK leaves from the frontend, straight to the client.
        let reply = tcp(from_pod(40_000), 99, true, true, b"");
        let run = endpoint_node.run(TO_EXTERNAL, &reply).unwrap();
        assert_eq!(run.counted, vec![("rev_nat", 1)], "{mode:?}");
        assert_eq!(
            run.output,
            tcp(
                Tuple {
                    src: (NODE, NODE_PORT),
                    dst: (CLIENT, 40_000)
                },
                99,
                true,
                true,
                b""
            ),
            "{mode:?}"
        );
    }

    // UDP: every datagram carries the option; learnt once, kept.
    let mut ingress = ingress(LbMode::Dsr);
    let mut endpoint_node = node(NODE2, LbMode::Dsr);
    for _ in 0..2 {
        let sent = ingress
            .run(FROM_EXTERNAL, &udp(client(5_300), b"q"))
            .unwrap()
            .output;
        let run = endpoint_node.run(FROM_EXTERNAL, &sent).unwrap();
        assert_eq!(run.counted, vec![("dsr_frontend_learnt", 1)]);
    }
    let run = endpoint_node
        .run(TO_EXTERNAL, &udp(from_pod(5_300), b"answer"))
        .unwrap();
    assert_eq!(run.counted, vec![("rev_nat", 1)]);
    assert_eq!(
        run.output,
        udp(
            Tuple {
                src: (NODE, NODE_PORT),
                dst: (CLIENT, 5_300)
            },
            b"answer"
        )
    );
}

#[test]
fn an_snat_node_ignores_the_option() {
    let sent = ingress(LbMode::Dsr)
        .run(FROM_EXTERNAL, &tcp(client(40_000), 7, true, false, b""))
        .unwrap()
        .output;
    let mut endpoint_node = node(NODE2, LbMode::Snat);
    let run = endpoint_node.run(FROM_EXTERNAL, &sent).unwrap();
    assert_eq!(run.counted, vec![("pass_not_service", 1)]);
    let reply = tcp(from_pod(40_000), 99, true, true, b"");
    let run = endpoint_node.run(TO_EXTERNAL, &reply).unwrap();
    assert_eq!(run.counted, vec![("pass_not_translated", 1)]);
}

/// In a namespace with routes: XDP and TC both send DSR packets to node2
/// themselves (`XDP_TX`, redirect), the opening ones with the option.
#[test]
fn dsr_packets_are_forwarded_by_xdp_and_by_tc() {
    let ns = FibNamespace::new();
    netns::run_in(ns.name(), || {
        let forwarded = |frame: Vec<u8>| {
            let mut frame = frame;
            frame[0..6].copy_from_slice(&NEXT_HOP_NODE2);
            frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
            frame[14 + 8] -= 1;
            fix_ip_checksum(&mut frame);
            frame
        };
        let mut h = ingress(LbMode::Dsr);
        let syn = tcp(client(40_000), 7, true, false, b"");
        let syn_out = forwarded(with_dsr_option(
            &tcp(to_pod(40_000), 7, true, false, b""),
            (NODE, NODE_PORT),
        ));
        assert_eq!(checksum_errors(&syn_out), Vec::<String>::new());
        // The same SYN through TC after XDP: a new connection on the tuple.
        h.sent_alike(
            &syn,
            &syn_out,
            SentBy {
                xdp: &[
                    ("dnat_new", 1),
                    ("xdp_transmitted", 1),
                    ("dsr_option_added", 1),
                ],
                tc: Some(&[
                    ("dnat_reselected", 1),
                    ("tc_redirected", 1),
                    ("dsr_option_added", 1),
                ]),
            },
        );

        let data = tcp(client(40_000), 8, false, true, b"GET");
        let data_out = forwarded(tcp(to_pod(40_000), 8, false, true, b"GET"));
        h.sent_alike(
            &data,
            &data_out,
            SentBy {
                xdp: &[("dnat_established", 1), ("xdp_transmitted", 1)],
                tc: Some(&[("dnat_established", 1), ("tc_redirected", 1)]),
            },
        );

        // UDP: every datagram, by either path.
        for (i, payload) in [&b"query"[..], b"again"].into_iter().enumerate() {
            let out = forwarded(with_dsr_option(
                &udp(to_pod(5_300), payload),
                (NODE, NODE_PORT),
            ));
            let verdict = if i == 0 {
                "dnat_new"
            } else {
                "dnat_established"
            };
            let xdp_counted = [
                (verdict, 1),
                ("xdp_transmitted", 1),
                ("dsr_option_added", 1),
            ];
            h.sent_alike(
                &udp(client(5_300), payload),
                &out,
                SentBy {
                    xdp: &xdp_counted,
                    tc: None,
                },
            );
        }

        // No route to the endpoint's node: XDP leaves the opening packet
        // untouched to TC, which adds the option and gives it to the stack.
        let mut h = node(NODE, LbMode::Dsr);
        let unrouted = Ipv4Addr::new(10, 244, 9, 11);
        let key = ServiceKey::scoped(NODE, NODE_PORT, IPPROTO_TCP, SCOPE_EXTERNAL);
        let backend = (1, BackendValue::new(unrouted, 8080, IPPROTO_TCP));
        h.add_frontend(
            1,
            key,
            SVC_FLAG_MASQUERADE | SVC_FLAG_HAS_ENDPOINTS,
            &[backend],
        )
        .unwrap();
        let xdp = h.run_xdp(&syn).unwrap();
        assert_eq!(xdp.verdict, XDP_PASS);
        assert_eq!(xdp.counted, vec![("xdp_to_stack", 1)]);
        assert_eq!(xdp.output, syn);
    })
    .expect("run in namespace");
}
