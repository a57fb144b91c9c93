//! Refusing an IPv6 connection to a service with no endpoints, as
//! `reject.rs` does for IPv4: a TCP RST, or ICMPv6 destination unreachable
//! / port unreachable (RFC 4443 §3.1), sent back out of the interface the
//! packet came in on.
use aya_ebpf::{helpers::bpf_skb_load_bytes, programs::TcContext};
use proxy_common::{Addr6, IPPROTO_TCP};

use crate::{
    family::V6,
    parse::{ETH_LEN, Flow, TCP_FLAG_ACK, TCP_FLAG_FIN, TCP_FLAG_RST, TCP_FLAG_SYN},
    parse6::{
        IPV6_ADDR_LEN, IPV6_DST_OFF, IPV6_HDR_LEN, IPV6_HOP_LIMIT_OFF, IPV6_NEXT_HEADER_OFF,
        IPV6_PAYLOAD_LEN_OFF, IPV6_SRC_OFF,
    },
    reject::{fold, send_back, sum_words},
};

const TCP_LEN: usize = 20;
const ICMP6_HDR_LEN: usize = 8;
/// The error quotes the start of the offending packet: its base header and
/// the 8 bytes after it (RFC 4443 asks for as much as fits; this is what
/// identifies the flow).
const ICMP6_QUOTE_LEN: usize = IPV6_HDR_LEN + 8;
const RST_FRAME_LEN: usize = ETH_LEN + IPV6_HDR_LEN + TCP_LEN;
const ICMP6_FRAME_LEN: usize = ETH_LEN + IPV6_HDR_LEN + ICMP6_HDR_LEN + ICMP6_QUOTE_LEN;
const NEXTHDR_ICMPV6: u8 = 58;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PORT_UNREACH: u8 = 4;
const HOP_LIMIT: u8 = 64;
/// Version 6, traffic class and flow label 0.
const IPV6_VERSION_BYTE: u8 = 0x60;
const ETHERTYPE_IPV6: [u8; 2] = [0x86, 0xdd];
const ETH_ALEN: usize = 6;
const ETH_MACS_LEN: usize = 2 * ETH_ALEN;
const TCP_DOFF_NO_OPTIONS: u8 = 5 << 4;

/// Copies `dst.len()` bytes of the packet at `offset` straight into `dst`
/// (`TcContext::load_bytes` may ask the helper for 0 bytes, which the
/// verifier refuses; these lengths are constants).
#[inline(always)]
fn load_into(ctx: &TcContext, offset: usize, dst: &mut [u8]) -> Result<(), i64> {
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            offset as u32,
            dst.as_mut_ptr() as *mut _,
            dst.len() as u32,
        )
    };
    if ret < 0 { Err(ret) } else { Ok(()) }
}

#[inline(always)]
fn addr_bytes(addr: Addr6) -> [u8; IPV6_ADDR_LEN] {
    let mut out = [0u8; IPV6_ADDR_LEN];
    out[0..4].copy_from_slice(&addr[0].to_ne_bytes());
    out[4..8].copy_from_slice(&addr[1].to_ne_bytes());
    out[8..12].copy_from_slice(&addr[2].to_ne_bytes());
    out[12..16].copy_from_slice(&addr[3].to_ne_bytes());
    out
}

/// An Ethernet header with the addresses swapped and an IPv6 header from
/// the service back to the client, carrying the rest of `frame`.
#[inline(always)]
fn write_reply_headers(
    ctx: &TcContext,
    frame: &mut [u8],
    flow: &Flow<V6>,
    next_header: u8,
) -> Result<(), i64> {
    // Both MACs straight into the frame, then swapped in place.
    load_into(ctx, 0, &mut frame[0..ETH_MACS_LEN])?;
    for i in 0..ETH_ALEN {
        frame.swap(i, i + ETH_ALEN);
    }
    frame[12..14].copy_from_slice(&ETHERTYPE_IPV6);
    let ip = ETH_LEN;
    let payload = (frame.len() - ETH_LEN - IPV6_HDR_LEN) as u16;
    frame[ip] = IPV6_VERSION_BYTE;
    frame[ip + IPV6_PAYLOAD_LEN_OFF..ip + IPV6_PAYLOAD_LEN_OFF + 2]
        .copy_from_slice(&payload.to_be_bytes());
    frame[ip + IPV6_NEXT_HEADER_OFF] = next_header;
    frame[ip + IPV6_HOP_LIMIT_OFF] = HOP_LIMIT;
    frame[ip + IPV6_SRC_OFF..ip + IPV6_SRC_OFF + IPV6_ADDR_LEN]
        .copy_from_slice(&addr_bytes(flow.dst_addr));
    frame[ip + IPV6_DST_OFF..ip + IPV6_DST_OFF + IPV6_ADDR_LEN]
        .copy_from_slice(&addr_bytes(flow.src_addr));
    Ok(())
}

/// The pseudo-header's sum (RFC 8200 §8.1): both addresses, the upper-layer
/// length and the next header.
#[inline(always)]
fn pseudo_header_sum(frame: &[u8], upper_len: usize, next_header: u8) -> u32 {
    sum_words(frame, ETH_LEN + IPV6_SRC_OFF, 2 * IPV6_ADDR_LEN)
        + upper_len as u32
        + next_header as u32
}

