//! IPv6 header parsing (TC only). The base header, then the extension
//! headers a Service packet may carry, up to `MAX_IPV6_EXT_HEADERS`, to the
//! TCP or UDP header. Reads go through `bpf_skb_load_bytes` (`ctx.load`):
//! the walk's offsets depend on the packet, and the helper checks each
//! read against the packet's length itself.
use aya_ebpf::programs::TcContext;
use proxy_common::{Addr6, Counter, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    family::V6,
    parse::{ETH_LEN, Flow, ptr_at},
    wire,
};

/// Extension headers walked before giving up (and passing the packet):
/// bounds the verifier's work; real Service traffic carries none or one.
pub const MAX_IPV6_EXT_HEADERS: u32 = 4;
pub const IPV6_HDR_LEN: usize = 40;
pub const IPV6_VERSION: u8 = 6;
/// Offsets within the base header.
pub const IPV6_NEXT_HEADER_OFF: usize = 6;
pub const IPV6_HOP_LIMIT_OFF: usize = 7;
/// The traffic class and flow label: the first word without the version.
const IPV6_FLOWINFO_MASK: u32 = 0x0fff_ffff;
pub const IPV6_PAYLOAD_LEN_OFF: usize = 4;
pub const IPV6_SRC_OFF: usize = 8;
pub const IPV6_DST_OFF: usize = 24;
pub const IPV6_ADDR_LEN: usize = 16;
/// Extension header numbers (IANA).
const NEXTHDR_HOP_BY_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_DEST_OPTIONS: u8 = 60;
/// Hop-by-hop, routing and destination options give their length in
/// 8-byte units, not counting the first 8.
const EXT_LEN_UNIT: usize = 8;
const FRAGMENT_HDR_LEN: usize = 8;
/// Fragment offset (13 bits) and the more-fragments bit of the fragment
/// header's second word; the two bits between are reserved.
const FRAG_OFFSET_AND_MF: u16 = 0xfff9;
/// TCP header without options; UDP header.
const TCP_HDR_LEN: usize = 20;
const UDP_HDR_LEN: usize = 8;
const TCP_FLAGS_OFF: usize = 13;

/// Reads an address from the packet (it may sit at any alignment).
#[inline(always)]
fn addr_at(header: *const u8, off: usize) -> Addr6 {
    unsafe { wire::load_addr6(header.add(off)) }
}

#[inline(always)]
fn is_extension(next: u8) -> bool {
    matches!(
        next,
        NEXTHDR_HOP_BY_HOP | NEXTHDR_ROUTING | NEXTHDR_FRAGMENT | NEXTHDR_DEST_OPTIONS
    )
}

/// The TCP or UDP flow of an IPv6 frame (its EtherType already checked).
#[inline(always)]
pub fn parse_flow6(ctx: &TcContext) -> Result<Flow<V6>, Counter> {
    // Direct access for the fixed header: no copy on the stack.
    let header =
        ptr_at::<[u8; IPV6_HDR_LEN]>(ctx, ETH_LEN).ok_or(Counter::DropTruncated)? as *const u8;
    let (version, mut next) = unsafe { (*header >> 4, *header.add(IPV6_NEXT_HEADER_OFF)) };
    if version != IPV6_VERSION {
        return Err(Counter::DropBadIpHeader);
    }
    let mut off = ETH_LEN + IPV6_HDR_LEN;
    let mut walked = 0;
    while walked < MAX_IPV6_EXT_HEADERS && is_extension(next) {
        // Every extension header starts with its next header and a length byte.
        let start: [u8; 4] = ctx.load(off).map_err(|_| Counter::DropTruncated)?;
        if next == NEXTHDR_FRAGMENT {
            if u16::from_be_bytes([start[2], start[3]]) & FRAG_OFFSET_AND_MF != 0 {
                return Err(Counter::PassFragment);
            }
            // An atomic fragment (offset 0, no more): the whole datagram.
            off += FRAGMENT_HDR_LEN;
        } else {
            off += (start[1] as usize + 1) * EXT_LEN_UNIT;
        }
        next = start[0];
        walked += 1;
    }
    if is_extension(next) {
        return Err(Counter::PassIpv6ExtHeaders);
    }
    let l4_len = match next {
        IPPROTO_TCP => TCP_HDR_LEN,
        IPPROTO_UDP => UDP_HDR_LEN,
        // ICMPv6 (neighbour discovery included) and everything else.
        _ => return Err(Counter::PassOtherProtocol),
    };
    // The whole L4 header must be there, as on the IPv4 path.
    if off + l4_len > ctx.len() as usize {
        return Err(Counter::DropTruncated);
    }
    let (ports, tcp_flags) = if walked == 0 {
        l4_direct(ctx, next)?
    } else {
        l4_loaded(ctx, off, next)?
    };
    // The base header again: the helper calls above invalidated `header`.
    let header =
        ptr_at::<[u8; IPV6_HDR_LEN]>(ctx, ETH_LEN).ok_or(Counter::DropTruncated)? as *const u8;
    Ok(Flow {
        src_addr: addr_at(header, IPV6_SRC_OFF),
        dst_addr: addr_at(header, IPV6_DST_OFF),
        src_port: u16::from_ne_bytes([ports[0], ports[1]]),
        dst_port: u16::from_ne_bytes([ports[2], ports[3]]),
        proto: next,
        tcp_flags,
        l4_off: off,
    })
}

/// Ports and TCP flags right after the base header (no extension headers,
/// the common case): a constant offset, read in place like IPv4's, without
/// the two helper calls of [`l4_loaded`].
#[inline(always)]
fn l4_direct(ctx: &TcContext, proto: u8) -> Result<([u8; 4], u8), Counter> {
    const L4_OFF: usize = ETH_LEN + IPV6_HDR_LEN;
    let ports = ptr_at::<[u8; 4]>(ctx, L4_OFF).ok_or(Counter::DropTruncated)?;
    let flags = if proto == IPPROTO_TCP {
        let flags = ptr_at::<u8>(ctx, L4_OFF + TCP_FLAGS_OFF).ok_or(Counter::DropTruncated)?;
        unsafe { *flags }
    } else {
        0
    };
    Ok((unsafe { *ports }, flags))
}

/// Ports and TCP flags at `off`, which depends on the extension headers.
#[inline(always)]
fn l4_loaded(ctx: &TcContext, off: usize, proto: u8) -> Result<([u8; 4], u8), Counter> {
    let ports: [u8; 4] = ctx.load(off).map_err(|_| Counter::DropTruncated)?;
    let flags = if proto == IPPROTO_TCP {
        ctx.load::<u8>(off + TCP_FLAGS_OFF)
            .map_err(|_| Counter::DropTruncated)?
    } else {
        0
    };
    Ok((ports, flags))
}

/// A FIB lookup's `flowinfo` (wire order) from a header's first four bytes.
#[inline(always)]
pub fn flowinfo(first_word: [u8; 4]) -> u32 {
    (u32::from_be_bytes(first_word) & IPV6_FLOWINFO_MASK).to_be()
}

const _: () = assert!(IPV6_DST_OFF + IPV6_ADDR_LEN == IPV6_HDR_LEN);
