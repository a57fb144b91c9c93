//! Forwarding through BPF_PROG_TEST_RUN, inside a network namespace this test
//! creates so that the FIB lookup has routes and neighbours to find: the XDP
//! fast path (the same translations as the TC path, then `XDP_TX`), and the
//! TC path's own redirect of masqueraded packets.
use std::net::Ipv4Addr;

use proxy_common::{
    BackendValue, IPPROTO_TCP, SCOPE_EXTERNAL, SNAT_PORT_FIRST, SVC_FLAG_HAS_ENDPOINTS,
    SVC_FLAG_MASQUERADE, SVC_FLAG_SOURCE_RANGES, ServiceKey, programs::FROM_EXTERNAL,
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
    RemoteNodePort {
        node: NODE,
        node_port: NODE_PORT,
        endpoint: (REMOTE_POD, 8080),
    }
    .harness(&[IPPROTO_TCP], |_| {})
    .expect("load (needs root)")
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
            // The masquerade port is drawn at random: both from the range.
            let ((xdp_src, xdp_port), xdp_dst) = addresses(&xdp.output);
            let ((tc_src, tc_port), tc_dst) = addresses(&tc.output);
            assert_eq!((xdp_src, xdp_dst), (tc_src, tc_dst), "port {port}");
            for p in [xdp_port, tc_port] {
                assert!((SNAT_PORT_FIRST..=u16::MAX).contains(&p), "port {p}");
            }
            for frame in [&xdp.output, &tc.output] {
                assert_eq!(checksum_errors(frame), Vec::<String>::new(), "port {port}");
            }
            // Same L3/L4 bytes apart from the TTL and its checksum, which
            // only XDP forwarding changes, and the port with its checksum.
            let strip = |f: &[u8]| {
                let mut v = f[14..].to_vec();
                for byte in [8, 10, 11, 20, 21, 36, 37] {
                    v[byte] = 0;
                }
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

fn syn_to_node_port(port: u16, node_port: u16) -> Vec<u8> {
    tcp(
        Tuple {
            src: (CLIENT, port),
            dst: (NODE, node_port),
        },
        7,
        true,
        false,
        b"",
    )
}

/// Both paths send a masqueraded NodePort flow and its replies on
/// themselves: XDP back out with `XDP_TX`, TC with a redirect. TC has to, as
/// the packets carry a local source address that the stack's input routing
/// would call a martian (which only `accept_local` would prevent).
#[test]
fn nodeport_flows_are_translated_and_forwarded_by_xdp_and_by_tc() {
    for (path, forwarded, sent) in [
        ("xdp", XDP_TX, "xdp_transmitted"),
        ("tc", TC_ACT_REDIRECT, "tc_redirected"),
    ] {
        in_fib_namespace(move || {
            let mut h = harness();
            let mut run = |frame: &[u8]| {
                if path == "xdp" {
                    h.run_xdp(frame)
                } else {
                    h.run_on_ext0(FROM_EXTERNAL, frame)
                }
                .unwrap()
            };
            let out = run(&syn_to_node_port(40_000, NODE_PORT));
            assert_eq!(out.verdict, forwarded, "{path}: back out towards node2");
            assert_eq!(out.counted, vec![("dnat_new", 1), (sent, 1)], "{path}");
            assert_eq!(checksum_errors(&out.output), Vec::<String>::new());
            assert_eq!(&out.output[0..6], &NEXT_HOP_NODE2, "{path}: next hop");
            assert_eq!(&out.output[6..12], &[0x02, 0, 0, 0, 0, 0x01], "from ext0");
            assert_eq!(out.output[14 + 8], 63, "{path}: TTL decremented");
            let (src, dst) = addresses(&out.output);
            assert_eq!((src.0, dst), (NODE, (REMOTE_POD, 8080)), "{path}");

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
            let out = run(&reply);
            assert_eq!(out.verdict, forwarded, "{path}");
            assert_eq!(out.counted, vec![("rev_snat", 1), (sent, 1)], "{path}");
            assert_eq!(checksum_errors(&out.output), Vec::<String>::new());
            assert_eq!(&out.output[0..6], &NEXT_HOP_ROUTER, "{path}");
            assert_eq!(
                addresses(&out.output),
                ((NODE, NODE_PORT), (CLIENT, 40_000))
            );
        });
    }
}

#[test]
fn tc_leaves_the_neighbour_to_the_kernel_and_unroutable_packets_to_the_stack() {
    in_fib_namespace(|| {
        let mut h = Harness::with_options(|o| o.node_ipv4 = Some(NODE)).expect("load");
        let to = |id: u32, backend: Ipv4Addr| (id, BackendValue::new(backend, 8080, IPPROTO_TCP));
        let flags = SVC_FLAG_MASQUERADE | SVC_FLAG_HAS_ENDPOINTS;
        let unresolved = ServiceKey::scoped(NODE, NODE_PORT, IPPROTO_TCP, SCOPE_EXTERNAL);
        h.add_frontend(
            1,
            unresolved,
            flags,
            &[to(1, Ipv4Addr::new(10, 244, 3, 11))],
        )
        .unwrap();
        let unroutable = ServiceKey::scoped(NODE, NODE_PORT + 1, IPPROTO_TCP, SCOPE_EXTERNAL);
        h.add_frontend(2, unroutable, flags, &[to(2, Ipv4Addr::new(10, 9, 9, 9))])
            .unwrap();

        // Next hop not resolved: redirected all the same, the kernel fills in
        // the MAC addresses once it has them.
        let syn = syn_to_node_port(40_000, NODE_PORT);
        let run = h.run_on_ext0(FROM_EXTERNAL, &syn).unwrap();
        assert_eq!(run.verdict, TC_ACT_REDIRECT);
        assert_eq!(run.counted, vec![("dnat_new", 1), ("tc_redirected", 1)]);
        assert_eq!(&run.output[0..12], &syn[0..12], "MAC addresses untouched");
        assert_eq!(run.output[14 + 8], 63, "TTL decremented");
        assert_eq!(checksum_errors(&run.output), Vec::<String>::new());

        // No route: translated, then the stack answers for it (TTL intact).
        let syn = syn_to_node_port(40_001, NODE_PORT + 1);
        let run = h.run_on_ext0(FROM_EXTERNAL, &syn).unwrap();
        assert_eq!(run.verdict, TC_ACT_OK);
        assert_eq!(run.counted, vec![("dnat_new", 1)]);
        assert_eq!(run.output[14 + 8], 64);
        assert_eq!(addresses(&run.output).1, (Ipv4Addr::new(10, 9, 9, 9), 8080));
    });
}

#[test]
fn xdp_hands_masqueraded_frames_it_cannot_send_to_tc_untouched() {
    in_fib_namespace(|| {
        let mut h = Harness::with_options(|o| o.node_ipv4 = Some(NODE)).expect("load");
        let key = ServiceKey::scoped(NODE, NODE_PORT, IPPROTO_TCP, SCOPE_EXTERNAL);
        let unresolved = (
            1,
            BackendValue::new(Ipv4Addr::new(10, 244, 3, 11), 8080, IPPROTO_TCP),
        );
        h.add_frontend(
            1,
            key,
            SVC_FLAG_MASQUERADE | SVC_FLAG_HAS_ENDPOINTS,
            &[unresolved],
        )
        .unwrap();
        let syn = syn_to_node_port(40_000, NODE_PORT);
        let run = h.run_xdp(&syn).unwrap();
        assert_eq!(run.verdict, XDP_PASS);
        // The translation is TC's to count.
        assert_eq!(run.counted, vec![("xdp_to_stack", 1)]);
        assert_eq!(
            run.output, syn,
            "translated, the stack would drop it as a martian"
        );
        // TC translates and redirects it itself. Seeing the same SYN a
        // second time, it chooses again, as for any repeated SYN.
        let run = h.run_on_ext0(FROM_EXTERNAL, &syn).unwrap();
        assert_eq!(run.verdict, TC_ACT_REDIRECT);
        assert_eq!(
            run.counted,
            vec![("dnat_reselected", 1), ("tc_redirected", 1)]
        );
        assert_eq!(
            addresses(&run.output).1,
            (Ipv4Addr::new(10, 244, 3, 11), 8080)
        );
        // Later packets of the flow, too, once the SYN is through.
        let ack = tcp(
            Tuple {
                src: (CLIENT, 40_000),
                dst: (NODE, NODE_PORT),
            },
            8,
            false,
            true,
            b"x",
        );
        let run = h.run_xdp(&ack).unwrap();
        assert_eq!(run.counted, vec![("xdp_to_stack", 1)]);
        let run = h.run_on_ext0(FROM_EXTERNAL, &ack).unwrap();
        assert_eq!(
            run.counted,
            vec![("dnat_established", 1), ("tc_redirected", 1)]
        );
    });
}
