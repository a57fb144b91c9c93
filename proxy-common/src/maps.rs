//! Map names, default sizes and `#[repr(C)]` key/value layouts.
//!
//! Every struct has explicit padding fields so that its size has no holes
//! (bytemuck's `Pod` derive checks that at compile time on the user side),
//! and the kernel never hashes uninitialised bytes.

use core::net::{Ipv4Addr, Ipv6Addr};

/// `AffinityKey` → `AffinityValue`, LRU: the endpoint each client of a
/// `sessionAffinity: ClientIP` frontend was last sent to, and when.
pub const AFFINITY: &str = "VIPR_AFFINITY";
pub const DEFAULT_MAX_AFFINITY: u32 = 262_144;
/// `Affinity6Key` → `AffinityValue`, LRU: the IPv6 twin of `VIPR_AFFINITY`,
/// sized like it.
pub const AFFINITY6: &str = "VIPR_AFFINITY6";
/// `AffinityMember` → timeout in seconds (`u32`): the endpoints an affinity
/// may still lead to (those new connections may use), per frontend.
pub const AFFINITY_MEMBERS: &str = "VIPR_AFFINITY_MEMBERS";

/// `ServiceKey` → `ServiceValue`: one entry per (frontend IP, port, protocol).
pub const SERVICES: &str = "VIPR_SERVICES";
/// `SlotKey` → backend id (`u32`): the backends a service picks from, slots `0..backend_count`.
pub const SLOTS: &str = "VIPR_SLOTS";
/// backend id (`u32`) → `BackendValue`.
pub const BACKENDS: &str = "VIPR_BACKENDS";
/// `CtKey` → `CtValue`, a plain hash (never evicts): tracked flows, both
/// directions. The agent removes entries whose flow is over or idle past
/// its state's timeout; when full, new flows are dropped, old ones kept.
pub const CONNTRACK: &str = "VIPR_CONNTRACK";
/// IPv6 has maps of its own, with 16-byte addresses, so IPv4 keys stay 8
/// bytes. Service and backend ids are one id space across both families:
/// `VIPR_SLOTS` and `VIPR_AFFINITY_MEMBERS` are shared, and the slots of an
/// IPv6 frontend hold ids of `VIPR_BACKENDS6` entries.
/// `Service6Key` → `ServiceValue`.
pub const SERVICES6: &str = "VIPR_SERVICES6";
/// backend id (`u32`) → `Backend6Value`.
pub const BACKENDS6: &str = "VIPR_BACKENDS6";
/// `Ct6Key` → `Ct6Value`, a plain hash like `VIPR_CONNTRACK`.
pub const CONNTRACK6: &str = "VIPR_CONNTRACK6";
/// Per-CPU `u64` array indexed by [`crate::Counter`].
pub const COUNTERS: &str = "VIPR_COUNTERS";
/// LPM trie of `SourceRangeKey` → `u8` (1): the client prefixes a service
/// with `SVC_FLAG_SOURCE_RANGES` accepts (loadBalancerSourceRanges).
pub const SOURCE_RANGES: &str = "VIPR_SOURCE_RANGES";
pub const DEFAULT_MAX_SOURCE_RANGES: u32 = 16_384;
/// LPM trie of `SourceRange6Key` → `u8` (1): the IPv6 twin of
/// `VIPR_SOURCE_RANGES`, sized like it.
pub const SOURCE_RANGES6: &str = "VIPR_SOURCE_RANGES6";
/// `SockRevKey` → `SockRevValue`, LRU: for sockets the cgroup hooks sent to
/// a backend, the frontend that `recvmsg`/`getpeername` must show instead.
pub const SOCK_REVNAT: &str = "VIPR_SOCK_REVNAT";
pub const DEFAULT_MAX_SOCK_REVNAT: u32 = 262_144;
/// `SockRev6Key` → `SockRev6Value`, LRU: the IPv6 twin of `VIPR_SOCK_REVNAT`
/// (v4-mapped sockets use the IPv4 map), sized like it.
pub const SOCK_REVNAT6: &str = "VIPR_SOCK_REVNAT6";

/// Which side a frontend answers: traffic pods and the node itself send, or
/// traffic arriving on the node's external interfaces. One service port can have both, with
/// different endpoint sets (traffic policies).
pub const SCOPE_INTERNAL: u8 = 0;
pub const SCOPE_EXTERNAL: u8 = 1;

