//! ICMP and ICMPv6 errors about translated flows, as conntrack's RELATED
//! translation does for kube-proxy: an error an endpoint (or a router on
//! its way) sends about a packet of a flow vipr translated quotes the
//! translated packet, which the client cannot match to its socket. The
//! quoted packet is turned back into what the client sent (frontend as
//! destination; the client as source where it was masqueraded), the outer
//! addresses likewise, and checksums are updated word by word (the quoted
//! header's, the quoted TCP or UDP one where quoted, and the ICMP one over
//! all of them). Only errors
//! travelling towards the client are translated: errors about replies are
//! rare and pass untouched.
use aya_ebpf::{bindings::BPF_F_PSEUDO_HDR, programs::TcContext};
use proxy_common::{CT_FLAG_SNAT, CT_REVERSE, Counter, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    family::{Family, V4, V6},
    maps::count,
    parse::{ETH_LEN, IP_CSUM_OFF, IP_DST_OFF, IP_SRC_OFF, TCP_CSUM_OFF, UDP_CSUM_OFF},
    parse6::{
        IPV6_DST_OFF, IPV6_HDR_LEN, IPV6_NEXT_HEADER_OFF, IPV6_PAYLOAD_LEN_OFF, IPV6_SRC_OFF,
    },
};

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
/// Errors that quote the packet they are about (RFC 792, RFC 4443).
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const ICMPV6_TIME_EXCEEDED: u8 = 3;
const ICMPV6_PARAMETER_PROBLEM: u8 = 4;
/// Type, code, checksum and one word; the quoted packet follows.
const ICMP_HDR_LEN: usize = 8;
const ICMP_CSUM_OFF: usize = 2;
const IPV4_MIN_HDR_LEN: usize = 20;
const IPV4_TOTAL_LEN_OFF: usize = 2;
const IPV4_PROTO_OFF: usize = 9;
const CSUM_LEN: usize = 2;
const IPV4_CSUM_OFF: usize = 10;
const IPV4_SRC_OFF: usize = 12;
const IPV4_DST_OFF: usize = 16;
const SRC_PORT_OFF: usize = 0;
const DST_PORT_OFF: usize = 2;
const ADDR_SIZE: u64 = 4;
const WORD_SIZE: u64 = 4;
const FIELD16_SIZE: u64 = 2;

/// Which errors a program translates: those of masqueraded flows (where
/// replies are unmasqueraded) or of the others (where replies are restored).
#[derive(Clone, Copy, PartialEq)]
pub enum Towards {
    MasqueradedClient,
    Client,
}

/// Where the quoted packet sits, and what it was.
struct Quoted<A> {
    icmp_off: usize,
    inner_off: usize,
    inner_l4_off: usize,
    /// The quoted TCP or UDP checksum, if the quote reaches it and it is
    /// in use (an IPv4 UDP checksum of 0 is none).
    l4_csum_off: Option<usize>,
    proto: u8,
    src: (A, u16),
    dst: (A, u16),
}

/// The reverse conntrack entry a reply to the quoted packet would use, if
/// the program serves its kind (`towards`). Read without noting it as
/// used: an error keeps no flow alive.
#[inline(always)]
fn entry_for<F: Family>(quoted: &Quoted<F::Addr>, towards: Towards) -> Option<F::CtValue> {
    let key = F::ct_key(quoted.dst, quoted.src, quoted.proto, CT_REVERSE);
    let entry = unsafe { *F::conntrack().get_ptr(&key)? };
    let masqueraded = F::entry_flags(&entry) & CT_FLAG_SNAT != 0;
    (masqueraded == (towards == Towards::MasqueradedClient)).then_some(entry)
}

#[inline(always)]
fn is_tcp_or_udp(proto: u8) -> bool {
    proto == IPPROTO_TCP || proto == IPPROTO_UDP
}

