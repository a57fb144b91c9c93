//! XDP fast path for external traffic (IPv6: `xdp6.rs`): the same
//! decisions as the TC external ingress, carried out on the raw frame and forwarded with a FIB
//! lookup, before the stack allocates an skb. Whatever XDP cannot finish
//! (refusals, destinations the FIB cannot resolve) goes on to the stack and
//! the TC programs, which reach the same verdicts.
use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams,
        xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    },
    helpers::bpf_fib_lookup,
    macros::xdp,
    programs::XdpContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};
use proxy_common::{CT_FLAG_SNAT, Counter, CtValue, DSR_OPTION_LEN, IPPROTO_UDP, SCOPE_EXTERNAL};

use crate::{
    decide::{self, Decision},
    dsr::{self, Way},
    maps::count,
    parse::{ETH_LEN, Flow, TCP_CSUM_OFF, UDP_CSUM_OFF, is_ipv6, parse_flow, ptr_at},
    xdp6,
};

const AF_INET: u8 = 2;
const SRC_PORT_OFF: usize = 0;
const DST_PORT_OFF: usize = 2;
/// Room the verifier can see for a TCP header (the largest we touch).
const L4_HDR_MAX: usize = 20;

#[xdp]
pub fn vipr_xdp_external(ctx: XdpContext) -> u32 {
    if is_ipv6(&ctx) {
        return xdp6::serve(&ctx);
    }
    serve4(&ctx)
}

/// The IPv4 half: a subprogram, as the IPv6 one is, so that the entry
/// point adds no frame to either's call chain.
#[inline(never)]
fn serve4(ctx: &XdpContext) -> u32 {
    let Ok(flow) = parse_flow(ctx) else {
        // Malformed and non-IP frames: the TC program counts and decides.
        return XDP_PASS;
    };
    let decision = decide::from_outside(&flow, SCOPE_EXTERNAL);
    let local_source = decision.leaves_with_a_local_source();
    // A packet opening a DSR flow grows by the option (`dsr.rs`).
    let with_option = dsr::way(&flow, &decision) == Way::WithOption;
    let (entry, counter, unmasquerade) = match decision {
        // Passes are counted once, by the TC program that sees them next.
        Decision::Pass(_) | Decision::Refuse | Decision::RestoreSource(_) => return XDP_PASS,
        Decision::Drop(counter) => {
            count(counter);
            return XDP_DROP;
        }
        Decision::Translate(entry, counter) => (entry, counter, false),
        Decision::Unmasquerade(entry) => (entry, Counter::RevSnat, true),
    };
    // Addresses after translation.
    let (src, dst) = if unmasquerade {
        (entry.nat_addr, entry.snat_addr)
    } else if local_source {
        (entry.snat_addr, entry.nat_addr)
    } else {
        (flow.src_addr, entry.nat_addr)
    };
    let grow = if with_option {
        u16::from(DSR_OPTION_LEN)
    } else {
        0
    };
    let hop = next_hop(ctx, src, dst, grow);
    if hop.is_none() && (local_source || with_option) {
        // Translated, the stack would take it for a martian. Untouched, the
        // TC program finds the flow in conntrack and redirects it itself
        // (and counts the translation); a DSR packet, TC adds the option to
        // (and gives the stack what the FIB cannot route).
        count(Counter::XdpToStack);
        return XDP_PASS;
    }
    count(counter);
    let rewritten = if unmasquerade {
        rewrite(ctx, &flow, true, entry.nat_addr, entry.nat_port)
            .and_then(|()| rewrite(ctx, &flow, false, entry.snat_addr, entry.snat_port))
    } else {
        translate(ctx, &flow, &entry)
    };
    if rewritten.is_none() {
        count(Counter::DropRewriteFailed);
        return XDP_DROP;
    }
    if with_option {
        if !dsr::add_option4_xdp(ctx, flow.dst_addr, flow.dst_port) {
            count(Counter::DropDsrOptionFailed);
            return XDP_DROP;
        }
        count(Counter::DsrOptionAdded);
    }
    match hop {
        Some(hop) => transmit(ctx, &hop),
        None => {
            count(Counter::XdpToStack);
            XDP_PASS
        }
    }
}

#[inline(always)]
fn translate(ctx: &XdpContext, flow: &Flow, entry: &CtValue) -> Option<()> {
    rewrite(ctx, flow, false, entry.nat_addr, entry.nat_port)?;
    if entry.flags & CT_FLAG_SNAT != 0 {
        rewrite(ctx, flow, true, entry.snat_addr, entry.snat_port)?;
    }
    Some(())
}

