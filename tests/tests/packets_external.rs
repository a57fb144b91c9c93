//! External traffic through the real programs (BPF_PROG_TEST_RUN): NodePort
//! and LoadBalancer frontends, masquerade, traffic policies, source ranges.
use std::net::Ipv4Addr;

use proxy_common::{
    BackendValue, IPPROTO_TCP, SCOPE_EXTERNAL, SCOPE_INTERNAL, SNAT_PORT_COUNT, SNAT_PORT_FIRST,
    SVC_FLAG_HAS_ENDPOINTS, SVC_FLAG_LOCAL_ONLY, SVC_FLAG_MASQUERADE, SVC_FLAG_SOURCE_RANGES,
    ServiceKey,
    programs::{FROM_EXTERNAL, FROM_POD, TO_EXTERNAL},
};
use vipr_tests::packet::*;

const NODE: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
const NODE_PORT: u16 = 30_080;
const LB_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const LOCAL_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 11);
const POD_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 100);

fn harness() -> Harness {
    Harness::with_options(|o| o.node_ipv4 = Some(NODE)).expect("load programs (needs root)")
}

fn remote() -> (u32, BackendValue) {
    (1, BackendValue::new(REMOTE_POD, 8080, IPPROTO_TCP))
}
fn local() -> (u32, BackendValue) {
    (2, BackendValue::new(LOCAL_POD, 8080, IPPROTO_TCP).local())
}

fn from_client(port: u16, dst: (Ipv4Addr, u16)) -> Tuple {
    Tuple {
        src: (CLIENT, port),
        dst,
    }
}

fn parsed(frame: &[u8]) -> Tuple {
    let ip = &frame[14..];
    let l4 = &ip[((ip[0] & 0x0f) as usize) * 4..];
    Tuple {
        src: (
            Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
            u16::from_be_bytes([l4[0], l4[1]]),
        ),
        dst: (
            Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
            u16::from_be_bytes([l4[2], l4[3]]),
        ),
    }
}

#[test]
fn nodeport_to_a_remote_endpoint_is_masqueraded_and_the_reply_restored() {
    let mut h = harness();
    let key = ServiceKey::scoped(NODE, NODE_PORT, IPPROTO_TCP, SCOPE_EXTERNAL);
    h.add_frontend(
        1,
        key,
        SVC_FLAG_MASQUERADE | SVC_FLAG_HAS_ENDPOINTS,
        &[remote()],
    )
    .unwrap();

    let syn = tcp(from_client(40_000, (NODE, NODE_PORT)), 7, true, false, b"");
    let run = h.run(FROM_EXTERNAL, &syn).unwrap();
    assert_eq!(run.verdict, TC_ACT_OK);
    assert_eq!(run.counted, vec![("dnat_new", 1)]);
    assert_eq!(checksum_errors(&run.output), Vec::<String>::new());
    let out = parsed(&run.output);
    assert_eq!(out.dst, (REMOTE_POD, 8080));
    assert_eq!(out.src.0, NODE, "masqueraded behind the node");
    let snat_port = out.src.1;
    let range = u32::from(SNAT_PORT_FIRST)..u32::from(SNAT_PORT_FIRST) + u32::from(SNAT_PORT_COUNT);
    assert!(range.contains(&u32::from(snat_port)), "{snat_port}");
    assert_eq!(
        run.output,
        tcp(
            Tuple {
                src: (NODE, snat_port),
                dst: (REMOTE_POD, 8080)
            },
            7,
            true,
            false,
            b""
        )
    );

    // The backend's reply to the node comes back in on the external interface.
    let reply = tcp(
        Tuple {
            src: (REMOTE_POD, 8080),
            dst: (NODE, snat_port),
        },
        99,
        true,
        true,
        b"",
    );
    let run = h.run(FROM_EXTERNAL, &reply).unwrap();
    assert_eq!(run.counted, vec![("rev_snat", 1)]);
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
        )
    );

    // Later packets of the flow keep their translation.
    let ack = tcp(
        from_client(40_000, (NODE, NODE_PORT)),
        8,
        false,
        true,
        b"GET",
    );
    let run = h.run(FROM_EXTERNAL, &ack).unwrap();
    assert_eq!(run.counted, vec![("dnat_established", 1)]);
    assert_eq!(
        run.output,
        tcp(
            Tuple {
                src: (NODE, snat_port),
                dst: (REMOTE_POD, 8080)
            },
            8,
            false,
            true,
            b"GET"
        )
    );
}

