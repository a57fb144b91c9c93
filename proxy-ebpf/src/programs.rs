//! The TC programs.
//! - On the host side of every pod interface: `vipr_from_pod` on ingress
//!   (what pods send), `vipr_to_pod` on egress (what pods receive).
//! - On the node's external interfaces: `vipr_from_external` on ingress
//!   (NodePort/LoadBalancer/external-IP traffic and replies to masqueraded
//!   flows), `vipr_to_external` on egress (replies of local endpoints).
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use proxy_common::{CT_FLAG_SNAT, Counter, CtValue, IPPROTO_TCP, SCOPE_EXTERNAL};

use crate::{
    decide::{self, Decision},
    fwd,
    maps::count,
    nat::{Side, rewrite},
    parse::{Flow, parse_flow},
    reject,
};

const PASS: i32 = TC_ACT_OK as i32;
const DROP: i32 = TC_ACT_SHOT as i32;

/// Counts `counter` and turns it into a verdict.
#[inline(always)]
fn verdict(counter: Counter) -> i32 {
    count(counter);
    if counter.is_drop() { DROP } else { PASS }
}

#[classifier]
pub fn vipr_from_pod(ctx: TcContext) -> i32 {
    match parse_flow(&ctx) {
        Ok(flow) => apply(&ctx, &flow, decide::from_pod(&flow)),
        Err(reason) => verdict(reason),
    }
}

#[classifier]
pub fn vipr_to_pod(ctx: TcContext) -> i32 {
    match parse_flow(&ctx) {
        Ok(flow) => apply(&ctx, &flow, decide::from_service(&flow)),
        Err(reason) => verdict(reason),
    }
}

#[classifier]
pub fn vipr_from_external(ctx: TcContext) -> i32 {
    let flow = match parse_flow(&ctx) {
        Ok(flow) => flow,
        Err(reason) => return verdict(reason),
    };
    let decision = decide::from_outside(&flow, SCOPE_EXTERNAL);
    let local_source = decision.leaves_with_a_local_source();
    match apply(&ctx, &flow, decision) {
        PASS if local_source => fwd::redirect_to_egress(&ctx).unwrap_or(PASS),
        action => action,
    }
}

#[classifier]
pub fn vipr_to_external(ctx: TcContext) -> i32 {
    match parse_flow(&ctx) {
        Ok(flow) => apply(&ctx, &flow, decide::from_service(&flow)),
        Err(reason) => verdict(reason),
    }
}

#[inline(always)]
fn apply(ctx: &TcContext, flow: &Flow, decision: Decision) -> i32 {
    let (rewritten, counter) = match decision {
        Decision::Pass(counter) | Decision::Drop(counter) => return verdict(counter),
        Decision::Refuse => return refuse(ctx, flow),
        Decision::Translate(entry, counter) => (translate(ctx, flow, &entry), counter),
        Decision::RestoreSource(entry) => (
            rewrite(ctx, flow, Side::Source, entry.nat_addr, entry.nat_port),
            Counter::RevNat,
        ),
        Decision::Unmasquerade(entry) => (
            rewrite(ctx, flow, Side::Source, entry.nat_addr, entry.nat_port).and_then(|()| {
                rewrite(
                    ctx,
                    flow,
                    Side::Destination,
                    entry.snat_addr,
                    entry.snat_port,
                )
            }),
            Counter::RevSnat,
        ),
    };
    match rewritten {
        Ok(()) => verdict(counter),
        Err(_) => verdict(Counter::DropRewriteFailed),
    }
}

#[inline(always)]
fn translate(ctx: &TcContext, flow: &Flow, entry: &CtValue) -> Result<(), i64> {
    rewrite(ctx, flow, Side::Destination, entry.nat_addr, entry.nat_port)?;
    if entry.flags & CT_FLAG_SNAT != 0 {
        rewrite(ctx, flow, Side::Source, entry.snat_addr, entry.snat_port)?;
    }
    Ok(())
}

#[inline(always)]
fn refuse(ctx: &TcContext, flow: &Flow) -> i32 {
    let (sent, counter) = if flow.proto == IPPROTO_TCP {
        (reject::tcp_reset(ctx, flow), Counter::RejectTcpRst)
    } else {
        (
            reject::icmp_port_unreachable(ctx, flow),
            Counter::RejectIcmpUnreachable,
        )
    };
    match sent {
        Ok(action) => {
            count(counter);
            action
        }
        Err(_) => verdict(Counter::DropRejectFailed),
    }
}
