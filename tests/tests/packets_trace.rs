//! The trace copy `vipr trace` runs (BPF_PROG_TEST_RUN): it loads on this
//! kernel beside the live programs, chooses what the live programs choose
//! for the same packet, records each step, and leaves the live conntrack
//! table, masquerade ports and counters alone; in IPv4 and in IPv6.
use std::net::{Ipv4Addr, Ipv6Addr};

use proxy_common::{
    AffinityKey, Backend6Value, BackendValue, CT_FLAG_SNAT, CT_FORWARD, Ct6Key, CtKey, IPPROTO_TCP,
    SCOPE_EXTERNAL, SVC_FLAG_HAS_ENDPOINTS, SVC_FLAG_MASQUERADE, Service6Key, ServiceKey,
    TRACE_FRONTEND_FOUND, TRACE_FRONTEND_IPV6, TRACE_FRONTEND_LOOKED_UP, TRACE_SLOT_PICKED,
    programs::{FROM_EXTERNAL, FROM_POD, TRACE_HOST},
    wire_addr, wire_addr6,
};
use vipr::datapath::{
    LoadOptions, TraceAffinity, TraceFlow, TraceInput, load_trace_copy, run_trace,
};
use vipr_tests::packet::*;
use vipr_tests::packet6::*;

const NODE: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
const NODE_PORT: u16 = 30_080;
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const PODS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 244, 2, 11),
    Ipv4Addr::new(10, 244, 2, 12),
    Ipv4Addr::new(10, 244, 3, 11),
];
const SEED: u32 = 0x5eed;

fn forward_key(t: Tuple) -> CtKey {
    CtKey {
        src_addr: wire_addr(t.src.0),
        dst_addr: wire_addr(t.dst.0),
        src_port: t.src.1.to_be(),
        dst_port: t.dst.1.to_be(),
        proto: IPPROTO_TCP,
        direction: CT_FORWARD,
        _pad: [0; 2],
    }
}

fn destination(frame: &[u8]) -> (Ipv4Addr, u16) {
    let ip = &frame[14..];
    let l4 = &ip[((ip[0] & 0x0f) as usize) * 4..];
    (
        Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        u16::from_be_bytes([l4[2], l4[3]]),
    )
}

fn live_conntrack(h: &Harness) -> Vec<(CtKey, proxy_common::CtValue)> {
    let mut entries: Vec<_> = h.conntrack.iter().map(|e| e.expect("read")).collect();
    entries.sort_by_key(|(k, _)| (k.src_addr, k.src_port, k.dst_addr, k.dst_port, k.direction));
    entries
}

#[test]
fn a_trace_chooses_as_the_live_programs_do_and_changes_nothing_live() {
    let options = |o: &mut LoadOptions| {
        o.node_ipv4 = Some(NODE);
        o.hash_seed = SEED;
    };
    let mut h = Harness::with_options(options).expect("load programs (needs root)");
    let mut trace_options = LoadOptions::new(h.pin_dir());
    options(&mut trace_options);
    load_trace_copy(&trace_options).expect("the trace copy loads on this kernel");
    let key = ServiceKey::scoped(NODE, NODE_PORT, IPPROTO_TCP, SCOPE_EXTERNAL);
    let backends: Vec<(u32, BackendValue)> = PODS
        .iter()
        .enumerate()
        .map(|(i, ip)| (i as u32 + 1, BackendValue::new(*ip, 8080, IPPROTO_TCP)))
        .collect();
    h.add_frontend(
        1,
        key,
        SVC_FLAG_HAS_ENDPOINTS | SVC_FLAG_MASQUERADE,
        &backends,
    )
    .unwrap();

    for port in 40_000..40_016 {
        let tuple = Tuple {
            src: (CLIENT, port),
            dst: (NODE, NODE_PORT),
        };
        let frame = tcp(tuple, 1, true, false, b"");
        let counters_before = h.counters().unwrap();
        let conntrack_before = live_conntrack(&h);
        let input = TraceInput {
            program: FROM_EXTERNAL,
            frame: &frame,
            flow: TraceFlow::V4(forward_key(tuple)),
            affinity: Some(TraceAffinity::V4(AffinityKey {
                service_id: 1,
                client_addr: wire_addr(CLIENT),
            })),
            ifindex: None,
        };
        let traced = run_trace(h.pin_dir(), &input).expect("trace");

        // Nothing live moved: no flow, no masquerade port, no counter.
        assert_eq!(
            live_conntrack(&h),
            conntrack_before,
            "a trace wrote live conntrack"
        );
        assert_eq!(
            h.counters().unwrap(),
            counters_before,
            "a trace moved live counters"
        );

        let record = traced.record;
        let steps = TRACE_FRONTEND_LOOKED_UP | TRACE_FRONTEND_FOUND | TRACE_SLOT_PICKED;
        assert_eq!(record.steps & steps, steps, "{record:?}");
        assert_eq!(record.frontend, key);
        assert!(record.slot < PODS.len() as u32, "{record:?}");
        let (_, chosen) = backends[record.slot as usize];
        assert_eq!(record.backend_id, backends[record.slot as usize].0);
        let names: Vec<&str> = traced.counted.iter().map(|(c, _)| c.name()).collect();
        assert!(names.contains(&"dnat_new"), "{names:?}");
        let snat = traced
            .conntrack_after
            .iter()
            .find(|(k, v)| k.direction == CT_FORWARD && v.flags & CT_FLAG_SNAT != 0)
            .expect("a masqueraded entry in the scratch table");
        assert_eq!(snat.1.snat_addr, wire_addr(NODE));
        assert_eq!(destination(&traced.frame_out), (chosen.ip(), 8080));

        // The live program, on the same packet, chooses the same endpoint.
        let live = h.run(FROM_EXTERNAL, &frame).unwrap();
        assert_eq!(destination(&live.output), destination(&traced.frame_out));
        // ... and the next trace of that flow follows the live entry it made.
        let ack = tcp(tuple, 2, false, true, b"");
        let again = run_trace(
            h.pin_dir(),
            &TraceInput {
                frame: &ack,
                ..input
            },
        )
        .expect("trace");
        assert!(
            !again.conntrack_before.is_empty(),
            "the live entry was not seen"
        );
        let names: Vec<&str> = again.counted.iter().map(|(c, _)| c.name()).collect();
        assert!(names.contains(&"dnat_established"), "{names:?}");
        assert_eq!(destination(&again.frame_out), (chosen.ip(), 8080));
    }
}

