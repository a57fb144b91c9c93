//! Connect-time load balancing: cgroup hooks that point a socket straight at
//! a backend, so its packets need no NAT at all. They serve the clients the
//! TC programs never see (processes in the node's own network namespace)
//! and, in `SOCKET_LB_ALL` scope, pods too. They read the frontends the pods'
//! TC path reads (`SCOPE_INTERNAL`) and choose with the same rules
//! (`decide::admits`, `decide::new_backend`).
use aya_ebpf::{
    EbpfContext,
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use proxy_common::{
    BackendValue, Counter, IPPROTO_TCP, IPPROTO_UDP, SCOPE_INTERNAL, SOCKET_LB_ALL,
    SVC_FLAG_DRAINING, ServiceKey, ServiceValue, SockRevKey, SockRevValue,
};

use crate::{
    decide::{Decision, admits, new_backend},
    lb::{lookup_frontend, mix},
    maps::{SOCK_REVNAT, agent_netns_cookie, count, hash_seed, node_ipv4, socket_lb_scope},
};

/// What a cgroup sock_addr program returns: go on with the call, or fail it
/// (with the errno set through `bpf_set_retval`).
const PROCEED: i32 = 1;
const FAIL: i32 = 0;

const ECONNREFUSED: i32 = 111;
/// A traffic policy or source range leaves no endpoint for this client;
/// the TC path drops such packets, a socket learns it at once.
const EHOSTUNREACH: i32 = 113;
const ENOMEM: i32 = 12;

/// Loopback destinations (127.0.0.0/8): NodePorts on localhost, which only
/// the node itself may use (a pod's loopback is its own).
const LOOPBACK_NET: u32 = u32::from_ne_bytes([127, 0, 0, 0]);
const LOOPBACK_MASK: u32 = u32::from_ne_bytes([255, 0, 0, 0]);

#[cgroup_sock_addr(connect4)]
pub fn vipr_sock_connect4(ctx: SockAddrContext) -> i32 {
    to_backend::<false>(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn vipr_sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    to_backend::<true>(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn vipr_sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    to_frontend(&ctx);
    PROCEED
}

#[cgroup_sock_addr(getpeername4)]
pub fn vipr_sock_getpeername4(ctx: SockAddrContext) -> i32 {
    to_frontend(&ctx);
    PROCEED
}

/// Whether this socket is one the agent translates.
#[inline(always)]
fn in_scope(ctx: &SockAddrContext) -> bool {
    socket_lb_scope() == SOCKET_LB_ALL || in_node_netns(ctx)
}

#[inline(always)]
fn in_node_netns(ctx: &SockAddrContext) -> bool {
    unsafe { bpf_get_netns_cookie(ctx.as_ptr()) == agent_netns_cookie() }
}

#[inline(always)]
fn fail_with(errno: i32) -> i32 {
    unsafe { bpf_set_retval(-errno) };
    FAIL
}

/// connect() and sendmsg() (`SENDMSG`): a frontend becomes one of its backends.
#[inline(always)]
fn to_backend<const SENDMSG: bool>(ctx: &SockAddrContext) -> i32 {
    if !in_scope(ctx) {
        count(Counter::SockPassOtherNetns);
        return PROCEED;
    }
    let addr: *mut bpf_sock_addr = ctx.sock_addr;
    let (user_ip4, user_port, protocol) =
        unsafe { ((*addr).user_ip4, (*addr).user_port, (*addr).protocol) };
    let proto = match protocol as u8 {
        p @ (IPPROTO_TCP | IPPROTO_UDP) => p,
        _ => {
            count(Counter::PassOtherProtocol);
            return PROCEED;
        }
    };
    if user_ip4 & LOOPBACK_MASK == LOOPBACK_NET && !in_node_netns(ctx) {
        count(Counter::SockPassNotService);
        return PROCEED;
    }
    let frontend = ServiceKey {
        addr: user_ip4,
        port: user_port as u16,
        proto,
        scope: SCOPE_INTERNAL,
    };
    let client = source_address::<SENDMSG>(addr);
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let (service, backend) = match socket_backend(&frontend, client, cookie) {
        Ok(chosen) => chosen,
        Err(SocketRefusal::Proceed(counter)) => {
            count(counter);
            return PROCEED;
        }
        Err(SocketRefusal::Fail(counter, errno)) => {
            count(counter);
            return fail_with(errno);
        }
    };
    let key = SockRevKey {
        cookie,
        addr: backend.addr,
        port: backend.port,
        _pad: 0,
    };
    let value = SockRevValue {
        addr: user_ip4,
        port: user_port as u16,
        proto,
        _pad: 0,
        service_id: service.service_id,
    };
    // Each sendmsg() comes here: write only what changed.
    let known = unsafe { SOCK_REVNAT.get(&key) }.is_some_and(|v| *v == value);
    if !known && SOCK_REVNAT.insert(&key, &value, 0).is_err() {
        count(Counter::DropSockRevNatFull);
        return fail_with(ENOMEM);
    }
    unsafe {
        (*addr).user_ip4 = backend.addr;
        (*addr).user_port = backend.port as u32;
    }
    count(Counter::SockTranslated);
    PROCEED
}

/// Why a socket is not sent to a backend: it goes on untouched, or its
/// call fails with an errno.
pub enum SocketRefusal {
    Proceed(Counter),
    Fail(Counter, i32),
}

/// The endpoint a socket of `client` with `cookie` connecting to
/// `frontend` is sent to, with its service; or why it is not.
#[inline(always)]
pub fn socket_backend(
    frontend: &ServiceKey,
    client: u32,
    cookie: u64,
) -> Result<(ServiceValue, BackendValue), SocketRefusal> {
    let Some(service) = lookup_frontend(frontend).filter(|s| s.flags & SVC_FLAG_DRAINING == 0)
    else {
        return Err(SocketRefusal::Proceed(Counter::SockPassNotService));
    };
    if !admits(&service, client) {
        return Err(SocketRefusal::Fail(Counter::DropSourceRange, EHOSTUNREACH));
    }
    match new_backend(&service, socket_hash(cookie), client) {
        Ok((_, backend)) => Ok((service, backend)),
        Err(Decision::Drop(reason)) => Err(SocketRefusal::Fail(reason, EHOSTUNREACH)),
        Err(_) => Err(SocketRefusal::Fail(Counter::SockRefused, ECONNREFUSED)),
    }
}

/// The client's address as the source-range check sees it: the one the
/// datagram is sent from or the socket is bound to, else the node's.
/// (Only sendmsg hooks may read `msg_src_ip4`.)
#[inline(always)]
fn source_address<const SENDMSG: bool>(addr: *mut bpf_sock_addr) -> u32 {
    if SENDMSG {
        let from_msg = unsafe { (*addr).msg_src_ip4 };
        if from_msg != 0 {
            return from_msg;
        }
    }
    let sk = unsafe { (*addr).__bindgen_anon_1.sk };
    let bound = if sk.is_null() {
        0
    } else {
        unsafe { (*sk).src_ip4 }
    };
    if bound != 0 { bound } else { node_ipv4() }
}

/// One choice per socket: every datagram an unconnected UDP socket sends
/// goes to the same backend, and new sockets spread over all of them.
#[inline(always)]
fn socket_hash(cookie: u64) -> u32 {
    let h = mix(hash_seed() ^ cookie as u32);
    mix(h ^ (cookie >> 32) as u32)
}

/// recvmsg() and getpeername(): a backend's address shows as the frontend
/// the socket asked for, while that frontend still leads to the same service.
#[inline(always)]
fn to_frontend(ctx: &SockAddrContext) {
    if !in_scope(ctx) {
        count(Counter::SockPassOtherNetns);
        return;
    }
    let addr: *mut bpf_sock_addr = ctx.sock_addr;
    let key = unsafe {
        SockRevKey {
            cookie: bpf_get_socket_cookie(ctx.as_ptr()),
            addr: (*addr).user_ip4,
            port: (*addr).user_port as u16,
            _pad: 0,
        }
    };
    let Some(entry) = (unsafe { SOCK_REVNAT.get(&key).copied() }) else {
        count(Counter::SockPassNotTranslated);
        return;
    };
    if lookup_frontend(&entry.frontend()).is_none_or(|s| s.service_id != entry.service_id) {
        let _ = SOCK_REVNAT.remove(&key);
        count(Counter::SockRevNatStale);
        return;
    }
    unsafe {
        (*addr).user_ip4 = entry.addr;
        (*addr).user_port = entry.port as u32;
    }
    count(Counter::SockRevNat);
}
