//! `vipr_trace_host`, loaded only in the trace copy: the kernel cannot
//! test-run cgroup socket programs, so this TC entry point feeds a packet's
//! tuple to the socket hooks' own decision (`sock::socket_backend`) and
//! rewrites the destination to where the socket would be sent. IPv4 and
//! IPv6 alike: the decision is written once over `Family`.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use proxy_common::{Counter, SCOPE_INTERNAL};

use crate::{
    family::{Family, V4, V6},
    maps::count,
    nat::Side,
    parse::{Flow, is_ipv6, parse_flow},
    parse6::parse_flow6,
    sock::{SocketRefusal, socket_backend},
};

/// Each family's half is a BPF subprogram, as in `vipr_from_pod`: the
/// entry point keeps no frame of its own to add to the IPv6 half's.
#[classifier]
pub fn vipr_trace_host(ctx: TcContext) -> i32 {
    if is_ipv6(&ctx) {
        return trace_host6(&ctx);
    }
    trace_host4(&ctx)
}

#[inline(never)]
fn trace_host4(ctx: &TcContext) -> i32 {
    match parse_flow(ctx) {
        Ok(flow) => host_choice::<V4>(ctx, &flow),
        Err(reason) => not_a_flow(reason),
    }
}

#[inline(never)]
fn trace_host6(ctx: &TcContext) -> i32 {
    match parse_flow6(ctx) {
        Ok(flow) => host_choice::<V6>(ctx, &flow),
        Err(reason) => not_a_flow(reason),
    }
}

/// A packet with no tuple to decide on: a socket call would not reach the
/// hooks' choice either, so it goes on untouched.
#[inline(always)]
fn not_a_flow(reason: Counter) -> i32 {
    count(reason);
    TC_ACT_OK as i32
}

#[inline(always)]
fn host_choice<F: Family>(ctx: &TcContext, flow: &Flow<F>) -> i32 {
    let frontend = F::service_key(flow.dst_addr, flow.dst_port, flow.proto, SCOPE_INTERNAL);
    // A real socket's cookie is unique; the tracer stands one in from the
    // client port, so other ports show other sockets' choices.
    let cookie = flow.src_port as u64;
    match socket_backend::<F>(&frontend, flow.src_addr, cookie) {
        Ok((_, backend)) => {
            let (addr, port) = (F::backend_addr(&backend), F::backend_port(&backend));
            if F::rewrite(ctx, flow, Side::Destination, addr, port).is_err() {
                count(Counter::DropRewriteFailed);
                return TC_ACT_SHOT as i32;
            }
            count(Counter::SockTranslated);
            TC_ACT_OK as i32
        }
        Err(SocketRefusal::Proceed(counter)) => {
            count(counter);
            TC_ACT_OK as i32
        }
        // The connect() or sendmsg() would fail with this errno.
        Err(SocketRefusal::Fail(counter, _errno)) => {
            count(counter);
            TC_ACT_SHOT as i32
        }
    }
}
