//! The one definition of everything the kernel programs and the agent share:
//! map names, map key/value layouts, counters, and load-time globals.
//!
//! Byte order: every address and port field holds the bytes exactly as they
//! appear on the wire (network byte order), so the kernel side copies them
//! straight from packet headers. Use the constructors here from userspace;
//! they do the conversion.
#![no_std]

pub mod counters;
pub mod maglev;
pub mod maps;
pub mod trace;

pub use counters::Counter;
pub use maglev::*;
pub use maps::*;
pub use trace::*;

/// IANA protocol numbers vipr load-balances.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMP: u8 = 1;

/// Names of the kernel programs, as the ELF object exports them.
pub mod programs {
    /// TC ingress of a pod's host-side interface: packets the pod sends.
    pub const FROM_POD: &str = "vipr_from_pod";
    /// TC egress of a pod's host-side interface: packets about to enter the pod.
    pub const TO_POD: &str = "vipr_to_pod";
    /// TC ingress of an external interface: NodePort, LoadBalancer and
    /// external-IP traffic, and replies to masqueraded flows.
    pub const FROM_EXTERNAL: &str = "vipr_from_external";
    /// TC egress of an external interface: replies of local endpoints to
    /// external clients.
    pub const TO_EXTERNAL: &str = "vipr_to_external";
    /// XDP on an external interface: the TC path's external ingress,
    /// translated and forwarded before the stack (falls back to TC).
    pub const XDP_EXTERNAL: &str = "vipr_xdp_external";
    /// Trivial TC program used only to probe for TCX (never on real traffic).
    pub const PROBE_TC: &str = "vipr_probe_tc";
    /// Trivial XDP program (passes everything): probes native/generic XDP,
    /// and runs on the peer of a veth external interface in native mode.
    pub const XDP_PASS: &str = "vipr_xdp_pass";
    /// cgroup `connect4`: TCP and connected UDP to a frontend go straight to a backend.
    pub const SOCK_CONNECT4: &str = "vipr_sock_connect4";
    /// cgroup `sendmsg4`: the same for each unconnected UDP datagram.
    pub const SOCK_SENDMSG4: &str = "vipr_sock_sendmsg4";
    /// cgroup `recvmsg4`: a UDP reply's source shows the frontend.
    pub const SOCK_RECVMSG4: &str = "vipr_sock_recvmsg4";
    /// cgroup `getpeername4`: the peer shows the frontend.
    pub const SOCK_GETPEERNAME4: &str = "vipr_sock_getpeername4";
    /// cgroup `connect6`: the same for IPv6 sockets, IPv6 frontends and
    /// v4-mapped IPv4 ones (`::ffff:a.b.c.d`, dual-stack sockets).
    pub const SOCK_CONNECT6: &str = "vipr_sock_connect6";
    /// cgroup `sendmsg6`: each unconnected UDP datagram of an IPv6 socket.
    pub const SOCK_SENDMSG6: &str = "vipr_sock_sendmsg6";
    /// cgroup `recvmsg6`: a UDP reply's source shows the frontend.
    pub const SOCK_RECVMSG6: &str = "vipr_sock_recvmsg6";
    /// cgroup `getpeername6`: the peer shows the frontend.
    pub const SOCK_GETPEERNAME6: &str = "vipr_sock_getpeername6";
    /// Only in the trace copy: the socket hooks' decision for a packet's
    /// tuple, since the kernel cannot test-run cgroup socket programs.
    pub const TRACE_HOST: &str = "vipr_trace_host";
}

/// Names of globals the agent sets when it loads the object.
pub mod globals {
    /// `u32`: seed of the flow hash that picks a backend.
    pub const HASH_SEED: &str = "HASH_SEED";
    /// `u32`, wire order: the node address masqueraded flows leave with.
    pub const NODE_IPV4: &str = "NODE_IPV4";
    /// `[u32; 4]`, wire order: as `NODE_IPV4`, for IPv6 flows; all zero: none.
    pub const NODE_IPV6: &str = "NODE_IPV6";
    /// `u64`: the agent's network namespace cookie (the node's).
    pub const NETNS_COOKIE: &str = "NETNS_COOKIE";
    /// `u8`: `SOCKET_LB_HOST` or `SOCKET_LB_ALL`.
    pub const SOCKET_LB_SCOPE: &str = "SOCKET_LB_SCOPE";
    /// `u8`: 1 in the trace copy `vipr trace` runs, which writes
    /// `VIPR_TRACE_RECORD`; 0 in the live programs.
    pub const TRACE: &str = "TRACE";
    /// `u8`: `LB_MODE_SNAT`, `LB_MODE_DSR` or `LB_MODE_HYBRID`: how
    /// external flows to another node's endpoint reach it.
    pub const LB_MODE: &str = "LB_MODE";
}

/// `--lb-mode snat`: external flows to another node's endpoint are
/// masqueraded behind this node (the default).
pub const LB_MODE_SNAT: u8 = 0;
/// `--lb-mode dsr`: they keep the client's address, and the frontend
/// travels in an IPv4 option or an IPv6 destination options header; the
/// endpoint's node answers the client itself.
pub const LB_MODE_DSR: u8 = 1;
/// `--lb-mode hybrid`: DSR for TCP, masquerade for UDP.
pub const LB_MODE_HYBRID: u8 = 2;

/// The IPv4 option DSR carries the frontend in: copied into fragments
/// (0x80), class 0, number 26; 8 bytes: type, length, port, address
/// (Cilium's layout, so a capture reads the same).
pub const DSR_OPTION_TYPE: u8 = 0x9a;
pub const DSR_OPTION_LEN: u8 = 8;

/// IPv6 DSR: the frontend travels in a Destination Options extension
/// header right after the fixed header (IPv6 has no header options). Its
/// one option's type: the top two bits 00 (a node that does not know it
/// skips it), bit 0x20 clear (it does not change en route); Cilium's
/// number, so a capture reads the same.
pub const DSR6_OPTION_TYPE: u8 = 0x1b;
/// The option's data: the frontend's 16-byte address, its 2-byte port and
/// 2 zero bytes, so that the header ends on an 8-byte boundary (padding
/// inside the option's data, no PadN option).
pub const DSR6_OPTION_LEN: u8 = 20;
/// The whole extension header: next header, length, option type, option
/// length, then the option's data.
pub const DSR6_HEADER_LEN: u8 = 4 + DSR6_OPTION_LEN;
/// The header's length field: in 8-byte units beyond the first 8.
pub const DSR6_HEADER_LEN_FIELD: u8 = DSR6_HEADER_LEN / 8 - 1;
/// IANA's number of the Destination Options header.
pub const IPPROTO_DSTOPTS: u8 = 60;
const _: () = assert!(DSR6_HEADER_LEN.is_multiple_of(8));

#[cfg(test)]
mod layout_tests;