/// RFC 1624 incremental update of a checksum (host order) for one 16-bit word.
#[inline(always)]
pub fn csum_update(check: u16, old: u16, new: u16) -> u16 {
    let mut sum = (!check as u32) + (!old as u32 & 0xffff) + new as u32;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[inline(always)]
fn csum_update_addr(check: u16, old: u32, new: u32) -> u16 {
    let (old, new) = (old.to_ne_bytes(), new.to_ne_bytes());
    let check = csum_update(
        check,
        u16::from_be_bytes([old[0], old[1]]),
        u16::from_be_bytes([new[0], new[1]]),
    );
    csum_update(
        check,
        u16::from_be_bytes([old[2], old[3]]),
        u16::from_be_bytes([new[2], new[3]]),
    )
}

/// Rewrites the source (`source`) or destination of the frame to `addr:port`
/// (wire order) with incremental checksum updates.
#[inline(always)]
fn rewrite(ctx: &XdpContext, flow: &Flow, source: bool, addr: u32, port: u16) -> Option<()> {
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_LEN)?;
    // Bounded for the verifier: the IPv4 header is at most 60 bytes.
    let l4_off = flow.l4_off & 0x7f;
    // One path per protocol, each with its own bounds check and a constant
    // checksum offset. With one pointer whose checked length depends on the
    // protocol, the 6.1 verifier cannot tie the length to the offset and
    // refuses the program.
    if flow.proto == IPPROTO_UDP {
        // UDP headers are 8 bytes; the datagram may be shorter than 20.
        let udp: *mut [u8; 8] = ptr_at(ctx, l4_off)?;
        unsafe { rewrite_l4::<true>(ip, udp as *mut u8, UDP_CSUM_OFF, source, addr, port) };
    } else {
        let tcp: *mut [u8; L4_HDR_MAX] = ptr_at(ctx, l4_off)?;
        unsafe { rewrite_l4::<false>(ip, tcp as *mut u8, TCP_CSUM_OFF, source, addr, port) };
    }
    Some(())
}

/// The rewrite itself; `ip` and `l4b` point into the frame, checked to hold
/// the IPv4 header and the L4 header up to its checksum.
#[inline(always)]
unsafe fn rewrite_l4<const UDP: bool>(
    ip: *mut Ipv4Hdr,
    l4b: *mut u8,
    csum_off: usize,
    source: bool,
    addr: u32,
    port: u16,
) {
    unsafe {
        let (addr_field, port_off) = if source {
            (&raw mut (*ip).src_addr, SRC_PORT_OFF)
        } else {
            (&raw mut (*ip).dst_addr, DST_PORT_OFF)
        };
        let old_addr = u32::from_ne_bytes(*addr_field);
        let old_port = u16::from_ne_bytes([*l4b.add(port_off), *l4b.add(port_off + 1)]);

        let ip_check = u16::from_be_bytes((*ip).check);
        (*ip).check = csum_update_addr(ip_check, old_addr, addr).to_be_bytes();
        *addr_field = addr.to_ne_bytes();

        let l4_check = u16::from_be_bytes([*l4b.add(csum_off), *l4b.add(csum_off + 1)]);
        // A UDP checksum of 0 means "none" and must stay 0.
        if !(UDP && l4_check == 0) {
            let mut c = csum_update_addr(l4_check, old_addr, addr);
            c = csum_update(c, u16::from_be(old_port), u16::from_be(port));
            if UDP && c == 0 {
                c = 0xffff;
            }
            let bytes = c.to_be_bytes();
            *l4b.add(csum_off) = bytes[0];
            *l4b.add(csum_off + 1) = bytes[1];
        }
        let bytes = port.to_ne_bytes();
        *l4b.add(port_off) = bytes[0];
        *l4b.add(port_off + 1) = bytes[1];
    }
}

/// Where the translated frame goes, if XDP can send it itself: the FIB
/// resolves the next hop completely, back out of the interface it came in
/// on. Frames for another interface (a local pod's veth) go to the stack:
/// that veth's peer may not take XDP frames (it needs XDP or NAPI, which
/// vipr does not control), and the TC programs pass them. An expiring TTL
/// goes to the stack too, which answers with ICMP.
/// `grow`: bytes the frame is about to grow by, for the MTU check.
#[inline(always)]
fn next_hop(ctx: &XdpContext, src: u32, dst: u32, grow: u16) -> Option<FibParams> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN)?;
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    unsafe {
        if (*ip).ttl <= 1 {
            return None;
        }
        params.family = AF_INET;
        params.l4_protocol = *(&raw const (*ip).proto as *const u8);
        params.__bindgen_anon_1.tot_len = u16::from_be_bytes((*ip).tot_len) + grow;
        params.__bindgen_anon_2.tos = (*ip).tos;
        params.__bindgen_anon_3.ipv4_src = src;
        params.__bindgen_anon_4.ipv4_dst = dst;
        params.ifindex = ingress;
    }
    let ret = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            &mut params,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    (ret == BPF_FIB_LKUP_RET_SUCCESS as i64 && params.ifindex == ingress).then_some(params)
}

/// New MAC addresses and TTL, then back out with `XDP_TX`.
#[inline(always)]
fn transmit(ctx: &XdpContext, hop: &FibParams) -> u32 {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return XDP_PASS;
    };
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN) else {
        return XDP_PASS;
    };
    unsafe {
        // The stack would have decremented the TTL while forwarding.
        let ttl = (*ip).ttl;
        (*ip).ttl = ttl - 1;
        let check = u16::from_be_bytes((*ip).check);
        (*ip).check = csum_update(
            check,
            u16::from_be_bytes([ttl, 0]),
            u16::from_be_bytes([ttl - 1, 0]),
        )
        .to_be_bytes();
        (*eth).dst_addr = hop.dmac;
        (*eth).src_addr = hop.smac;
    }
    count(Counter::XdpTransmitted);
    XDP_TX
}
