//! Notes for `vipr trace` (see proxy-common's `trace`). Every note is a no-op
//! unless the object was loaded as the trace copy: `TRACE` is a load-time
//! constant, so the live programs carry none of this after verification.
use proxy_common::{
    Service6Key, ServiceKey, TRACE_AFFINITY_FOLLOWED, TRACE_CONNTRACK_FOLLOWED,
    TRACE_FRONTEND_FOUND, TRACE_FRONTEND_IPV6, TRACE_FRONTEND_LOOKED_UP, TRACE_SLOT_PICKED,
    TraceRecord,
};

use crate::maps::{TRACE_RECORD, tracing};

#[inline(always)]
fn record() -> Option<*mut TraceRecord> {
    if !tracing() {
        return None;
    }
    TRACE_RECORD.get_ptr_mut(0)
}

#[inline(always)]
pub fn frontend(key: &ServiceKey, found: bool) {
    if let Some(r) = record() {
        let found_bit = if found { TRACE_FRONTEND_FOUND } else { 0 };
        unsafe {
            (*r).steps |= TRACE_FRONTEND_LOOKED_UP | found_bit;
            (*r).frontend = *key;
        }
    }
}

/// The IPv6 twin of `frontend`. The key goes straight from where the
/// lookup left it into the map entry: the IPv6 pod path has no stack to
/// spare for a copy.
#[inline(always)]
pub fn frontend6(key: &Service6Key, found: bool) {
    if let Some(r) = record() {
        let found_bit = if found { TRACE_FRONTEND_FOUND } else { 0 };
        unsafe {
            (*r).steps |= TRACE_FRONTEND_LOOKED_UP | TRACE_FRONTEND_IPV6 | found_bit;
            (*r).frontend6 = *key;
        }
    }
}

#[inline(always)]
pub fn conntrack_followed(backend_id: u32) {
    chose(TRACE_CONNTRACK_FOLLOWED, backend_id);
}

#[inline(always)]
pub fn affinity_followed(backend_id: u32) {
    chose(TRACE_AFFINITY_FOLLOWED, backend_id);
}

#[inline(always)]
pub fn slot_picked(hash: u32, slot: u32, backend_id: u32) {
    if let Some(r) = record() {
        unsafe {
            (*r).steps |= TRACE_SLOT_PICKED;
            (*r).hash = hash;
            (*r).slot = slot;
            (*r).backend_id = backend_id;
        }
    }
}

#[inline(always)]
fn chose(step: u32, backend_id: u32) {
    if let Some(r) = record() {
        unsafe {
            (*r).steps |= step;
            (*r).backend_id = backend_id;
        }
    }
}
