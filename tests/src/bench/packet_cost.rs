//! Kernel cost per packet of vipr's TC programs through BPF_PROG_TEST_RUN.
//!
//! BPF_PROG_TEST_RUN repeats on one skb, and a translated packet no longer
//! targets the service. So the established and reply paths are measured on a
//! pair of services that point at each other (A's backend is B's frontend and
//! back): every repetition takes the translated path. New flows are measured
//! one run per packet, each with its own source port; the kernel's
//! per-invocation overhead is shown next to it (a non-service packet run
//! once) so the two can be told apart. Counters confirm every path.
use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Result, ensure};
use aya::maps::HashMap;
use proxy_common::{CT_FORWARD, CtKey, CtValue, IPPROTO_TCP, programs};

use crate::packet::{Harness, Tuple, tcp};

const REPEAT: u32 = 20_000;
const NEW_FLOWS: u16 = 2_000;
const NODEPORT_FLOWS: u16 = 1_000;
const A: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 96, 0, 1), 80);
const B: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 96, 0, 2), 80);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 100);

#[derive(Clone, Debug, serde::Serialize)]
pub struct PacketCost {
    pub services: u32,
    pub conntrack_entries: u32,
    /// Medians over rounds, ns per packet.
    pub new_flow_ns: f64,
    pub single_run_overhead_ns: f64,
    pub established_ns: f64,
    pub reply_ns: f64,
    pub non_service_ns: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Loads a fresh datapath with `services` services and `conntrack` extra
/// conntrack entries, and measures every path `rounds` times.
pub fn measure(services: u32, conntrack: u32, rounds: usize) -> Result<PacketCost> {
    let room = services.max(2) + 16;
    let mut h = Harness::with_options(|o| {
        o.sizes.services = room;
        o.sizes.backends = room;
        o.sizes.slots = room;
        o.sizes.conntrack = conntrack.max(1) + 2 * (NEW_FLOWS as u32 * rounds as u32 + 64);
    })?;
    for i in 0..services.saturating_sub(2) {
        let vip = Ipv4Addr::from(0x0a64_0000 + i);
        let pod = Ipv4Addr::from(0x0af4_0000 + i);
        h.add_service(10 + i, (vip, 80), IPPROTO_TCP, &[(10 + i, pod, 8080)])?;
    }
    h.add_service(1, A, IPPROTO_TCP, &[(1, B.0, B.1)])?;
    h.add_service(2, B, IPPROTO_TCP, &[(2, A.0, A.1)])?;
    fill_conntrack(&mut h.conntrack, conntrack)?;

    let mut cost = measure_paths(&mut h, Family::Ipv4, rounds)?;
    cost.services = services;
    cost.conntrack_entries = conntrack;
    Ok(cost)
}

/// The same paths in IPv6: a pair of IPv6 ClusterIPs pointing at each
/// other, beside nothing else (the IPv4 figure to compare is `measure(2, 0, _)`).
pub fn measure_ipv6(rounds: usize) -> Result<PacketCost> {
    use proxy_common::{Backend6Value, Service6Key};
    let mut h = Harness::with_options(|o| {
        o.sizes.conntrack = 2 * (NEW_FLOWS as u32 * rounds as u32 + 64);
    })?;
    let mut maps = crate::packet6::Maps6::open(&h)?;
    let (a, b) = (address6(At::A), address6(At::B));
    let frontend = |at: (Ipv6Addr, u16)| Service6Key::new(at.0, at.1, IPPROTO_TCP);
    let backend = |at: (Ipv6Addr, u16)| Backend6Value::new(at.0, at.1, IPPROTO_TCP);
    // Ids in the IPv6 range, as the planner gives them.
    let (id_a, id_b) = (1 << 31, (1 << 31) + 1);
    maps.add_frontend(id_a, frontend(a), 0, &[(id_a, backend(b))])?;
    maps.add_frontend(id_b, frontend(b), 0, &[(id_b, backend(a))])?;
    let mut cost = measure_paths(&mut h, Family::Ipv6, rounds)?;
    cost.services = 2;
    Ok(cost)
}

/// Which family's frames a measurement sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Ipv4,
    Ipv6,
}