/// `ServiceValue::flags` bits.
/// The slots hold only this node's endpoints (a `Local` traffic policy).
pub const SVC_FLAG_LOCAL_ONLY: u16 = 1 << 0;
/// The service has endpoints somewhere: with no slots here, drop (policy)
/// rather than refuse (no endpoints at all).
pub const SVC_FLAG_HAS_ENDPOINTS: u16 = 1 << 1;
/// SNAT new flows to remote endpoints to the node address (externalTrafficPolicy Cluster).
pub const SVC_FLAG_MASQUERADE: u16 = 1 << 2;
/// Only clients in `VIPR_SOURCE_RANGES` for this service are accepted.
pub const SVC_FLAG_SOURCE_RANGES: u16 = 1 << 3;
/// `sessionAffinity: ClientIP`: a client's new connections go to the
/// endpoint its last one went to, while `VIPR_AFFINITY_MEMBERS` has it.
pub const SVC_FLAG_AFFINITY: u16 = 1 << 4;
/// The Service is gone: established flows follow conntrack, anything else
/// passes untouched. Kept until the agent's next full sync.
pub const SVC_FLAG_DRAINING: u16 = 1 << 5;

/// `BackendValue::flags` bits.
/// The endpoint runs on this node (no SNAT needed to get its replies back).
pub const BACKEND_FLAG_LOCAL: u8 = 1 << 0;
/// The endpoint is neither ready nor serving (terminating and done): no new
/// connections, and UDP flows pinned to it move on.
pub const BACKEND_FLAG_NOT_SERVING: u8 = 1 << 1;

/// Source address of hairpin flows (a pod reaching its own Service and
/// landing on itself): link-local and never a pod's, so the pod's reply comes
/// back through its veth where the translation is undone. Wire order.
pub const HAIRPIN_IPV4: [u8; 4] = [169, 254, 7, 1];

/// Source ports for masqueraded flows: above the kernel's default ephemeral
/// range (32768–60999), so never one of the node's own connections.
pub const SNAT_PORT_FIRST: u16 = 61_000;
pub const SNAT_PORT_COUNT: u16 = 4_536;

/// Default capacities; the agent may override them at load time.
pub const DEFAULT_MAX_SERVICES: u32 = 65_536;
pub const DEFAULT_MAX_SLOTS: u32 = 262_144;
pub const DEFAULT_MAX_BACKENDS: u32 = 262_144;
pub const DEFAULT_MAX_CONNTRACK: u32 = 262_144;

/// A service frontend: destination address, port and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ServiceKey {
    /// IPv4 address, network byte order.
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    pub proto: u8,
    /// `SCOPE_INTERNAL` or `SCOPE_EXTERNAL`.
    pub scope: u8,
}

