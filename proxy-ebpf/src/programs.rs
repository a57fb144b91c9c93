//! The TC programs.
//! - On the host side of every pod interface: `vipr_from_pod` on ingress
//!   (what pods send), `vipr_to_pod` on egress (what pods receive).
//! - On the node's external interfaces: `vipr_from_external` on ingress
//!   (NodePort/LoadBalancer/external-IP traffic and replies to masqueraded
//!   flows), `vipr_to_external` on egress (replies of local endpoints).
//!
//! Every program serves IPv4 and IPv6 (EtherType 0x86DD), the same
//! decisions for both (`family.rs`).
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use proxy_common::{CT_FLAG_SNAT, Counter, Ct6Value, IPPROTO_TCP, SCOPE_EXTERNAL};

use crate::{
    decide::{self, Decision},
    dsr::{self, Way},
    dsr6,
    family::{Family, V6},
    fwd,
    icmp_error::{self, Towards},
    maps::{SCRATCH6, count},
    nat::Side,
    parse::{Flow, is_ipv6, parse_flow},
    parse6::parse_flow6,
};

const PASS: i32 = TC_ACT_OK as i32;
const DROP: i32 = TC_ACT_SHOT as i32;

/// Counts `counter` and turns it into a verdict.
#[inline(always)]
fn verdict(counter: Counter) -> i32 {
    count(counter);
    if counter.is_drop() { DROP } else { PASS }
}

/// Each family's half is a BPF subprogram: the kernel limits the stack of
/// a call chain to 512 bytes, and the IPv6 path's keys and entries are
/// large; so the entry point itself keeps no frame of its own to add.
#[classifier]
pub fn vipr_from_pod(ctx: TcContext) -> i32 {
    if is_ipv6(&ctx) {
        return serve6(&ctx, Origin::Pod);
    }
    from_pod4(&ctx)
}

#[inline(never)]
fn from_pod4(ctx: &TcContext) -> i32 {
    match parse_flow(ctx) {
        Ok(flow) => apply(ctx, &flow, decide::from_pod(&flow)),
        Err(reason) => verdict(reason),
    }
}

/// Where a packet the IPv6 path serves comes from.
#[derive(Clone, Copy, PartialEq)]
enum Origin {
    Pod,
    External,
}

/// The IPv6 half of `vipr_from_pod` and `vipr_from_external`: parses,
/// decides and carries out in subprograms called one after the other, so
/// their stack frames never add up; the flow and the decision they pass on
/// live in a per-CPU map entry, not on this frame. (6.1 counts every frame
/// of a chain rounded up to 32 bytes, a compiler-emitted `memset` call
/// included: 512 in all.)
#[inline(never)]
fn serve6(ctx: &TcContext, origin: Origin) -> i32 {
    let Some(scratch) = SCRATCH6.get_ptr_mut(0) else {
        return verdict(Counter::DropNoScratch);
    };
    // A per-CPU entry: nothing else runs on this CPU while the program does.
    let scratch = unsafe { &mut *scratch };
    if let Some(reason) = parse6_into(ctx, &mut scratch.flow) {
        if reason == Counter::PassOtherProtocol && origin == Origin::External {
            return related_error(ctx, true, Towards::MasqueradedClient);
        }
        return verdict(reason);
    }
    // A DSR flow's packet from an ingress node, for a local endpoint.
    if origin == Origin::External
        && dsr6::may_carry_header(&scratch.flow)
        && let Some(learnt) = dsr6::learnt(ctx, &scratch.flow)
    {
        return verdict(learnt);
    }
    match origin {
        Origin::Pod => decide_from_pod6(&scratch.flow, &mut scratch.decided),
        Origin::External => decide_from_external6(&scratch.flow, &mut scratch.decided),
    }
    let (flow, decided) = (&scratch.flow, &scratch.decided);
    // From here, not from `apply6`: the reply frames' subprograms must not
    // stack on its frame. Packets left as they are need no call at all.
    match decided.kind {
        Kind::Refuse => V6::refuse(ctx, flow),
        Kind::Pass | Kind::Drop => verdict(decided.counter),
        _ => match apply6(ctx, flow, decided) {
            PASS if origin == Origin::External && decided.local_source => {
                fwd::redirect_to_egress6(ctx).unwrap_or(PASS)
            }
            PASS if origin == Origin::External => match decided.way(flow) {
                Way::NotDsr => PASS,
                way => forward_dsr6(ctx, flow, way),
            },
            action => action,
        },
    }
}

/// What the IPv6 path hands from one subprogram to the next.
pub struct Scratch6 {
    pub(crate) flow: Flow<V6>,
    pub(crate) decided: Decided6,
}

/// `None`: `out` holds the flow; else why there is none.
#[inline(never)]
fn parse6_into(ctx: &TcContext, out: &mut Flow<V6>) -> Option<Counter> {
    match parse_flow6(ctx) {
        Ok(flow) => {
            *out = flow;
            None
        }
        Err(reason) => Some(reason),
    }
}

