//! The XDP fast path for IPv6: the TC external ingress's decisions
//! (`programs::decide_from_external6`), carried out on the raw frame and
//! sent back out with `XDP_TX` when the FIB resolves the next hop on the
//! interface the frame came in on. Frames with extension headers, and
//! whatever XDP cannot finish, go on to the stack and the TC programs,
//! which serve them in full. As on the TC path, the flow and decision live
//! in the per-CPU scratch entry, not on the stack. A packet opening a DSR
//! flow gets the frontend's extension header here too (`dsr6.rs`).
use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams,
        xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    },
    helpers::bpf_fib_lookup,
    programs::XdpContext,
};
use network_types::eth::EthHdr;
use proxy_common::{Addr6, CT_FLAG_SNAT, Counter, DSR6_HEADER_LEN, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    dsr::Way,
    dsr6,
    family::V6,
    fwd::AF_INET6,
    maps::{SCRATCH6, count},
    parse::{ETH_LEN, Flow, TCP_CSUM_OFF, UDP_CSUM_OFF, ptr_at},
    parse6::{
        IPV6_DST_OFF, IPV6_HDR_LEN, IPV6_HOP_LIMIT_OFF, IPV6_NEXT_HEADER_OFF, IPV6_PAYLOAD_LEN_OFF,
        IPV6_SRC_OFF, IPV6_VERSION, flowinfo,
    },
    programs::{Decided6, Kind, decide_from_external6},
    wire,
    xdp::csum_update,
};

/// Where TCP or UDP starts when no extension header comes first.
const L4_OFF: usize = ETH_LEN + IPV6_HDR_LEN;
const TCP_HDR_LEN: usize = 20;
const UDP_HDR_LEN: usize = 8;
const TCP_FLAGS_OFF: usize = 13;
const SRC_PORT_OFF: usize = 0;
const DST_PORT_OFF: usize = 2;
/// 16-bit words in an address, as the checksum sums them.
const ADDR_WORDS: usize = 8;
/// In IPv6 a UDP checksum of 0 means none, which receivers drop.
const UDP_CSUM_ZERO_AS: u16 = 0xffff;

/// Checked by `is_ipv6` already. Anything the decision leaves as it is
/// (passes, refusals, restored replies) goes on to TC, which counts it.
#[inline(never)]
pub fn serve(ctx: &XdpContext) -> u32 {
    let Some(scratch) = SCRATCH6.get_ptr_mut(0) else {
        return XDP_PASS;
    };
    // A per-CPU entry: nothing else runs on this CPU while the program does.
    let scratch = unsafe { &mut *scratch };
    if !parse_into(ctx, &mut scratch.flow) {
        return XDP_PASS;
    }
    decide_from_external6(&scratch.flow, &mut scratch.decided);
    let unmasquerade = match scratch.decided.kind {
        Kind::Translate => false,
        Kind::Unmasquerade => true,
        Kind::Drop => {
            count(scratch.decided.counter);
            return XDP_DROP;
        }
        Kind::Pass | Kind::Refuse | Kind::RestoreSource => return XDP_PASS,
    };
    carry_out(ctx, &scratch.flow, &scratch.decided, unmasquerade)
}

/// TCP or UDP right after the base header; `false`: leave it to TC
/// (extension headers, other protocols, truncated frames). Inlined: as a
/// subprogram, the compiler would hand it `data` and `data_end` as plain
/// numbers, and the verifier refuses packet access through those.
#[inline(always)]
fn parse_into(ctx: &XdpContext, out: &mut Flow<V6>) -> bool {
    let Some(ip) = ptr_at::<[u8; IPV6_HDR_LEN]>(ctx, ETH_LEN) else {
        return false;
    };
    let ip = ip as *const u8;
    let (version, proto) = unsafe { (*ip >> 4, *ip.add(IPV6_NEXT_HEADER_OFF)) };
    if version != IPV6_VERSION {
        return false;
    }
    let (ports, tcp_flags) = match proto {
        IPPROTO_TCP => match ptr_at::<[u8; TCP_HDR_LEN]>(ctx, L4_OFF) {
            Some(tcp) => unsafe { ((tcp as *const [u8; 4]).read(), (*tcp)[TCP_FLAGS_OFF]) },
            None => return false,
        },
        IPPROTO_UDP => match ptr_at::<[u8; UDP_HDR_LEN]>(ctx, L4_OFF) {
            Some(udp) => unsafe { ((udp as *const [u8; 4]).read(), 0) },
            None => return false,
        },
        _ => return false,
    };
    // Word loads (`wire.rs`): `ip` was checked for the whole fixed header.
    unsafe {
        out.src_addr = wire::load_addr6(ip.add(IPV6_SRC_OFF));
        out.dst_addr = wire::load_addr6(ip.add(IPV6_DST_OFF));
    }
    out.src_port = u16::from_ne_bytes([ports[0], ports[1]]);
    out.dst_port = u16::from_ne_bytes([ports[2], ports[3]]);
    out.proto = proto;
    out.tcp_flags = tcp_flags;
    out.l4_off = L4_OFF;
    true
}