impl ServiceKey {
    /// A frontend for traffic from pods.
    pub fn new(addr: Ipv4Addr, port: u16, proto: u8) -> Self {
        Self::scoped(addr, port, proto, SCOPE_INTERNAL)
    }
    pub fn scoped(addr: Ipv4Addr, port: u16, proto: u8, scope: u8) -> Self {
        Self {
            addr: wire_addr(addr),
            port: port.to_be(),
            proto,
            scope,
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
    /// `BACKEND_FLAG_*` bits.
    pub flags: u8,
}

impl BackendValue {
    pub fn new(addr: Ipv4Addr, port: u16, proto: u8) -> Self {
        Self {
            addr: wire_addr(addr),
            port: port.to_be(),
            proto,
            flags: 0,
        }
    }
    pub fn local(self) -> Self {
        Self {
            flags: self.flags | BACKEND_FLAG_LOCAL,
            ..self
        }
    }
    pub fn not_serving(self) -> Self {
        Self {
            flags: self.flags | BACKEND_FLAG_NOT_SERVING,
            ..self
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

impl CtKey {
    /// The key of the other direction of the same flow, from this entry's
    /// value: the kernel writes both with it, the agent's sweep pairs them.
    pub fn partner(&self, value: &CtValue) -> CtKey {
        let masqueraded = value.flags & CT_FLAG_SNAT != 0;
        if self.direction == CT_FORWARD {
            // The backend answers the client, or the node address it hides behind.
            let (to_addr, to_port) = if masqueraded {
                (value.snat_addr, value.snat_port)
            } else {
                (self.src_addr, self.src_port)
            };
            CtKey {
                src_addr: value.nat_addr,
                dst_addr: to_addr,
                src_port: value.nat_port,
                dst_port: to_port,
                proto: self.proto,
                direction: CT_REVERSE,
                _pad: [0; 2],
            }
        } else {
            // The client sent to the frontend the reply is restored to.
            let (client_addr, client_port) = if masqueraded {
                (value.snat_addr, value.snat_port)
            } else {
                (self.dst_addr, self.dst_port)
            };
            CtKey {
                src_addr: client_addr,
                dst_addr: value.nat_addr,
                src_port: client_port,
                dst_port: value.nat_port,
                proto: self.proto,
                direction: CT_FORWARD,
                _pad: [0; 2],
            }
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct CtValue {
    /// Forward entries: the backend the flow is pinned to.
    pub backend_id: u32,
    /// Forward: the backend address; reverse: the frontend address to restore. Network order.
    pub nat_addr: u32,
    /// With `CT_FLAG_SNAT` — forward: the node address the source becomes;
    /// reverse: the client address the destination becomes again. Network order.
    pub snat_addr: u32,
    /// Forward: the backend port; reverse: the frontend port to restore. Network order.
    pub nat_port: u16,
    /// With `CT_FLAG_SNAT`: the port paired with `snat_addr`. Network order.
    pub snat_port: u16,
    /// `CT_FLAG_*` bits.
    pub flags: u8,
    pub _pad: [u8; 3],
    /// When a packet last used this entry: whole seconds of the kernel's
    /// coarse monotonic clock (CLOCK_MONOTONIC), refreshed at most once a
    /// second per entry.
    pub last_seen: u32,
}

/// The flow's source was translated too (masquerade).
pub const CT_FLAG_SNAT: u8 = 1 << 0;
/// Reverse entries: a reply has used it (the flow is established).
pub const CT_FLAG_REPLIED: u8 = 1 << 1;
/// A TCP FIN went this entry's way (forward: the client's, reverse: the backend's).
pub const CT_FLAG_FIN: u8 = 1 << 2;
/// A TCP RST went this entry's way: the connection is over.
pub const CT_FLAG_RST: u8 = 1 << 3;
/// Direct server return: on the ingress node, a forward entry whose
/// packets keep the client's address (the replies never come back this
/// way); on the endpoint's node, both entries of a flow learnt from the
/// DSR option, the reverse one restoring the frontend as the replies' source.
pub const CT_FLAG_DSR: u8 = 1 << 4;

/// An IPv6 address as its 16 wire bytes, in four native `u32` words.
pub type Addr6 = [u32; 4];

/// An IPv6 service frontend; the IPv6 twin of [`ServiceKey`]. No padding is
/// needed: 16 + 2 + 1 + 1 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Service6Key {
    /// IPv6 address, network byte order.
    pub addr: Addr6,
    /// Port, network byte order.
    pub port: u16,
    pub proto: u8,
    /// `SCOPE_INTERNAL` or `SCOPE_EXTERNAL`.
    pub scope: u8,
}

impl Service6Key {
    /// A frontend for traffic from pods.
    pub fn new(addr: Ipv6Addr, port: u16, proto: u8) -> Self {
        Self::scoped(addr, port, proto, SCOPE_INTERNAL)
    }
    pub fn scoped(addr: Ipv6Addr, port: u16, proto: u8, scope: u8) -> Self {
        Self {
            addr: wire_addr6(addr),
            port: port.to_be(),
            proto,
            scope,
        }
    }
    pub fn ip(&self) -> Ipv6Addr {
        host_addr6(self.addr)
    }
    pub fn port(&self) -> u16 {
        u16::from_be(self.port)
    }
}

/// An IPv6 endpoint; the IPv6 twin of [`BackendValue`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Backend6Value {
    /// IPv6 address, network byte order.
    pub addr: Addr6,
    /// Port, network byte order.
    pub port: u16,
    pub proto: u8,
    /// `BACKEND_FLAG_*` bits.
    pub flags: u8,
}

impl Backend6Value {
    pub fn new(addr: Ipv6Addr, port: u16, proto: u8) -> Self {
        Self {
            addr: wire_addr6(addr),
            port: port.to_be(),
            proto,
            flags: 0,
        }
    }
    pub fn local(self) -> Self {
        Self {
            flags: self.flags | BACKEND_FLAG_LOCAL,
            ..self
        }
    }
    pub fn not_serving(self) -> Self {
        Self {
            flags: self.flags | BACKEND_FLAG_NOT_SERVING,
            ..self
        }
    }
    pub fn ip(&self) -> Ipv6Addr {
        host_addr6(self.addr)
    }
    pub fn port(&self) -> u16 {
        u16::from_be(self.port)
    }
}

/// An IPv6 flow as seen in one direction; the fields of [`CtKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Ct6Key {
    /// Network byte order.
    pub src_addr: Addr6,
    /// Network byte order.
    pub dst_addr: Addr6,
    /// Network byte order.
    pub src_port: u16,
    /// Network byte order.
    pub dst_port: u16,
    pub proto: u8,
    /// `CT_FORWARD` (client → frontend) or `CT_REVERSE` (backend → client).
    pub direction: u8,
    pub _pad: [u8; 2],
}

impl Ct6Key {
    /// The key of the other direction of the same flow (see [`CtKey::partner`]).
    pub fn partner(&self, value: &Ct6Value) -> Ct6Key {
        let masqueraded = value.flags & CT_FLAG_SNAT != 0;
        if self.direction == CT_FORWARD {
            let (to_addr, to_port) = if masqueraded {
                (value.snat_addr, value.snat_port)
            } else {
                (self.src_addr, self.src_port)
            };
            Ct6Key {
                src_addr: value.nat_addr,
                dst_addr: to_addr,
                src_port: value.nat_port,
                dst_port: to_port,
                proto: self.proto,
                direction: CT_REVERSE,
                _pad: [0; 2],
            }
        } else {
            let (client_addr, client_port) = if masqueraded {
                (value.snat_addr, value.snat_port)
            } else {
                (self.dst_addr, self.dst_port)
            };
            Ct6Key {
                src_addr: client_addr,
                dst_addr: value.nat_addr,
                src_port: client_port,
                dst_port: value.nat_port,
                proto: self.proto,
                direction: CT_FORWARD,
                _pad: [0; 2],
            }
        }
    }
}

/// The fields of [`CtValue`] with IPv6 addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Ct6Value {
    /// Forward entries: the backend the flow is pinned to.
    pub backend_id: u32,
    /// Forward: the backend address; reverse: the frontend address to restore. Network order.
    pub nat_addr: Addr6,
    /// With `CT_FLAG_SNAT`: as [`CtValue::snat_addr`]. Network order.
    pub snat_addr: Addr6,
    /// Forward: the backend port; reverse: the frontend port to restore. Network order.
    pub nat_port: u16,
    /// With `CT_FLAG_SNAT`: the port paired with `snat_addr`. Network order.
    pub snat_port: u16,
    /// `CT_FLAG_*` bits.
    pub flags: u8,
    pub _pad: [u8; 3],
    /// As [`CtValue::last_seen`].
    pub last_seen: u32,
}

/// Key of `VIPR_AFFINITY`: one client of one frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct AffinityKey {
    pub service_id: u32,
    /// Client address, network byte order.
    pub client_addr: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct AffinityValue {
    pub backend_id: u32,
    /// Seconds since boot (`bpf_ktime_get_ns`) of the client's last new
    /// connection: the timeout slides with new connections, as kube-proxy's.
    pub last_used_s: u32,
}

/// Key of `VIPR_AFFINITY6`: one IPv6 client of one frontend. No padding:
/// 4 + 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Affinity6Key {
    pub service_id: u32,
    /// Client address, network byte order.
    pub client_addr: Addr6,
}

/// Key of `VIPR_AFFINITY_MEMBERS`: an endpoint an affinity may lead to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct AffinityMember {
    pub service_id: u32,
    pub backend_id: u32,
}

/// Key of `VIPR_SOCK_REVNAT`: one socket talking to one backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SockRevKey {
    /// `bpf_get_socket_cookie`: unique per socket for the kernel's lifetime.
    pub cookie: u64,
    /// Backend address, network byte order.
    pub addr: u32,
    /// Backend port, network byte order.
    pub port: u16,
    pub _pad: u16,
}

/// The frontend a socket asked for. `service_id` detects staleness: the
/// entry counts only while `VIPR_SERVICES` still maps the frontend to it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SockRevValue {
    /// Frontend address, network byte order.
    pub addr: u32,
    /// Frontend port, network byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
    pub service_id: u32,
}

