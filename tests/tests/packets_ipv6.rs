//! IPv6 ClusterIP frontends on the pod path, through the compiled programs
//! (BPF_PROG_TEST_RUN). Needs root (CAP_BPF); run through `cargo xtask test`.
use std::net::Ipv6Addr;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use proxy_common::{
    Backend6Value, IPPROTO_TCP, IPPROTO_UDP, SVC_FLAG_AFFINITY, SVC_FLAG_SOURCE_RANGES,
    Service6Key,
    programs::{FROM_POD, TO_POD},
};
use vipr_tests::packet::*;
use vipr_tests::packet6::*;

const VIP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0xa);
const EMPTY_VIP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x14);
const RANGED_VIP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x1e);
const STICKY_VIP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x28);
const CLIENT: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 0x64);
const POD_A: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 0xb);
const ELSEWHERE: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 9, 0, 0, 0, 0, 0x1);

fn to(dst: Ipv6Addr, port: u16) -> Tuple6 {
    Tuple6 {
        src: (CLIENT, 40_000),
        dst: (dst, port),
    }
}

fn dnat(t: Tuple6, to: (Ipv6Addr, u16)) -> Tuple6 {
    Tuple6 { dst: to, ..t }
}

fn reply(t: Tuple6, from: (Ipv6Addr, u16)) -> Tuple6 {
    Tuple6 {
        src: from,
        dst: t.src,
    }
}

/// VIP:80/tcp and VIP:53/udp → POD_A; EMPTY_VIP:80/tcp and :53/udp without
/// endpoints; RANGED_VIP:80 with source ranges; STICKY_VIP:80 with affinity.
fn harness() -> (Harness, Maps6) {
    let h = Harness::new().expect("load programs (needs root)");
    let mut m = Maps6::open(&h).expect("open the IPv6 maps");
    let tcp_a = Backend6Value::new(POD_A, 8080, IPPROTO_TCP);
    let udp_a = Backend6Value::new(POD_A, 5353, IPPROTO_UDP);
    m.add_frontend(
        11,
        Service6Key::new(VIP, 80, IPPROTO_TCP),
        0,
        &[(11, tcp_a)],
    )
    .unwrap();
    m.add_frontend(
        12,
        Service6Key::new(VIP, 53, IPPROTO_UDP),
        0,
        &[(12, udp_a)],
    )
    .unwrap();
    m.add_frontend(13, Service6Key::new(EMPTY_VIP, 80, IPPROTO_TCP), 0, &[])
        .unwrap();
    m.add_frontend(14, Service6Key::new(EMPTY_VIP, 53, IPPROTO_UDP), 0, &[])
        .unwrap();
    m.add_frontend(
        15,
        Service6Key::new(RANGED_VIP, 80, IPPROTO_TCP),
        SVC_FLAG_SOURCE_RANGES,
        &[(11, tcp_a)],
    )
    .unwrap();
    m.add_frontend(
        16,
        Service6Key::new(STICKY_VIP, 80, IPPROTO_TCP),
        SVC_FLAG_AFFINITY,
        &[(11, tcp_a)],
    )
    .unwrap();
    (h, m)
}

/// Runs `input` and checks verdict, counters and the exact output (with
/// its checksum recomputed from scratch).
fn expect(
    h: &mut Harness,
    program: &'static str,
    input: &[u8],
    verdict: i32,
    counted: &[(&str, u64)],
    output: &[u8],
) {
    let run = h.run(program, input).unwrap();
    assert_eq!(run.verdict, verdict, "verdict");
    assert_eq!(run.counted, counted, "counters");
    assert_eq!(run.output, output, "output");
}

fn expect_translated(
    h: &mut Harness,
    program: &'static str,
    input: &[u8],
    counted: &[(&str, u64)],
    output: &[u8],
) {
    expect(h, program, input, TC_ACT_OK, counted, output);
    assert_eq!(checksum_errors6(output), Vec::<String>::new());
}

fn expect_passed(h: &mut Harness, program: &'static str, input: &[u8], counter: &str) {
    expect(h, program, input, TC_ACT_OK, &[(counter, 1)], input);
}