#[test]
fn masqueraded_flows_never_share_a_source_port() {
    let mut h = harness();
    let key = ServiceKey::scoped(NODE, NODE_PORT, IPPROTO_TCP, SCOPE_EXTERNAL);
    h.add_frontend(
        1,
        key,
        SVC_FLAG_MASQUERADE | SVC_FLAG_HAS_ENDPOINTS,
        &[remote()],
    )
    .unwrap();
    let mut ports = std::collections::BTreeSet::new();
    for i in 0..500u16 {
        let client = Tuple {
            src: (Ipv4Addr::from(0xc633_6400 + i as u32), 40_000),
            dst: (NODE, NODE_PORT),
        };
        let run = h
            .run(FROM_EXTERNAL, &tcp(client, 1, true, false, b""))
            .unwrap();
        assert_eq!(run.counted, vec![("dnat_new", 1)], "flow {i}");
        assert!(
            ports.insert(parsed(&run.output).src.1),
            "flow {i} reused a port"
        );
    }
}

#[test]
fn a_local_endpoint_keeps_the_client_address_and_replies_are_restored_on_egress() {
    let mut h = harness();
    let key = ServiceKey::scoped(NODE, NODE_PORT, IPPROTO_TCP, SCOPE_EXTERNAL);
    h.add_frontend(
        1,
        key,
        SVC_FLAG_MASQUERADE | SVC_FLAG_HAS_ENDPOINTS,
        &[local()],
    )
    .unwrap();
    let syn = tcp(from_client(40_000, (NODE, NODE_PORT)), 7, true, false, b"");
    let run = h.run(FROM_EXTERNAL, &syn).unwrap();
    assert_eq!(
        run.output,
        tcp(from_client(40_000, (LOCAL_POD, 8080)), 7, true, false, b"")
    );
    let reply = tcp(
        Tuple {
            src: (LOCAL_POD, 8080),
            dst: (CLIENT, 40_000),
        },
        5,
        true,
        true,
        b"",
    );
    let run = h.run(TO_EXTERNAL, &reply).unwrap();
    assert_eq!(run.counted, vec![("rev_nat", 1)]);
    assert_eq!(
        run.output,
        tcp(
            Tuple {
                src: (NODE, NODE_PORT),
                dst: (CLIENT, 40_000)
            },
            5,
            true,
            true,
            b""
        )
    );
}

#[test]
fn traffic_policy_local_preserves_the_client_and_drops_without_local_endpoints() {
    let mut h = harness();
    let flags = SVC_FLAG_LOCAL_ONLY | SVC_FLAG_HAS_ENDPOINTS;
    let with_local = ServiceKey::scoped(LB_IP, 80, IPPROTO_TCP, SCOPE_EXTERNAL);
    h.add_frontend(1, with_local, flags, &[local()]).unwrap();
    let without_local = ServiceKey::scoped(LB_IP, 81, IPPROTO_TCP, SCOPE_EXTERNAL);
    h.add_frontend(2, without_local, flags, &[]).unwrap();

    let run = h
        .run(
            FROM_EXTERNAL,
            &tcp(from_client(40_000, (LB_IP, 80)), 1, true, false, b""),
        )
        .unwrap();
    assert_eq!(
        run.output,
        tcp(from_client(40_000, (LOCAL_POD, 8080)), 1, true, false, b"")
    );
    let run = h
        .run(
            FROM_EXTERNAL,
            &tcp(from_client(40_000, (LB_IP, 81)), 1, true, false, b""),
        )
        .unwrap();
    assert_eq!(run.verdict, TC_ACT_SHOT);
    assert_eq!(run.counted, vec![("drop_no_local_endpoints", 1)]);
}

