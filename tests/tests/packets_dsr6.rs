//! Direct server return in IPv6 (`--lb-mode dsr|hybrid`) through the real
//! programs (BPF_PROG_TEST_RUN): the ingress node's frames with the
//! frontend in a destination options header, byte for byte, their L4
//! checksums recomputed here from scratch; the endpoint's node learning
//! the frontend from exactly that header and restoring it on the replies;
//! and XDP and TC forwarding it themselves.
use std::net::Ipv6Addr;

use proxy_common::{
    Backend6Value, CT_FLAG_DSR, CT_FLAG_SNAT, CT_FORWARD, Ct6Key, DSR6_OPTION_TYPE, IPPROTO_TCP,
    IPPROTO_UDP, SCOPE_EXTERNAL, SVC_FLAG_HAS_ENDPOINTS, SVC_FLAG_MASQUERADE, Service6Key,
    programs::{FROM_EXTERNAL, TO_EXTERNAL},
    wire_addr6,
};
use vipr::{conntrack::CtTimeouts, datapath::LbMode};
use vipr_tests::{netns, packet::*, packet6::*};

/// The ingress node (the frontend's address) and the endpoint's node
/// (the addresses of `FibNamespace`).
const NODE: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x30, 0, 0, 0, 0, 0, 1);
const NODE2: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x30, 0, 0, 0, 0, 0, 2);
const NODE_PORT: u16 = 30_080;
/// Routed via the namespace's router.
const CLIENT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x64, 0, 0, 0, 0, 7);
/// Routed via node2.
const REMOTE_POD: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 0xb);
const LOCAL_POD: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 0xb);
/// No route at all.
const UNROUTED_POD: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 9, 0, 0, 0, 0, 0xb);
const POD_PORT: u16 = 8080;

/// Frame layout, written out here rather than taken from the programs.
const ETH: usize = 14;
const IPV6: usize = 40;
const PAYLOAD_LEN_AT: usize = ETH + 4;
const NEXT_HEADER_AT: usize = ETH + 6;
const HOP_LIMIT_AT: usize = ETH + 7;
const SRC_AT: usize = ETH + 8;
const DST_AT: usize = ETH + 24;
const L4_AT: usize = ETH + IPV6;
const DEST_OPTIONS: u8 = 60;
/// The DSR header: 24 bytes, length field 2 (8-byte units past the first 8).
const HEADER: usize = 24;
const SENT_HOP_LIMIT: u8 = 64;

fn node(address: Ipv6Addr, mode: LbMode) -> Harness {
    Harness::with_options(|o| {
        o.node_ipv6 = Some(address);
        o.lb_mode = mode;
    })
    .expect("load programs (needs root)")
}

/// The ingress node: NodePort `NODE_PORT` (TCP and UDP) under
/// externalTrafficPolicy Cluster, its one endpoint `pod` (node2's).
fn ingress_to(mode: LbMode, pod: Ipv6Addr) -> Harness {
    let h = node(NODE, mode);
    let mut m = Maps6::open(&h).expect("IPv6 maps");
    for (id, proto) in [(1, IPPROTO_TCP), (2, IPPROTO_UDP)] {
        let key = Service6Key::scoped(NODE, NODE_PORT, proto, SCOPE_EXTERNAL);
        let to = (id, Backend6Value::new(pod, POD_PORT, proto));
        m.add_frontend(id, key, SVC_FLAG_MASQUERADE | SVC_FLAG_HAS_ENDPOINTS, &[to])
            .unwrap();
    }
    h
}

fn ingress(mode: LbMode) -> Harness {
    ingress_to(mode, REMOTE_POD)
}

fn client(port: u16) -> Tuple6 {
    Tuple6 {
        src: (CLIENT, port),
        dst: (NODE, NODE_PORT),
    }
}

fn to_pod(port: u16) -> Tuple6 {
    Tuple6 {
        src: (CLIENT, port),
        dst: (REMOTE_POD, POD_PORT),
    }
}

