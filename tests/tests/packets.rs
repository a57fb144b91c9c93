//! The compiled kernel programs on crafted packets, through BPF_PROG_TEST_RUN.
//! Needs root (CAP_BPF); run through `cargo xtask test`.
use std::net::Ipv4Addr;

use etherparse::{Icmpv4Type, Ipv4Header, SlicedPacket, TransportSlice};
use proxy_common::{
    IPPROTO_TCP, IPPROTO_UDP,
    programs::{FROM_POD, TO_POD},
};
use vipr::datapath::ServiceMaps;
use vipr::plan::MapOp;
use vipr_tests::packet::*;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 100);
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 11);

fn to_vip(port: u16) -> Tuple {
    Tuple {
        src: (CLIENT, 40_000),
        dst: (VIP, port),
    }
}

/// VIP:80/tcp and VIP:53/udp → POD_A; EMPTY_VIP:80/tcp and :53/udp with no backends.
fn harness() -> Harness {
    let mut h = Harness::new().expect("load programs (needs root)");
    h.add_service(1, (VIP, 80), IPPROTO_TCP, &[(1, POD_A, 8080)])
        .unwrap();
    h.add_service(2, (VIP, 53), IPPROTO_UDP, &[(2, POD_A, 5353)])
        .unwrap();
    h.add_service(3, (EMPTY_VIP, 80), IPPROTO_TCP, &[]).unwrap();
    h.add_service(4, (EMPTY_VIP, 53), IPPROTO_UDP, &[]).unwrap();
    h
}

enum Expect {
    Unchanged,
    Exactly(Vec<u8>),
}

struct Case {
    name: &'static str,
    program: &'static str,
    input: Vec<u8>,
    verdict: i32,
    output: Expect,
    counted: &'static [(&'static str, u64)],
}

fn check(h: &mut Harness, case: Case) {
    let run = h.run(case.program, &case.input).unwrap();
    assert_eq!(run.verdict, case.verdict, "{}: verdict", case.name);
    assert_eq!(run.counted, case.counted, "{}: counters", case.name);
    match case.output {
        Expect::Unchanged => assert_eq!(run.output, case.input, "{}: output", case.name),
        Expect::Exactly(expected) => {
            assert_eq!(run.output, expected, "{}: output", case.name);
            assert_eq!(
                checksum_errors(&run.output),
                Vec::<String>::new(),
                "{}",
                case.name
            );
        }
    }
}

