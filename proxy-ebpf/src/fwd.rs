//! Sending translated external packets straight to their egress (TC), in
//! either family.
//!
//! A masqueraded packet leaves with the node's own address as source, and a
//! restored reply with the frontend's. The stack's input routing drops both
//! as martians unless `accept_local` is on, a sysctl an unprivileged agent
//! may not be allowed to set. A FIB lookup and a redirect skip input routing
//! altogether, as `XDP_TX` does on the XDP path. It also skips netfilter's
//! FORWARD and POSTROUTING hooks, as other eBPF service proxies do. What the
//! FIB cannot route here (no route, too big for the link MTU, TTL running
//! out) goes to the stack translated; without `accept_local` the stack
//! drops it, with no ICMP error to the client.
use core::mem::offset_of;

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams},
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};
use proxy_common::Counter;

use crate::{
    maps::count,
    parse::{ETH_LEN, IP_CSUM_OFF},
    parse6::{
        IPV6_DST_OFF, IPV6_HDR_LEN, IPV6_HOP_LIMIT_OFF, IPV6_NEXT_HEADER_OFF, IPV6_SRC_OFF,
        flowinfo,
    },
};

const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
const IPV4_MIN_LEN: usize = core::mem::size_of::<Ipv4Hdr>();
const TOS: usize = offset_of!(Ipv4Hdr, tos);
const TTL: usize = offset_of!(Ipv4Hdr, ttl);
const PROTO: usize = offset_of!(Ipv4Hdr, proto);
const SRC: usize = offset_of!(Ipv4Hdr, src_addr);
const DST: usize = offset_of!(Ipv4Hdr, dst_addr);
const ETH_DST_OFF: usize = offset_of!(EthHdr, dst_addr);
const ETH_SRC_OFF: usize = offset_of!(EthHdr, src_addr);
/// The TTL shares its checksum word with the protocol byte.
const TTL_WORD_SIZE: u64 = 2;

/// Redirects the packet to the interface the FIB names, with the MAC
/// addresses filled in (or left to the neighbour table when the next hop is
/// not resolved yet) and the TTL decremented. `None`: the stack should
/// route it.
#[inline(always)]
pub fn redirect_to_egress(ctx: &TcContext) -> Option<i32> {
    // Raw bytes: a typed header would hold any protocol byte in an enum.
    let ip: [u8; IPV4_MIN_LEN] = ctx.load(ETH_LEN).ok()?;
    let (ttl, proto) = (ip[TTL], ip[PROTO]);
    if ttl <= 1 {
        return None;
    }
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = proto;
    // tot_len stays 0: the kernel then checks the MTU against the skb
    // itself, which knows GRO-merged packets, instead of a header length.
    params.__bindgen_anon_2.tos = ip[TOS];
    params.__bindgen_anon_3.ipv4_src =
        u32::from_ne_bytes([ip[SRC], ip[SRC + 1], ip[SRC + 2], ip[SRC + 3]]);
    params.__bindgen_anon_4.ipv4_dst =
        u32::from_ne_bytes([ip[DST], ip[DST + 1], ip[DST + 2], ip[DST + 3]]);
    let resolved = next_hop(ctx, &mut params)?;
    decrement_ttl(ctx, ttl, proto)?;
    Some(redirect(params.ifindex, resolved))
}

/// The IPv6 twin of [`redirect_to_egress`]; the hop limit has no
/// checksum. A subprogram, so its lookup parameters never sit on the
/// frames of the decision chain that called it.
#[inline(never)]
pub fn redirect_to_egress6(ctx: &TcContext) -> Option<i32> {
    let ip: [u8; IPV6_HDR_LEN] = ctx.load(ETH_LEN).ok()?;
    let hop_limit = ip[IPV6_HOP_LIMIT_OFF];
    if hop_limit <= 1 {
        return None;
    }
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.family = AF_INET6;
    // The header's, or the first extension header's: only policy routing reads it.
    params.l4_protocol = ip[IPV6_NEXT_HEADER_OFF];
    params.__bindgen_anon_2.flowinfo = flowinfo([ip[0], ip[1], ip[2], ip[3]]);
    params.__bindgen_anon_3.ipv6_src = address_words(&ip, IPV6_SRC_OFF);
    params.__bindgen_anon_4.ipv6_dst = address_words(&ip, IPV6_DST_OFF);
    let resolved = next_hop(ctx, &mut params)?;
    ctx.store(ETH_LEN + IPV6_HOP_LIMIT_OFF, &(hop_limit - 1), 0)
        .ok()?;
    Some(redirect(params.ifindex, resolved))
}

/// Looks the route up from the interface the packet is on and, when the
/// neighbour is known, writes the MAC addresses: `Some(resolved)`, or
/// `None` when only the stack can route it.
#[inline(always)]
fn next_hop(ctx: &TcContext, params: &mut FibParams) -> Option<bool> {
    params.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let found = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb as *mut _,
            params,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    let resolved = found == BPF_FIB_LKUP_RET_SUCCESS as i64;
    if !resolved && found != BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        return None;
    }
    if resolved {
        ctx.store(ETH_DST_OFF, &params.dmac, 0).ok()?;
        ctx.store(ETH_SRC_OFF, &params.smac, 0).ok()?;
    }
    Some(resolved)
}

/// Four address words as they sit in the packet.
#[inline(always)]
fn address_words(ip: &[u8; IPV6_HDR_LEN], off: usize) -> [u32; 4] {
    let mut words = [0u32; 4];
    for (i, word) in words.iter_mut().enumerate() {
        let at = off + i * 4;
        *word = u32::from_ne_bytes([ip[at], ip[at + 1], ip[at + 2], ip[at + 3]]);
    }
    words
}

/// Out of `ifindex`, straight (`resolved`: the MACs are filled in) or
/// through the neighbour table.
#[inline(always)]
fn redirect(ifindex: u32, resolved: bool) -> i32 {
    let action = if resolved {
        unsafe { bpf_redirect(ifindex, 0) }
    } else {
        // The kernel looks the route up again and resolves the neighbour.
        unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) }
    };
    count(Counter::TcRedirected);
    action as i32
}

/// What the stack would have done while forwarding.
#[inline(always)]
fn decrement_ttl(ctx: &TcContext, ttl: u8, proto: u8) -> Option<()> {
    // Checksum words as they sit in the packet.
    let old = u16::from_ne_bytes([ttl, proto]);
    let new = u16::from_ne_bytes([ttl - 1, proto]);
    ctx.l3_csum_replace(IP_CSUM_OFF, old as u64, new as u64, TTL_WORD_SIZE)
        .ok()?;
    ctx.store(ETH_LEN + TTL, &(ttl - 1), 0).ok()
}
