//! The XDP fast path through BPF_PROG_TEST_RUN, inside a network namespace
//! this test creates so that the FIB lookup has routes and neighbours to
//! find: the same translations as the TC path, then forwarded in XDP.
use std::net::Ipv4Addr;

use proxy_common::{
    BackendValue, IPPROTO_TCP, SCOPE_EXTERNAL, SVC_FLAG_HAS_ENDPOINTS, SVC_FLAG_MASQUERADE,
    SVC_FLAG_SOURCE_RANGES, ServiceKey, programs::FROM_EXTERNAL,
};
use vipr_tests::{netns, packet::*};

const NODE: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
const NODE_PORT: u16 = 30_080;
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 11);

fn in_fib_namespace(test: impl FnOnce() + Send) {
    let ns = FibNamespace::new();
    netns::run_in(ns.name(), test).expect("run in namespace");
}

fn harness() -> Harness {
    let mut h = Harness::with_options(|o| o.node_ipv4 = Some(NODE)).expect("load (needs root)");
    let key = ServiceKey::scoped(NODE, NODE_PORT, IPPROTO_TCP, SCOPE_EXTERNAL);
    let backend = (1, BackendValue::new(REMOTE_POD, 8080, IPPROTO_TCP));
    h.add_frontend(
        1,
        key,
        SVC_FLAG_MASQUERADE | SVC_FLAG_HAS_ENDPOINTS,
        &[backend],
    )
    .unwrap();
    h
}

fn addresses(frame: &[u8]) -> ((Ipv4Addr, u16), (Ipv4Addr, u16)) {
    let ip = &frame[14..];
    let l4 = &ip[20..];
    (
        (
            Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
            u16::from_be_bytes([l4[0], l4[1]]),
        ),
        (
            Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
            u16::from_be_bytes([l4[2], l4[3]]),
        ),
    )
}

#[test]
fn nodeport_is_translated_and_forwarded_in_xdp_and_the_reply_too() {
    in_fib_namespace(|| {
        let mut h = harness();
        let syn = tcp(
            Tuple {
                src: (CLIENT, 40_000),
                dst: (NODE, NODE_PORT),
            },
            7,
            true,
            false,
            b"",
        );
        let run = h.run_xdp(&syn).unwrap();
        assert_eq!(run.verdict, XDP_TX, "back out of ext0, towards node2");
        assert_eq!(run.counted, vec![("dnat_new", 1), ("xdp_transmitted", 1)]);
        assert_eq!(checksum_errors(&run.output), Vec::<String>::new());
        assert_eq!(&run.output[0..6], &NEXT_HOP_NODE2, "next hop is node2");
        assert_eq!(&run.output[6..12], &[0x02, 0, 0, 0, 0, 0x01], "from ext0");
        assert_eq!(run.output[14 + 8], 63, "TTL decremented");
        let (src, dst) = addresses(&run.output);
        assert_eq!(dst, (REMOTE_POD, 8080));
        assert_eq!(src.0, NODE);

        let reply = tcp(
            Tuple {
                src: (REMOTE_POD, 8080),
                dst: src,
            },
            99,
            true,
            true,
            b"",
        );
        let run = h.run_xdp(&reply).unwrap();
        assert_eq!(run.verdict, XDP_TX);
        assert_eq!(run.counted, vec![("rev_snat", 1), ("xdp_transmitted", 1)]);
        assert_eq!(checksum_errors(&run.output), Vec::<String>::new());
        assert_eq!(&run.output[0..6], &NEXT_HOP_ROUTER);
        assert_eq!(
            addresses(&run.output),
            ((NODE, NODE_PORT), (CLIENT, 40_000))
        );
    });
}

#[test]
fn xdp_and_tc_translate_alike() {
    in_fib_namespace(|| {
        for port in [40_000u16, 40_001, 51_234] {
            let syn = tcp(
                Tuple {
                    src: (CLIENT, port),
                    dst: (NODE, NODE_PORT),
                },
                1,
                true,
                false,
                b"x",
            );
            let xdp = harness().run_xdp(&syn).unwrap();
            let tc = harness().run(FROM_EXTERNAL, &syn).unwrap();
            assert_eq!(addresses(&xdp.output), addresses(&tc.output), "port {port}");
            // Same L3/L4 bytes apart from the TTL and its checksum, which only XDP forwarding changes.
            let strip = |f: &[u8]| {
                let mut v = f[14..].to_vec();
                v[8] = 0;
                v[10] = 0;
                v[11] = 0;
                v
            };
            assert_eq!(strip(&xdp.output), strip(&tc.output), "port {port}");
        }
    });
}

#[test]
fn what_xdp_does_not_finish_goes_to_the_stack() {
    in_fib_namespace(|| {
        let mut h = harness();
        let empty = ServiceKey::scoped(NODE, 30_081, IPPROTO_TCP, SCOPE_EXTERNAL);
        h.add_frontend(2, empty, 0, &[]).unwrap();
        let ranged = ServiceKey::scoped(NODE, 30_082, IPPROTO_TCP, SCOPE_EXTERNAL);
        let backend = (1, BackendValue::new(REMOTE_POD, 8080, IPPROTO_TCP));
        h.add_frontend(
            3,
            ranged,
            SVC_FLAG_SOURCE_RANGES | SVC_FLAG_HAS_ENDPOINTS,
            &[backend],
        )
        .unwrap();

        let refused = tcp(
            Tuple {
                src: (CLIENT, 1),
                dst: (NODE, 30_081),
            },
            1,
            true,
            false,
            b"",
        );
        let run = h.run_xdp(&refused).unwrap();
        assert_eq!(
            (run.verdict, run.counted.len()),
            (XDP_PASS, 0),
            "TC sends the RST"
        );

        let other = tcp(
            Tuple {
                src: (CLIENT, 1),
                dst: (NODE, 22),
            },
            1,
            true,
            false,
            b"",
        );
        let run = h.run_xdp(&other).unwrap();
        assert_eq!(
            (run.verdict, run.counted.len()),
            (XDP_PASS, 0),
            "counted once, by TC"
        );
        assert_eq!(run.output, other);

        let blocked = tcp(
            Tuple {
                src: (CLIENT, 1),
                dst: (NODE, 30_082),
            },
            1,
            true,
            false,
            b"",
        );
        let run = h.run_xdp(&blocked).unwrap();
        assert_eq!(run.verdict, XDP_DROP);
        assert_eq!(run.counted, vec![("drop_source_range", 1)]);
    });
}
