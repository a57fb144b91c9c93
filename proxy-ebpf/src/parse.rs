//! Header parsing with direct packet access. Produces the flow tuple the
//! other modules work on, or a named reason why the packet is not one.
use aya_ebpf::programs::{TcContext, XdpContext};
use core::mem::{offset_of, size_of};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};
use proxy_common::{Counter, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    family::{Family, V4},
    wire,
};

pub const ETH_LEN: usize = size_of::<EthHdr>();
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const ETHERTYPE_IPV6: [u8; 2] = [0x86, 0xdd];
pub const IPV4_MIN_HDR_LEN: usize = size_of::<Ipv4Hdr>();
/// "More fragments" flag and fragment offset bits of `frags`.
const IP_MF_AND_OFFSET: u16 = 0x3fff;
pub const TCP_FLAG_FIN: u8 = 0x01;
pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_RST: u8 = 0x04;
pub const TCP_FLAG_ACK: u8 = 0x10;
/// Byte offset of the flags within the TCP header.
const TCP_FLAGS_OFF: usize = 13;

/// Offsets of the fields the NAT code rewrites.
pub const IP_CSUM_OFF: usize = ETH_LEN + offset_of!(Ipv4Hdr, check);
pub const IP_SRC_OFF: usize = ETH_LEN + offset_of!(Ipv4Hdr, src_addr);
pub const IP_DST_OFF: usize = ETH_LEN + offset_of!(Ipv4Hdr, dst_addr);
pub const TCP_CSUM_OFF: usize = offset_of!(TcpHdr, check);
pub const UDP_CSUM_OFF: usize = offset_of!(UdpHdr, check);

/// A TCP or UDP packet of family `F`; addresses and ports in wire byte order.
#[derive(Clone, Copy)]
pub struct Flow<F: Family = V4> {
    pub src_addr: F::Addr,
    pub dst_addr: F::Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    /// TCP flags byte, 0 for UDP.
    pub tcp_flags: u8,
    /// Offset of the L4 header from the start of the frame.
    pub l4_off: usize,
}

impl<F: Family> Flow<F> {
    /// A TCP SYN without ACK: the first packet of a new connection.
    #[inline(always)]
    pub fn is_tcp_syn(&self) -> bool {
        self.proto == IPPROTO_TCP && self.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN
    }

    #[inline(always)]
    pub fn l4_csum_off(&self) -> usize {
        self.l4_off
            + if self.proto == IPPROTO_TCP {
                TCP_CSUM_OFF
            } else {
                UDP_CSUM_OFF
            }
    }
}

/// Why a packet is not a flow vipr translates. `Pass*` reasons let it through
/// untouched; `Drop*` reasons drop it.
pub type NotAFlow = Counter;

/// Direct packet access, for both program types.
pub trait Frame {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
}

impl Frame for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
}

impl Frame for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
}

/// A pointer to a `T` at `offset`, if the frame is long enough.
#[inline(always)]
pub fn ptr_at<T>(ctx: &impl Frame, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// The frame's EtherType, if it has an Ethernet header.
#[inline(always)]
fn ether_type(ctx: &impl Frame) -> Option<[u8; 2]> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // Read the ethertype as bytes: network-types models it as an enum, and an
    // unknown value must not be materialised as one.
    Some(unsafe { *((eth as *const u8).add(offset_of!(EthHdr, ether_type)) as *const [u8; 2]) })
}

/// Whether the frame is IPv6 (by its EtherType).
#[inline(always)]
pub fn is_ipv6(ctx: &impl Frame) -> bool {
    ether_type(ctx) == Some(ETHERTYPE_IPV6)
}

#[inline(always)]
pub fn parse_flow(ctx: &impl Frame) -> Result<Flow, NotAFlow> {
    if ether_type(ctx) != Some(ETHERTYPE_IPV4) {
        return Err(Counter::PassNotIpv4);
    }
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_LEN).ok_or(Counter::DropTruncated)?;
    let (vihl, frags) = unsafe { ((*ip).vihl, (*ip).frags) };
    let (src_addr, dst_addr) = unsafe {
        (
            wire::load_u32((ip as *const u8).add(offset_of!(Ipv4Hdr, src_addr))),
            wire::load_u32((ip as *const u8).add(offset_of!(Ipv4Hdr, dst_addr))),
        )
    };
    let proto: u8 = unsafe { *((ip as *const u8).add(offset_of!(Ipv4Hdr, proto))) };
    // Masked so the verifier sees a bounded header length (at most 60).
    let ihl = ((vihl & 0x0f) as usize) << 2;
    if vihl >> 4 != 4 || ihl < IPV4_MIN_HDR_LEN {
        return Err(Counter::DropBadIpHeader);
    }
    if u16::from_be_bytes(frags) & IP_MF_AND_OFFSET != 0 {
        return Err(Counter::PassFragment);
    }
    let l4_off = ETH_LEN + ihl;
    let (src_port, dst_port, tcp_flags) = match proto {
        IPPROTO_TCP => {
            let tcp: *mut TcpHdr = ptr_at(ctx, l4_off).ok_or(Counter::DropTruncated)?;
            let flags = unsafe { *((tcp as *const u8).add(TCP_FLAGS_OFF)) };
            unsafe { ((*tcp).source, (*tcp).dest, flags) }
        }
        IPPROTO_UDP => {
            let udp: *mut UdpHdr = ptr_at(ctx, l4_off).ok_or(Counter::DropTruncated)?;
            unsafe { ((*udp).src, (*udp).dst, 0) }
        }
        _ => return Err(Counter::PassOtherProtocol),
    };
    Ok(Flow {
        src_addr,
        dst_addr,
        src_port: u16::from_ne_bytes(src_port),
        dst_port: u16::from_ne_bytes(dst_port),
        proto,
        tcp_flags,
        l4_off,
    })
}
