//! Direct server return for external IPv6 flows: `dsr.rs` decides and
//! records, as for IPv4; this is how the frontend travels.
//!
//! IPv6 has no header options: the frontend goes in a Destination Options
//! extension header of its own, inserted right after the fixed header
//! (`DSR6_HEADER_LEN` bytes: next header, length, one option of type
//! `DSR6_OPTION_TYPE` holding the address, the port and 2 zero bytes).
//! Routers on the way do not read destination options; the endpoint skips
//! the option it does not know (its type's top bits are 00). The L4
//! checksum needs no change: its pseudo-header holds the upper-layer length
//! and protocol, which an extension header does not change.
//!
//! IPv6 routers never fragment: an opening packet grows by 24 bytes and a
//! UDP datagram within 24 bytes of the path MTU is lost (`hybrid` keeps UDP
//! masqueraded; see ARCHITECTURE.md, "Direct server return").
use aya_ebpf::{
    bindings::bpf_adj_room_mode::BPF_ADJ_ROOM_NET,
    helpers::bpf_xdp_adjust_head,
    programs::{TcContext, XdpContext},
};
use proxy_common::{
    Addr6, Counter, DSR6_HEADER_LEN, DSR6_HEADER_LEN_FIELD, DSR6_OPTION_LEN, DSR6_OPTION_TYPE,
    IPPROTO_DSTOPTS, LB_MODE_SNAT,
};

use crate::{
    dsr,
    family::{Family, V6},
    maps::lb_mode,
    parse::{ETH_LEN, Flow, ptr_at},
    parse6::{IPV6_NEXT_HEADER_OFF, IPV6_PAYLOAD_LEN_OFF},
};

/// Where the header goes: right after the fixed IPv6 header.
const HEADER_OFF: usize = V6::PLAIN_L4_OFF;
const HEADER_LEN: usize = DSR6_HEADER_LEN as usize;
const NEXT_HEADER_OFF: usize = ETH_LEN + IPV6_NEXT_HEADER_OFF;
const PAYLOAD_LEN_OFF: usize = ETH_LEN + IPV6_PAYLOAD_LEN_OFF;

/// The extension header as it sits in the packet (every field wire order).
#[repr(C)]
#[derive(Clone, Copy)]
struct Header {
    next_header: u8,
    len: u8,
    option_type: u8,
    option_len: u8,
    addr: Addr6,
    port: u16,
    /// Inside the option's data: the header ends on an 8-byte boundary.
    zero: u16,
}

const _: () = assert!(core::mem::size_of::<Header>() == HEADER_LEN);

impl Header {
    #[inline(always)]
    fn new(next_header: u8, (addr, port): (Addr6, u16)) -> Self {
        Header {
            next_header,
            len: DSR6_HEADER_LEN_FIELD,
            option_type: DSR6_OPTION_TYPE,
            option_len: DSR6_OPTION_LEN,
            addr,
            port,
            zero: 0,
        }
    }

    /// Whether it is ours, as the ingress node writes it.
    #[inline(always)]
    fn is_ours(&self) -> bool {
        self.len == DSR6_HEADER_LEN_FIELD
            && self.option_type == DSR6_OPTION_TYPE
            && self.option_len == DSR6_OPTION_LEN
    }
}

/// Adds the header carrying the flow's frontend to a translated packet
/// without extension headers (`dsr::applies`), fixing the payload length
/// and the fixed header's next header.
#[inline(always)]
pub fn add_header(ctx: &TcContext, flow: &Flow<V6>) -> Result<(), i64> {
    let payload_len: u16 = ctx.load(PAYLOAD_LEN_OFF)?;
    // Room between the fixed header (the kernel takes it as 40 bytes) and L4.
    ctx.adjust_room(i32::from(DSR6_HEADER_LEN), BPF_ADJ_ROOM_NET, 0)?;
    let header = Header::new(flow.proto, (flow.dst_addr, flow.dst_port));
    ctx.store(HEADER_OFF, &header, 0)?;
    let new_len = (u16::from_be(payload_len) + u16::from(DSR6_HEADER_LEN)).to_be();
    ctx.store(PAYLOAD_LEN_OFF, &new_len, 0)?;
    ctx.store(NEXT_HEADER_OFF, &IPPROTO_DSTOPTS, 0)
}

/// The XDP twin of [`add_header`], written directly: the frame grows at
/// its head and its Ethernet and IPv6 headers move up by the header's
/// length. `false`: no headroom (the frame is left as it was) or a frame
/// too short to hold the headers (it is not: parsed before). `flow` is the
/// scratch entry's: its destination is still the frontend.
#[inline(never)]
pub fn add_header_xdp(ctx: &XdpContext, flow: &Flow<V6>) -> bool {
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -i32::from(DSR6_HEADER_LEN)) } != 0 {
        return false;
    }
    let Some(head) = ptr_at::<[u8; HEADER_OFF + HEADER_LEN]>(ctx, 0) else {
        return false;
    };
    let head = head as *mut u8;
    let header = Header::new(flow.proto, (flow.dst_addr, flow.dst_port));
    // Checked above: the frame holds both headers and the new one's room.
    unsafe {
        // Upwards, one byte at a time: the two ranges overlap.
        for i in 0..HEADER_OFF {
            *head.add(i) = *head.add(i + HEADER_LEN);
        }
        let bytes = &*(&header as *const Header as *const [u8; HEADER_LEN]);
        for (i, byte) in bytes.iter().enumerate() {
            *head.add(HEADER_OFF + i) = *byte;
        }
        let len_at = head.add(PAYLOAD_LEN_OFF);
        let len = u16::from_be_bytes([*len_at, *len_at.add(1)]) + u16::from(DSR6_HEADER_LEN);
        let len = len.to_be_bytes();
        *len_at = len[0];
        *len_at.add(1) = len[1];
        *head.add(NEXT_HEADER_OFF) = IPPROTO_DSTOPTS;
    }
    true
}

/// Endpoint's node: whether a packet may carry our header (L4 right after
/// 24 bytes of extension headers): one compare for every other packet,
/// before any call.
#[inline(always)]
pub fn may_carry_header(flow: &Flow<V6>) -> bool {
    flow.l4_off == HEADER_OFF + HEADER_LEN
}

/// Endpoint's node: the frontend a packet's header carries, if it has
/// exactly ours (the first and only extension header).
#[inline(always)]
fn frontend(ctx: &TcContext, flow: &Flow<V6>) -> Option<(Addr6, u16)> {
    if !may_carry_header(flow) || lb_mode() == LB_MODE_SNAT {
        return None;
    }
    let first: u8 = ctx.load(NEXT_HEADER_OFF).ok()?;
    let header: Header = ctx.load(HEADER_OFF).ok()?;
    (first == IPPROTO_DSTOPTS && header.is_ours()).then_some((header.addr, header.port))
}

/// Endpoint's node: records the flow of a packet that came with the header
/// (`dsr::learn`); `None`: it has none. A subprogram: its keys and entries
/// must not sit on the frame of the chain that decides other packets.
#[inline(never)]
pub fn learnt(ctx: &TcContext, flow: &Flow<V6>) -> Option<Counter> {
    let frontend = frontend(ctx, flow)?;
    Some(dsr::learn::<V6>(flow, frontend))
}