#[test]
fn forward_reply_and_passthrough_table() {
    let mut h = harness();
    let dnat = |t: Tuple, to: (Ipv4Addr, u16)| Tuple { dst: to, ..t };
    let cases = vec![
        Case {
            name: "tcp syn to a service is DNATed to its backend",
            program: FROM_POD,
            input: tcp(to_vip(80), 7, true, false, b""),
            verdict: TC_ACT_OK,
            output: Expect::Exactly(tcp(dnat(to_vip(80), (POD_A, 8080)), 7, true, false, b"")),
            counted: &[("dnat_new", 1)],
        },
        Case {
            name: "later packets of the flow follow conntrack",
            program: FROM_POD,
            input: tcp(to_vip(80), 8, false, true, b"GET /"),
            verdict: TC_ACT_OK,
            output: Expect::Exactly(tcp(
                dnat(to_vip(80), (POD_A, 8080)),
                8,
                false,
                true,
                b"GET /",
            )),
            counted: &[("dnat_established", 1)],
        },
        Case {
            name: "the backend's reply gets the service address back",
            program: TO_POD,
            input: tcp(
                Tuple {
                    src: (POD_A, 8080),
                    dst: (CLIENT, 40_000),
                },
                99,
                true,
                true,
                b"",
            ),
            verdict: TC_ACT_OK,
            output: Expect::Exactly(tcp(
                Tuple {
                    src: (VIP, 80),
                    dst: (CLIENT, 40_000),
                },
                99,
                true,
                true,
                b"",
            )),
            counted: &[("rev_nat", 1)],
        },
        Case {
            name: "udp to a service is DNATed with a valid checksum",
            program: FROM_POD,
            input: udp(to_vip(53), b"query"),
            verdict: TC_ACT_OK,
            output: Expect::Exactly(udp(dnat(to_vip(53), (POD_A, 5353)), b"query")),
            counted: &[("dnat_new", 1)],
        },
        Case {
            name: "a udp checksum of zero stays zero",
            program: FROM_POD,
            input: udp_without_checksum(
                Tuple {
                    src: (CLIENT, 40_001),
                    ..to_vip(53)
                },
                b"q",
            ),
            verdict: TC_ACT_OK,
            output: Expect::Exactly(udp_without_checksum(
                Tuple {
                    src: (CLIENT, 40_001),
                    dst: (POD_A, 5353),
                },
                b"q",
            )),
            counted: &[("dnat_new", 1)],
        },
        Case {
            name: "traffic to a non-service address passes untouched",
            program: FROM_POD,
            input: tcp(
                Tuple {
                    src: (CLIENT, 40_000),
                    dst: (POD_B, 8080),
                },
                1,
                true,
                false,
                b"",
            ),
            verdict: TC_ACT_OK,
            output: Expect::Unchanged,
            counted: &[("pass_not_service", 1)],
        },
        Case {
            name: "a service IP on another port is not a service",
            program: FROM_POD,
            input: tcp(to_vip(81), 1, true, false, b""),
            verdict: TC_ACT_OK,
            output: Expect::Unchanged,
            counted: &[("pass_not_service", 1)],
        },
        Case {
            name: "replies of untranslated flows pass the egress program",
            program: TO_POD,
            input: tcp(
                Tuple {
                    src: (POD_B, 8080),
                    dst: (CLIENT, 40_000),
                },
                1,
                true,
                true,
                b"",
            ),
            verdict: TC_ACT_OK,
            output: Expect::Unchanged,
            counted: &[("pass_not_translated", 1)],
        },
        Case {
            name: "IPv4 options do not hide the ports",
            program: FROM_POD,
            input: tcp_with_ip_options(
                Tuple {
                    src: (CLIENT, 40_002),
                    ..to_vip(80)
                },
                5,
            ),
            verdict: TC_ACT_OK,
            output: Expect::Exactly(tcp_with_ip_options(
                Tuple {
                    src: (CLIENT, 40_002),
                    dst: (POD_A, 8080),
                },
                5,
            )),
            counted: &[("dnat_new", 1)],
        },
        Case {
            name: "fragments pass untouched",
            program: FROM_POD,
            input: udp_first_fragment(to_vip(53)),
            verdict: TC_ACT_OK,
            output: Expect::Unchanged,
            counted: &[("pass_fragment", 1)],
        },
        Case {
            name: "non-IP frames pass",
            program: FROM_POD,
            input: arp(),
            verdict: TC_ACT_OK,
            output: Expect::Unchanged,
            counted: &[("pass_not_ipv4", 1)],
        },
        Case {
            name: "ICMP to a service IP passes",
            program: FROM_POD,
            input: icmp_echo(CLIENT, VIP),
            verdict: TC_ACT_OK,
            output: Expect::Unchanged,
            counted: &[("pass_other_protocol", 1)],
        },
    ];
    for case in cases {
        check(&mut h, case);
    }
}

#[test]
fn malformed_packets_are_dropped_and_counted() {
    let mut h = harness();
    let full = tcp(to_vip(80), 1, true, false, b"");
    let mut bad_ihl = full.clone();
    bad_ihl[14] = 0x44;
    fix_ip_checksum(&mut bad_ihl);
    let mut bad_version = full.clone();
    bad_version[14] = 0x65;
    let cases = [
        // (A frame cut inside the IPv4 header cannot be tested here:
        // BPF_PROG_TEST_RUN itself refuses it with EINVAL.)
        (
            "tcp header cut short",
            full[..14 + 20 + 10].to_vec(),
            "drop_truncated",
        ),
        (
            "udp header cut short",
            udp(to_vip(53), b"")[..14 + 20 + 4].to_vec(),
            "drop_truncated",
        ),
        ("ihl below 5", bad_ihl, "drop_bad_ip_header"),
        (
            "version 6 in an IPv4 frame",
            bad_version,
            "drop_bad_ip_header",
        ),
    ];
    for (name, input, counter) in cases {
        let run = h.run(FROM_POD, &input).unwrap();
        assert_eq!(run.verdict, TC_ACT_SHOT, "{name}");
        assert_eq!(run.counted, vec![(counter, 1)], "{name}");
    }
}

