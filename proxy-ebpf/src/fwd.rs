//! Sending translated external packets straight to their egress (TC).
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
};

const AF_INET: u8 = 2;
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
    params.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let found = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb as *mut _,
            &mut params,
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
    decrement_ttl(ctx, ttl, proto)?;
    let action = if resolved {
        unsafe { bpf_redirect(params.ifindex, 0) }
    } else {
        // The kernel looks the route up again and resolves the neighbour.
        unsafe { bpf_redirect_neigh(params.ifindex, core::ptr::null_mut(), 0, 0) }
    };
    count(Counter::TcRedirected);
    Some(action as i32)
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
