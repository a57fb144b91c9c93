//! Connection tracking: a forward entry pins a client flow to its backend, a
//! reverse entry lets replies be translated back to the frontend. Every
//! packet that uses an entry notes when, and whether it closed the flow;
//! the agent's sweep removes what is over or idle from those notes.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns},
};
use proxy_common::{
    CT_FLAG_DSR, CT_FLAG_FIN, CT_FLAG_REPLIED, CT_FLAG_RST, CT_FLAG_SNAT, CT_FORWARD, CT_REVERSE,
    IPPROTO_TCP, SNAT_PORT_COUNT, SNAT_PORT_FIRST,
};

use crate::{
    family::Family,
    parse::{Flow, TCP_FLAG_ACK, TCP_FLAG_FIN, TCP_FLAG_RST, TCP_FLAG_SYN},
};

/// Ports tried for a masqueraded flow before giving up. Closed flows hold
/// their port until swept, so a busy backend's range may be mostly taken.
const SNAT_PORT_ATTEMPTS: u32 = 16;
/// Step between attempts; prime, so attempts spread over the range.
const SNAT_PORT_STEP: u32 = 7_919;
const NANOS_PER_SECOND: u64 = 1_000_000_000;
/// What a full preallocated hash map answers an insert with.
const MAP_FULL: i32 = -7; // -E2BIG

/// Why a flow could not be recorded.
pub enum RecordError {
    /// The conntrack map is full.
    Full,
    /// Another flow already has this one's translated tuple.
    Collision,
    /// Every source port tried for a masqueraded flow was taken.
    PortsExhausted,
}

/// `CtValue::last_seen` of now.
#[inline(always)]
pub fn now_seconds() -> u32 {
    (unsafe { bpf_ktime_get_coarse_ns() } / NANOS_PER_SECOND) as u32
}

/// The closing flags a packet of `flow` leaves on the entry it uses.
#[inline(always)]
fn closing_marks<F: Family>(flow: &Flow<F>) -> u8 {
    let mut marks = 0;
    if flow.tcp_flags & TCP_FLAG_FIN != 0 {
        marks |= CT_FLAG_FIN;
    }
    if flow.tcp_flags & TCP_FLAG_RST != 0 {
        marks |= CT_FLAG_RST;
    }
    marks
}

/// What a packet of `flow` tells about an entry with `flags` beyond its
/// closing marks: the ingress node of a DSR flow never sees a reply, so
/// the client's first ACK without SYN (the handshake done) marks its
/// forward entry `CT_FLAG_REPLIED`, which the sweep reads as established.
#[inline(always)]
fn dsr_marks<F: Family>(flags: u8, flow: &Flow<F>) -> u8 {
    let handshake_done =
        flow.proto == IPPROTO_TCP && flow.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_ACK;
    if flags & CT_FLAG_DSR != 0 && handshake_done {
        CT_FLAG_REPLIED
    } else {
        0
    }
}

#[inline(always)]
pub fn forward_key<F: Family>(flow: &Flow<F>) -> F::CtKey {
    F::ct_key(
        (flow.src_addr, flow.src_port),
        (flow.dst_addr, flow.dst_port),
        flow.proto,
        CT_FORWARD,
    )
}

/// The key under which a reply from the backend will look itself up.
#[inline(always)]
pub fn reply_key<F: Family>(flow: &Flow<F>) -> F::CtKey {
    F::ct_key(
        (flow.src_addr, flow.src_port),
        (flow.dst_addr, flow.dst_port),
        flow.proto,
        CT_REVERSE,
    )
}

/// The entry under `key`, noting on it that a packet of `flow` used it now,
/// with its FIN/RST and the `extra` flags.
#[inline(always)]
pub fn lookup_for<F: Family>(key: &F::CtKey, flow: &Flow<F>, extra: u8) -> Option<F::CtValue> {
    let entry = F::conntrack().get_ptr_mut(key)?;
    let now = now_seconds();
    let (last_seen, entry_flags) = F::entry_notes(entry);
    // Written only on change: a write per packet would bounce the entry's
    // cache line between the CPUs a flow's packets arrive on.
    unsafe {
        if *last_seen != now {
            *last_seen = now;
        }
        let flags = *entry_flags | closing_marks(flow) | dsr_marks(*entry_flags, flow) | extra;
        if *entry_flags != flags {
            *entry_flags = flags;
        }
        // Copied out: the agent's sweep may delete the entry under us.
        Some(*entry)
    }
}