#[test]
fn tcp_to_a_service_without_endpoints_gets_a_reset() {
    let mut h = harness();
    let syn = tcp(
        Tuple {
            src: (CLIENT, 40_000),
            dst: (EMPTY_VIP, 80),
        },
        1000,
        true,
        false,
        b"",
    );
    let run = h.run(FROM_POD, &syn).unwrap();
    assert_eq!(run.verdict, TC_ACT_REDIRECT);
    assert_eq!(run.counted, vec![("reject_tcp_rst", 1)]);
    assert_eq!(checksum_errors(&run.output), Vec::<String>::new());
    assert_eq!(&run.output[0..6], &CLIENT_MAC, "sent back to the client");
    let packet = SlicedPacket::from_ethernet(&run.output).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = packet.net else {
        panic!("not ipv4")
    };
    assert_eq!(ip.header().source_addr(), EMPTY_VIP);
    assert_eq!(ip.header().destination_addr(), CLIENT);
    let Some(TransportSlice::Tcp(tcp)) = packet.transport else {
        panic!("not tcp")
    };
    assert!(tcp.rst() && tcp.ack(), "RST|ACK for a segment without ACK");
    assert_eq!((tcp.source_port(), tcp.destination_port()), (80, 40_000));
    assert_eq!(tcp.acknowledgment_number(), 1001, "acknowledges the SYN");
}

#[test]
fn udp_to_a_service_without_endpoints_gets_port_unreachable() {
    let mut h = harness();
    for (name, input) in [
        (
            "plain",
            udp(
                Tuple {
                    src: (CLIENT, 40_000),
                    dst: (EMPTY_VIP, 53),
                },
                b"query",
            ),
        ),
        ("with options", {
            // Same datagram behind a 24-byte IP header.
            let plain = udp(
                Tuple {
                    src: (CLIENT, 40_000),
                    dst: (EMPTY_VIP, 53),
                },
                b"query",
            );
            let mut f = plain[..14].to_vec();
            let mut ip = plain[14..34].to_vec();
            ip[0] = 0x46;
            let total = u16::from_be_bytes([ip[2], ip[3]]) + 4;
            ip[2..4].copy_from_slice(&total.to_be_bytes());
            f.extend_from_slice(&ip);
            f.extend_from_slice(&[1, 1, 1, 1]);
            f.extend_from_slice(&plain[34..]);
            fix_ip_checksum(&mut f);
            f
        }),
    ] {
        let run = h.run(FROM_POD, &input).unwrap();
        assert_eq!(run.verdict, TC_ACT_REDIRECT, "{name}");
        assert_eq!(run.counted, vec![("reject_icmp_unreachable", 1)], "{name}");
        assert_eq!(checksum_errors(&run.output), Vec::<String>::new(), "{name}");
        let packet = SlicedPacket::from_ethernet(&run.output).unwrap();
        let Some(TransportSlice::Icmpv4(icmp)) = packet.transport else {
            panic!("{name}: not icmp")
        };
        assert!(
            matches!(
                icmp.icmp_type(),
                Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Port)
            ),
            "{name}: {:?}",
            icmp.icmp_type()
        );
        // The quote names the original flow, so the client's socket gets the error.
        let (quoted, rest) = Ipv4Header::from_slice(icmp.payload()).unwrap();
        assert_eq!(Ipv4Addr::from(quoted.source), CLIENT, "{name}");
        assert_eq!(Ipv4Addr::from(quoted.destination), EMPTY_VIP, "{name}");
        assert_eq!(&rest[0..4], &[0x9c, 0x40, 0, 53], "{name}: quoted ports");
    }
}

