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
use proxy_common::{
    BACKEND_FLAG_LOCAL, CT_FLAG_SNAT, Counter, CtValue, IPPROTO_TCP, SCOPE_EXTERNAL,
    SCOPE_INTERNAL, SVC_FLAG_HAS_ENDPOINTS, SVC_FLAG_MASQUERADE, SVC_FLAG_SOURCE_RANGES,
};

use crate::{
    ct,
    lb::{choose_backend_id, lookup_backend, lookup_service, source_allowed},
    maps::{count, node_ipv4},
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
        Ok(flow) => to_service(&ctx, &flow, SCOPE_INTERNAL),
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

#[classifier]
pub fn vipr_from_external(ctx: TcContext) -> i32 {
    match parse_flow(&ctx) {
        Ok(flow) => match ct::lookup(&ct::reply_key(&flow)) {
            Some(entry) if entry.flags & CT_FLAG_SNAT != 0 => unmasquerade(&ctx, &flow, &entry),
            _ => to_service(&ctx, &flow, SCOPE_EXTERNAL),
        },
        Err(reason) => verdict(reason),
    }
}

#[classifier]
pub fn vipr_to_external(ctx: TcContext) -> i32 {
    match parse_flow(&ctx) {
        Ok(flow) => from_service(&ctx, &flow),
        Err(reason) => verdict(reason),
    }
}

/// Forward path: DNAT a packet for a service frontend to its backend (and
/// masquerade it, where the service says so and the backend is remote).
#[inline(always)]
fn to_service(ctx: &TcContext, flow: &Flow, scope: u8) -> i32 {
    // Non-service traffic pays for exactly this one lookup.
    let Some(service) = lookup_service(flow, scope) else {
        return verdict(Counter::PassNotService);
    };
    if service.flags & SVC_FLAG_SOURCE_RANGES != 0 && !source_allowed(&service, flow) {
        return verdict(Counter::DropSourceRange);
    }
    let mut outcome = Counter::DnatNew;
    if let Some(entry) = ct::lookup(&ct::forward_key(flow)) {
        // A new SYN on a reused tuple is a new connection: choose again.
        if !flow.is_tcp_syn() {
            if let Some(backend) = lookup_backend(entry.backend_id) {
                // The id may have been reused for another endpoint since.
                if backend.addr == entry.nat_addr && backend.port == entry.nat_port {
                    return translate(ctx, flow, &entry, Counter::DnatEstablished);
                }
            }
        }
        outcome = Counter::DnatReselected;
    }
    if service.backend_count == 0 {
        if service.flags & SVC_FLAG_HAS_ENDPOINTS != 0 {
            return verdict(Counter::DropNoLocalEndpoints);
        }
        return refuse(ctx, flow);
    }
    let Some(backend_id) = choose_backend_id(&service, flow) else {
        return verdict(Counter::DropMissingSlot);
    };
    let Some(backend) = lookup_backend(backend_id) else {
        return verdict(Counter::DropMissingBackend);
    };
    let masquerade =
        service.flags & SVC_FLAG_MASQUERADE != 0 && backend.flags & BACKEND_FLAG_LOCAL == 0;
    let entry = if masquerade {
        let node = node_ipv4();
        if node == 0 {
            return verdict(Counter::DropSnatPortsExhausted);
        }
        let Some(port) = ct::record_masqueraded(flow, backend_id, backend.addr, backend.port, node)
        else {
            return verdict(Counter::DropSnatPortsExhausted);
        };
        CtValue {
            backend_id,
            nat_addr: backend.addr,
            nat_port: backend.port,
            snat_addr: node,
            snat_port: port,
            flags: CT_FLAG_SNAT,
            _pad: [0; 3],
        }
    } else {
        if ct::record(flow, backend_id, backend.addr, backend.port).is_err() {
            return verdict(Counter::DropConntrackFull);
        }
        CtValue {
            backend_id,
            nat_addr: backend.addr,
            nat_port: backend.port,
            ..CtValue::default()
        }
    };
    translate(ctx, flow, &entry, outcome)
}

/// Reply path: restore the frontend as the source of a backend's reply.
#[inline(always)]
fn from_service(ctx: &TcContext, flow: &Flow) -> i32 {
    let Some(entry) = ct::lookup(&ct::reply_key(flow)) else {
        return verdict(Counter::PassNotTranslated);
    };
    if entry.flags & CT_FLAG_SNAT != 0 {
        // Replies of masqueraded flows are handled where they arrive.
        return verdict(Counter::PassNotTranslated);
    }
    match rewrite(ctx, flow, Side::Source, entry.nat_addr, entry.nat_port) {
        Ok(()) => verdict(Counter::RevNat),
        Err(_) => verdict(Counter::DropRewriteFailed),
    }
}

/// A remote backend's reply to a masqueraded flow: from the frontend, to the client.
#[inline(always)]
fn unmasquerade(ctx: &TcContext, flow: &Flow, entry: &CtValue) -> i32 {
    let rewritten = rewrite(ctx, flow, Side::Source, entry.nat_addr, entry.nat_port)
        .and_then(|()| rewrite(ctx, flow, Side::Destination, entry.snat_addr, entry.snat_port));
    match rewritten {
        Ok(()) => verdict(Counter::RevSnat),
        Err(_) => verdict(Counter::DropRewriteFailed),
    }
}

#[inline(always)]
fn translate(ctx: &TcContext, flow: &Flow, entry: &CtValue, outcome: Counter) -> i32 {
    let mut rewritten = rewrite(ctx, flow, Side::Destination, entry.nat_addr, entry.nat_port);
    if entry.flags & CT_FLAG_SNAT != 0 {
        rewritten = rewritten
            .and_then(|()| rewrite(ctx, flow, Side::Source, entry.snat_addr, entry.snat_port));
    }
    match rewritten {
        Ok(()) => verdict(outcome),
        Err(_) => verdict(Counter::DropRewriteFailed),
    }
}

#[inline(always)]
fn refuse(ctx: &TcContext, flow: &Flow) -> i32 {
    let (sent, counter) = if flow.proto == IPPROTO_TCP {
        (reject::tcp_reset(ctx, flow), Counter::RejectTcpRst)
    } else {
        (reject::icmp_port_unreachable(ctx, flow), Counter::RejectIcmpUnreachable)
    };
    match sent {
        Ok(action) => {
            count(counter);
            action
        }
        Err(_) => verdict(Counter::DropRejectFailed),
    }
}
