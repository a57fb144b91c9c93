//! `vipr_trace_host`, loaded only in the trace copy: the kernel cannot
//! test-run cgroup socket programs, so this TC entry point feeds a packet's
//! tuple to the socket hooks' own decision (`sock::socket_backend`) and
//! rewrites the destination to where the socket would be sent.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use proxy_common::{Counter, SCOPE_INTERNAL, ServiceKey};

use crate::{
    family::V4,
    maps::count,
    nat::{Side, rewrite},
    parse::parse_flow,
    sock::{SocketRefusal, socket_backend},
};

#[classifier]
pub fn vipr_trace_host(ctx: TcContext) -> i32 {
    let flow = match parse_flow(&ctx) {
        Ok(flow) => flow,
        Err(reason) => {
            count(reason);
            return TC_ACT_OK as i32;
        }
    };
    let frontend = ServiceKey {
        addr: flow.dst_addr,
        port: flow.dst_port,
        proto: flow.proto,
        scope: SCOPE_INTERNAL,
    };
    // A real socket's cookie is unique; the tracer stands one in from the
    // client port, so other ports show other sockets' choices.
    let cookie = flow.src_port as u64;
    match socket_backend::<V4>(&frontend, flow.src_addr, cookie) {
        Ok((_, backend)) => {
            if rewrite(&ctx, &flow, Side::Destination, backend.addr, backend.port).is_err() {
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
