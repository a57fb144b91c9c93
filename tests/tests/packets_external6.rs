//! External IPv6 traffic through the real programs (BPF_PROG_TEST_RUN):
//! NodePort frontends on the node's IPv6 address, masquerade behind it with
//! collision-free ports, replies restored, traffic policy Local; and pods
//! reaching themselves (hairpin), which leave behind the same address.
use std::collections::BTreeSet;
use std::net::Ipv6Addr;

use proxy_common::{
    Backend6Value, IPPROTO_TCP, IPPROTO_UDP, SCOPE_EXTERNAL, SNAT_PORT_COUNT, SNAT_PORT_FIRST,
    SVC_FLAG_HAS_ENDPOINTS, SVC_FLAG_LOCAL_ONLY, SVC_FLAG_MASQUERADE, Service6Key,
    programs::{FROM_EXTERNAL, FROM_POD, TO_EXTERNAL},
};
use vipr_tests::packet::*;
use vipr_tests::packet6::*;

const NODE: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x30, 0, 0, 0, 0, 0, 1);
const NODE_PORT: u16 = 30_080;
const CLIENT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x64, 0, 0, 0, 0, 7);
const LOCAL_POD: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 0xb);
const REMOTE_POD: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 0xb);

fn harness() -> (Harness, Maps6) {
    let h = Harness::with_options(|o| o.node_ipv6 = Some(NODE)).expect("load (needs root)");
    let m = Maps6::open(&h).expect("open the IPv6 maps");
    (h, m)
}

fn nodeport(proto: u8) -> Service6Key {
    Service6Key::scoped(NODE, NODE_PORT, proto, SCOPE_EXTERNAL)
}

fn remote(proto: u8) -> (u32, Backend6Value) {
    (1, Backend6Value::new(REMOTE_POD, 8080, proto))
}

fn from_client(port: u16) -> Tuple6 {
    Tuple6 {
        src: (CLIENT, port),
        dst: (NODE, NODE_PORT),
    }
}

fn snat_ports() -> std::ops::Range<u32> {
    u32::from(SNAT_PORT_FIRST)..u32::from(SNAT_PORT_FIRST) + u32::from(SNAT_PORT_COUNT)
}

#[test]
fn nodeport6_to_a_remote_endpoint_is_masqueraded_and_the_reply_restored() {
    let (mut h, mut m) = harness();
    let flags = SVC_FLAG_MASQUERADE | SVC_FLAG_HAS_ENDPOINTS;
    m.add_frontend(1, nodeport(IPPROTO_TCP), flags, &[remote(IPPROTO_TCP)])
        .unwrap();

    let t = from_client(40_000);
    let run = h.run(FROM_EXTERNAL, &tcp6(t, 7, true, false, b"")).unwrap();
    assert_eq!(run.verdict, TC_ACT_OK);
    assert_eq!(run.counted, [("dnat_new", 1)]);
    assert_eq!(checksum_errors6(&run.output), Vec::<String>::new());
    let (src, dst) = endpoints6(&run.output);
    assert_eq!(dst, (REMOTE_POD, 8080));
    assert_eq!(src.0, NODE, "masqueraded behind the node's IPv6 address");
    assert!(snat_ports().contains(&u32::from(src.1)), "{}", src.1);
    let masqueraded = Tuple6 {
        src,
        dst: (REMOTE_POD, 8080),
    };
    assert_eq!(run.output, tcp6(masqueraded, 7, true, false, b""));

    // The endpoint's reply to the node comes back in on the external interface.
    let back = Tuple6 {
        src: (REMOTE_POD, 8080),
        dst: src,
    };
    let run = h
        .run(FROM_EXTERNAL, &tcp6(back, 99, true, true, b""))
        .unwrap();
    assert_eq!(run.counted, [("rev_snat", 1)]);
    let restored = Tuple6 {
        src: t.dst,
        dst: t.src,
    };
    assert_eq!(run.output, tcp6(restored, 99, true, true, b""));
    assert_eq!(checksum_errors6(&run.output), Vec::<String>::new());

    // Later packets keep the same source port.
    let run = h
        .run(FROM_EXTERNAL, &tcp6(t, 8, false, true, b"GET"))
        .unwrap();
    assert_eq!(run.counted, [("dnat_established", 1)]);
    assert_eq!(run.output, tcp6(masqueraded, 8, false, true, b"GET"));
}

#[test]
fn udp_to_an_ipv6_nodeport_is_masqueraded_with_valid_checksums() {
    let (mut h, mut m) = harness();
    let flags = SVC_FLAG_MASQUERADE | SVC_FLAG_HAS_ENDPOINTS;
    m.add_frontend(2, nodeport(IPPROTO_UDP), flags, &[remote(IPPROTO_UDP)])
        .unwrap();
    let t = from_client(5_000);
    let run = h.run(FROM_EXTERNAL, &udp6(t, b"query")).unwrap();
    assert_eq!(run.counted, [("dnat_new", 1)]);
    assert_eq!(checksum_errors6(&run.output), Vec::<String>::new());
    let (src, dst) = endpoints6(&run.output);
    assert_eq!((src.0, dst), (NODE, (REMOTE_POD, 8080)));
    let back = Tuple6 {
        src: (REMOTE_POD, 8080),
        dst: src,
    };
    let run = h.run(FROM_EXTERNAL, &udp6(back, b"answer")).unwrap();
    assert_eq!(run.counted, [("rev_snat", 1)]);
    assert_eq!(
        run.output,
        udp6(
            Tuple6 {
                src: t.dst,
                dst: t.src
            },
            b"answer"
        )
    );
}