/// Drops both entries of a flow that is about to choose again: a re-chosen
/// masqueraded flow must not keep its old source port claimed, and a flow
/// that finds no endpoint now must not find its old one later.
#[inline(always)]
pub fn forget<F: Family>(flow: &Flow<F>, old: &F::CtValue) {
    let forward = forward_key(flow);
    let _ = F::conntrack().remove(&forward);
    let _ = F::conntrack().remove(&F::partner(&forward, old));
}

/// Records both directions of a flow translated to a backend (DNAT only).
/// Neither entry stays if both cannot. The reverse entry is only written if
/// absent: a second flow from the same client port to another frontend of
/// the same backend would reach the backend as the same connection.
#[inline(always)]
pub fn record<F: Family>(
    flow: &Flow<F>,
    backend_id: u32,
    backend_addr: F::Addr,
    backend_port: u16,
) -> Result<(), RecordError> {
    record_flagged(flow, backend_id, backend_addr, backend_port, 0)
}

/// [`record`] with `flags` on the forward entry (`CT_FLAG_DSR`).
#[inline(always)]
pub fn record_flagged<F: Family>(
    flow: &Flow<F>,
    backend_id: u32,
    backend_addr: F::Addr,
    backend_port: u16,
    flags: u8,
) -> Result<(), RecordError> {
    let now = now_seconds();
    let forward = F::ct_entry(
        backend_id,
        (backend_addr, backend_port),
        flags | closing_marks(flow),
        now,
    );
    let forward_key = forward_key(flow);
    F::conntrack()
        .insert(&forward_key, &forward, 0)
        .map_err(|_| RecordError::Full)?;
    let reverse = F::ct_entry(backend_id, (flow.dst_addr, flow.dst_port), 0, now);
    let reverse_key = F::partner(&forward_key, &forward);
    match F::conntrack().insert(&reverse_key, &reverse, BPF_NOEXIST as u64) {
        Ok(()) => Ok(()),
        Err(error) => {
            let _ = F::conntrack().remove(&forward_key);
            Err(if error == MAP_FULL {
                RecordError::Full
            } else {
                RecordError::Collision
            })
        }
    }
}

/// Records a flow translated to a backend *and* masqueraded behind
/// `node_addr`: claims a free source port (the reverse entry is inserted only
/// if absent, so two flows never share one) and returns the forward entry.
#[inline(always)]
pub fn record_masqueraded<F: Family>(
    flow: &Flow<F>,
    backend_id: u32,
    backend: (F::Addr, u16),
    node_addr: F::Addr,
) -> Result<F::CtValue, RecordError> {
    let now = now_seconds();
    let reverse = F::ct_entry_snat(
        backend_id,
        (flow.dst_addr, flow.dst_port),
        (flow.src_addr, flow.src_port),
        CT_FLAG_SNAT,
        now,
    );
    let mut forward = F::ct_entry_snat(
        backend_id,
        backend,
        (node_addr, 0),
        CT_FLAG_SNAT | closing_marks(flow),
        now,
    );
    let forward_key = forward_key(flow);
    // Random, not the flow's hash: a retransmitted SYN whose ports were all
    // taken tries other ones.
    let start = unsafe { bpf_get_prandom_u32() };
    let mut attempt = 0;
    while attempt < SNAT_PORT_ATTEMPTS {
        let offset = start.wrapping_add(attempt * SNAT_PORT_STEP) % SNAT_PORT_COUNT as u32;
        F::set_snat_port(&mut forward, (SNAT_PORT_FIRST + offset as u16).to_be());
        let reverse_key = F::partner(&forward_key, &forward);
        match F::conntrack().insert(&reverse_key, &reverse, BPF_NOEXIST as u64) {
            Ok(()) => {
                if F::conntrack().insert(&forward_key, &forward, 0).is_err() {
                    let _ = F::conntrack().remove(&reverse_key);
                    return Err(RecordError::Full);
                }
                return Ok(forward);
            }
            Err(MAP_FULL) => return Err(RecordError::Full),
            // Taken by another flow: try the next port.
            Err(_) => attempt += 1,
        }
    }
    Err(RecordError::PortsExhausted)
}