/// Where the quoted L4 checksum is, if the quote holds it: within the
/// ICMP message, which ends at `end` (the frame may carry more after it).
#[inline(always)]
fn quoted_l4_csum(
    ctx: &TcContext,
    inner_l4_off: usize,
    proto: u8,
    end: usize,
    zero_is_none: bool,
) -> Option<usize> {
    let off = inner_l4_off
        + if proto == IPPROTO_TCP {
            TCP_CSUM_OFF
        } else {
            UDP_CSUM_OFF
        };
    if off + CSUM_LEN > end {
        return None;
    }
    let check: u16 = ctx.load(off).ok()?;
    (!(zero_is_none && proto == IPPROTO_UDP && check == 0)).then_some(off)
}

#[inline(always)]
fn ports_at(ctx: &TcContext, off: usize) -> Option<(u16, u16)> {
    let ports: [u8; 4] = ctx.load(off).ok()?;
    Some((
        u16::from_ne_bytes([ports[0], ports[1]]),
        u16::from_ne_bytes([ports[2], ports[3]]),
    ))
}

/// IPv4: translates an ICMP error about a translated flow; `None` when the
/// packet is no such error (the caller passes it as before).
#[inline(never)]
pub fn translate4(ctx: &TcContext, towards: Towards) -> Option<()> {
    let ip: [u8; IPV4_MIN_HDR_LEN] = ctx.load(ETH_LEN).ok()?;
    if ip[IPV4_PROTO_OFF] != IPPROTO_ICMP {
        return None;
    }
    let icmp_off = ETH_LEN + ((ip[0] & 0x0f) as usize) * 4;
    let icmp_type: u8 = ctx.load(icmp_off).ok()?;
    if !matches!(
        icmp_type,
        ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM
    ) {
        return None;
    }
    let inner_off = icmp_off + ICMP_HDR_LEN;
    let inner: [u8; IPV4_MIN_HDR_LEN] = ctx.load(inner_off).ok()?;
    let inner_len = ((inner[0] & 0x0f) as usize) * 4;
    if inner[0] >> 4 != 4 || inner_len < IPV4_MIN_HDR_LEN || !is_tcp_or_udp(inner[IPV4_PROTO_OFF]) {
        return None;
    }
    let addr = |b: &[u8; IPV4_MIN_HDR_LEN], at: usize| {
        u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    };
    let inner_l4_off = inner_off + inner_len;
    let (src_port, dst_port) = ports_at(ctx, inner_l4_off)?;
    let proto = inner[IPV4_PROTO_OFF];
    let total = u16::from_be_bytes([ip[IPV4_TOTAL_LEN_OFF], ip[IPV4_TOTAL_LEN_OFF + 1]]);
    let end = ETH_LEN + total as usize;
    let quoted = Quoted {
        icmp_off,
        inner_off,
        inner_l4_off,
        l4_csum_off: quoted_l4_csum(ctx, inner_l4_off, proto, end, true),
        proto,
        src: (addr(&inner, IPV4_SRC_OFF), src_port),
        dst: (addr(&inner, IPV4_DST_OFF), dst_port),
    };
    let entry = entry_for::<V4>(&quoted, towards)?;
    let (outer_src, outer_dst) = (addr(&ip, IPV4_SRC_OFF), addr(&ip, IPV4_DST_OFF));
    rewrite_quoted4(ctx, &quoted, false, (entry.nat_addr, entry.nat_port)).ok()?;
    if outer_src == quoted.dst.0 {
        rewrite_outer4(ctx, IP_SRC_OFF, outer_src, entry.nat_addr).ok()?;
    }
    if towards == Towards::MasqueradedClient {
        rewrite_quoted4(ctx, &quoted, true, (entry.snat_addr, entry.snat_port)).ok()?;
        rewrite_outer4(ctx, IP_DST_OFF, outer_dst, entry.snat_addr).ok()?;
    }
    count(Counter::RevNatIcmpError);
    Some(())
}

/// ICMPv4 has no pseudo-header: only the IP header checksum covers these.
#[inline(always)]
fn rewrite_outer4(ctx: &TcContext, off: usize, old: u32, new: u32) -> Result<(), i64> {
    ctx.l3_csum_replace(IP_CSUM_OFF, old as u64, new as u64, ADDR_SIZE)?;
    ctx.store(off, &new, 0)
}

