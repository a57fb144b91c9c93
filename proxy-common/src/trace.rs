//! `vipr trace`: the record a traced packet leaves behind. Only the trace
//! copy of the programs writes it (global `TRACE` set at load); in the
//! live programs the branch is a known-false constant the verifier prunes.

use crate::{Service6Key, ServiceKey};

/// `u32` → `TraceRecord`, one entry (index 0): what the last traced packet
/// met. The tracer zeroes it before each run.
pub const TRACE_RECORD: &str = "VIPR_TRACE_RECORD";
pub const TRACE_RECORD_ENTRIES: u32 = 1;

/// `TraceRecord::steps` bits, in the order a packet meets them.
/// A frontend key was looked up (`frontend` holds it, or `frontend6` with
/// `TRACE_FRONTEND_IPV6`).
pub const TRACE_FRONTEND_LOOKED_UP: u32 = 1 << 0;
/// ... and the services map has it.
pub const TRACE_FRONTEND_FOUND: u32 = 1 << 1;
/// A conntrack entry carried the flow (`backend_id` is its endpoint).
pub const TRACE_CONNTRACK_FOLLOWED: u32 = 1 << 2;
/// The client's session affinity chose `backend_id`.
pub const TRACE_AFFINITY_FOLLOWED: u32 = 1 << 3;
/// `hash % backend_count` chose `slot`, which holds `backend_id`.
pub const TRACE_SLOT_PICKED: u32 = 1 << 4;
/// The frontend looked up is IPv6: `frontend6` holds it, not `frontend`.
pub const TRACE_FRONTEND_IPV6: u32 = 1 << 5;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct TraceRecord {
    /// `TRACE_*` bits.
    pub steps: u32,
    pub frontend: ServiceKey,
    /// The flow hash (or, on the socket path, the socket's hash).
    pub hash: u32,
    pub slot: u32,
    pub backend_id: u32,
    /// The IPv6 frontend looked up (`TRACE_FRONTEND_IPV6`). Last, so the
    /// IPv4 fields keep their offsets.
    pub frontend6: Service6Key,
}
