//! XDP NodePort throughput to an endpoint on another node: direct server
//! return against masquerade (`--lb-mode dsr` against `snat`), one run per
//! packet through BPF_PROG_TEST_RUN. Both include the FIB lookup and
//! `XDP_TX`; DSR grows the opening packet by its option, masquerade claims
//! a source port. Counters confirm every path.
use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Result, ensure};
use proxy_common::{
    Backend6Value, IPPROTO_TCP, SCOPE_EXTERNAL, SVC_FLAG_HAS_ENDPOINTS, SVC_FLAG_MASQUERADE,
    Service6Key,
};
use vipr::datapath::LbMode;

use crate::packet::{Harness, RemoteNodePort, Tuple, tcp};
use crate::packet6::{Maps6, Tuple6, tcp6};

const FLOWS: u16 = 1_000;
const NODE: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
const NODE_PORT: u16 = 30_080;
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 11);
/// The same in IPv6 (routed alike by `FibNamespace`).
const NODE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x30, 0, 0, 0, 0, 0, 1);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x64, 0, 0, 0, 0, 7);
const REMOTE_POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 0xb);
const POD_PORT: u16 = 8080;
const NANOS_PER_SECOND: f64 = 1e9;

/// ns/packet, medians over rounds.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DsrCost {
    pub snat_new_ns: f64,
    pub dsr_new_ns: f64,
    pub snat_established_ns: f64,
    pub dsr_established_ns: f64,
}

impl DsrCost {
    /// The report's lines: each figure as ns/packet and packets/s on one core.
    pub fn lines(&self) -> Vec<String> {
        let rate = |ns: f64| NANOS_PER_SECOND / ns / 1e6;
        [
            ("new flow", self.snat_new_ns, self.dsr_new_ns),
            ("established", self.snat_established_ns, self.dsr_established_ns),
        ]
        .into_iter()
        .map(|(path, snat, dsr)| {
            format!(
                "{path:>12}: SNAT {snat:>5.0} ns ({:.2} Mpps/core)  DSR {dsr:>5.0} ns ({:.2} Mpps/core)  DSR/SNAT packets/s {:.2}",
                rate(snat),
                rate(dsr),
                snat / dsr
            )
        })
        .collect()
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The address family measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// Must run inside a [`crate::packet::FibNamespace`], so XDP can forward.
pub fn measure(rounds: usize, family: Family) -> Result<DsrCost> {
    let (mut snat, mut dsr) = ((vec![], vec![]), (vec![], vec![]));
    for _ in 0..rounds {
        let (new, established) = per_packet(LbMode::Snat, family)?;
        snat.0.push(new);
        snat.1.push(established);
        let (new, established) = per_packet(LbMode::Dsr, family)?;
        dsr.0.push(new);
        dsr.1.push(established);
    }
    Ok(DsrCost {
        snat_new_ns: median(snat.0),
        dsr_new_ns: median(dsr.0),
        snat_established_ns: median(snat.1),
        dsr_established_ns: median(dsr.1),
    })
}

/// The ingress node in `mode`: a NodePort whose endpoint is on node2.
fn ingress(mode: LbMode, family: Family) -> Result<Harness> {
    if family == Family::V4 {
        return RemoteNodePort {
            node: NODE,
            node_port: NODE_PORT,
            endpoint: (REMOTE_POD, POD_PORT),
        }
        .harness(&[IPPROTO_TCP], |o| o.lb_mode = mode);
    }
    let h = Harness::with_options(|o| {
        o.node_ipv6 = Some(NODE6);
        o.lb_mode = mode;
    })?;
    let key = Service6Key::scoped(NODE6, NODE_PORT, IPPROTO_TCP, SCOPE_EXTERNAL);
    let backend = (1, Backend6Value::new(REMOTE_POD6, POD_PORT, IPPROTO_TCP));
    Maps6::open(&h)?.add_frontend(
        1,
        key,
        SVC_FLAG_MASQUERADE | SVC_FLAG_HAS_ENDPOINTS,
        &[backend],
    )?;
    Ok(h)
}

/// A client's TCP segment of the flow from `port` (a SYN or an ACK).
fn segment(family: Family, port: u16, syn: bool) -> Vec<u8> {
    let (seq, ack) = if syn { (1, false) } else { (2, true) };
    match family {
        Family::V4 => tcp(
            Tuple {
                src: (CLIENT, port),
                dst: (NODE, NODE_PORT),
            },
            seq,
            syn,
            ack,
            b"",
        ),
        Family::V6 => tcp6(
            Tuple6 {
                src: (CLIENT6, port),
                dst: (NODE6, NODE_PORT),
            },
            seq,
            syn,
            ack,
            b"",
        ),
    }
}

/// A fresh datapath in `mode`; `FLOWS` SYNs, then one ACK of each flow:
/// the mean ns of each.
fn per_packet(mode: LbMode, family: Family) -> Result<(f64, f64)> {
    let mut h = ingress(mode, family)?;
    let mut opened = vec![("dnat_new", 1), ("xdp_transmitted", 1)];
    if mode == LbMode::Dsr {
        opened.push(("dsr_option_added", 1));
    }
    let (mut new, mut established) = (0.0, 0.0);
    for i in 0..FLOWS {
        let (run, ns) = h.run_xdp_repeat(&segment(family, 1024 + i, true), 1)?;
        ensure!(
            run.counted == opened,
            "{family:?} {mode:?} SYN took {:?}",
            run.counted
        );
        new += ns;
    }
    for i in 0..FLOWS {
        let (run, ns) = h.run_xdp_repeat(&segment(family, 1024 + i, false), 1)?;
        ensure!(
            run.counted == vec![("dnat_established", 1), ("xdp_transmitted", 1)],
            "{family:?} {mode:?} ACK took {:?}",
            run.counted
        );
        established += ns;
    }
    Ok((new / FLOWS as f64, established / FLOWS as f64))
}
