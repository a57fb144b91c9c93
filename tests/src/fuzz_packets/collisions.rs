//! A known datapath finding, watched packet by packet so it can be told
//! apart from anything new: `ct::record` writes a new flow's reverse entry
//! over an existing one (BPF_ANY). Two flows from one client address and
//! port to two frontends served by the same backend (two Services selecting
//! one pod; a ClusterIP and a NodePort of one Service) need the same reverse
//! key (backend → client): the second takes it, the first flow's replies
//! are then restored to the wrong frontend, and when either flow ends the
//! other's replies are no longer restored at all.
use std::collections::HashSet;

use proxy_common::{CT_FORWARD, CT_REVERSE, Counter, CtKey, CtValue};

use super::frames::{ETH, TCP, UDP};
use super::state::Cluster;
use crate::packet::Harness;

#[derive(Default)]
pub struct Watch {
    /// Flows (forward keys) and reverse keys caught up in an overwrite:
    /// their broken pairing is this finding, not a new one.
    tainted: HashSet<CtKey>,
    pub count: u64,
    /// The first few, with the packet that did it.
    pub examples: Vec<String>,
}

/// Address and port, wire order.
type Wire = (u32, u16);

/// Client (address, port), destination (address, port) and protocol of a
/// TCP or UDP frame the programs would parse, in wire order.
fn flow_of(f: &[u8]) -> Option<(Wire, Wire, u8)> {
    let ip = f.get(ETH..)?;
    let ihl = usize::from(*ip.first()? & 0x0f) * 4;
    let l4 = ip.get(ihl..ihl + 4)?;
    let fragment = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]) & 0x3fff != 0;
    let ipv4 = f[12..14] == [0x08, 0x00] && ip[0] >> 4 == 4 && ihl >= 20;
    if !ipv4 || fragment || ![TCP, UDP].contains(&ip[9]) {
        return None;
    }
    let word = |b: &[u8]| u32::from_ne_bytes(b.try_into().expect("4 bytes"));
    let port = |at: usize| u16::from_ne_bytes([l4[at], l4[at + 1]]);
    Some((
        (word(&ip[12..16]), port(0)),
        (word(&ip[16..20]), port(2)),
        ip[9],
    ))
}

fn key(src: Wire, dst: Wire, proto: u8, direction: u8) -> CtKey {
    CtKey {
        src_addr: src.0,
        dst_addr: dst.0,
        src_port: src.1,
        dst_port: dst.1,
        proto,
        direction,
        _pad: [0; 2],
    }
}

impl Watch {
    /// Before a run: the reverse entries the packet's flow could take, one
    /// per endpoint the frontend ever had (only for packets to one).
    pub fn before(h: &Harness, cluster: &Cluster, input: &[u8]) -> Vec<(CtKey, CtValue)> {
        let Some((client, dst, proto)) = flow_of(input) else {
            return Vec::new();
        };
        let Some(endpoints) = cluster.ever.frontends.get(&(dst.0, dst.1, proto)) else {
            return Vec::new();
        };
        let keys = endpoints.iter().map(|b| key(*b, client, proto, CT_REVERSE));
        keys.filter_map(|k| Some((k, h.conntrack.get(&k, 0).ok()?)))
            .collect()
    }

    /// After a run: whether the new flow took another flow's reverse entry.
    pub fn after(
        &mut self,
        before: &[(CtKey, CtValue)],
        input: &[u8],
        output: &[u8],
        counted: &[(Counter, u64)],
        what: impl Fn() -> String,
    ) {
        let new_flow = counted
            .iter()
            .any(|(c, _)| matches!(c, Counter::DnatNew | Counter::DnatReselected));
        let (Some((client, frontend, proto)), Some((out_src, backend, _))) =
            (flow_of(input), flow_of(output))
        else {
            return;
        };
        // Masqueraded flows claim their reverse key with BPF_NOEXIST.
        if !new_flow || out_src != client {
            return;
        }
        let reverse = key(backend, client, proto, CT_REVERSE);
        let Some((_, old)) = before.iter().find(|(k, _)| *k == reverse) else {
            return;
        };
        let (old_flow, forward) = (
            reverse.partner(old),
            key(client, frontend, proto, CT_FORWARD),
        );
        if old_flow == forward {
            return; // the flow's own entry, written again
        }
        self.tainted.extend([reverse, old_flow, forward]);
        self.count += 1;
        if self.examples.len() < 3 {
            self.examples.push(format!(
                "{} took the reverse entry of {old_flow:?} ({old:?})",
                what()
            ));
        }
    }

    /// Whether a conntrack problem involving `keys` is this finding.
    pub fn explains(&self, keys: &[CtKey]) -> bool {
        keys.iter().any(|k| self.tainted.contains(k))
    }

    /// The table was swept: nothing tainted is left.
    pub fn clear(&mut self) {
        self.tainted.clear();
    }
}
