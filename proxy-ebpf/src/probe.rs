//! Programs the agent loads only to ask the kernel which attach points it
//! has (TCX, native or generic XDP). They are attached in a throwaway
//! network namespace and never see real traffic.
use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action::XDP_PASS},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

#[classifier]
pub fn vipr_probe_tc(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[xdp]
pub fn vipr_probe_xdp(_ctx: XdpContext) -> u32 {
    XDP_PASS
}