/// One end of the quoted packet: its address (and the quoted header's
/// checksum), its port, and the ICMP checksum over all of them.
#[inline(always)]
fn rewrite_quoted4(
    ctx: &TcContext,
    quoted: &Quoted<u32>,
    source: bool,
    (addr, port): (u32, u16),
) -> Result<(), i64> {
    let ((old_addr, old_port), addr_off, port_off) = if source {
        (quoted.src, IPV4_SRC_OFF, SRC_PORT_OFF)
    } else {
        (quoted.dst, IPV4_DST_OFF, DST_PORT_OFF)
    };
    let icmp_csum = quoted.icmp_off + ICMP_CSUM_OFF;
    let inner_csum = quoted.inner_off + IPV4_CSUM_OFF;
    let old_check: u16 = ctx.load(inner_csum)?;
    ctx.l3_csum_replace(inner_csum, old_addr as u64, addr as u64, ADDR_SIZE)?;
    let new_check: u16 = ctx.load(inner_csum)?;
    ctx.l4_csum_replace(icmp_csum, old_check as u64, new_check as u64, FIELD16_SIZE)?;
    quoted_l4_update(ctx, quoted.l4_csum_off, icmp_csum, |l4| {
        ctx.l4_csum_replace(l4, old_addr as u64, addr as u64, ADDR_SIZE)?;
        ctx.l4_csum_replace(l4, old_port as u64, port as u64, FIELD16_SIZE)
    })?;
    ctx.store(quoted.inner_off + addr_off, &addr, 0)?;
    ctx.store(quoted.inner_l4_off + port_off, &port, 0)?;
    ctx.l4_csum_replace(icmp_csum, old_addr as u64, addr as u64, ADDR_SIZE)?;
    ctx.l4_csum_replace(icmp_csum, old_port as u64, port as u64, FIELD16_SIZE)
}

/// Updates the quoted L4 checksum (if quoted) with `update`, and the ICMP
/// checksum for its change: the quoted checksum is message bytes too.
#[inline(always)]
fn quoted_l4_update(
    ctx: &TcContext,
    l4_csum_off: Option<usize>,
    icmp_csum: usize,
    update: impl FnOnce(usize) -> Result<(), i64>,
) -> Result<(), i64> {
    let Some(off) = l4_csum_off else {
        return Ok(());
    };
    let old: u16 = ctx.load(off)?;
    update(off)?;
    let new: u16 = ctx.load(off)?;
    ctx.l4_csum_replace(icmp_csum, old as u64, new as u64, FIELD16_SIZE)
}