/// The ends of the measured flows: the client pod, the two services that
/// point at each other, and a pod no service leads to.
#[derive(Clone, Copy)]
enum At {
    Client(u16),
    A,
    B,
    Pod,
}

fn address4(at: At) -> (Ipv4Addr, u16) {
    match at {
        At::Client(port) => (CLIENT, port),
        At::A => A,
        At::B => B,
        At::Pod => (Ipv4Addr::new(10, 244, 2, 11), 8080),
    }
}

fn address6(at: At) -> (Ipv6Addr, u16) {
    let ip = |last: u16| Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, last);
    match at {
        At::Client(port) => (Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 0x100), port),
        At::A => (ip(1), 80),
        At::B => (ip(2), 80),
        At::Pod => (Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 0x11), 8080),
    }
}

/// A TCP segment from `src` to `dst` in `family`.
fn segment(family: Family, src: At, dst: At, seq: u32, syn: bool, ack: bool) -> Vec<u8> {
    match family {
        Family::Ipv4 => tcp(
            Tuple {
                src: address4(src),
                dst: address4(dst),
            },
            seq,
            syn,
            ack,
            b"",
        ),
        Family::Ipv6 => crate::packet6::tcp6(
            crate::packet6::Tuple6 {
                src: address6(src),
                dst: address6(dst),
            },
            seq,
            syn,
            ack,
            b"",
        ),
    }
}

/// Every path `rounds` times on a harness whose services A and B point at
/// each other; the counters confirm each path.
fn measure_paths(h: &mut Harness, family: Family, rounds: usize) -> Result<PacketCost> {
    let (mut new, mut overhead, mut est, mut reply, mut other) =
        (vec![], vec![], vec![], vec![], vec![]);
    let non_service = segment(family, At::Client(60_001), At::Pod, 1, true, false);
    for round in 0..rounds {
        let (mut sum_new, mut sum_once) = (0.0, 0.0);
        for port in 0..NEW_FLOWS {
            let client = At::Client(1024 + port + round as u16 * NEW_FLOWS);
            let syn = segment(family, client, At::A, 1, true, false);
            let (run, ns) = h.run_repeat(programs::FROM_POD, &syn, 1)?;
            ensure!(
                run.counted == vec![("dnat_new", 1)],
                "new flow took {:?}",
                run.counted
            );
            sum_new += ns;
            let (run, ns) = h.run_repeat(programs::FROM_POD, &non_service, 1)?;
            ensure!(
                run.counted == vec![("pass_not_service", 1)],
                "non-service took {:?}",
                run.counted
            );
            sum_once += ns;
        }
        new.push(sum_new / NEW_FLOWS as f64);
        overhead.push(sum_once / NEW_FLOWS as f64);

        let client = At::Client(60_000);
        h.run(
            programs::FROM_POD,
            &segment(family, client, At::A, 1, true, false),
        )?;
        h.run(
            programs::FROM_POD,
            &segment(family, client, At::B, 1, true, false),
        )?;
        let ack = segment(family, client, At::A, 2, false, true);
        let (run, ns) = h.run_repeat(programs::FROM_POD, &ack, REPEAT)?;
        ensure!(
            run.counted == vec![("dnat_established", REPEAT as u64)],
            "established took {:?}",
            run.counted
        );
        est.push(ns);

        let answer = segment(family, At::B, client, 9, false, true);
        let (run, ns) = h.run_repeat(programs::TO_POD, &answer, REPEAT)?;
        ensure!(
            run.counted == vec![("rev_nat", REPEAT as u64)],
            "reply took {:?}",
            run.counted
        );
        reply.push(ns);

        let (run, ns) = h.run_repeat(programs::FROM_POD, &non_service, REPEAT)?;
        ensure!(
            run.counted == vec![("pass_not_service", REPEAT as u64)],
            "non-service took {:?}",
            run.counted
        );
        other.push(ns);
    }
    Ok(PacketCost {
        services: 0,
        conntrack_entries: 0,
        new_flow_ns: median(new),
        single_run_overhead_ns: median(overhead),
        established_ns: median(est),
        reply_ns: median(reply),
        non_service_ns: median(other),
    })
}