fn from_pod(port: u16) -> Tuple6 {
    Tuple6 {
        src: (REMOTE_POD, POD_PORT),
        dst: (CLIENT, port),
    }
}

fn from_frontend(port: u16) -> Tuple6 {
    Tuple6 {
        src: (NODE, NODE_PORT),
        dst: (CLIENT, port),
    }
}

/// The 24-byte header as this test expects it: next header, length 2,
/// option 0x1B of 20 bytes (address, port, two zero bytes).
fn dsr_header(next: u8, frontend: (Ipv6Addr, u16), option_type: u8) -> Vec<u8> {
    let mut h = vec![next, 2, option_type, 20];
    h.extend_from_slice(&frontend.0.octets());
    h.extend_from_slice(&frontend.1.to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    assert_eq!(h.len(), HEADER);
    h
}

/// `frame` (no extension headers) with a header of `option_type` inserted
/// after the fixed header, payload length and next header to match: what
/// the ingress node must send, built by hand.
fn with_header_of(frame: &[u8], frontend: (Ipv6Addr, u16), option_type: u8) -> Vec<u8> {
    let next = frame[NEXT_HEADER_AT];
    assert!(next == IPPROTO_TCP || next == IPPROTO_UDP);
    let mut out = frame[..L4_AT].to_vec();
    out.extend(dsr_header(next, frontend, option_type));
    out.extend_from_slice(&frame[L4_AT..]);
    let len = u16::from_be_bytes([out[PAYLOAD_LEN_AT], out[PAYLOAD_LEN_AT + 1]]) + HEADER as u16;
    out[PAYLOAD_LEN_AT..PAYLOAD_LEN_AT + 2].copy_from_slice(&len.to_be_bytes());
    out[NEXT_HEADER_AT] = DEST_OPTIONS;
    out
}

fn with_header(frame: &[u8], frontend: (Ipv6Addr, u16)) -> Vec<u8> {
    with_header_of(frame, frontend, DSR6_OPTION_TYPE)
}

/// Whether the L4 checksum of a frame with exactly one 24-byte extension
/// header (or none) is right, computed here from its bytes: the
/// pseudo-header's upper-layer length and protocol are the L4 segment's,
/// not the IPv6 payload's.
fn l4_checksum_ok(frame: &[u8]) -> bool {
    let (l4_at, proto) = if frame[NEXT_HEADER_AT] == DEST_OPTIONS {
        (L4_AT + HEADER, frame[L4_AT])
    } else {
        (L4_AT, frame[NEXT_HEADER_AT])
    };
    let payload_len = usize::from(u16::from_be_bytes([
        frame[PAYLOAD_LEN_AT],
        frame[PAYLOAD_LEN_AT + 1],
    ]));
    assert_eq!(frame.len(), L4_AT + payload_len, "payload length");
    let l4 = &frame[l4_at..];
    let words = |bytes: &[u8]| -> u64 {
        bytes
            .chunks(2)
            .map(|w| u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
            .sum()
    };
    let mut sum = words(&frame[SRC_AT..L4_AT]) + l4.len() as u64 + u64::from(proto) + words(l4);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

fn source(frame: &[u8]) -> (Ipv6Addr, u16) {
    endpoints6(frame).0
}

fn addr_at(frame: &[u8], at: usize) -> Ipv6Addr {
    let octets: [u8; 16] = frame[at..at + 16].try_into().unwrap();
    Ipv6Addr::from(octets)
}

#[test]
fn a_tcp_syn_keeps_the_client_address_and_carries_the_frontend_later_segments_do_not() {
    let mut h = ingress(LbMode::Dsr);
    let syn = tcp6(client(40_000), 7, true, false, b"");
    let run = h.run(FROM_EXTERNAL, &syn).unwrap();
    assert_eq!(run.verdict, TC_ACT_OK, "no FIB here: on to the stack");
    assert_eq!(run.counted, vec![("dnat_new", 1), ("dsr_option_added", 1)]);
    let out = &run.output;
    // Field by field, then byte for byte.
    assert_eq!(out.len(), syn.len() + HEADER);
    assert_eq!(out[NEXT_HEADER_AT], DEST_OPTIONS);
    assert_eq!(
        u16::from_be_bytes([out[PAYLOAD_LEN_AT], out[PAYLOAD_LEN_AT + 1]]),
        u16::from_be_bytes([syn[PAYLOAD_LEN_AT], syn[PAYLOAD_LEN_AT + 1]]) + HEADER as u16
    );
    assert_eq!(addr_at(out, SRC_AT), CLIENT, "the client's address kept");
    assert_eq!(addr_at(out, DST_AT), REMOTE_POD);
    assert_eq!(
        &out[L4_AT..L4_AT + HEADER],
        dsr_header(IPPROTO_TCP, (NODE, NODE_PORT), 0x1b).as_slice()
    );
    assert!(l4_checksum_ok(out), "TCP checksum");
    assert_eq!(checksum_errors6(out), Vec::<String>::new());
    let expected = with_header(
        &tcp6(to_pod(40_000), 7, true, false, b""),
        (NODE, NODE_PORT),
    );
    assert_eq!(run.output, expected);
    // The checksum is the one the bare translated SYN has: untouched.
    let bare = tcp6(to_pod(40_000), 7, true, false, b"");
    assert_eq!(
        &out[L4_AT + HEADER..],
        &bare[L4_AT..],
        "L4 bytes as translated"
    );

    // The forward entry says DSR: never masqueraded.
    let m = Maps6::open(&h).unwrap();
    let entry = m
        .forward(client(40_000), IPPROTO_TCP)
        .expect("forward entry");
    assert_eq!(entry.flags & CT_FLAG_DSR, CT_FLAG_DSR);
    assert_eq!(entry.flags & CT_FLAG_SNAT, 0);

    // Data segments: translated only, same size.
    let data = tcp6(client(40_000), 8, false, true, b"GET / HTTP/1.1\r\n");
    let run = h.run(FROM_EXTERNAL, &data).unwrap();
    assert_eq!(run.counted, vec![("dnat_established", 1)]);
    assert_eq!(
        run.output,
        tcp6(to_pod(40_000), 8, false, true, b"GET / HTTP/1.1\r\n")
    );

    // A retransmitted SYN carries the header again.
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
    for (i, payload) in [&b"query"[..], b"another", b"odd"].into_iter().enumerate() {
        let run = h.run(FROM_EXTERNAL, &udp6(client(5_300), payload)).unwrap();
        let verdict = if i == 0 {
            "dnat_new"
        } else {
            "dnat_established"
        };
        assert_eq!(run.counted, vec![(verdict, 1), ("dsr_option_added", 1)]);
        assert!(l4_checksum_ok(&run.output), "UDP checksum");
        assert_eq!(checksum_errors6(&run.output), Vec::<String>::new());
        assert_eq!(
            run.output,
            with_header(&udp6(to_pod(5_300), payload), (NODE, NODE_PORT))
        );
    }
}

#[test]
fn hybrid_mode_sends_tcp_by_dsr_and_masquerades_udp() {
    let mut h = ingress(LbMode::Hybrid);
    let run = h
        .run(FROM_EXTERNAL, &tcp6(client(40_000), 7, true, false, b""))
        .unwrap();
    assert_eq!(run.counted, vec![("dnat_new", 1), ("dsr_option_added", 1)]);
    assert_eq!(source(&run.output), (CLIENT, 40_000));
    assert_eq!(run.output[NEXT_HEADER_AT], DEST_OPTIONS);
    let run = h.run(FROM_EXTERNAL, &udp6(client(5_300), b"q")).unwrap();
    assert_eq!(run.counted, vec![("dnat_new", 1)]);
    assert_eq!(source(&run.output).0, NODE, "masqueraded");
    assert_eq!(run.output[NEXT_HEADER_AT], IPPROTO_UDP);
    assert_eq!(run.output.len(), udp6(to_pod(5_300), b"q").len());
}

/// A node with no IPv6 address of its own (a LoadBalancer address routed
/// to it) cannot masquerade an IPv6 flow, but DSR needs no node address.
#[test]
fn without_a_node_ipv6_address_dsr_still_carries_what_masquerade_cannot() {
    let lb = Ipv6Addr::new(0xfd00, 0x40, 0, 0, 0, 0, 0, 0x40);
    let h = Harness::with_options(|o| {
        o.node_ipv6 = None;
        o.lb_mode = LbMode::Hybrid;
    })
    .expect("load programs (needs root)");
    let mut m = Maps6::open(&h).unwrap();
    for (id, proto) in [(1, IPPROTO_TCP), (2, IPPROTO_UDP)] {
        let key = Service6Key::scoped(lb, 80, proto, SCOPE_EXTERNAL);
        let to = (id, Backend6Value::new(REMOTE_POD, POD_PORT, proto));
        m.add_frontend(id, key, SVC_FLAG_MASQUERADE | SVC_FLAG_HAS_ENDPOINTS, &[to])
            .unwrap();
    }
    let mut h = h;
    let to_lb = Tuple6 {
        src: (CLIENT, 40_000),
        dst: (lb, 80),
    };
    let run = h
        .run(FROM_EXTERNAL, &tcp6(to_lb, 7, true, false, b""))
        .unwrap();
    assert_eq!(run.counted, vec![("dnat_new", 1), ("dsr_option_added", 1)]);
    assert_eq!(source(&run.output), (CLIENT, 40_000));
    assert_eq!(addr_at(&run.output, DST_AT), REMOTE_POD);
    assert_eq!(
        &run.output[L4_AT..L4_AT + HEADER],
        dsr_header(IPPROTO_TCP, (lb, 80), DSR6_OPTION_TYPE).as_slice()
    );

    // Hybrid masquerades UDP, which needs the address this node lacks.
    let run = h.run(FROM_EXTERNAL, &udp6(to_lb, b"q")).unwrap();
    assert_eq!(run.verdict, TC_ACT_SHOT);
    assert_eq!(run.counted, vec![("drop_snat_ports_exhausted", 1)]);
}

#[test]
fn snat_mode_and_what_dsr_cannot_carry_stay_masqueraded() {
    // The default: no header, masqueraded.
    let mut h = ingress(LbMode::Snat);
    for request in [
        tcp6(client(40_000), 7, true, false, b""),
        udp6(client(5_300), b"q"),
    ] {
        let run = h.run(FROM_EXTERNAL, &request).unwrap();
        assert_eq!(run.counted, vec![("dnat_new", 1)]);
        assert_eq!(source(&run.output).0, NODE);
        assert_eq!(run.output.len(), request.len());
        assert_eq!(checksum_errors6(&run.output), Vec::<String>::new());
    }

    // Extension headers already: ours must be first and alone; masqueraded.
    let mut h = ingress(LbMode::Dsr);
    let run = h
        .run(FROM_EXTERNAL, &tcp6_with_options(client(40_001), 7))
        .unwrap();
    assert_eq!(run.counted, vec![("dnat_new", 1)]);
    assert_eq!(source(&run.output).0, NODE);

    // A local endpoint keeps the client address as before: no header.
    let h = node(NODE, LbMode::Dsr);
    let mut m = Maps6::open(&h).unwrap();
    let key = Service6Key::scoped(NODE, NODE_PORT, IPPROTO_TCP, SCOPE_EXTERNAL);
    let local = (
        3,
        Backend6Value::new(LOCAL_POD, POD_PORT, IPPROTO_TCP).local(),
    );
    m.add_frontend(
        3,
        key,
        SVC_FLAG_MASQUERADE | SVC_FLAG_HAS_ENDPOINTS,
        &[local],
    )
    .unwrap();
    let mut h = h;
    let run = h
        .run(FROM_EXTERNAL, &tcp6(client(40_002), 7, true, false, b""))
        .unwrap();
    assert_eq!(run.counted, vec![("dnat_new", 1)]);
    let to_local = Tuple6 {
        src: (CLIENT, 40_002),
        dst: (LOCAL_POD, POD_PORT),
    };
    assert_eq!(run.output, tcp6(to_local, 7, true, false, b""));
}

#[test]
fn the_endpoints_node_learns_the_frontend_and_restores_it_on_the_replies() {
    for mode in [LbMode::Dsr, LbMode::Hybrid] {
        let mut ingress = ingress(mode);
        let mut endpoint_node = node(NODE2, mode);
        let sent = ingress
            .run(FROM_EXTERNAL, &tcp6(client(40_000), 7, true, false, b""))
            .unwrap()
            .output;
        // At the endpoint's node: learnt, passed on to the pod as it came.
        let run = endpoint_node.run(FROM_EXTERNAL, &sent).unwrap();
        assert_eq!(run.verdict, TC_ACT_OK, "{mode:?}");
        assert_eq!(run.counted, vec![("dsr_frontend_learnt", 1)], "{mode:?}");
        assert_eq!(run.output, sent, "{mode:?}");
        let m = Maps6::open(&endpoint_node).unwrap();
        let learnt = m.forward(client(40_000), IPPROTO_TCP).expect("learnt");
        assert_eq!(learnt.flags & CT_FLAG_DSR, CT_FLAG_DSR, "{mode:?}");

        // The pod's SYN-ACK leaves from the frontend, straight to the client.
        let reply = tcp6(from_pod(40_000), 99, true, true, b"");
        let run = endpoint_node.run(TO_EXTERNAL, &reply).unwrap();
        assert_eq!(run.counted, vec![("rev_nat", 1)], "{mode:?}");
        assert_eq!(checksum_errors6(&run.output), Vec::<String>::new());
        assert_eq!(
            run.output,
            tcp6(from_frontend(40_000), 99, true, true, b""),
            "{mode:?}"
        );
    }

    // UDP: every datagram carries the header; learnt, kept.
    let mut ingress = ingress(LbMode::Dsr);
    let mut endpoint_node = node(NODE2, LbMode::Dsr);
    for _ in 0..2 {
        let sent = ingress
            .run(FROM_EXTERNAL, &udp6(client(5_300), b"q"))
            .unwrap()
            .output;
        let run = endpoint_node.run(FROM_EXTERNAL, &sent).unwrap();
        assert_eq!(run.counted, vec![("dsr_frontend_learnt", 1)]);
    }
    let run = endpoint_node
        .run(TO_EXTERNAL, &udp6(from_pod(5_300), b"answer"))
        .unwrap();
    assert_eq!(run.counted, vec![("rev_nat", 1)]);
    assert_eq!(checksum_errors6(&run.output), Vec::<String>::new());
    assert_eq!(run.output, udp6(from_frontend(5_300), b"answer"));
}

/// Only exactly our header teaches a node anything; an snat node ignores
/// even that.
#[test]
fn other_destination_options_and_snat_nodes_learn_nothing() {
    let syn = tcp6(to_pod(40_000), 7, true, false, b"");
    let frontend = (NODE, NODE_PORT);
    let ours = with_header(&syn, frontend);
    let mut not_ours = vec![
        // Another option type, same length.
        ("unknown option", with_header_of(&syn, frontend, 0x1c)),
        // An 8-byte header of padding only.
        ("padding header", tcp6_behind_headers(to_pod(40_000), 7, 1)),
        // Ours behind a hop-by-hop header: not the first.
        ("behind hop-by-hop", {
            let mut f = ours[..L4_AT].to_vec();
            f.extend_from_slice(&[DEST_OPTIONS, 0, 1, 4, 0, 0, 0, 0]);
            f.extend_from_slice(&ours[L4_AT..]);
            f[NEXT_HEADER_AT] = 0;
            let len = u16::from_be_bytes([f[PAYLOAD_LEN_AT], f[PAYLOAD_LEN_AT + 1]]) + 8;
            f[PAYLOAD_LEN_AT..PAYLOAD_LEN_AT + 2].copy_from_slice(&len.to_be_bytes());
            f
        }),
    ];
    // Our exact option, in a hop-by-hop header of the same 24 bytes.
    let mut hop_by_hop = ours.clone();
    hop_by_hop[NEXT_HEADER_AT] = 0;
    not_ours.push(("in a hop-by-hop header", hop_by_hop));
    // Our option with another option length (the header still 24 bytes).
    let mut wrong_len = ours.clone();
    wrong_len[L4_AT + 3] = 18;
    not_ours.push(("option length 18", wrong_len));
    let mut endpoint_node = node(NODE2, LbMode::Dsr);
    for (what, frame) in &not_ours {
        let run = endpoint_node.run(FROM_EXTERNAL, frame).unwrap();
        assert_eq!(run.verdict, TC_ACT_OK, "{what}");
        assert_eq!(run.counted, vec![("pass_not_service", 1)], "{what}");
        assert_eq!(&run.output, frame, "{what}");
    }
    let reply = tcp6(from_pod(40_000), 99, true, true, b"");
    let run = endpoint_node.run(TO_EXTERNAL, &reply).unwrap();
    assert_eq!(run.counted, vec![("pass_not_translated", 1)]);
    assert_eq!(run.output, reply);

    // Ours, at a node in snat mode.
    let mut snat_node = node(NODE2, LbMode::Snat);
    let run = snat_node.run(FROM_EXTERNAL, &ours).unwrap();
    assert_eq!(run.counted, vec![("pass_not_service", 1)]);
    let run = snat_node.run(TO_EXTERNAL, &reply).unwrap();
    assert_eq!(run.counted, vec![("pass_not_translated", 1)]);

    // And ours, at a node in DSR mode: learnt.
    let run = endpoint_node.run(FROM_EXTERNAL, &ours).unwrap();
    assert_eq!(run.counted, vec![("dsr_frontend_learnt", 1)]);
}

/// In a namespace with routes: XDP and TC both send DSR packets to node2
/// themselves (`XDP_TX`, redirect), the opening ones with the header.
#[test]
fn dsr6_packets_are_forwarded_by_xdp_and_by_tc() {
    let ns = FibNamespace::new();
    netns::run_in(ns.name(), || {
        let forwarded = |frame: Vec<u8>| {
            let mut frame = frame;
            frame[0..6].copy_from_slice(&NEXT_HOP_NODE2);
            frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
            assert_eq!(frame[HOP_LIMIT_AT], SENT_HOP_LIMIT);
            frame[HOP_LIMIT_AT] -= 1;
            frame
        };
        let mut h = ingress(LbMode::Dsr);
        let syn = tcp6(client(40_000), 7, true, false, b"");
        let syn_out = forwarded(with_header(
            &tcp6(to_pod(40_000), 7, true, false, b""),
            (NODE, NODE_PORT),
        ));
        assert!(l4_checksum_ok(&syn_out), "TCP checksum");
        assert_eq!(checksum_errors6(&syn_out), Vec::<String>::new());
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

        let data = tcp6(client(40_000), 8, false, true, b"GET");
        let data_out = forwarded(tcp6(to_pod(40_000), 8, false, true, b"GET"));
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
            let out = forwarded(with_header(
                &udp6(to_pod(5_300), payload),
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
                &udp6(client(5_300), payload),
                &out,
                SentBy {
                    xdp: &xdp_counted,
                    tc: None,
                },
            );
        }

        // No route to the endpoint's node: XDP leaves the opening packet
        // untouched to TC, which adds the header and gives it to the stack.
        let mut h = ingress_to(LbMode::Dsr, UNROUTED_POD);
        let xdp = h.run_xdp(&syn).unwrap();
        assert_eq!(xdp.verdict, XDP_PASS);
        assert_eq!(xdp.counted, vec![("xdp_to_stack", 1)]);
        assert_eq!(xdp.output, syn);
        // (XDP recorded the flow: a SYN on it chooses again.)
        let run = h.run_on_ext0(FROM_EXTERNAL, &syn).unwrap();
        assert_eq!(run.verdict, TC_ACT_OK);
        assert_eq!(
            run.counted,
            vec![("dnat_reselected", 1), ("dsr_option_added", 1)]
        );
        let unrouted = Tuple6 {
            src: (CLIENT, 40_000),
            dst: (UNROUTED_POD, POD_PORT),
        };
        assert_eq!(
            run.output,
            with_header(&tcp6(unrouted, 7, true, false, b""), (NODE, NODE_PORT))
        );
    })
    .expect("run in namespace");
}

/// The ingress node never sees a DSR flow's replies: its entries would
/// stay "opening" (60 s of silence) for the flow's whole life. The
/// client's ACK that completes the handshake marks the forward entry, and
/// the sweep gives the flow the established timeout (IPv4: `packets_dsr`).
#[test]
fn a_dsr_flow_counts_as_established_once_the_clients_ack_passes() {
    let timeouts = CtTimeouts::default();
    // IPv6.
    let mut h = ingress(LbMode::Dsr);
    let silence6 = |h: &Harness| {
        let m = Maps6::open(h).unwrap();
        let key = Ct6Key {
            src_addr: wire_addr6(CLIENT),
            dst_addr: wire_addr6(NODE),
            src_port: 40_000u16.to_be(),
            dst_port: NODE_PORT.to_be(),
            proto: IPPROTO_TCP,
            direction: CT_FORWARD,
            _pad: [0; 2],
        };
        let forward = m.conntrack.get(&key, 0).expect("forward entry");
        let reverse = m.conntrack.get(&key.partner(&forward), 0).ok();
        timeouts.allowed_silence(&key, &forward, reverse.as_ref())
    };
    h.run(FROM_EXTERNAL, &tcp6(client(40_000), 7, true, false, b""))
        .unwrap();
    assert_eq!(silence6(&h), timeouts.tcp_opening, "after the SYN");
    // A retransmitted SYN is no handshake.
    h.run(FROM_EXTERNAL, &tcp6(client(40_000), 7, true, false, b""))
        .unwrap();
    assert_eq!(silence6(&h), timeouts.tcp_opening, "after a second SYN");
    h.run(FROM_EXTERNAL, &tcp6(client(40_000), 8, false, true, b""))
        .unwrap();
    assert_eq!(silence6(&h), timeouts.tcp_established, "after the ACK");

    // UDP has no handshake: it stays as it was.
    let mut h = ingress(LbMode::Dsr);
    for _ in 0..2 {
        h.run(FROM_EXTERNAL, &udp6(client(5_300), b"q")).unwrap();
    }
    let m = Maps6::open(&h).unwrap();
    let udp_key = Ct6Key {
        src_addr: wire_addr6(CLIENT),
        dst_addr: wire_addr6(NODE),
        src_port: 5_300u16.to_be(),
        dst_port: NODE_PORT.to_be(),
        proto: IPPROTO_UDP,
        direction: CT_FORWARD,
        _pad: [0; 2],
    };
    let forward = m.conntrack.get(&udp_key, 0).expect("UDP forward entry");
    let reverse = m.conntrack.get(&udp_key.partner(&forward), 0).ok();
    assert_eq!(
        timeouts.allowed_silence(&udp_key, &forward, reverse.as_ref()),
        timeouts.udp
    );
}