/// A `Decision<V6>` as it crosses between subprograms: every byte defined.
/// (Copying the enum would copy its variants' unused bytes too, and the
/// verifier refuses a stack write of whatever register held them.)
pub(crate) struct Decided6 {
    pub(crate) kind: Kind,
    pub(crate) counter: Counter,
    /// `Decision::leaves_with_a_local_source`.
    pub(crate) local_source: bool,
    pub(crate) entry: Ct6Value,
}

impl Decided6 {
    /// `dsr::way` of the decision.
    #[inline(always)]
    pub(crate) fn way(&self, flow: &Flow<V6>) -> Way {
        match self.kind {
            Kind::Translate => dsr::way_flagged(flow, self.entry.flags),
            _ => Way::NotDsr,
        }
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Kind {
    Pass,
    Drop,
    Translate,
    Unmasquerade,
    RestoreSource,
    Refuse,
}

#[inline(never)]
fn decide_from_pod6(flow: &Flow<V6>, out: &mut Decided6) {
    note_decision6(decide::from_pod(flow), out);
}

#[inline(never)]
pub(crate) fn decide_from_external6(flow: &Flow<V6>, out: &mut Decided6) {
    note_decision6(decide::from_outside(flow, SCOPE_EXTERNAL), out);
}

#[inline(always)]
fn note_decision6(decision: Decision<V6>, out: &mut Decided6) {
    out.local_source = decision.leaves_with_a_local_source();
    let (kind, counter) = match decision {
        Decision::Pass(counter) => (Kind::Pass, counter),
        Decision::Drop(counter) => (Kind::Drop, counter),
        Decision::Translate(entry, counter) => {
            out.entry = entry;
            (Kind::Translate, counter)
        }
        Decision::Unmasquerade(entry) => {
            out.entry = entry;
            (Kind::Unmasquerade, Counter::RevSnat)
        }
        Decision::RestoreSource(entry) => {
            out.entry = entry;
            (Kind::RestoreSource, Counter::RevNat)
        }
        Decision::Refuse => (Kind::Refuse, Counter::DropRejectFailed),
    };
    out.kind = kind;
    out.counter = counter;
}

/// Carries out what `serve6` decided, straight from the scratch entry:
/// no `Decision` is rebuilt around a copy of it.
#[inline(never)]
fn apply6(ctx: &TcContext, flow: &Flow<V6>, decided: &Decided6) -> i32 {
    let entry = &decided.entry;
    let rewritten = match decided.kind {
        Kind::Translate => translate::<V6>(ctx, flow, entry),
        Kind::RestoreSource => restore_source::<V6>(ctx, flow, entry),
        Kind::Unmasquerade => unmasquerade::<V6>(ctx, flow, entry),
        // Never here: `serve6` answers these itself.
        Kind::Pass | Kind::Drop | Kind::Refuse => return verdict(decided.counter),
    };
    rewritten_verdict(rewritten, decided.counter)
}

/// Replies on their way to a client: restored to the frontend as source.
/// A reply is never refused: no reply frames on this path. `Err`: no TCP
/// or UDP packet, for the caller to count (see `reply_path`).
#[inline(never)]
fn restore6(ctx: &TcContext) -> Result<i32, Counter> {
    let flow = parse_flow6(ctx)?;
    Ok(carry_out(ctx, &flow, decide::from_service(&flow)))
}

#[inline(never)]
fn restore4(ctx: &TcContext) -> Result<i32, Counter> {
    let flow = parse_flow(ctx)?;
    Ok(apply(ctx, &flow, decide::from_service(&flow)))
}

/// `vipr_to_pod` and `vipr_to_external`: replies restored, and ICMP errors
/// about translated flows, after the restoring subprogram has returned (so
/// that their frames never add up).
#[inline(always)]
fn reply_path(ctx: &TcContext) -> i32 {
    let ipv6 = is_ipv6(ctx);
    let restored = if ipv6 { restore6(ctx) } else { restore4(ctx) };
    match restored {
        Ok(action) => action,
        Err(Counter::PassOtherProtocol) => related_error(ctx, ipv6, Towards::Client),
        Err(reason) => verdict(reason),
    }
}

/// A packet that is neither TCP nor UDP: an ICMP error about a translated
/// flow is translated (and, masqueraded, sent on to its egress as the
/// flow's replies are); anything else passes, counted as before.
#[inline(always)]
fn related_error(ctx: &TcContext, ipv6: bool, towards: Towards) -> i32 {
    let translated = if ipv6 {
        icmp_error::translate6(ctx, towards)
    } else {
        icmp_error::translate4(ctx, towards)
    };
    match translated {
        None => verdict(Counter::PassOtherProtocol),
        Some(()) if towards == Towards::MasqueradedClient => {
            let redirected = if ipv6 {
                fwd::redirect_to_egress6(ctx)
            } else {
                fwd::redirect_to_egress(ctx)
            };
            redirected.unwrap_or(PASS)
        }
        Some(()) => PASS,
    }
}

#[classifier]
pub fn vipr_to_pod(ctx: TcContext) -> i32 {
    reply_path(&ctx)
}

#[classifier]
pub fn vipr_from_external(ctx: TcContext) -> i32 {
    if is_ipv6(&ctx) {
        return serve6(&ctx, Origin::External);
    }
    from_external4(&ctx)
}

#[inline(never)]
fn from_external4(ctx: &TcContext) -> i32 {
    let flow = match parse_flow(ctx) {
        Ok(flow) => flow,
        Err(Counter::PassOtherProtocol) => {
            return related_error(ctx, false, Towards::MasqueradedClient);
        }
        Err(reason) => return verdict(reason),
    };
    // A DSR flow's packet from an ingress node, for a local endpoint.
    if let Some(frontend) = dsr::option4(ctx, &flow) {
        return verdict(dsr::learn4(&flow, frontend));
    }
    let decision = decide::from_outside(&flow, SCOPE_EXTERNAL);
    let local_source = decision.leaves_with_a_local_source();
    let way = dsr::way(&flow, &decision);
    match apply(ctx, &flow, decision) {
        PASS if local_source => fwd::redirect_to_egress(ctx).unwrap_or(PASS),
        PASS if way != Way::NotDsr => forward_dsr4(ctx, &flow, way),
        action => action,
    }
}

/// A translated DSR packet: with the frontend in its option if it opens
/// the flow, then to its egress. The stack forwards what the FIB cannot
/// (it keeps the client's address: no martian).
#[inline(always)]
fn forward_dsr4(ctx: &TcContext, flow: &Flow, way: Way) -> i32 {
    if way == Way::WithOption {
        if dsr::add_option4(ctx, (flow.dst_addr, flow.dst_port)).is_err() {
            return verdict(Counter::DropDsrOptionFailed);
        }
        count(Counter::DsrOptionAdded);
    }
    fwd::redirect_to_egress(ctx).unwrap_or(PASS)
}

/// [`forward_dsr4`] for IPv6: the frontend in an extension header
/// (`dsr6.rs`). A subprogram called from `serve6` once `apply6` has
/// returned, so its frame never stacks on the decision's.
#[inline(never)]
fn forward_dsr6(ctx: &TcContext, flow: &Flow<V6>, way: Way) -> i32 {
    if way == Way::WithOption {
        if dsr6::add_header(ctx, flow).is_err() {
            return verdict(Counter::DropDsrOptionFailed);
        }
        count(Counter::DsrOptionAdded);
    }
    fwd::redirect_to_egress6(ctx).unwrap_or(PASS)
}

#[classifier]
pub fn vipr_to_external(ctx: TcContext) -> i32 {
    reply_path(&ctx)
}

#[inline(always)]
fn apply<F: Family>(ctx: &TcContext, flow: &Flow<F>, decision: Decision<F>) -> i32 {
    match decision {
        Decision::Refuse => F::refuse(ctx, flow),
        other => carry_out(ctx, flow, other),
    }
}

/// Every decision but a refusal (see `apply`).
#[inline(always)]
fn carry_out<F: Family>(ctx: &TcContext, flow: &Flow<F>, decision: Decision<F>) -> i32 {
    match decision {
        Decision::Pass(counter) | Decision::Drop(counter) => verdict(counter),
        // Never here: `apply` refuses.
        Decision::Refuse => verdict(Counter::DropRejectFailed),
        Decision::Translate(entry, counter) => {
            rewritten_verdict(translate(ctx, flow, &entry), counter)
        }
        Decision::RestoreSource(entry) => {
            rewritten_verdict(restore_source(ctx, flow, &entry), Counter::RevNat)
        }
        Decision::Unmasquerade(entry) => {
            rewritten_verdict(unmasquerade(ctx, flow, &entry), Counter::RevSnat)
        }
    }
}

/// `counter` if the rewrite went through.
#[inline(always)]
fn rewritten_verdict(rewritten: Result<(), i64>, counter: Counter) -> i32 {
    match rewritten {
        Ok(()) => verdict(counter),
        Err(_) => verdict(Counter::DropRewriteFailed),
    }
}

/// A backend's reply: the frontend as its source again.
#[inline(always)]
fn restore_source<F: Family>(
    ctx: &TcContext,
    flow: &Flow<F>,
    entry: &F::CtValue,
) -> Result<(), i64> {
    let (addr, port) = F::entry_nat(entry);
    F::rewrite(ctx, flow, Side::Source, addr, port)
}

/// A reply to a masqueraded flow: from the frontend, to the client.
#[inline(always)]
fn unmasquerade<F: Family>(ctx: &TcContext, flow: &Flow<F>, entry: &F::CtValue) -> Result<(), i64> {
    restore_source(ctx, flow, entry)?;
    let (client, client_port) = F::entry_snat(entry);
    F::rewrite(ctx, flow, Side::Destination, client, client_port)
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
