//! IPv6 ClusterIP frontends on the pod path, through the compiled programs
//! (BPF_PROG_TEST_RUN). Needs root (CAP_BPF); run through `cargo xtask test`.
use std::collections::BTreeSet;
use std::net::Ipv6Addr;

use aya::maps::{HashMap, MapData};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use proxy_common::{
    Affinity6Key, AffinityMember, AffinityValue, Backend6Value, IPPROTO_TCP, IPPROTO_UDP,
    SVC_FLAG_AFFINITY, SVC_FLAG_HAS_ENDPOINTS, SVC_FLAG_SOURCE_RANGES, Service6Key, maps,
    programs::{FROM_POD, TO_POD},
    wire_addr6,
};
use vipr::datapath::ServiceMaps;
use vipr::plan::MapOp;
use vipr_tests::packet::*;
use vipr_tests::packet6::*;

const VIP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0xa);
const EMPTY_VIP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x14);
const RANGED_VIP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x1e);
const STICKY_VIP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x28);
const SPREAD_VIP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x32);
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

const RANGED_ID: u32 = 15;
const STICKY_ID: u32 = 16;
const SPREAD_ID: u32 = 17;
/// The clients RANGED_VIP admits: CLIENT's /64, and one /128.
const RANGED_NET: (Ipv6Addr, u8) = (Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 0), 64);
const RANGED_HOST: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 7, 0, 0, 0, 0, 0x7);
const HOST_BITS: u8 = 128;
const AFFINITY_TIMEOUT_S: u32 = 600;
/// Endpoints of STICKY_VIP and SPREAD_VIP: ids 21..=23.
const SPREAD_IDS: [u32; 3] = [21, 22, 23];

fn spread_backend(id: u32) -> Backend6Value {
    let last = u16::try_from(id).expect("small id");
    Backend6Value::new(
        Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, last),
        8080,
        IPPROTO_TCP,
    )
}

/// VIP:80/tcp and VIP:53/udp → POD_A; EMPTY_VIP:80/tcp and :53/udp without
/// endpoints; RANGED_VIP:80 → POD_A for RANGED_NET and RANGED_HOST;
/// STICKY_VIP:80 with affinity and SPREAD_VIP:80 without, both → ids 21..=23.
fn harness() -> (Harness, Maps6) {
    let mut h = Harness::new().expect("load programs (needs root)");
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
        RANGED_ID,
        Service6Key::new(RANGED_VIP, 80, IPPROTO_TCP),
        SVC_FLAG_SOURCE_RANGES,
        &[(11, tcp_a)],
    )
    .unwrap();
    let spread: Vec<(u32, Backend6Value)> = SPREAD_IDS
        .iter()
        .map(|&id| (id, spread_backend(id)))
        .collect();
    m.add_frontend(
        STICKY_ID,
        Service6Key::new(STICKY_VIP, 80, IPPROTO_TCP),
        SVC_FLAG_AFFINITY | SVC_FLAG_HAS_ENDPOINTS,
        &spread,
    )
    .unwrap();
    m.add_frontend(
        SPREAD_ID,
        Service6Key::new(SPREAD_VIP, 80, IPPROTO_TCP),
        SVC_FLAG_HAS_ENDPOINTS,
        &spread,
    )
    .unwrap();
    // Through the agent's own writer, as a sync would write them.
    for (net, len) in [RANGED_NET, (RANGED_HOST, HOST_BITS)] {
        h.maps
            .apply(&MapOp::UpsertSourceRange6((RANGED_ID, net, len)))
            .unwrap();
    }
    for backend_id in SPREAD_IDS {
        let member = AffinityMember {
            service_id: STICKY_ID,
            backend_id,
        };
        h.maps
            .apply(&MapOp::UpsertAffinity(member, AFFINITY_TIMEOUT_S))
            .unwrap();
    }
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

/// A SYN from `client` to RANGED_VIP: translated or dropped?
fn ranged_syn(h: &mut Harness, client: Ipv6Addr) -> Run {
    let t = Tuple6 {
        src: (client, 40_000),
        dst: (RANGED_VIP, 80),
    };
    h.run(FROM_POD, &tcp6(t, 1, true, false, b"")).unwrap()
}