#[test]
fn new_syn_on_a_reused_tuple_chooses_again_and_established_tcp_keeps_its_endpoint() {
    let mut h = harness();
    let t = to_vip(80);
    h.run(FROM_POD, &tcp(t, 1, true, false, b"")).unwrap();
    let again = h.run(FROM_POD, &tcp(t, 500, true, false, b"")).unwrap();
    assert_eq!(again.counted, vec![("dnat_reselected", 1)]);

    // The endpoint leaves the Service (its pod still answering) and another
    // takes its slot: the established connection stays, as with kube-proxy.
    replace_endpoint(&mut h, 1, (5, POD_B, 8080, IPPROTO_TCP));
    let kept = h.run(FROM_POD, &tcp(t, 2, false, true, b"x")).unwrap();
    assert_eq!(kept.counted, vec![("dnat_established", 1)]);
    let to_old = Tuple {
        dst: (POD_A, 8080),
        ..t
    };
    assert_eq!(kept.output, tcp(to_old, 2, false, true, b"x"));
    // A new connection on the same tuple goes to the endpoint in the slot.
    let fresh = h.run(FROM_POD, &tcp(t, 900, true, false, b"")).unwrap();
    assert_eq!(fresh.counted, vec![("dnat_reselected", 1)]);
    let to_new = Tuple {
        dst: (POD_B, 8080),
        ..t
    };
    assert_eq!(fresh.output, tcp(to_new, 900, true, false, b""));
}

/// Slot 0 points at endpoint `new` instead, and endpoint `old` is gone.
fn replace_endpoint(h: &mut Harness, old: u32, new: (u32, Ipv4Addr, u16, u8)) {
    point_slot_at(h, new);
    h.maps.apply(&MapOp::DeleteBackend(old)).unwrap();
}

/// Slot 0 of the TCP (service 1) or UDP (service 2) frontend points at a new endpoint.
fn point_slot_at(h: &mut Harness, (id, ip, port, proto): (u32, Ipv4Addr, u16, u8)) {
    let service_id = if proto == IPPROTO_TCP { 1 } else { 2 };
    h.maps
        .apply(&MapOp::UpsertBackend(
            id,
            proxy_common::BackendValue::new(ip, port, proto),
        ))
        .unwrap();
    h.maps
        .apply(&MapOp::UpsertSlot(
            proxy_common::SlotKey {
                service_id,
                slot: 0,
            },
            id,
        ))
        .unwrap();
}

#[test]
fn udp_flows_move_off_an_endpoint_that_left_or_stopped_serving() {
    let mut h = harness();
    let t = to_vip(53);
    let at = |ip| Tuple {
        dst: (ip, 5353),
        ..t
    };
    assert_eq!(
        h.run(FROM_POD, &udp(t, b"q")).unwrap().output,
        udp(at(POD_A), b"q")
    );
    // Still serving while terminating: the flow stays.
    h.maps
        .apply(&MapOp::UpsertBackend(
            2,
            proxy_common::BackendValue::new(POD_A, 5353, IPPROTO_UDP),
        ))
        .unwrap();
    let stays = h.run(FROM_POD, &udp(t, b"q")).unwrap();
    assert_eq!(stays.counted, vec![("dnat_established", 1)]);
    // No longer serving: the next datagram goes to a live endpoint.
    point_slot_at(&mut h, (6, POD_B, 5353, IPPROTO_UDP));
    h.maps
        .apply(&MapOp::UpsertBackend(
            2,
            proxy_common::BackendValue::new(POD_A, 5353, IPPROTO_UDP).not_serving(),
        ))
        .unwrap();
    let moved = h.run(FROM_POD, &udp(t, b"q")).unwrap();
    assert_eq!(moved.counted, vec![("dnat_reselected", 1)]);
    assert_eq!(moved.output, udp(at(POD_B), b"q"));
    // Gone altogether: the same.
    h.run(FROM_POD, &udp(t, b"q")).unwrap();
    replace_endpoint(&mut h, 6, (7, POD_A, 5353, IPPROTO_UDP));
    let back = h.run(FROM_POD, &udp(t, b"q")).unwrap();
    assert_eq!(back.counted, vec![("dnat_reselected", 1)]);
    assert_eq!(back.output, udp(at(POD_A), b"q"));
}

#[test]
fn flows_spread_over_every_backend() {
    let mut h = Harness::new().unwrap();
    let backends: Vec<(u32, Ipv4Addr, u16)> = (1..=3)
        .map(|i| (i, Ipv4Addr::new(10, 244, 1, 10 + i as u8), 8080))
        .collect();
    h.add_service(1, (VIP, 80), IPPROTO_TCP, &backends).unwrap();
    let mut hits = [0usize; 3];
    for port in 0..300u16 {
        let run = h
            .run(
                FROM_POD,
                &tcp(
                    Tuple {
                        src: (CLIENT, 30_000 + port),
                        dst: (VIP, 80),
                    },
                    1,
                    true,
                    false,
                    b"",
                ),
            )
            .unwrap();
        let chosen = run.output[14 + 19];
        hits[(chosen - 11) as usize] += 1;
    }
    for (i, n) in hits.iter().enumerate() {
        assert!(*n > 50, "backend {i} got {n} of 300 flows: {hits:?}");
    }
}

