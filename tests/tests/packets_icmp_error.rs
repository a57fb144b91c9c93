//! ICMP and ICMPv6 errors about translated flows, through the real programs
//! (BPF_PROG_TEST_RUN): the error an endpoint sends about a translated
//! packet reaches the client quoting what the client sent (the frontend),
//! as conntrack's RELATED translation makes it for kube-proxy; errors of
//! masqueraded flows are unmasqueraded too. Every expected frame is built
//! from scratch, so the byte comparison checks every checksum: the ICMP
//! one, the quoted IPv4 header's and the quoted TCP or UDP one.
use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{
    IcmpEchoHeader, Icmpv4Type, Icmpv6Type, PacketBuilder, icmpv4::DestUnreachableHeader,
    icmpv6::DestUnreachableCode,
};
use proxy_common::{
    Backend6Value, BackendValue, IPPROTO_TCP, IPPROTO_UDP, SCOPE_EXTERNAL, SVC_FLAG_HAS_ENDPOINTS,
    SVC_FLAG_MASQUERADE, Service6Key, ServiceKey,
    programs::{FROM_EXTERNAL, FROM_POD, TO_POD},
};
use vipr_tests::packet::*;
use vipr_tests::packet6::*;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 100);
const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 11);
const ROUTER: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 254);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0xa);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 0x64);
const POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 0xb);
const NODE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x30, 0, 0, 0, 0, 0, 1);
const OUTSIDE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x64, 0, 0, 0, 0, 7);
const NODE_PORT: u16 = 30_053;
/// What an IPv4 error quotes here: the header and 8 bytes (RFC 792).
const QUOTE4: usize = 28;
const PATH_MTU: u32 = 1280;

fn icmp4(from: Ipv4Addr, to: Ipv4Addr, kind: Icmpv4Type, quoted: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, HOST_MAC)
        .ipv4(from.octets(), to.octets(), 64)
        .icmpv4(kind)
        .write(&mut out, quoted)
        .expect("build icmp");
    out
}

fn icmp6(from: Ipv6Addr, to: Ipv6Addr, kind: Icmpv6Type, quoted: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, HOST_MAC)
        .ipv6(from.octets(), to.octets(), 64)
        .icmpv6(kind)
        .write(&mut out, quoted)
        .expect("build icmpv6");
    out
}

/// The IP packet of a frame, cut to `len` bytes.
fn quote(frame: &[u8], len: usize) -> &[u8] {
    &frame[14..(14 + len).min(frame.len())]
}

fn port_unreachable4() -> Icmpv4Type {
    Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port)
}

#[test]
fn an_endpoints_port_unreachable_reaches_the_client_about_the_cluster_ip() {
    let mut h = Harness::new().expect("load (needs root)");
    h.add_service(1, (VIP, 53), IPPROTO_UDP, &[(1, POD, 5353)])
        .unwrap();
    let sent = Tuple {
        src: (CLIENT, 40_000),
        dst: (VIP, 53),
    };
    let datagram = udp(sent, b"query");
    let translated = h.run(FROM_POD, &datagram).unwrap().output;
    // The endpoint has nothing on the port and says so about what it got.
    let error = icmp4(POD, CLIENT, port_unreachable4(), quote(&translated, QUOTE4));
    let run = h.run(TO_POD, &error).unwrap();
    assert_eq!(run.verdict, TC_ACT_OK);
    assert_eq!(run.counted, [("rev_nat_icmp_error", 1)]);
    let expected = icmp4(VIP, CLIENT, port_unreachable4(), quote(&datagram, QUOTE4));
    assert_eq!(run.output, expected);
}

#[test]
fn a_routers_error_about_a_tcp_flow_keeps_its_source_and_quotes_the_cluster_ip() {
    let mut h = Harness::new().expect("load (needs root)");
    h.add_service(1, (VIP, 80), IPPROTO_TCP, &[(1, POD, 8080)])
        .unwrap();
    let sent = Tuple {
        src: (CLIENT, 40_001),
        dst: (VIP, 80),
    };
    let syn = tcp(sent, 7, true, false, b"");
    let translated = h.run(FROM_POD, &syn).unwrap().output;
    let exceeded =
        Icmpv4Type::TimeExceeded(etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit);
    // The whole TCP header quoted: its checksum is translated too.
    let whole = translated.len() - 14;
    let error = icmp4(ROUTER, CLIENT, exceeded.clone(), quote(&translated, whole));
    let run = h.run(TO_POD, &error).unwrap();
    assert_eq!(run.counted, [("rev_nat_icmp_error", 1)]);
    assert_eq!(
        run.output,
        icmp4(ROUTER, CLIENT, exceeded, quote(&syn, whole))
    );
}