#[test]
fn ipv6_source_ranges_admit_by_longest_prefix_and_drop_the_rest() {
    let (mut h, _m) = harness();
    let admitted = [
        ("inside the /64", CLIENT),
        (
            "the /64's last address",
            Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0xffff, 0xffff, 0xffff, 0xffff),
        ),
        ("the /128", RANGED_HOST),
    ];
    for (name, client) in admitted {
        let run = ranged_syn(&mut h, client);
        assert_eq!(run.verdict, TC_ACT_OK, "{name}");
        assert_eq!(run.counted, [("dnat_new", 1)], "{name}");
        assert_eq!(endpoints6(&run.output).1, (POD_A, 8080), "{name}");
    }
    // Another service's range admits no one here.
    let other_net = Ipv6Addr::new(0xfd00, 0x244, 3, 0, 0, 0, 0, 0);
    h.maps
        .apply(&MapOp::UpsertSourceRange6((RANGED_ID + 100, other_net, 64)))
        .unwrap();
    let dropped = [
        (
            "the next /64",
            Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 0x64),
        ),
        (
            "beside the /128",
            Ipv6Addr::new(0xfd00, 0x244, 7, 0, 0, 0, 0, 0x8),
        ),
        (
            "in another service's range",
            Ipv6Addr::new(0xfd00, 0x244, 3, 0, 0, 0, 0, 0x64),
        ),
    ];
    for (name, client) in dropped {
        let run = ranged_syn(&mut h, client);
        assert_eq!(run.verdict, TC_ACT_SHOT, "{name}");
        assert_eq!(run.counted, [("drop_source_range", 1)], "{name}");
    }
    // The range gone, its clients go with it.
    h.maps
        .apply(&MapOp::DeleteSourceRange6((
            RANGED_ID,
            RANGED_HOST,
            HOST_BITS,
        )))
        .unwrap();
    let run = ranged_syn(&mut h, RANGED_HOST);
    assert_eq!(run.counted, [("drop_source_range", 1)], "range deleted");
}

/// The endpoint id a new connection from `client`:`port` to `vip` gets,
/// and the run.
fn new_connection6(h: &mut Harness, vip: Ipv6Addr, client: Ipv6Addr, port: u16) -> (u32, Run) {
    let t = Tuple6 {
        src: (client, port),
        dst: (vip, 80),
    };
    let run = h.run(FROM_POD, &tcp6(t, 1, true, false, b"")).unwrap();
    assert_eq!(run.verdict, TC_ACT_OK, "{:?}", run.counted);
    let to = endpoints6(&run.output).1;
    let id = SPREAD_IDS
        .into_iter()
        .find(|&id| {
            let b = spread_backend(id);
            (b.ip(), b.port()) == to
        })
        .unwrap_or_else(|| panic!("not an endpoint: {to:?}"));
    (id, run)
}

fn followed(run: &Run) -> bool {
    run.counted.contains(&("affinity_followed", 1))
}

fn affinity_table(h: &mut Harness) -> HashMap<MapData, Affinity6Key, AffinityValue> {
    let map = h
        .datapath
        .ebpf
        .take_map(maps::AFFINITY6)
        .expect("IPv6 affinity map");
    HashMap::try_from(map).unwrap()
}

#[test]
fn an_ipv6_client_sticks_to_one_endpoint_while_without_affinity_its_flows_spread() {
    let (mut h, _m) = harness();
    let (first, run) = new_connection6(&mut h, STICKY_VIP, CLIENT, 40_000);
    assert!(!followed(&run), "nothing to follow yet: {:?}", run.counted);
    for port in 40_001..40_040 {
        let (to, run) = new_connection6(&mut h, STICKY_VIP, CLIENT, port);
        assert_eq!(to, first, "port {port}");
        assert!(followed(&run), "port {port}: {:?}", run.counted);
    }
    // Other ports: a flow translated to the tuple of one above would collide.
    let spread: BTreeSet<u32> = (50_000..50_040)
        .map(|port| new_connection6(&mut h, SPREAD_VIP, CLIENT, port).0)
        .collect();
    assert_eq!(spread.len(), SPREAD_IDS.len(), "by hash: {spread:?}");
}

#[test]
fn ipv6_clients_differing_only_in_their_low_64_bits_have_affinities_of_their_own() {
    let (mut h, _m) = harness();
    let table = affinity_table(&mut h);
    let neighbour = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 0x65);
    let key = |client| Affinity6Key {
        service_id: STICKY_ID,
        client_addr: wire_addr6(client),
    };
    new_connection6(&mut h, STICKY_VIP, CLIENT, 40_000);
    let (_, run) = new_connection6(&mut h, STICKY_VIP, neighbour, 40_000);
    assert!(!followed(&run), "a client of its own: {:?}", run.counted);
    let now = table.get(&key(CLIENT), 0).expect("recorded").last_used_s;
    table.get(&key(neighbour), 0).expect("recorded apart");
    // Each pointed at another endpoint: each follows its own.
    let mut table = table;
    for (client, backend_id) in [(CLIENT, SPREAD_IDS[0]), (neighbour, SPREAD_IDS[2])] {
        let value = AffinityValue {
            backend_id,
            last_used_s: now,
        };
        table.insert(key(client), value, 0).unwrap();
    }
    for port in 41_000..41_010 {
        let (to, run) = new_connection6(&mut h, STICKY_VIP, CLIENT, port);
        assert_eq!((to, followed(&run)), (SPREAD_IDS[0], true), "port {port}");
        let (to, run) = new_connection6(&mut h, STICKY_VIP, neighbour, port);
        assert_eq!((to, followed(&run)), (SPREAD_IDS[2], true), "port {port}");
    }
    // An endpoint that left the members is no longer followed.
    let member = AffinityMember {
        service_id: STICKY_ID,
        backend_id: SPREAD_IDS[2],
    };
    h.maps.apply(&MapOp::DeleteAffinity(member)).unwrap();
    let (_, run) = new_connection6(&mut h, STICKY_VIP, neighbour, 42_000);
    assert!(!followed(&run), "member gone: {:?}", run.counted);
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