#[test]
fn tcp_to_an_ipv6_cluster_ip_is_translated_followed_and_its_reply_restored() {
    let (mut h, m) = harness();
    let t = to(VIP, 80);
    let backend = (POD_A, 8080);
    let syn = tcp6(t, 1000, true, false, b"");
    expect_translated(
        &mut h,
        FROM_POD,
        &syn,
        &[("dnat_new", 1)],
        &tcp6(dnat(t, backend), 1000, true, false, b""),
    );
    let entry = m.forward(t, IPPROTO_TCP).expect("forward entry");
    assert_eq!(entry.backend_id, 11);

    let ack = tcp6(t, 1001, false, true, b"hello");
    expect_translated(
        &mut h,
        FROM_POD,
        &ack,
        &[("dnat_established", 1)],
        &tcp6(dnat(t, backend), 1001, false, true, b"hello"),
    );

    let from_backend = reply(t, backend);
    expect_translated(
        &mut h,
        TO_POD,
        &tcp6(from_backend, 5000, true, true, b""),
        &[("rev_nat", 1)],
        &tcp6(reply(t, t.dst), 5000, true, true, b""),
    );
}

/// A payload word that makes the UDP checksum of `t` with this payload
/// compute to 0 (sent as 0xffff): the case IPv6 must never put on the wire.
fn payload_summing_to_zero(t: Tuple6) -> [u8; 2] {
    (0..=u16::MAX)
        .map(u16::to_be_bytes)
        .find(|word| {
            let frame = udp6(t, word);
            // etherparse writes 0xffff for a computed 0.
            u16::from_be_bytes([frame[L4_OFF + 6], frame[L4_OFF + 7]]) == 0xffff
        })
        .expect("some payload word sums to zero")
}

#[test]
fn udp_to_an_ipv6_cluster_ip_is_translated_with_a_checksum_never_zero() {
    let (mut h, _m) = harness();
    let t = to(VIP, 53);
    let backend = (POD_A, 5353);
    for payload in [
        b"query".to_vec(),
        payload_summing_to_zero(dnat(t, backend)).to_vec(),
    ] {
        let run = h.run(FROM_POD, &udp6(t, &payload)).unwrap();
        assert_eq!(run.verdict, TC_ACT_OK);
        assert_eq!(checksum_errors6(&run.output), Vec::<String>::new());
        assert_eq!(endpoints6(&run.output), (t.src, backend));
        assert_eq!(run.output, udp6(dnat(t, backend), &payload));
    }
    let answer = udp6(reply(t, backend), b"answer");
    expect_translated(
        &mut h,
        TO_POD,
        &answer,
        &[("rev_nat", 1)],
        &udp6(reply(t, t.dst), b"answer"),
    );
}

#[test]
fn extension_headers_before_tcp_are_walked_up_to_the_cap() {
    let (mut h, _m) = harness();
    let backend = (POD_A, 8080);
    let from_port = |port| Tuple6 {
        src: (CLIENT, port),
        dst: (VIP, 80),
    };
    // One flow each: a second SYN on a tuple would choose again.
    let cases = [
        (
            "hop-by-hop and destination options",
            from_port(41_000),
            tcp6_with_options(from_port(41_000), 7),
        ),
        (
            "four destination options",
            from_port(41_001),
            tcp6_behind_headers(from_port(41_001), 7, 4),
        ),
    ];
    for (name, t, input) in cases {
        let run = h.run(FROM_POD, &input).unwrap();
        assert_eq!(run.verdict, TC_ACT_OK, "{name}");
        assert_eq!(run.counted, [("dnat_new", 1)], "{name}");
        assert_eq!(endpoints6(&run.output), (t.src, backend), "{name}");
        assert_eq!(
            checksum_errors6(&run.output),
            Vec::<String>::new(),
            "{name}"
        );
        assert_eq!(run.output.len(), input.len(), "{name}: headers kept");
    }
    expect_passed(
        &mut h,
        FROM_POD,
        &tcp6_behind_headers(from_port(41_002), 7, 5),
        "pass_ipv6_ext_headers",
    );
}

#[test]
fn fragments_neighbour_discovery_and_other_traffic_pass_untouched() {
    let (mut h, _m) = harness();
    expect_passed(
        &mut h,
        FROM_POD,
        &udp6_first_fragment(to(VIP, 53)),
        "pass_fragment",
    );
    expect_passed(
        &mut h,
        FROM_POD,
        &neighbour_solicitation(CLIENT, POD_A),
        "pass_other_protocol",
    );
    expect_passed(
        &mut h,
        TO_POD,
        &neighbour_solicitation(POD_A, CLIENT),
        "pass_other_protocol",
    );
    expect_passed(
        &mut h,
        FROM_POD,
        &tcp6(to(ELSEWHERE, 80), 1, true, false, b""),
        "pass_not_service",
    );
    expect_passed(
        &mut h,
        FROM_POD,
        &tcp6(to(VIP, 81), 1, true, false, b""),
        "pass_not_service",
    );
    expect_passed(
        &mut h,
        TO_POD,
        &tcp6(reply(to(VIP, 80), (ELSEWHERE, 80)), 1, true, true, b""),
        "pass_not_translated",
    );
}

