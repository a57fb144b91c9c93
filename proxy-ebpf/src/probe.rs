//! Trivial programs. The TC one only asks the kernel whether it has TCX; the
//! XDP one also probes native and generic XDP, and stands on the far end of
//! a veth that carries native XDP_TX frames (`vipr veth-peer`).
use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action::XDP_PASS},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

#[classifier]
pub fn vipr_probe_tc(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

/// Lets every frame through. Its presence is what matters: the kernel hands
/// a veth the frames its peer sent back with XDP_TX only while this veth runs
/// an XDP program (GRO alone does not schedule the receive).
#[xdp]
pub fn vipr_xdp_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}