/// Unrelated flows, so lookups run against a full table.
fn fill_conntrack(map: &mut HashMap<aya::maps::MapData, CtKey, CtValue>, count: u32) -> Result<()> {
    for i in 0..count {
        let key = CtKey {
            src_addr: u32::from_ne_bytes(Ipv4Addr::from(0x0a80_0000 + (i >> 8)).octets()),
            dst_addr: u32::from_ne_bytes([10, 97, 0, 1]),
            src_port: ((i & 0xff) as u16 + 1024).to_be(),
            dst_port: 80u16.to_be(),
            proto: IPPROTO_TCP,
            direction: CT_FORWARD,
            _pad: [0; 2],
        };
        let value = CtValue {
            backend_id: 1,
            ..CtValue::default()
        };
        map.insert(key, value, 0)?;
    }
    Ok(())
}

/// NodePort new flows on XDP and on TC (ns/packet, medians over rounds).
#[derive(Clone, Debug, serde::Serialize)]
pub struct NodePortCost {
    /// XDP: translate, FIB lookup, redirect to the next hop.
    pub xdp_ns: f64,
    /// TC ingress: translate, then the stack forwards (not included).
    pub tc_ns: f64,
    pub xdp_single_run_overhead_ns: f64,
    pub tc_single_run_overhead_ns: f64,
}

/// A masqueraded NodePort flow to a remote endpoint, every run a new client
/// port; must run inside a [`crate::packet::FibNamespace`] so XDP can forward.
pub fn nodeport_xdp_vs_tc(rounds: usize) -> Result<NodePortCost> {
    let node = Ipv4Addr::new(172, 30, 0, 1);
    let client = Ipv4Addr::new(198, 51, 100, 7);
    let nodeport = crate::packet::RemoteNodePort {
        node,
        node_port: 30_080,
        endpoint: (Ipv4Addr::new(10, 244, 2, 11), 8080),
    };
    let (mut xdp, mut tc, mut xdp_once, mut tc_once) = (vec![], vec![], vec![], vec![]);
    let other = tcp(
        Tuple {
            src: (client, 9),
            dst: (node, 22),
        },
        1,
        true,
        false,
        b"",
    );
    for _ in 0..rounds {
        // Fresh maps per round, so conntrack never fills up across rounds.
        let mut h = nodeport.harness(&[IPPROTO_TCP], |_| {})?;
        // TC gets its own maps, so both paths do exactly the same new-flow work.
        let mut tc_h = nodeport.harness(&[IPPROTO_TCP], |_| {})?;
        let (mut sums, mut once) = ([0.0; 2], [0.0; 2]);
        // Fewer flows than the masquerade port range holds, by far.
        for i in 0..NODEPORT_FLOWS {
            let port = 1024 + i;
            let syn = tcp(
                Tuple {
                    src: (client, port),
                    dst: (node, 30_080),
                },
                1,
                true,
                false,
                b"",
            );
            let (run, ns) = h.run_xdp_repeat(&syn, 1)?;
            ensure!(
                run.counted == vec![("dnat_new", 1), ("xdp_transmitted", 1)],
                "xdp took {:?}",
                run.counted
            );
            sums[0] += ns;
            let syn = tcp(
                Tuple {
                    src: (client, port),
                    dst: (node, 30_080),
                },
                1,
                true,
                false,
                b"",
            );
            let (run, ns) = tc_h.run_repeat(programs::FROM_EXTERNAL, &syn, 1)?;
            ensure!(
                run.counted == vec![("dnat_new", 1), ("tc_redirected", 1)],
                "tc took {:?}",
                run.counted
            );
            sums[1] += ns;
            once[0] += h.run_xdp_repeat(&other, 1)?.1;
            once[1] += tc_h.run_repeat(programs::FROM_EXTERNAL, &other, 1)?.1;
        }
        let n = NODEPORT_FLOWS as f64;
        xdp.push(sums[0] / n);
        tc.push(sums[1] / n);
        xdp_once.push(once[0] / n);
        tc_once.push(once[1] / n);
    }
    Ok(NodePortCost {
        xdp_ns: median(xdp),
        tc_ns: median(tc),
        xdp_single_run_overhead_ns: median(xdp_once),
        tc_single_run_overhead_ns: median(tc_once),
    })
}
