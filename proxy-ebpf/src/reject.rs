//! Refusing a connection to a service with no endpoints, as kube-proxy does:
//! the packet is turned into a TCP RST or an ICMP port unreachable and sent
//! back out of the interface it came in on, so the client fails at once.
use aya_ebpf::{
    bindings::TC_ACT_REDIRECT,
    helpers::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use proxy_common::{IPPROTO_ICMP, IPPROTO_TCP};

use crate::parse::{ETH_LEN, Flow, TCP_FLAG_ACK, TCP_FLAG_FIN, TCP_FLAG_RST, TCP_FLAG_SYN};

const IP_LEN: usize = 20;
const TCP_LEN: usize = 20;
const ICMP_HDR_LEN: usize = 8;
/// ICMP errors quote the offending IP header (without options) and 8 bytes of L4.
const ICMP_QUOTE_LEN: usize = IP_LEN + 8;
const RST_FRAME_LEN: usize = ETH_LEN + IP_LEN + TCP_LEN;
const ICMP_FRAME_LEN: usize = ETH_LEN + IP_LEN + ICMP_HDR_LEN + ICMP_QUOTE_LEN;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
const DEFAULT_TTL: u8 = 64;
const IP_DONT_FRAGMENT: [u8; 2] = [0x40, 0x00];
const IPV4_NO_OPTIONS: u8 = 0x45;
const TCP_DOFF_NO_OPTIONS: u8 = 5 << 4;

#[inline(always)]
pub(crate) fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// One's-complement sum of big-endian 16-bit words of `bytes[start..start+len]`.
#[inline(always)]
pub(crate) fn sum_words(bytes: &[u8], start: usize, len: usize) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i + 1 < len {
        sum += u16::from_be_bytes([bytes[start + i], bytes[start + i + 1]]) as u32;
        i += 2;
    }
    sum
}

/// Writes an Ethernet header with the addresses swapped and an IPv4 header
/// from the service back to the client.
#[inline(always)]
fn write_reply_headers(
    ctx: &TcContext,
    frame: &mut [u8],
    flow: &Flow,
    proto: u8,
) -> Result<(), i64> {
    let macs: [u8; 12] = ctx.load(0)?;
    frame[0..6].copy_from_slice(&macs[6..12]);
    frame[6..12].copy_from_slice(&macs[0..6]);
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = ETH_LEN;
    let total = (frame.len() - ETH_LEN) as u16;
    frame[ip] = IPV4_NO_OPTIONS;
    frame[ip + 2..ip + 4].copy_from_slice(&total.to_be_bytes());
    frame[ip + 6..ip + 8].copy_from_slice(&IP_DONT_FRAGMENT);
    frame[ip + 8] = DEFAULT_TTL;
    frame[ip + 9] = proto;
    frame[ip + 12..ip + 16].copy_from_slice(&flow.dst_addr.to_ne_bytes());
    frame[ip + 16..ip + 20].copy_from_slice(&flow.src_addr.to_ne_bytes());
    let csum = fold(sum_words(frame, ip, IP_LEN));
    frame[ip + 10..ip + 12].copy_from_slice(&csum.to_be_bytes());
    Ok(())
}

/// Replaces the whole frame with `frame` and sends it back where it came from.
#[inline(always)]
pub(crate) fn send_back<const N: usize>(ctx: &TcContext, frame: &[u8; N]) -> Result<i32, i64> {
    let ret = unsafe { bpf_skb_change_tail(ctx.skb.skb, N as u32, 0) };
    if ret != 0 {
        return Err(ret);
    }
    ctx.skb.store(0, frame, 0)?;
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let verdict = unsafe { bpf_redirect(ifindex, 0) };
    if verdict != TC_ACT_REDIRECT as i64 {
        return Err(verdict);
    }
    Ok(TC_ACT_REDIRECT as i32)
}

