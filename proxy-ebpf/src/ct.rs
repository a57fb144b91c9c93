//! Connection tracking: a forward entry pins a client flow to its backend, a
//! reverse entry lets replies be translated back to the frontend.
use proxy_common::{CT_FORWARD, CT_REVERSE, CtKey, CtValue};

use crate::{maps::CONNTRACK, parse::Flow};

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

/// Records both directions of a translated flow.
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
        _pad: [0; 2],
    };
    CONNTRACK.insert(forward_key(flow), forward, 0)?;
    let reverse_key = CtKey {
        src_addr: backend_addr,
        dst_addr: flow.src_addr,
        src_port: backend_port,
        dst_port: flow.src_port,
        proto: flow.proto,
        direction: CT_REVERSE,
        _pad: [0; 2],
    };
    let reverse = CtValue {
        backend_id,
        nat_addr: flow.dst_addr,
        nat_port: flow.dst_port,
        _pad: [0; 2],
    };
    CONNTRACK.insert(reverse_key, reverse, 0)
}