#[test]
fn masqueraded_ipv6_flows_never_share_a_source_port() {
    let (mut h, mut m) = harness();
    let flags = SVC_FLAG_MASQUERADE | SVC_FLAG_HAS_ENDPOINTS;
    m.add_frontend(1, nodeport(IPPROTO_TCP), flags, &[remote(IPPROTO_TCP)])
        .unwrap();
    let mut ports = BTreeSet::new();
    for i in 0..300u16 {
        // Clients differing only in the last word: all 16 bytes key the flow.
        let client = Ipv6Addr::new(0x2001, 0xdb8, 0x64, 0, 0, 0, 1, i);
        let t = Tuple6 {
            src: (client, 40_000),
            dst: (NODE, NODE_PORT),
        };
        let run = h.run(FROM_EXTERNAL, &tcp6(t, 1, true, false, b"")).unwrap();
        assert_eq!(run.counted, [("dnat_new", 1)], "flow {i}");
        assert!(
            ports.insert(endpoints6(&run.output).0.1),
            "flow {i} reused a port"
        );
    }
}

#[test]
fn a_local_ipv6_endpoint_keeps_the_client_address_and_its_reply_is_restored_on_egress() {
    let (mut h, mut m) = harness();
    let local = (2, Backend6Value::new(LOCAL_POD, 8080, IPPROTO_TCP).local());
    let flags = SVC_FLAG_MASQUERADE | SVC_FLAG_HAS_ENDPOINTS;
    m.add_frontend(1, nodeport(IPPROTO_TCP), flags, &[local])
        .unwrap();
    let t = from_client(40_000);
    let run = h.run(FROM_EXTERNAL, &tcp6(t, 7, true, false, b"")).unwrap();
    let to_pod = Tuple6 {
        dst: (LOCAL_POD, 8080),
        ..t
    };
    assert_eq!(run.output, tcp6(to_pod, 7, true, false, b""));
    let back = Tuple6 {
        src: (LOCAL_POD, 8080),
        dst: t.src,
    };
    let run = h.run(TO_EXTERNAL, &tcp6(back, 5, true, true, b"")).unwrap();
    assert_eq!(run.counted, [("rev_nat", 1)]);
    let restored = Tuple6 {
        src: t.dst,
        dst: t.src,
    };
    assert_eq!(run.output, tcp6(restored, 5, true, true, b""));
}

#[test]
fn traffic_policy_local_without_a_local_endpoint_drops_ipv6() {
    let (mut h, mut m) = harness();
    let flags = SVC_FLAG_LOCAL_ONLY | SVC_FLAG_HAS_ENDPOINTS;
    m.add_frontend(1, nodeport(IPPROTO_TCP), flags, &[])
        .unwrap();
    let run = h
        .run(
            FROM_EXTERNAL,
            &tcp6(from_client(40_000), 1, true, false, b""),
        )
        .unwrap();
    assert_eq!(run.verdict, TC_ACT_SHOT);
    assert_eq!(run.counted, [("drop_no_local_endpoints", 1)]);
}

#[test]
fn without_a_node_ipv6_address_a_flow_needing_masquerade_is_dropped_and_counted() {
    let mut h = Harness::new().expect("load (needs root)");
    let mut m = Maps6::open(&h).unwrap();
    let flags = SVC_FLAG_MASQUERADE | SVC_FLAG_HAS_ENDPOINTS;
    m.add_frontend(1, nodeport(IPPROTO_TCP), flags, &[remote(IPPROTO_TCP)])
        .unwrap();
    let run = h
        .run(
            FROM_EXTERNAL,
            &tcp6(from_client(40_000), 1, true, false, b""),
        )
        .unwrap();
    assert_eq!(run.verdict, TC_ACT_SHOT);
    assert_eq!(run.counted, [("drop_snat_ports_exhausted", 1)]);
}

#[test]
fn a_pod_reaching_itself_through_an_ipv6_service_sees_the_node_address() {
    let (mut h, mut m) = harness();
    let vip = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0xa);
    let itself = (3, Backend6Value::new(LOCAL_POD, 8080, IPPROTO_TCP).local());
    m.add_frontend(3, Service6Key::new(vip, 80, IPPROTO_TCP), 0, &[itself])
        .unwrap();
    let t = Tuple6 {
        src: (LOCAL_POD, 40_000),
        dst: (vip, 80),
    };
    let run = h.run(FROM_POD, &tcp6(t, 1, true, false, b"")).unwrap();
    assert_eq!(
        (run.verdict, run.counted.clone()),
        (TC_ACT_OK, vec![("dnat_new", 1)])
    );
    let (src, dst) = endpoints6(&run.output);
    assert_eq!(dst, (LOCAL_POD, 8080));
    assert_eq!(src.0, NODE, "not its own address, which it would drop");
    assert!(snat_ports().contains(&u32::from(src.1)), "{}", src.1);
    assert_eq!(checksum_errors6(&run.output), Vec::<String>::new());

    // Its reply to the node address comes back in on its own interface.
    let back = Tuple6 {
        src: (LOCAL_POD, 8080),
        dst: src,
    };
    let run = h.run(FROM_POD, &tcp6(back, 9, true, true, b"")).unwrap();
    assert_eq!(run.counted, [("rev_snat", 1)]);
    let restored = Tuple6 {
        src: t.dst,
        dst: t.src,
    };
    assert_eq!(run.output, tcp6(restored, 9, true, true, b""));

    // Other pod traffic to the node address is none of vipr's business.
    let to_node = Tuple6 {
        src: (LOCAL_POD, 40_001),
        dst: (NODE, 10_250),
    };
    let frame = tcp6(to_node, 1, true, false, b"");
    let run = h.run(FROM_POD, &frame).unwrap();
    assert_eq!(run.counted, [("pass_not_service", 1)]);
    assert_eq!(run.output, frame);
}