/// RFC 9293 §3.10.7.1: answer a segment for a closed port with a RST.
#[inline(always)]
pub fn tcp_reset(ctx: &TcContext, flow: &Flow) -> Result<i32, i64> {
    let ip_total: [u8; 2] = ctx.load(ETH_LEN + 2)?;
    let ihl_byte: u8 = ctx.load(ETH_LEN)?;
    let seq: [u8; 4] = ctx.load(flow.l4_off + 4)?;
    let ack: [u8; 4] = ctx.load(flow.l4_off + 8)?;
    let doff_byte: u8 = ctx.load(flow.l4_off + 12)?;
    let headers = (((ihl_byte & 0x0f) as u32) << 2) + (((doff_byte >> 4) as u32) << 2);
    let payload = (u16::from_be_bytes(ip_total) as u32).saturating_sub(headers);

    let (reply_seq, reply_ack, flags) = if flow.tcp_flags & TCP_FLAG_ACK != 0 {
        (u32::from_be_bytes(ack), 0, TCP_FLAG_RST)
    } else {
        let syn_fin = (flow.tcp_flags & TCP_FLAG_SYN != 0) as u32
            + (flow.tcp_flags & TCP_FLAG_FIN != 0) as u32;
        let acked = u32::from_be_bytes(seq)
            .wrapping_add(payload)
            .wrapping_add(syn_fin);
        (0, acked, TCP_FLAG_RST | TCP_FLAG_ACK)
    };

    let mut frame = [0u8; RST_FRAME_LEN];
    write_reply_headers(ctx, &mut frame, flow, IPPROTO_TCP)?;
    let tcp = ETH_LEN + IP_LEN;
    frame[tcp..tcp + 2].copy_from_slice(&flow.dst_port.to_ne_bytes());
    frame[tcp + 2..tcp + 4].copy_from_slice(&flow.src_port.to_ne_bytes());
    frame[tcp + 4..tcp + 8].copy_from_slice(&reply_seq.to_be_bytes());
    frame[tcp + 8..tcp + 12].copy_from_slice(&reply_ack.to_be_bytes());
    frame[tcp + 12] = TCP_DOFF_NO_OPTIONS;
    frame[tcp + 13] = flags;
    // Pseudo header: addresses, protocol, TCP length.
    let pseudo = sum_words(&frame, ETH_LEN + 12, 8) + IPPROTO_TCP as u32 + TCP_LEN as u32;
    let csum = fold(pseudo + sum_words(&frame, tcp, TCP_LEN));
    frame[tcp + 16..tcp + 18].copy_from_slice(&csum.to_be_bytes());
    send_back(ctx, &frame)
}

/// RFC 1122 §4.1.3.1: a datagram for a port nobody serves gets ICMP port unreachable.
#[inline(always)]
pub fn icmp_port_unreachable(ctx: &TcContext, flow: &Flow) -> Result<i32, i64> {
    let mut frame = [0u8; ICMP_FRAME_LEN];
    let quote = ETH_LEN + IP_LEN + ICMP_HDR_LEN;
    let ip_header: [u8; IP_LEN] = ctx.load(ETH_LEN)?;
    let l4_start: [u8; 8] = ctx.load(flow.l4_off)?;
    frame[quote..quote + IP_LEN].copy_from_slice(&ip_header);
    frame[quote + IP_LEN..quote + ICMP_QUOTE_LEN].copy_from_slice(&l4_start);
    // Options are not quoted, so the quoted header says it has none.
    frame[quote] = IPV4_NO_OPTIONS;
    frame[quote + 10] = 0;
    frame[quote + 11] = 0;
    let inner_csum = fold(sum_words(&frame, quote, IP_LEN));
    frame[quote + 10..quote + 12].copy_from_slice(&inner_csum.to_be_bytes());

    write_reply_headers(ctx, &mut frame, flow, IPPROTO_ICMP)?;
    let icmp = ETH_LEN + IP_LEN;
    frame[icmp] = ICMP_DEST_UNREACH;
    frame[icmp + 1] = ICMP_PORT_UNREACH;
    let csum = fold(sum_words(&frame, icmp, ICMP_HDR_LEN + ICMP_QUOTE_LEN));
    frame[icmp + 2..icmp + 4].copy_from_slice(&csum.to_be_bytes());
    send_back(ctx, &frame)
}