/// As the IPv4 path: translate and send back out, or leave a frame that
/// would carry a local source address untouched for TC to finish.
#[inline(never)]
fn carry_out(ctx: &XdpContext, flow: &Flow<V6>, decided: &Decided6, unmasquerade: bool) -> u32 {
    let entry = &decided.entry;
    // Addresses after translation.
    let (src, dst) = if unmasquerade {
        (&entry.nat_addr, &entry.snat_addr)
    } else if decided.local_source {
        (&entry.snat_addr, &entry.nat_addr)
    } else {
        (&flow.src_addr, &entry.nat_addr)
    };
    // A packet opening a DSR flow grows by the frontend's header (`dsr6.rs`).
    let with_header = decided.way(flow) == Way::WithOption;
    let grow = if with_header { DSR6_HEADER_LEN } else { 0 };
    let mut hop: FibParams = unsafe { core::mem::zeroed() };
    let routed = next_hop(ctx, flow.proto, src, dst, grow, &mut hop);
    if !routed && (decided.local_source || with_header) {
        // Translated, the stack would take it for a martian; a DSR packet,
        // TC adds the header to (and gives the stack what the FIB cannot
        // route). Untouched, TC finds the flow in conntrack.
        count(Counter::XdpToStack);
        return XDP_PASS;
    }
    count(decided.counter);
    let rewritten = if unmasquerade {
        rewrite(ctx, flow.proto, true, &entry.nat_addr, entry.nat_port)
            .and_then(|()| rewrite(ctx, flow.proto, false, &entry.snat_addr, entry.snat_port))
    } else {
        rewrite(ctx, flow.proto, false, &entry.nat_addr, entry.nat_port).and_then(|()| {
            if entry.flags & CT_FLAG_SNAT == 0 {
                return Some(());
            }
            rewrite(ctx, flow.proto, true, &entry.snat_addr, entry.snat_port)
        })
    };
    if rewritten.is_none() {
        count(Counter::DropRewriteFailed);
        return XDP_DROP;
    }
    if with_header {
        if !dsr6::add_header_xdp(ctx, flow) {
            count(Counter::DropDsrOptionFailed);
            return XDP_DROP;
        }
        count(Counter::DsrOptionAdded);
    }
    if routed {
        transmit(ctx, &hop)
    } else {
        count(Counter::XdpToStack);
        XDP_PASS
    }
}

/// Rewrites the source (`source`) or destination address and port (wire
/// order), updating the L4 checksum word by word (IPv6 has no header
/// checksum; the pseudo-header carries the addresses).
#[inline(always)]
fn rewrite(ctx: &XdpContext, proto: u8, source: bool, addr: &Addr6, port: u16) -> Option<()> {
    let ip = ptr_at::<[u8; IPV6_HDR_LEN]>(ctx, ETH_LEN)? as *mut u8;
    // One bounds check per protocol with a constant checksum offset, as
    // on the IPv4 path, for the 6.1 verifier.
    if proto == IPPROTO_UDP {
        let udp = ptr_at::<[u8; UDP_HDR_LEN]>(ctx, L4_OFF)? as *mut u8;
        unsafe { rewrite_l4::<true>(ip, udp, UDP_CSUM_OFF, source, addr, port) };
    } else {
        let tcp = ptr_at::<[u8; TCP_HDR_LEN]>(ctx, L4_OFF)? as *mut u8;
        unsafe { rewrite_l4::<false>(ip, tcp, TCP_CSUM_OFF, source, addr, port) };
    }
    Some(())
}