#[test]
fn errors_about_no_translated_flow_and_other_icmp_pass_untouched() {
    let mut h = Harness::new().expect("load (needs root)");
    h.add_service(1, (VIP, 53), IPPROTO_UDP, &[(1, POD, 5353)])
        .unwrap();
    let unknown = Tuple {
        src: (CLIENT, 40_002),
        dst: (POD, 5353),
    };
    let error = icmp4(
        POD,
        CLIENT,
        port_unreachable4(),
        quote(&udp(unknown, b"q"), QUOTE4),
    );
    let echo = icmp4(
        POD,
        CLIENT,
        Icmpv4Type::EchoReply(IcmpEchoHeader { id: 1, seq: 1 }),
        b"ping",
    );
    for frame in [error, echo] {
        let run = h.run(TO_POD, &frame).unwrap();
        assert_eq!(run.counted, [("pass_other_protocol", 1)]);
        assert_eq!(run.output, frame);
    }
}

#[test]
fn an_ipv6_endpoints_errors_reach_the_client_about_the_cluster_ip() {
    let h = Harness::new().expect("load (needs root)");
    let mut m = Maps6::open(&h).unwrap();
    let mut h = h;
    m.add_frontend(
        1,
        Service6Key::new(VIP6, 53, IPPROTO_UDP),
        0,
        &[(1, Backend6Value::new(POD6, 5353, IPPROTO_UDP))],
    )
    .unwrap();
    let sent = Tuple6 {
        src: (CLIENT6, 40_000),
        dst: (VIP6, 53),
    };
    let datagram = udp6(sent, b"query");
    let translated = h.run(FROM_POD, &datagram).unwrap().output;
    let whole = translated.len() - 14;
    for kind in [
        Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port),
        Icmpv6Type::PacketTooBig { mtu: PATH_MTU },
    ] {
        let error = icmp6(POD6, CLIENT6, kind, quote(&translated, whole));
        let run = h.run(TO_POD, &error).unwrap();
        assert_eq!(run.counted, [("rev_nat_icmp_error", 1)], "{kind:?}");
        assert_eq!(
            run.output,
            icmp6(VIP6, CLIENT6, kind, quote(&datagram, whole))
        );
    }
}

#[test]
fn an_error_about_a_masqueraded_ipv6_flow_is_unmasqueraded_on_the_way_out() {
    let h = Harness::with_options(|o| o.node_ipv6 = Some(NODE6)).expect("load");
    let mut m = Maps6::open(&h).unwrap();
    let mut h = h;
    let key = Service6Key::scoped(NODE6, NODE_PORT, IPPROTO_UDP, SCOPE_EXTERNAL);
    let remote = (1, Backend6Value::new(POD6, 5353, IPPROTO_UDP));
    m.add_frontend(
        1,
        key,
        SVC_FLAG_MASQUERADE | SVC_FLAG_HAS_ENDPOINTS,
        &[remote],
    )
    .unwrap();
    let sent = Tuple6 {
        src: (OUTSIDE6, 5_000),
        dst: (NODE6, NODE_PORT),
    };
    let datagram = udp6(sent, b"query");
    let masqueraded = h.run(FROM_EXTERNAL, &datagram).unwrap().output;
    let (node_side, _) = endpoints6(&masqueraded);
    assert_eq!(node_side.0, NODE6);
    let whole = masqueraded.len() - 14;
    let unreachable = Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port);
    let error = icmp6(POD6, NODE6, unreachable, quote(&masqueraded, whole));
    let run = h.run(FROM_EXTERNAL, &error).unwrap();
    assert_eq!(run.counted, [("rev_nat_icmp_error", 1)]);
    assert_eq!(
        run.output,
        icmp6(NODE6, OUTSIDE6, unreachable, quote(&datagram, whole))
    );
}

#[test]
fn an_error_about_a_masqueraded_ipv4_flow_is_unmasqueraded_on_the_way_out() {
    let node = Ipv4Addr::new(172, 30, 0, 1);
    let outside = Ipv4Addr::new(198, 51, 100, 7);
    let mut h = Harness::with_options(|o| o.node_ipv4 = Some(node)).expect("load");
    let key = ServiceKey::scoped(node, NODE_PORT, IPPROTO_UDP, SCOPE_EXTERNAL);
    let remote = (1, BackendValue::new(POD, 5353, IPPROTO_UDP));
    h.add_frontend(
        1,
        key,
        SVC_FLAG_MASQUERADE | SVC_FLAG_HAS_ENDPOINTS,
        &[remote],
    )
    .unwrap();
    let sent = Tuple {
        src: (outside, 5_000),
        dst: (node, NODE_PORT),
    };
    let datagram = udp(sent, b"query");
    let masqueraded = h.run(FROM_EXTERNAL, &datagram).unwrap().output;
    let error = icmp4(POD, node, port_unreachable4(), quote(&masqueraded, QUOTE4));
    let run = h.run(FROM_EXTERNAL, &error).unwrap();
    assert_eq!(run.counted, [("rev_nat_icmp_error", 1)]);
    assert_eq!(
        run.output,
        icmp4(node, outside, port_unreachable4(), quote(&datagram, QUOTE4))
    );
}