#[test]
fn an_external_frontend_without_any_endpoint_is_refused() {
    let mut h = harness();
    let key = ServiceKey::scoped(NODE, NODE_PORT, IPPROTO_TCP, SCOPE_EXTERNAL);
    h.add_frontend(1, key, SVC_FLAG_MASQUERADE, &[]).unwrap();
    let run = h
        .run(
            FROM_EXTERNAL,
            &tcp(from_client(40_000, (NODE, NODE_PORT)), 1, true, false, b""),
        )
        .unwrap();
    assert_eq!(run.verdict, TC_ACT_REDIRECT);
    assert_eq!(run.counted, vec![("reject_tcp_rst", 1)]);
    assert_eq!(parsed(&run.output).src, (NODE, NODE_PORT));
}

#[test]
fn source_ranges_allow_and_block() {
    let mut h = harness();
    let key = ServiceKey::scoped(LB_IP, 80, IPPROTO_TCP, SCOPE_EXTERNAL);
    h.add_frontend(
        7,
        key,
        SVC_FLAG_SOURCE_RANGES | SVC_FLAG_HAS_ENDPOINTS,
        &[local()],
    )
    .unwrap();
    h.allow_source(7, (Ipv4Addr::new(198, 51, 100, 0), 24))
        .unwrap();
    // Another service's range must not leak into this one.
    h.allow_source(8, (Ipv4Addr::new(203, 0, 113, 0), 24))
        .unwrap();

    let allowed = h
        .run(
            FROM_EXTERNAL,
            &tcp(from_client(40_000, (LB_IP, 80)), 1, true, false, b""),
        )
        .unwrap();
    assert_eq!(allowed.counted, vec![("dnat_new", 1)]);
    for blocked in [
        Ipv4Addr::new(198, 51, 101, 7),
        Ipv4Addr::new(203, 0, 113, 9),
    ] {
        let t = Tuple {
            src: (blocked, 40_000),
            dst: (LB_IP, 80),
        };
        let run = h.run(FROM_EXTERNAL, &tcp(t, 1, true, false, b"")).unwrap();
        assert_eq!(run.verdict, TC_ACT_SHOT, "{blocked}");
        assert_eq!(run.counted, vec![("drop_source_range", 1)], "{blocked}");
    }
}

#[test]
fn pods_reaching_a_load_balancer_ip_use_the_internal_frontend_without_masquerade() {
    let mut h = harness();
    let external = ServiceKey::scoped(LB_IP, 80, IPPROTO_TCP, SCOPE_EXTERNAL);
    h.add_frontend(
        1,
        external,
        SVC_FLAG_LOCAL_ONLY | SVC_FLAG_HAS_ENDPOINTS,
        &[],
    )
    .unwrap();
    let internal = ServiceKey::scoped(LB_IP, 80, IPPROTO_TCP, SCOPE_INTERNAL);
    h.add_frontend(2, internal, SVC_FLAG_HAS_ENDPOINTS, &[remote()])
        .unwrap();
    let from_pod = Tuple {
        src: (POD_CLIENT, 40_000),
        dst: (LB_IP, 80),
    };
    let run = h
        .run(FROM_POD, &tcp(from_pod, 1, true, false, b""))
        .unwrap();
    assert_eq!(run.counted, vec![("dnat_new", 1)]);
    assert_eq!(
        run.output,
        tcp(
            Tuple {
                dst: (REMOTE_POD, 8080),
                ..from_pod
            },
            1,
            true,
            false,
            b""
        )
    );
}

#[test]
fn cluster_ips_are_not_reachable_from_outside() {
    let mut h = harness();
    let cluster_ip = Ipv4Addr::new(10, 96, 0, 10);
    h.add_frontend(
        1,
        ServiceKey::new(cluster_ip, 80, IPPROTO_TCP),
        SVC_FLAG_HAS_ENDPOINTS,
        &[remote()],
    )
    .unwrap();
    let input = tcp(from_client(40_000, (cluster_ip, 80)), 1, true, false, b"");
    let run = h.run(FROM_EXTERNAL, &input).unwrap();
    assert_eq!(run.counted, vec![("pass_not_service", 1)]);
    assert_eq!(run.output, input);
}