#[test]
fn truncated_ipv6_headers_are_dropped_and_counted() {
    let (mut h, _m) = harness();
    let full = tcp6(to(VIP, 80), 1, true, false, b"");
    let cases = [
        ("tcp header cut short", full[..L4_OFF + 10].to_vec()),
        (
            "udp header cut short",
            udp6(to(VIP, 53), b"")[..L4_OFF + 4].to_vec(),
        ),
        (
            "hop-by-hop header cut short",
            truncated_hop_by_hop(to(VIP, 80)),
        ),
    ];
    for (name, input) in cases {
        let run = h.run(FROM_POD, &input).unwrap();
        assert_eq!(run.verdict, TC_ACT_SHOT, "{name}");
        assert_eq!(run.counted, [("drop_truncated", 1)], "{name}");
    }
}

#[test]
fn what_the_ipv6_path_cannot_do_yet_is_dropped_or_counted_not_half_done() {
    let (mut h, _m) = harness();
    let ranged = tcp6(to(RANGED_VIP, 80), 1, true, false, b"");
    let run = h.run(FROM_POD, &ranged).unwrap();
    assert_eq!(run.verdict, TC_ACT_SHOT);
    assert_eq!(run.counted, [("drop_ipv6_unsupported", 1)], "source ranges");

    // Affinity is only lost: the flow is served.
    let sticky = tcp6(to(STICKY_VIP, 80), 1, true, false, b"");
    let run = h.run(FROM_POD, &sticky).unwrap();
    assert_eq!(run.verdict, TC_ACT_OK);
    let mut counted = run.counted.clone();
    counted.sort();
    assert_eq!(counted, [("dnat_new", 1), ("ipv6_affinity_ignored", 1)]);
    assert_eq!(endpoints6(&run.output).1, (POD_A, 8080));
}

#[test]
fn tcp_to_an_ipv6_frontend_without_endpoints_gets_a_reset() {
    let (mut h, _m) = harness();
    let t = to(EMPTY_VIP, 80);
    let run = h.run(FROM_POD, &tcp6(t, 1000, true, false, b"")).unwrap();
    assert_eq!(run.verdict, TC_ACT_REDIRECT);
    assert_eq!(run.counted, [("reject_tcp_rst", 1)]);
    assert_eq!(checksum_errors6(&run.output), Vec::<String>::new());
    assert_eq!(&run.output[0..6], &CLIENT_MAC, "sent back to the client");
    assert_eq!(endpoints6(&run.output), (t.dst, t.src));
    let packet = SlicedPacket::from_ethernet(&run.output).unwrap();
    let Some(TransportSlice::Tcp(tcp)) = packet.transport else {
        panic!("not tcp")
    };
    assert!(tcp.rst() && tcp.ack(), "RST|ACK for a segment without ACK");
    assert_eq!(tcp.acknowledgment_number(), 1001, "acknowledges the SYN");
}

#[test]
fn udp_to_an_ipv6_frontend_without_endpoints_gets_port_unreachable() {
    let (mut h, _m) = harness();
    let t = to(EMPTY_VIP, 53);
    let input = udp6(t, b"query");
    let run = h.run(FROM_POD, &input).unwrap();
    assert_eq!(run.verdict, TC_ACT_REDIRECT);
    assert_eq!(run.counted, [("reject_icmp_unreachable", 1)]);
    assert_eq!(checksum_errors6(&run.output), Vec::<String>::new());
    let packet = SlicedPacket::from_ethernet(&run.output).unwrap();
    let Some(NetSlice::Ipv6(ip)) = &packet.net else {
        panic!("not ipv6")
    };
    assert_eq!(ip.header().source_addr(), EMPTY_VIP);
    assert_eq!(ip.header().destination_addr(), CLIENT);
    let Some(TransportSlice::Icmpv6(icmp)) = &packet.transport else {
        panic!("not icmpv6")
    };
    let message = icmp.slice();
    assert_eq!(
        (message[0], message[1]),
        (1, 4),
        "destination / port unreachable"
    );
    // The quote is the offending packet's IPv6 header and UDP header.
    assert_eq!(&message[8..], &input[14..14 + 48]);
}