impl SockRevValue {
    /// The frontend the socket asked for (socket hooks serve the internal scope).
    pub fn frontend(&self) -> ServiceKey {
        ServiceKey {
            addr: self.addr,
            port: self.port,
            proto: self.proto,
            scope: SCOPE_INTERNAL,
        }
    }
}

/// Key of `VIPR_SOCK_REVNAT6`: one IPv6 socket talking to one IPv6 backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SockRev6Key {
    /// `bpf_get_socket_cookie`.
    pub cookie: u64,
    /// Backend address, network byte order.
    pub addr: Addr6,
    /// Backend port, network byte order.
    pub port: u16,
    /// Up to the 8-byte alignment the cookie gives the struct.
    pub _pad: [u8; 6],
}

/// The IPv6 frontend a socket asked for; as [`SockRevValue`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SockRev6Value {
    /// Frontend address, network byte order.
    pub addr: Addr6,
    /// Frontend port, network byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
    pub service_id: u32,
}

impl SockRev6Value {
    /// The frontend the socket asked for (socket hooks serve the internal scope).
    pub fn frontend(&self) -> Service6Key {
        Service6Key {
            addr: self.addr,
            port: self.port,
            proto: self.proto,
            scope: SCOPE_INTERNAL,
        }
    }
}

/// Which sockets the cgroup hooks translate (global `SOCKET_LB_SCOPE`):
/// only those in the agent's own network namespace (the node's), or all
/// in the cgroup, pods included.
pub const SOCKET_LB_HOST: u8 = 0;
pub const SOCKET_LB_ALL: u8 = 1;

