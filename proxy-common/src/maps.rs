//! Map names, default sizes and `#[repr(C)]` key/value layouts.
//!
//! Every struct has explicit padding fields so that its size has no holes
//! (bytemuck's `Pod` derive checks that at compile time on the user side),
//! and the kernel never hashes uninitialised bytes.

use core::net::Ipv4Addr;

/// `ServiceKey` → `ServiceValue`: one entry per (frontend IP, port, protocol).
pub const SERVICES: &str = "VIPR_SERVICES";
/// `SlotKey` → backend id (`u32`): the backends a service picks from, slots `0..backend_count`.
pub const SLOTS: &str = "VIPR_SLOTS";
/// backend id (`u32`) → `BackendValue`.
pub const BACKENDS: &str = "VIPR_BACKENDS";
/// `CtKey` → `CtValue`, LRU: established flows, both directions.
pub const CONNTRACK: &str = "VIPR_CONNTRACK";
/// Per-CPU `u64` array indexed by [`crate::Counter`].
pub const COUNTERS: &str = "VIPR_COUNTERS";

/// Default capacities; the agent may override them at load time.
pub const DEFAULT_MAX_SERVICES: u32 = 65_536;
pub const DEFAULT_MAX_SLOTS: u32 = 262_144;
pub const DEFAULT_MAX_BACKENDS: u32 = 262_144;
pub const DEFAULT_MAX_CONNTRACK: u32 = 262_144;

/// A service frontend: destination address, port and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ServiceKey {
    /// IPv4 address, network byte order.
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

impl ServiceKey {
    pub fn new(addr: Ipv4Addr, port: u16, proto: u8) -> Self {
        Self {
            addr: wire_addr(addr),
            port: port.to_be(),
            proto,
            _pad: 0,
        }
    }
    pub fn ip(&self) -> Ipv4Addr {
        host_addr(self.addr)
    }
    pub fn port(&self) -> u16 {
        u16::from_be(self.port)
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ServiceValue {
    /// Stable id chosen by the agent; keys the slots of this service.
    pub service_id: u32,
    /// Number of filled slots; 0 means "reject new connections".
    pub backend_count: u16,
    /// Reserved for per-service options (affinity, policies); 0 today.
    pub flags: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SlotKey {
    pub service_id: u32,
    /// `0..backend_count`.
    pub slot: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct BackendValue {
    /// IPv4 address, network byte order.
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

impl BackendValue {
    pub fn new(addr: Ipv4Addr, port: u16, proto: u8) -> Self {
        Self {
            addr: wire_addr(addr),
            port: port.to_be(),
            proto,
            _pad: 0,
        }
    }
    pub fn ip(&self) -> Ipv4Addr {
        host_addr(self.addr)
    }
    pub fn port(&self) -> u16 {
        u16::from_be(self.port)
    }
}

/// Which way a conntrack entry was written for.
pub const CT_FORWARD: u8 = 1;
pub const CT_REVERSE: u8 = 2;

/// A flow as seen in one direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct CtKey {
    /// Network byte order.
    pub src_addr: u32,
    /// Network byte order.
    pub dst_addr: u32,
    /// Network byte order.
    pub src_port: u16,
    /// Network byte order.
    pub dst_port: u16,
    pub proto: u8,
    /// `CT_FORWARD` (client → frontend) or `CT_REVERSE` (backend → client).
    pub direction: u8,
    pub _pad: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct CtValue {
    /// Forward entries: the backend the flow is pinned to.
    pub backend_id: u32,
    /// Forward: the backend address; reverse: the frontend address to restore. Network order.
    pub nat_addr: u32,
    /// Forward: the backend port; reverse: the frontend port to restore. Network order.
    pub nat_port: u16,
    pub _pad: [u8; 2],
}

/// IPv4 address as its wire bytes loaded into a native `u32`.
pub fn wire_addr(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

pub fn host_addr(wire: u32) -> Ipv4Addr {
    Ipv4Addr::from(wire.to_ne_bytes())
}

#[cfg(feature = "user")]
mod pod_impls {
    use super::*;
    // SAFETY: all are #[repr(C)], contain only integers, and have no implicit
    // padding (bytemuck::Pod derive above proves the last point).
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for SlotKey {}
    unsafe impl aya::Pod for BackendValue {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtValue {}
}