/// RFC 9293 §3.10.7.1: answer a segment for a closed port with a RST.
#[inline(always)]
pub fn tcp_reset(ctx: &TcContext, flow: &Flow<V6>) -> Result<i32, i64> {
    as_result(send_tcp_reset(ctx, flow))
}

/// The reply frames get stack frames of their own (BPF subprograms): they
/// would not fit beside the rest of the IPv6 path. Negative: an error.
#[inline(never)]
fn send_tcp_reset(ctx: &TcContext, flow: &Flow<V6>) -> i64 {
    match build_tcp_reset(ctx, flow) {
        Ok(action) => action as i64,
        Err(e) => e.min(-1),
    }
}

#[inline(always)]
fn as_result(ret: i64) -> Result<i32, i64> {
    if ret < 0 { Err(ret) } else { Ok(ret as i32) }
}

#[inline(always)]
fn build_tcp_reset(ctx: &TcContext, flow: &Flow<V6>) -> Result<i32, i64> {
    let payload_len: [u8; 2] = ctx.load(ETH_LEN + IPV6_PAYLOAD_LEN_OFF)?;
    let seq: [u8; 4] = ctx.load(flow.l4_off + 4)?;
    let ack: [u8; 4] = ctx.load(flow.l4_off + 8)?;
    let doff_byte: u8 = ctx.load(flow.l4_off + 12)?;
    // Extension headers and the TCP header are not the segment's data.
    let headers = (flow.l4_off - ETH_LEN - IPV6_HDR_LEN) as u32 + (((doff_byte >> 4) as u32) << 2);
    let data = (u16::from_be_bytes(payload_len) as u32).saturating_sub(headers);

    let (reply_seq, reply_ack, flags) = if flow.tcp_flags & TCP_FLAG_ACK != 0 {
        (u32::from_be_bytes(ack), 0, TCP_FLAG_RST)
    } else {
        let syn_fin = (flow.tcp_flags & TCP_FLAG_SYN != 0) as u32
            + (flow.tcp_flags & TCP_FLAG_FIN != 0) as u32;
        let acked = u32::from_be_bytes(seq)
            .wrapping_add(data)
            .wrapping_add(syn_fin);
        (0, acked, TCP_FLAG_RST | TCP_FLAG_ACK)
    };

    let mut frame = [0u8; RST_FRAME_LEN];
    write_reply_headers(ctx, &mut frame, flow, IPPROTO_TCP)?;
    let tcp = ETH_LEN + IPV6_HDR_LEN;
    frame[tcp..tcp + 2].copy_from_slice(&flow.dst_port.to_ne_bytes());
    frame[tcp + 2..tcp + 4].copy_from_slice(&flow.src_port.to_ne_bytes());
    frame[tcp + 4..tcp + 8].copy_from_slice(&reply_seq.to_be_bytes());
    frame[tcp + 8..tcp + 12].copy_from_slice(&reply_ack.to_be_bytes());
    frame[tcp + 12] = TCP_DOFF_NO_OPTIONS;
    frame[tcp + 13] = flags;
    let pseudo = pseudo_header_sum(&frame, TCP_LEN, IPPROTO_TCP);
    let csum = fold(pseudo + sum_words(&frame, tcp, TCP_LEN));
    frame[tcp + 16..tcp + 18].copy_from_slice(&csum.to_be_bytes());
    send_back(ctx, &frame)
}

/// RFC 4443 §3.1: a datagram for a port nobody serves gets destination
/// unreachable, code 4 (port unreachable).
#[inline(always)]
pub fn icmp_port_unreachable(ctx: &TcContext, flow: &Flow<V6>) -> Result<i32, i64> {
    as_result(send_port_unreachable(ctx, flow))
}

#[inline(never)]
fn send_port_unreachable(ctx: &TcContext, flow: &Flow<V6>) -> i64 {
    match build_port_unreachable(ctx, flow) {
        Ok(action) => action as i64,
        Err(e) => e.min(-1),
    }
}

#[inline(always)]
fn build_port_unreachable(ctx: &TcContext, flow: &Flow<V6>) -> Result<i32, i64> {
    let mut frame = [0u8; ICMP6_FRAME_LEN];
    let icmp = ETH_LEN + IPV6_HDR_LEN;
    let quote = icmp + ICMP6_HDR_LEN;
    // Straight into the frame: a copy would not fit the stack.
    load_into(ctx, ETH_LEN, &mut frame[quote..quote + ICMP6_QUOTE_LEN])?;
    write_reply_headers(ctx, &mut frame, flow, NEXTHDR_ICMPV6)?;
    frame[icmp] = ICMPV6_DEST_UNREACH;
    frame[icmp + 1] = ICMPV6_PORT_UNREACH;
    let message_len = ICMP6_HDR_LEN + ICMP6_QUOTE_LEN;
    let pseudo = pseudo_header_sum(&frame, message_len, NEXTHDR_ICMPV6);
    let csum = fold(pseudo + sum_words(&frame, icmp, message_len));
    frame[icmp + 2..icmp + 4].copy_from_slice(&csum.to_be_bytes());
    send_back(ctx, &frame)
}
