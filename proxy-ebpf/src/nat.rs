//! Address and port rewrites with incremental checksum updates.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use proxy_common::IPPROTO_UDP;

use crate::parse::{Flow, IP_CSUM_OFF, IP_DST_OFF, IP_SRC_OFF};

const SRC_PORT_OFF: usize = 0;
const DST_PORT_OFF: usize = 2;
const ADDR_SIZE: u64 = 4;
const PORT_SIZE: u64 = 2;

/// Which end of the flow a rewrite changes.
#[derive(Clone, Copy)]
pub enum Side {
    Source,
    Destination,
}

/// Rewrites one end of `flow` to `addr:port` (wire order), fixing the IP and
/// L4 checksums. Reads nothing from the packet: helpers invalidate pointers.
#[inline(always)]
pub fn rewrite(ctx: &TcContext, flow: &Flow, side: Side, addr: u32, port: u16) -> Result<(), i64> {
    let (old_addr, old_port, addr_off, port_off) = match side {
        Side::Source => (flow.src_addr, flow.src_port, IP_SRC_OFF, SRC_PORT_OFF),
        Side::Destination => (flow.dst_addr, flow.dst_port, IP_DST_OFF, DST_PORT_OFF),
    };
    // A UDP checksum of 0 means "none" and must stay 0.
    let l4_flags = if flow.proto == IPPROTO_UDP {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    };
    let csum_off = flow.l4_csum_off();
    if old_addr != addr {
        ctx.l4_csum_replace(
            csum_off,
            old_addr as u64,
            addr as u64,
            l4_flags | BPF_F_PSEUDO_HDR as u64 | ADDR_SIZE,
        )?;
        ctx.l3_csum_replace(IP_CSUM_OFF, old_addr as u64, addr as u64, ADDR_SIZE)?;
        ctx.store(addr_off, &addr, 0)?;
    }
    if old_port != port {
        ctx.l4_csum_replace(csum_off, old_port as u64, port as u64, l4_flags | PORT_SIZE)?;
        ctx.store(flow.l4_off + port_off, &port, 0)?;
    }
    Ok(())
}
