//! The TC programs.
//! - On the host side of every pod interface: `vipr_from_pod` on ingress
//!   (what pods send), `vipr_to_pod` on egress (what pods receive).
//! - On the node's external interfaces: `vipr_from_external` on ingress
//!   (NodePort/LoadBalancer/external-IP traffic and replies to masqueraded
//!   flows), `vipr_to_external` on egress (replies of local endpoints).
//!
//! The pod programs serve IPv4 and IPv6 (EtherType 0x86DD), the same
//! decisions for both (`family.rs`). The external programs (and XDP) still
//! pass IPv6 untouched, counted as `pass_not_ipv4`: external IPv6 frontends
//! need masquerade, which the IPv6 path does not have yet.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use proxy_common::{CT_FLAG_SNAT, Counter, IPPROTO_TCP, SCOPE_EXTERNAL};

use crate::{
    decide::{self, Decision},
    family::{Family, V6},
    fwd,
    maps::count,
    nat::Side,
    parse::{Flow, is_ipv6, parse_flow},
    parse6::parse_flow6,
};

/// Whether the pod programs serve IPv6 yet (off until their stack fits).
const V6_SERVED: bool = false;
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
    if V6_SERVED && is_ipv6(&ctx) {
        return from_pod6(&ctx);
    }
    match parse_flow(&ctx) {
        Ok(flow) => apply(&ctx, &flow, decide::from_pod(&flow)),
        Err(reason) => verdict(reason),
    }
}

/// The IPv6 half of `vipr_from_pod`: a BPF subprogram, whose stack frame is
/// its own (the two halves' together exceed one frame).
#[inline(never)]
fn from_pod6(ctx: &TcContext) -> i32 {
    let flow = match parse_flow6(ctx) {
        Ok(flow) => flow,
        Err(reason) => return verdict(reason),
    };
    let mut decision = Decision::Pass(Counter::PassNotService);
    decide_from_pod6(&flow, &mut decision);
    apply(ctx, &flow, decision)
}

/// The decision of `from_pod6`, in a subprogram of its own: the stack
/// frames of parsing, deciding and carrying out do not add up.
#[inline(never)]
fn decide_from_pod6(flow: &Flow<V6>, out: &mut Decision<V6>) {
    *out = decide::from_pod(flow);
}

#[classifier]
pub fn vipr_to_pod(ctx: TcContext) -> i32 {
    if V6_SERVED && is_ipv6(&ctx) {
        return match parse_flow6(&ctx) {
            Ok(flow) => apply(&ctx, &flow, decide::from_service(&flow)),
            Err(reason) => verdict(reason),
        };
    }
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
fn apply<F: Family>(ctx: &TcContext, flow: &Flow<F>, decision: Decision<F>) -> i32 {
    let (rewritten, counter) = match decision {
        Decision::Pass(counter) | Decision::Drop(counter) => return verdict(counter),
        Decision::Refuse => return F::refuse(ctx, flow),
        Decision::Translate(entry, counter) => (translate(ctx, flow, &entry), counter),
        Decision::RestoreSource(entry) => {
            let (addr, port) = F::entry_nat(&entry);
            (
                F::rewrite(ctx, flow, Side::Source, addr, port),
                Counter::RevNat,
            )
        }
        Decision::Unmasquerade(entry) => {
            let (addr, port) = F::entry_nat(&entry);
            let (client, client_port) = F::entry_snat(&entry);
            (
                F::rewrite(ctx, flow, Side::Source, addr, port)
                    .and_then(|()| F::rewrite(ctx, flow, Side::Destination, client, client_port)),
                Counter::RevSnat,
            )
        }
    };
    match rewritten {
        Ok(()) => verdict(counter),
        Err(_) => verdict(Counter::DropRewriteFailed),
    }
}

#[inline(always)]
fn translate<F: Family>(ctx: &TcContext, flow: &Flow<F>, entry: &F::CtValue) -> Result<(), i64> {
    let (addr, port) = F::entry_nat(entry);
    F::rewrite(ctx, flow, Side::Destination, addr, port)?;
    if F::entry_flags(entry) & CT_FLAG_SNAT != 0 {
        let (node, node_port) = F::entry_snat(entry);
        F::rewrite(ctx, flow, Side::Source, node, node_port)?;
    }
    Ok(())
}

#[inline(always)]
pub fn refuse<F: Family>(ctx: &TcContext, flow: &Flow<F>) -> i32 {
    let (sent, counter) = if flow.proto == IPPROTO_TCP {
        (F::tcp_reset(ctx, flow), Counter::RejectTcpRst)
    } else {
        (
            F::port_unreachable(ctx, flow),
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
