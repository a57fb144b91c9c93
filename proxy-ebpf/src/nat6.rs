//! IPv6 address and port rewrites. IPv6 has no header checksum; the TCP and
//! UDP checksums cover the addresses through the pseudo-header, so the
//! address's checksum difference is applied to the L4 checksum.
use aya_ebpf::{bindings::BPF_F_PSEUDO_HDR, helpers::bpf_csum_diff, programs::TcContext};
use proxy_common::{Addr6, IPPROTO_UDP};

use crate::{
    family::V6,
    nat::Side,
    parse::{ETH_LEN, Flow},
    parse6::{IPV6_DST_OFF, IPV6_SRC_OFF},
};

const SRC_PORT_OFF: usize = 0;
const DST_PORT_OFF: usize = 2;
const ADDR_SIZE: u32 = 16;
const PORT_SIZE: u64 = 2;
/// What a computed UDP checksum of 0 is sent as: in IPv6 a 0 means "no
/// checksum", which receivers drop (RFC 8200 §8.1), and 0xffff is the
/// same sum in one's complement.
const UDP_CSUM_ZERO_AS: u16 = 0xffff;

/// Rewrites one end of `flow` to `addr:port` (wire order), fixing the L4
/// checksum. Reads nothing from the packet: helpers invalidate pointers.
#[inline(always)]
pub fn rewrite(
    ctx: &TcContext,
    flow: &Flow<V6>,
    side: Side,
    addr: Addr6,
    port: u16,
) -> Result<(), i64> {
    let (old_addr, old_port, addr_off, port_off) = match side {
        Side::Source => (flow.src_addr, flow.src_port, IPV6_SRC_OFF, SRC_PORT_OFF),
        Side::Destination => (flow.dst_addr, flow.dst_port, IPV6_DST_OFF, DST_PORT_OFF),
    };
    let csum_off = flow.l4_csum_off();
    // No BPF_F_MARK_MANGLED_0 for UDP: a 0 is no "none" here, so it is
    // always updated, and a result of 0 fixed below.
    if old_addr != addr {
        // One checksum difference for the whole address, applied at once:
        // two helper calls instead of one per changed word.
        let mut old_addr = old_addr;
        let mut new_addr = addr;
        let diff = unsafe {
            bpf_csum_diff(
                old_addr.as_mut_ptr(),
                ADDR_SIZE,
                new_addr.as_mut_ptr(),
                ADDR_SIZE,
                0,
            )
        };
        if diff < 0 {
            return Err(diff);
        }
        // Size bits 0: `to` is a precomputed difference.
        ctx.l4_csum_replace(csum_off, 0, diff as u64, BPF_F_PSEUDO_HDR as u64)?;
        ctx.store(ETH_LEN + addr_off, &addr, 0)?;
    }
    if old_port != port {
        ctx.l4_csum_replace(csum_off, old_port as u64, port as u64, PORT_SIZE)?;
        ctx.store(flow.l4_off + port_off, &port, 0)?;
    }
    if flow.proto == IPPROTO_UDP {
        let csum: u16 = ctx.load(csum_off)?;
        if csum == 0 {
            ctx.store(csum_off, &UDP_CSUM_ZERO_AS, 0)?;
        }
    }
    Ok(())
}