/// `ip` and `l4` point into the frame, checked to hold the base header and
/// the L4 header up to its checksum.
#[inline(always)]
unsafe fn rewrite_l4<const UDP: bool>(
    ip: *mut u8,
    l4: *mut u8,
    csum_off: usize,
    source: bool,
    addr: &Addr6,
    port: u16,
) {
    let (addr_off, port_off) = if source {
        (IPV6_SRC_OFF, SRC_PORT_OFF)
    } else {
        (IPV6_DST_OFF, DST_PORT_OFF)
    };
    unsafe {
        let new = &*(addr as *const Addr6 as *const [u8; 16]);
        let mut check = u16::from_be_bytes([*l4.add(csum_off), *l4.add(csum_off + 1)]);
        for word in 0..ADDR_WORDS {
            let at = ip.add(addr_off + word * 2);
            let old = u16::from_be_bytes([*at, *at.add(1)]);
            let replacement = u16::from_be_bytes([new[word * 2], new[word * 2 + 1]]);
            check = csum_update(check, old, replacement);
            *at = new[word * 2];
            *at.add(1) = new[word * 2 + 1];
        }
        let port_at = l4.add(port_off);
        let old_port = u16::from_be_bytes([*port_at, *port_at.add(1)]);
        check = csum_update(check, old_port, u16::from_be(port));
        if UDP && check == 0 {
            check = UDP_CSUM_ZERO_AS;
        }
        let bytes = check.to_be_bytes();
        *l4.add(csum_off) = bytes[0];
        *l4.add(csum_off + 1) = bytes[1];
        let bytes = port.to_ne_bytes();
        *port_at = bytes[0];
        *port_at.add(1) = bytes[1];
    }
}

/// Whether the FIB resolves the next hop completely, back out of the
/// interface the frame came in on (see `xdp::next_hop`); fills `params`.
/// `grow`: bytes the frame is about to grow by, for the MTU check.
#[inline(always)]
fn next_hop(
    ctx: &XdpContext,
    proto: u8,
    src: &Addr6,
    dst: &Addr6,
    grow: u8,
    params: &mut FibParams,
) -> bool {
    let Some(ip) = ptr_at::<[u8; IPV6_HDR_LEN]>(ctx, ETH_LEN) else {
        return false;
    };
    let ip = unsafe { &*ip };
    // An expiring hop limit goes to the stack, which answers with ICMPv6.
    if ip[IPV6_HOP_LIMIT_OFF] <= 1 {
        return false;
    }
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    let payload_len = u16::from_be_bytes([ip[IPV6_PAYLOAD_LEN_OFF], ip[IPV6_PAYLOAD_LEN_OFF + 1]]);
    params.family = AF_INET6;
    params.l4_protocol = proto;
    params.__bindgen_anon_1.tot_len = payload_len
        .saturating_add(IPV6_HDR_LEN as u16)
        .saturating_add(u16::from(grow));
    params.__bindgen_anon_2.flowinfo = flowinfo([ip[0], ip[1], ip[2], ip[3]]);
    params.__bindgen_anon_3.ipv6_src = *src;
    params.__bindgen_anon_4.ipv6_dst = *dst;
    params.ifindex = ingress;
    let ret = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            params,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    ret == BPF_FIB_LKUP_RET_SUCCESS as i64 && params.ifindex == ingress
}

/// New MAC addresses and hop limit, then back out with `XDP_TX`.
#[inline(always)]
fn transmit(ctx: &XdpContext, hop: &FibParams) -> u32 {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return XDP_PASS;
    };
    let Some(ip) = ptr_at::<[u8; IPV6_HDR_LEN]>(ctx, ETH_LEN) else {
        return XDP_PASS;
    };
    unsafe {
        // What the stack would have done while forwarding; no checksum.
        (*ip)[IPV6_HOP_LIMIT_OFF] -= 1;
        (*eth).dst_addr = hop.dmac;
        (*eth).src_addr = hop.smac;
    }
    count(Counter::XdpTransmitted);
    XDP_TX
}