/// IPv6: as [`translate4`], for ICMPv6 errors right after the base header
/// quoting TCP or UDP right after its own.
#[inline(never)]
pub fn translate6(ctx: &TcContext, towards: Towards) -> Option<()> {
    let next: u8 = ctx.load(ETH_LEN + IPV6_NEXT_HEADER_OFF).ok()?;
    if next != IPPROTO_ICMPV6 {
        return None;
    }
    let icmp_off = ETH_LEN + IPV6_HDR_LEN;
    let icmp_type: u8 = ctx.load(icmp_off).ok()?;
    if !matches!(
        icmp_type,
        ICMPV6_DEST_UNREACH
            | ICMPV6_PACKET_TOO_BIG
            | ICMPV6_TIME_EXCEEDED
            | ICMPV6_PARAMETER_PROBLEM
    ) {
        return None;
    }
    let inner_off = icmp_off + ICMP_HDR_LEN;
    let proto: u8 = ctx.load(inner_off + IPV6_NEXT_HEADER_OFF).ok()?;
    if !is_tcp_or_udp(proto) {
        return None;
    }
    let inner_l4_off = inner_off + IPV6_HDR_LEN;
    let (src_port, dst_port) = ports_at(ctx, inner_l4_off)?;
    let payload: [u8; 2] = ctx.load(ETH_LEN + IPV6_PAYLOAD_LEN_OFF).ok()?;
    let end = ETH_LEN + IPV6_HDR_LEN + u16::from_be_bytes(payload) as usize;
    let quoted = Quoted {
        icmp_off,
        inner_off,
        inner_l4_off,
        l4_csum_off: quoted_l4_csum(ctx, inner_l4_off, proto, end, false),
        proto,
        src: (ctx.load(inner_off + IPV6_SRC_OFF).ok()?, src_port),
        dst: (ctx.load(inner_off + IPV6_DST_OFF).ok()?, dst_port),
    };
    let entry = entry_for::<V6>(&quoted, towards)?;
    let outer_src: [u32; 4] = ctx.load(ETH_LEN + IPV6_SRC_OFF).ok()?;
    let icmp_csum = icmp_off + ICMP_CSUM_OFF;
    rewrite_quoted6(ctx, &quoted, false, (&entry.nat_addr, entry.nat_port)).ok()?;
    if outer_src == quoted.dst.0 {
        rewrite_addr6(
            ctx,
            ETH_LEN + IPV6_SRC_OFF,
            &outer_src,
            &entry.nat_addr,
            icmp_csum,
            true,
        )
        .ok()?;
    }
    if towards == Towards::MasqueradedClient {
        rewrite_quoted6(ctx, &quoted, true, (&entry.snat_addr, entry.snat_port)).ok()?;
        let outer_dst: [u32; 4] = ctx.load(ETH_LEN + IPV6_DST_OFF).ok()?;
        rewrite_addr6(
            ctx,
            ETH_LEN + IPV6_DST_OFF,
            &outer_dst,
            &entry.snat_addr,
            icmp_csum,
            true,
        )
        .ok()?;
    }
    count(Counter::RevNatIcmpError);
    Some(())
}

#[inline(always)]
fn rewrite_quoted6(
    ctx: &TcContext,
    quoted: &Quoted<[u32; 4]>,
    source: bool,
    (addr, port): (&[u32; 4], u16),
) -> Result<(), i64> {
    let ((old_addr, old_port), addr_off, port_off) = if source {
        (&quoted.src, IPV6_SRC_OFF, SRC_PORT_OFF)
    } else {
        (&quoted.dst, IPV6_DST_OFF, DST_PORT_OFF)
    };
    let icmp_csum = quoted.icmp_off + ICMP_CSUM_OFF;
    quoted_l4_update(ctx, quoted.l4_csum_off, icmp_csum, |l4| {
        for word in 0..old_addr.len() {
            if old_addr[word] != addr[word] {
                ctx.l4_csum_replace(l4, old_addr[word] as u64, addr[word] as u64, WORD_SIZE)?;
            }
        }
        ctx.l4_csum_replace(l4, *old_port as u64, port as u64, FIELD16_SIZE)
    })?;
    rewrite_addr6(
        ctx,
        quoted.inner_off + addr_off,
        old_addr,
        addr,
        icmp_csum,
        false,
    )?;
    ctx.store(quoted.inner_l4_off + port_off, &port, 0)?;
    ctx.l4_csum_replace(icmp_csum, *old_port as u64, port as u64, FIELD16_SIZE)
}

/// An address at `off`, with the ICMPv6 checksum updated word by word:
/// through the pseudo-header for the outer addresses (`pseudo`), as plain
/// message bytes for the quoted ones.
#[inline(always)]
fn rewrite_addr6(
    ctx: &TcContext,
    off: usize,
    old: &[u32; 4],
    new: &[u32; 4],
    icmp_csum: usize,
    pseudo: bool,
) -> Result<(), i64> {
    let flags = if pseudo { BPF_F_PSEUDO_HDR as u64 } else { 0 };
    for word in 0..old.len() {
        if old[word] != new[word] {
            ctx.l4_csum_replace(
                icmp_csum,
                old[word] as u64,
                new[word] as u64,
                flags | WORD_SIZE,
            )?;
        }
    }
    ctx.store(off, new, 0)
}
