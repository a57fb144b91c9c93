//! Connection tracking: a forward entry pins a client flow to its backend, a
//! reverse entry lets replies be translated back to the frontend.
use aya_ebpf::bindings::BPF_NOEXIST;
use proxy_common::{
    CT_FLAG_SNAT, CT_FORWARD, CT_REVERSE, CtKey, CtValue, SNAT_PORT_COUNT, SNAT_PORT_FIRST,
};

use crate::{lb::flow_hash, maps::CONNTRACK, parse::Flow};

/// Ports tried for a masqueraded flow before giving up.
const SNAT_PORT_ATTEMPTS: u32 = 8;
/// Step between attempts; prime, so attempts spread over the range.
const SNAT_PORT_STEP: u32 = 7_919;

#[inline(always)]
pub fn forward_key(flow: &Flow) -> CtKey {
    CtKey {
        src_addr: flow.src_addr,
        dst_addr: flow.dst_addr,
        src_port: flow.src_port,
        dst_port: flow.dst_port,
        proto: flow.proto,
        direction: CT_FORWARD,
        _pad: [0; 2],
    }
}

/// The key under which a reply from the backend will look itself up.
#[inline(always)]
pub fn reply_key(flow: &Flow) -> CtKey {
    CtKey {
        direction: CT_REVERSE,
        ..forward_key(flow)
    }
}

#[inline(always)]
pub fn lookup(key: &CtKey) -> Option<CtValue> {
    // Copied out: an LRU entry may be recycled under us.
    unsafe { CONNTRACK.get(key).copied() }
}

/// The reverse key of a reply from `backend` to `to`.
#[inline(always)]
fn reverse_key(flow: &Flow, backend: (u32, u16), to: (u32, u16)) -> CtKey {
    CtKey {
        src_addr: backend.0,
        dst_addr: to.0,
        src_port: backend.1,
        dst_port: to.1,
        proto: flow.proto,
        direction: CT_REVERSE,
        _pad: [0; 2],
    }
}

/// Drops both entries of a flow that is about to choose again: a re-chosen
/// masqueraded flow must not keep its old source port claimed, and a flow
/// that finds no endpoint now must not find its old one later.
#[inline(always)]
pub fn forget(flow: &Flow, old: &CtValue) {
    let _ = CONNTRACK.remove(forward_key(flow));
    let to = if old.flags & CT_FLAG_SNAT != 0 {
        (old.snat_addr, old.snat_port)
    } else {
        (flow.src_addr, flow.src_port)
    };
    let _ = CONNTRACK.remove(reverse_key(flow, (old.nat_addr, old.nat_port), to));
}

/// Records both directions of a flow translated to a backend (DNAT only).
#[inline(always)]
pub fn record(
    flow: &Flow,
    backend_id: u32,
    backend_addr: u32,
    backend_port: u16,
) -> Result<(), i32> {
    let forward = CtValue {
        backend_id,
        nat_addr: backend_addr,
        nat_port: backend_port,
        ..CtValue::default()
    };
    CONNTRACK.insert(forward_key(flow), forward, 0)?;
    let reverse = CtValue {
        backend_id,
        nat_addr: flow.dst_addr,
        nat_port: flow.dst_port,
        ..CtValue::default()
    };
    let key = reverse_key(
        flow,
        (backend_addr, backend_port),
        (flow.src_addr, flow.src_port),
    );
    CONNTRACK.insert(key, reverse, 0)
}

/// Records a flow translated to a backend *and* masqueraded behind
/// `node_addr`: claims a free source port (the reverse entry is inserted only
/// if absent, so two flows never share one) and returns it.
#[inline(always)]
pub fn record_masqueraded(
    flow: &Flow,
    backend_id: u32,
    backend_addr: u32,
    backend_port: u16,
    node_addr: u32,
) -> Option<u16> {
    let reverse = CtValue {
        backend_id,
        nat_addr: flow.dst_addr,
        nat_port: flow.dst_port,
        snat_addr: flow.src_addr,
        snat_port: flow.src_port,
        flags: CT_FLAG_SNAT,
        _pad: [0; 3],
    };
    let start = flow_hash(flow);
    let mut attempt = 0;
    while attempt < SNAT_PORT_ATTEMPTS {
        let offset = start.wrapping_add(attempt * SNAT_PORT_STEP) % SNAT_PORT_COUNT as u32;
        let port = (SNAT_PORT_FIRST + offset as u16).to_be();
        let key = reverse_key(flow, (backend_addr, backend_port), (node_addr, port));
        if CONNTRACK.insert(key, reverse, BPF_NOEXIST as u64).is_ok() {
            let forward = CtValue {
                backend_id,
                nat_addr: backend_addr,
                nat_port: backend_port,
                snat_addr: node_addr,
                snat_port: port,
                flags: CT_FLAG_SNAT,
                _pad: [0; 3],
            };
            return CONNTRACK
                .insert(forward_key(flow), forward, 0)
                .ok()
                .map(|_| port);
        }
        attempt += 1;
    }
    None
}
