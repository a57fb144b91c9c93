//! IPv6 forwarding through BPF_PROG_TEST_RUN, inside a network namespace
//! with IPv6 routes and neighbours (`FibNamespace`): the XDP fast path
//! translates and sends back out with `XDP_TX` as TC does with a redirect,
//! and leaves what it cannot finish to TC untouched.
use std::net::Ipv6Addr;

use proxy_common::{
    Backend6Value, IPPROTO_TCP, IPPROTO_UDP, SCOPE_EXTERNAL, SVC_FLAG_HAS_ENDPOINTS,
    SVC_FLAG_MASQUERADE, Service6Key, programs::FROM_EXTERNAL,
};
use vipr_tests::{netns, packet::*, packet6::*};

const NODE: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x30, 0, 0, 0, 0, 0, 1);
const NODE_PORT: u16 = 30_080;
/// Routed via the namespace's router (fd00:30::fe).
const CLIENT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x64, 0, 0, 0, 0, 7);
/// Routed via node2 (fd00:30::2).
const REMOTE_POD: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 0xb);
/// No route at all.
const UNROUTED_POD: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 9, 0, 0, 0, 0, 0xb);
/// Byte offset of the hop limit in a frame.
const HOP_LIMIT_AT: usize = 14 + 7;
const SENT_HOP_LIMIT: u8 = 64;

fn in_fib_namespace(test: impl FnOnce() + Send) {
    let ns = FibNamespace::new();
    netns::run_in(ns.name(), test).expect("run in namespace");
}

/// NODE:NODE_PORT (TCP and UDP) → `backend`, masqueraded where remote.
fn harness(backend: Ipv6Addr) -> Harness {
    let h = Harness::with_options(|o| o.node_ipv6 = Some(NODE)).expect("load (needs root)");
    let mut m = Maps6::open(&h).expect("IPv6 maps");
    for (id, proto) in [(1, IPPROTO_TCP), (2, IPPROTO_UDP)] {
        let key = Service6Key::scoped(NODE, NODE_PORT, proto, SCOPE_EXTERNAL);
        let to = (id, Backend6Value::new(backend, 8080, proto));
        m.add_frontend(id, key, SVC_FLAG_MASQUERADE | SVC_FLAG_HAS_ENDPOINTS, &[to])
            .unwrap();
    }
    h
}

fn from_client(port: u16) -> Tuple6 {
    Tuple6 {
        src: (CLIENT, port),
        dst: (NODE, NODE_PORT),
    }
}

/// Both paths send a masqueraded IPv6 NodePort flow and its replies on
/// themselves, with the same translation: XDP with `XDP_TX`, TC with a
/// redirect.
#[test]
fn ipv6_nodeport_flows_are_translated_and_forwarded_by_xdp_and_by_tc() {
    for (path, forwarded, sent) in [
        ("xdp", XDP_TX, "xdp_transmitted"),
        ("tc", TC_ACT_REDIRECT, "tc_redirected"),
    ] {
        in_fib_namespace(move || {
            let mut h = harness(REMOTE_POD);
            let mut run = |frame: &[u8]| {
                if path == "xdp" {
                    h.run_xdp(frame)
                } else {
                    h.run_on_ext0(FROM_EXTERNAL, frame)
                }
                .unwrap()
            };
            for (proto, t) in [
                (IPPROTO_TCP, from_client(40_000)),
                (IPPROTO_UDP, from_client(5_000)),
            ] {
                let request = match proto {
                    IPPROTO_TCP => tcp6(t, 7, true, false, b""),
                    _ => udp6(t, b"query"),
                };
                let out = run(&request);
                assert_eq!(out.verdict, forwarded, "{path} {proto}: towards node2");
                assert_eq!(out.counted, [("dnat_new", 1), (sent, 1)], "{path} {proto}");
                assert_eq!(checksum_errors6(&out.output), Vec::<String>::new());
                assert_eq!(&out.output[0..6], &NEXT_HOP_NODE2, "{path}: next hop");
                assert_eq!(&out.output[6..12], &[0x02, 0, 0, 0, 0, 0x01], "from ext0");
                assert_eq!(out.output[HOP_LIMIT_AT], SENT_HOP_LIMIT - 1, "{path}");
                let (src, dst) = endpoints6(&out.output);
                assert_eq!((src.0, dst), (NODE, (REMOTE_POD, 8080)), "{path}");

                let back = Tuple6 {
                    src: (REMOTE_POD, 8080),
                    dst: src,
                };
                let reply = match proto {
                    IPPROTO_TCP => tcp6(back, 99, true, true, b""),
                    _ => udp6(back, b"answer"),
                };
                let out = run(&reply);
                assert_eq!(out.verdict, forwarded, "{path} {proto}");
                assert_eq!(out.counted, [("rev_snat", 1), (sent, 1)], "{path}");
                assert_eq!(checksum_errors6(&out.output), Vec::<String>::new());
                assert_eq!(&out.output[0..6], &NEXT_HOP_ROUTER, "{path}");
                assert_eq!(endpoints6(&out.output), (t.dst, t.src), "{path}");
            }
        });
    }
}

#[test]
fn xdp_leaves_ipv6_it_cannot_finish_to_tc_untouched() {
    in_fib_namespace(|| {
        let mut h = harness(UNROUTED_POD);
        // Masqueraded but unroutable here: translated, the stack would
        // take it for a martian; TC finds the flow and finishes it.
        let syn = tcp6(from_client(40_000), 1, true, false, b"");
        let run = h.run_xdp(&syn).unwrap();
        assert_eq!(run.verdict, XDP_PASS);
        assert_eq!(run.counted, [("xdp_to_stack", 1)]);
        assert_eq!(run.output, syn);

        // Extension headers: TC walks them, XDP does not.
        let behind = tcp6_behind_headers(from_client(40_001), 1, 1);
        let run = h.run_xdp(&behind).unwrap();
        assert_eq!((run.verdict, run.counted.len()), (XDP_PASS, 0));
        assert_eq!(run.output, behind);

        // Neighbour discovery and non-service traffic: counted once, by TC.
        let solicitation = neighbour_solicitation(CLIENT, NODE);
        let run = h.run_xdp(&solicitation).unwrap();
        assert_eq!((run.verdict, run.counted.len()), (XDP_PASS, 0));
        let other = tcp6(
            Tuple6 {
                src: (CLIENT, 1),
                dst: (NODE, 22),
            },
            1,
            true,
            false,
            b"",
        );
        let run = h.run_xdp(&other).unwrap();
        assert_eq!((run.verdict, run.counted.len()), (XDP_PASS, 0));
        assert_eq!(run.output, other);
    });
}