#[test]
fn a_pod_reaching_its_own_service_gets_a_hairpin_source_and_its_reply_is_restored() {
    let mut h = harness();
    // VIP:80 has POD_A as its only backend; POD_A itself is the client.
    let own = Tuple {
        src: (POD_A, 41_000),
        dst: (VIP, 80),
    };
    let run = h.run(FROM_POD, &tcp(own, 3, true, false, b"")).unwrap();
    assert_eq!(run.counted, vec![("dnat_new", 1)]);
    assert_eq!(checksum_errors(&run.output), Vec::<String>::new());
    let ip = &run.output[14..];
    let hairpin = Ipv4Addr::from(proxy_common::HAIRPIN_IPV4);
    assert_eq!(
        Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        hairpin,
        "source is the hairpin address"
    );
    let port = u16::from_be_bytes([ip[20], ip[21]]);
    assert_eq!(
        run.output,
        tcp(
            Tuple {
                src: (hairpin, port),
                dst: (POD_A, 8080)
            },
            3,
            true,
            false,
            b""
        )
    );

    // The pod answers the hairpin address; its reply comes back out of the pod.
    let reply = tcp(
        Tuple {
            src: (POD_A, 8080),
            dst: (hairpin, port),
        },
        9,
        true,
        true,
        b"",
    );
    let run = h.run(FROM_POD, &reply).unwrap();
    assert_eq!(run.counted, vec![("rev_snat", 1)]);
    assert_eq!(
        run.output,
        tcp(
            Tuple {
                src: (VIP, 80),
                dst: (POD_A, 41_000)
            },
            9,
            true,
            true,
            b""
        )
    );

    // Other pods reaching the same service keep their own address.
    let other = Tuple {
        src: (CLIENT, 41_000),
        dst: (VIP, 80),
    };
    let run = h.run(FROM_POD, &tcp(other, 1, true, false, b"")).unwrap();
    assert_eq!(
        run.output,
        tcp(
            Tuple {
                dst: (POD_A, 8080),
                ..other
            },
            1,
            true,
            false,
            b""
        )
    );
}

#[test]
fn a_deleted_service_drains_its_established_flows_and_passes_new_ones() {
    let mut h = harness();
    let t = to_vip(80);
    h.run(FROM_POD, &tcp(t, 1, true, false, b"")).unwrap();
    // The Service is deleted: the agent leaves it draining, without endpoints.
    h.add_frontend(
        1,
        proxy_common::ServiceKey::new(VIP, 80, IPPROTO_TCP),
        proxy_common::SVC_FLAG_DRAINING,
        &[],
    )
    .unwrap();
    let going_on = h.run(FROM_POD, &tcp(t, 2, false, true, b"x")).unwrap();
    assert_eq!(going_on.counted, vec![("dnat_established", 1)]);
    let to_pod = Tuple {
        dst: (POD_A, 8080),
        ..t
    };
    assert_eq!(going_on.output, tcp(to_pod, 2, false, true, b"x"));
    // A new connection to the address passes untouched, as to any address.
    let other = Tuple {
        src: (CLIENT, 40_001),
        ..t
    };
    let syn = tcp(other, 1, true, false, b"");
    let new = h.run(FROM_POD, &syn).unwrap();
    assert_eq!(new.counted, vec![("pass_not_service", 1)]);
    assert_eq!(new.output, syn);
}

#[test]
fn a_rst_to_a_service_without_endpoints_is_dropped_not_answered() {
    let mut h = harness();
    let t = Tuple {
        src: (CLIENT, 40_000),
        dst: (EMPTY_VIP, 80),
    };
    let run = h.run(FROM_POD, &tcp_closing(t, 5, true)).unwrap();
    assert_eq!(run.verdict, TC_ACT_SHOT);
    assert_eq!(run.counted, [("drop_rst_not_refused", 1)]);
    // Anything else still gets its RST.
    let run = h.run(FROM_POD, &tcp(t, 5, true, false, b"")).unwrap();
    assert_eq!(run.counted, [("reject_tcp_rst", 1)]);
}
