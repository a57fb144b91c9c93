//! IPv6 address and port rewrites. IPv6 has no header checksum; the TCP and
//! UDP checksums cover the addresses through the pseudo-header, so the
//! address's checksum difference is applied to the L4 checksum.
use aya_ebpf::{bindings::BPF_F_PSEUDO_HDR, programs::TcContext};
use proxy_common::{Addr6, IPPROTO_UDP};

use crate::{
    family::V6,
    nat::Side,
    parse::{ETH_LEN, Flow},
    parse6::{IPV6_DST_OFF, IPV6_SRC_OFF},
};

const SRC_PORT_OFF: usize = 0;
const DST_PORT_OFF: usize = 2;
const PORT_SIZE: u64 = 2;
/// What a computed UDP checksum of 0 is sent as: in IPv6 a 0 means "no
/// checksum", which receivers drop (RFC 8200 §8.1), and 0xffff is the
/// same sum in one's complement.
const UDP_CSUM_ZERO_AS: u16 = 0xffff;

/// The one's-complement difference between two addresses, as
/// `bpf_csum_diff` would return it: the sum of the new words and the
/// complemented old ones. Computed here, it saves a helper call per rewrite.
#[inline(always)]
fn csum_diff(old: &Addr6, new: &Addr6) -> u32 {
    let mut sum: u64 = 0;
    for word in 0..old.len() {
        sum += (!old[word]) as u64 + new[word] as u64;
    }
    // Eight 32-bit words: two folds bring the carries back into 32 bits.
    sum = (sum & u32::MAX as u64) + (sum >> 32);
    sum = (sum & u32::MAX as u64) + (sum >> 32);
    sum as u32
}

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
        // Size bits 0: `to` is a precomputed difference.
        let diff = csum_diff(&old_addr, &addr) as u64;
        ctx.l4_csum_replace(csum_off, 0, diff, BPF_F_PSEUDO_HDR as u64)?;
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