const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x70);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 0x63);
const PODS6: [Ipv6Addr; 3] = [
    Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 0xb),
    Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 0xc),
    Ipv6Addr::new(0xfd00, 0x244, 3, 0, 0, 0, 0, 0xb),
];
/// IPv6 ids start at 2^31 (one id space across families).
const FIRST_ID6: u32 = 1 << 31;

fn forward_key6(t: Tuple6) -> Ct6Key {
    Ct6Key {
        src_addr: wire_addr6(t.src.0),
        dst_addr: wire_addr6(t.dst.0),
        src_port: t.src.1.to_be(),
        dst_port: t.dst.1.to_be(),
        proto: IPPROTO_TCP,
        direction: CT_FORWARD,
        _pad: [0; 2],
    }
}

#[test]
fn an_ipv6_trace_records_its_frontend_and_follows_live_conntrack() {
    let options = |o: &mut LoadOptions| o.hash_seed = SEED;
    let mut h = Harness::with_options(options).expect("load programs (needs root)");
    let mut trace_options = LoadOptions::new(h.pin_dir());
    options(&mut trace_options);
    load_trace_copy(&trace_options).expect("the trace copy loads on this kernel");
    let mut maps6 = Maps6::open(&h).expect("open the IPv6 maps");
    let key = Service6Key::new(VIP6, 80, IPPROTO_TCP);
    let backends: Vec<(u32, Backend6Value)> = PODS6
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            (
                FIRST_ID6 + i as u32,
                Backend6Value::new(*ip, 8080, IPPROTO_TCP),
            )
        })
        .collect();
    maps6
        .add_frontend(FIRST_ID6, key, SVC_FLAG_HAS_ENDPOINTS, &backends)
        .unwrap();
    let chosen_by = |frame: &[u8]| endpoints6(frame).1;

    for port in 40_000..40_008 {
        let tuple = Tuple6 {
            src: (CLIENT6, port),
            dst: (VIP6, 80),
        };
        let frame = tcp6(tuple, 1, true, false, b"");
        let counters_before = h.counters().unwrap();
        let input = TraceInput {
            program: FROM_POD,
            frame: &frame,
            flow: TraceFlow::V6(forward_key6(tuple)),
            affinity: None,
            ifindex: None,
        };
        let traced = run_trace(h.pin_dir(), &input).expect("trace");
        assert!(
            maps6.forward(tuple, IPPROTO_TCP).is_none(),
            "a trace wrote live conntrack"
        );
        assert_eq!(
            h.counters().unwrap(),
            counters_before,
            "a trace moved live counters"
        );

        let record = traced.record;
        let steps = TRACE_FRONTEND_LOOKED_UP
            | TRACE_FRONTEND_FOUND
            | TRACE_FRONTEND_IPV6
            | TRACE_SLOT_PICKED;
        assert_eq!(record.steps & steps, steps, "{record:?}");
        assert_eq!(record.frontend6, key);
        let (id, chosen) = backends[record.slot as usize];
        assert_eq!(record.backend_id, id);
        assert_eq!(chosen_by(&traced.frame_out), (chosen.ip(), 8080));
        assert!(checksum_errors6(&traced.frame_out).is_empty());
        assert!(
            traced
                .conntrack6_after
                .iter()
                .any(|(k, _)| k.direction == CT_FORWARD),
            "no IPv6 entry in the scratch table"
        );

        // The live program chooses the same; the next trace of the flow
        // follows the live entry it made.
        let live = h.run(FROM_POD, &frame).unwrap();
        assert_eq!(chosen_by(&live.output), chosen_by(&traced.frame_out));
        let ack = tcp6(tuple, 2, false, true, b"");
        let again = run_trace(
            h.pin_dir(),
            &TraceInput {
                frame: &ack,
                ..input
            },
        )
        .expect("trace");
        assert!(
            !again.conntrack6_before.is_empty(),
            "the live entry was not seen"
        );
        let names: Vec<&str> = again.counted.iter().map(|(c, _)| c.name()).collect();
        assert!(names.contains(&"dnat_established"), "{names:?}");
        assert_eq!(chosen_by(&again.frame_out), (chosen.ip(), 8080));

        // The socket hooks' choice for the node's IPv6 sockets.
        let host = run_trace(
            h.pin_dir(),
            &TraceInput {
                program: TRACE_HOST,
                ..input
            },
        )
        .expect("trace");
        let names: Vec<&str> = host.counted.iter().map(|(c, _)| c.name()).collect();
        assert_eq!(names, ["sock_translated"]);
        assert_eq!(host.record.frontend6, key);
        let to = chosen_by(&host.frame_out);
        assert!(PODS6.contains(&to.0) && to.1 == 8080, "{to:?}");
        assert!(checksum_errors6(&host.frame_out).is_empty());
    }
}
