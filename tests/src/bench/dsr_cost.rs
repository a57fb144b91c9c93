//! XDP NodePort throughput to an endpoint on another node: direct server
//! return against masquerade (`--lb-mode dsr` against `snat`), one run per
//! packet through BPF_PROG_TEST_RUN. Both include the FIB lookup and
//! `XDP_TX`; DSR grows the opening packet by its option, masquerade claims
//! a source port. Counters confirm every path.
use std::net::Ipv4Addr;

use anyhow::{Result, ensure};
use proxy_common::IPPROTO_TCP;
use vipr::datapath::LbMode;

use crate::packet::{RemoteNodePort, Tuple, tcp};

const FLOWS: u16 = 1_000;
const NODE: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
const NODE_PORT: u16 = 30_080;
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 11);
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

/// Must run inside a [`crate::packet::FibNamespace`], so XDP can forward.
pub fn measure(rounds: usize) -> Result<DsrCost> {
    let (mut snat, mut dsr) = ((vec![], vec![]), (vec![], vec![]));
    for _ in 0..rounds {
        let (new, established) = per_packet(LbMode::Snat)?;
        snat.0.push(new);
        snat.1.push(established);
        let (new, established) = per_packet(LbMode::Dsr)?;
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

/// A fresh datapath in `mode`; `FLOWS` SYNs, then one ACK of each flow:
/// the mean ns of each.
fn per_packet(mode: LbMode) -> Result<(f64, f64)> {
    let mut h = RemoteNodePort {
        node: NODE,
        node_port: NODE_PORT,
        endpoint: (REMOTE_POD, 8080),
    }
    .harness(&[IPPROTO_TCP], |o| o.lb_mode = mode)?;
    let mut opened = vec![("dnat_new", 1), ("xdp_transmitted", 1)];
    if mode == LbMode::Dsr {
        opened.push(("dsr_option_added", 1));
    }
    let flow = |port: u16| Tuple {
        src: (CLIENT, port),
        dst: (NODE, NODE_PORT),
    };
    let (mut new, mut established) = (0.0, 0.0);
    for i in 0..FLOWS {
        let (run, ns) = h.run_xdp_repeat(&tcp(flow(1024 + i), 1, true, false, b""), 1)?;
        ensure!(run.counted == opened, "{mode:?} SYN took {:?}", run.counted);
        new += ns;
    }
    for i in 0..FLOWS {
        let (run, ns) = h.run_xdp_repeat(&tcp(flow(1024 + i), 2, false, true, b""), 1)?;
        ensure!(
            run.counted == vec![("dnat_established", 1), ("xdp_transmitted", 1)],
            "{mode:?} ACK took {:?}",
            run.counted
        );
        established += ns;
    }
    Ok((new / FLOWS as f64, established / FLOWS as f64))
}
