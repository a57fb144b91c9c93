//! The TC programs. Attached to the host side of every pod interface:
//! `vipr_from_pod` on ingress (what pods send), `vipr_to_pod` on egress
//! (what pods receive).
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use proxy_common::{Counter, IPPROTO_TCP};

use crate::{
    ct,
    lb::{choose_backend_id, lookup_backend, lookup_service},
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
        Ok(flow) => to_service(&ctx, &flow),
        Err(reason) => verdict(reason),
    }
}

#[classifier]
pub fn vipr_to_pod(ctx: TcContext) -> i32 {
    match parse_flow(&ctx) {
        Ok(flow) => from_service(&ctx, &flow),
        Err(reason) => verdict(reason),
    }
}

/// Forward path: DNAT a packet for a service frontend to its backend.
#[inline(always)]
fn to_service(ctx: &TcContext, flow: &Flow) -> i32 {
    // Non-service traffic pays for exactly this one lookup.
    let Some(service) = lookup_service(flow) else {
        return verdict(Counter::PassNotService);
    };
    let mut outcome = Counter::DnatNew;
    if let Some(entry) = ct::lookup(&ct::forward_key(flow)) {
        // A new SYN on a reused tuple is a new connection: choose again.
        if !flow.is_tcp_syn() {
            if let Some(backend) = lookup_backend(entry.backend_id) {
                // The id may have been reused for another endpoint since.
                if backend.addr == entry.nat_addr && backend.port == entry.nat_port {
                    return translate(
                        ctx,
                        flow,
                        backend.addr,
                        backend.port,
                        Counter::DnatEstablished,
                    );
                }
            }
        }
        outcome = Counter::DnatReselected;
    }
    if service.backend_count == 0 {
        return refuse(ctx, flow);
    }
    let Some(backend_id) = choose_backend_id(&service, flow) else {
        return verdict(Counter::DropMissingSlot);
    };
    let Some(backend) = lookup_backend(backend_id) else {
        return verdict(Counter::DropMissingBackend);
    };
    if ct::record(flow, backend_id, backend.addr, backend.port).is_err() {
        return verdict(Counter::DropConntrackFull);
    }
    translate(ctx, flow, backend.addr, backend.port, outcome)
}

/// Reply path: restore the frontend as the source of a backend's reply.
#[inline(always)]
fn from_service(ctx: &TcContext, flow: &Flow) -> i32 {
    let Some(entry) = ct::lookup(&ct::reply_key(flow)) else {
        return verdict(Counter::PassNotTranslated);
    };
    match rewrite(ctx, flow, Side::Source, entry.nat_addr, entry.nat_port) {
        Ok(()) => verdict(Counter::RevNat),
        Err(_) => verdict(Counter::DropRewriteFailed),
    }
}

#[inline(always)]
fn translate(ctx: &TcContext, flow: &Flow, addr: u32, port: u16, outcome: Counter) -> i32 {
    match rewrite(ctx, flow, Side::Destination, addr, port) {
        Ok(()) => verdict(outcome),
        Err(_) => verdict(Counter::DropRewriteFailed),
    }
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