/// Key of `VIPR_SOURCE_RANGES` (the data part; the LPM prefix length counts
/// 32 bits of `service_id` plus the CIDR's length).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SourceRangeKey {
    /// Big-endian, so that it is the leading 32 bits the trie matches on.
    pub service_id_be: u32,
    /// Network byte order.
    pub addr: u32,
}

/// Key of `VIPR_SOURCE_RANGES6` (the data part; the LPM prefix length
/// counts 32 bits of `service_id` plus the CIDR's length, up to 128).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SourceRange6Key {
    /// Big-endian, so that it is the leading 32 bits the trie matches on.
    pub service_id_be: u32,
    /// Network byte order.
    pub addr: Addr6,
}

/// IPv4 address as its wire bytes loaded into a native `u32`.
pub fn wire_addr(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

pub fn host_addr(wire: u32) -> Ipv4Addr {
    Ipv4Addr::from(wire.to_ne_bytes())
}

/// IPv6 address as its wire bytes in four native `u32` words.
pub fn wire_addr6(addr: Ipv6Addr) -> Addr6 {
    let o = addr.octets();
    let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
    [word(0), word(4), word(8), word(12)]
}

pub fn host_addr6(wire: Addr6) -> Ipv6Addr {
    let mut octets = [0u8; 16];
    for (chunk, word) in octets.chunks_exact_mut(4).zip(wire) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    Ipv6Addr::from(octets)
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
    unsafe impl aya::Pod for SourceRangeKey {}
    unsafe impl aya::Pod for SockRevKey {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for AffinityMember {}
    unsafe impl aya::Pod for SockRevValue {}
    unsafe impl aya::Pod for crate::TraceRecord {}
    unsafe impl aya::Pod for Service6Key {}
    unsafe impl aya::Pod for Backend6Value {}
    unsafe impl aya::Pod for Ct6Key {}
    unsafe impl aya::Pod for Ct6Value {}
    unsafe impl aya::Pod for SockRev6Key {}
    unsafe impl aya::Pod for SockRev6Value {}
    unsafe impl aya::Pod for SourceRange6Key {}
    unsafe impl aya::Pod for Affinity6Key {}
    unsafe impl aya::Pod for crate::MaglevRef {}
}
