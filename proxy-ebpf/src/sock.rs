//! Connect-time load balancing: cgroup hooks that point a socket straight at
//! a backend, so its packets need no NAT at all. They serve the clients the
//! TC programs never see (processes in the node's own network namespace)
//! and, in `SOCKET_LB_ALL` scope, pods too. They read the frontends the pods'
//! TC path reads (`SCOPE_INTERNAL`) and choose with the same rules
//! (`Family::admits`, `Family::new_backend`), written once over `Family`
//! for both address families. IPv6 sockets asking for a v4-mapped address
//! (`::ffff:a.b.c.d`, what dual-stack sockets do for IPv4) take the IPv4
//! path and get a v4-mapped backend back.
use aya_ebpf::{
    EbpfContext,
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    macros::cgroup_sock_addr,
    maps::LruHashMap,
    programs::SockAddrContext,
};
use proxy_common::{
    Addr6, Counter, IPPROTO_TCP, IPPROTO_UDP, SCOPE_INTERNAL, SOCKET_LB_ALL, SVC_FLAG_DRAINING,
    Service6Key, ServiceKey, ServiceValue, SockRev6Key, SockRev6Value, SockRevKey, SockRevValue,
};

use crate::{
    decide::Decision,
    family::{Family, V4, V6},
    lb::{lookup_frontend, mix},
    maps::{
        KeyRoom, SOCK_REVNAT, SOCK_REVNAT6, agent_netns_cookie, count, hash_seed, node_ipv4,
        node_ipv6, socket_lb_scope,
    },
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

/// The third word of a v4-mapped IPv6 address (`::ffff:0:0/96`), wire order.
const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

#[cgroup_sock_addr(connect4)]
pub fn vipr_sock_connect4(ctx: SockAddrContext) -> i32 {
    to_backend4::<false>(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn vipr_sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    to_backend4::<true>(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn vipr_sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    to_frontend4(&ctx);
    PROCEED
}

#[cgroup_sock_addr(getpeername4)]
pub fn vipr_sock_getpeername4(ctx: SockAddrContext) -> i32 {
    to_frontend4(&ctx);
    PROCEED
}

#[cgroup_sock_addr(connect6)]
pub fn vipr_sock_connect6(ctx: SockAddrContext) -> i32 {
    to_backend6::<false>(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn vipr_sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    to_backend6::<true>(&ctx)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn vipr_sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    to_frontend6(&ctx);
    PROCEED
}

#[cgroup_sock_addr(getpeername6)]
pub fn vipr_sock_getpeername6(ctx: SockAddrContext) -> i32 {
    to_frontend6(&ctx);
    PROCEED
}

/// What the socket hooks need of a family beyond `Family`: the map that
/// remembers which frontend a socket asked for.
pub trait SockFamily: Family {
    type RevKey;
    type RevValue: Copy + PartialEq;

    fn sock_revnat() -> &'static LruHashMap<Self::RevKey, Self::RevValue>;
    fn rev_key(cookie: u64, backend: (Self::Addr, u16)) -> Self::RevKey;
    fn rev_value(frontend: &Self::ServiceKey, service_id: u32) -> Self::RevValue;
    /// The frontend an entry records, and the service it led to then.
    fn rev_frontend(value: &Self::RevValue) -> (Self::ServiceKey, u32);
    fn frontend_addr(key: &Self::ServiceKey) -> (Self::Addr, u16);
}

impl SockFamily for V4 {
    type RevKey = SockRevKey;
    type RevValue = SockRevValue;

    #[inline(always)]
    fn sock_revnat() -> &'static LruHashMap<SockRevKey, SockRevValue> {
        &SOCK_REVNAT
    }
    #[inline(always)]
    fn rev_key(cookie: u64, backend: (u32, u16)) -> SockRevKey {
        SockRevKey {
            cookie,
            addr: backend.0,
            port: backend.1,
            _pad: 0,
        }
    }
    #[inline(always)]
    fn rev_value(frontend: &ServiceKey, service_id: u32) -> SockRevValue {
        SockRevValue {
            addr: frontend.addr,
            port: frontend.port,
            proto: frontend.proto,
            _pad: 0,
            service_id,
        }
    }
    #[inline(always)]
    fn rev_frontend(value: &SockRevValue) -> (ServiceKey, u32) {
        (value.frontend(), value.service_id)
    }
    #[inline(always)]
    fn frontend_addr(key: &ServiceKey) -> (u32, u16) {
        (key.addr, key.port)
    }
}

impl SockFamily for V6 {
    type RevKey = SockRev6Key;
    type RevValue = SockRev6Value;

    #[inline(always)]
    fn sock_revnat() -> &'static LruHashMap<SockRev6Key, SockRev6Value> {
        &SOCK_REVNAT6
    }
    #[inline(always)]
    fn rev_key(cookie: u64, backend: (Addr6, u16)) -> SockRev6Key {
        SockRev6Key {
            cookie,
            addr: backend.0,
            port: backend.1,
            _pad: [0; 6],
        }
    }
    #[inline(always)]
    fn rev_value(frontend: &Service6Key, service_id: u32) -> SockRev6Value {
        SockRev6Value {
            addr: frontend.addr,
            port: frontend.port,
            proto: frontend.proto,
            _pad: 0,
            service_id,
        }
    }
    #[inline(always)]
    fn rev_frontend(value: &SockRev6Value) -> (Service6Key, u32) {
        (value.frontend(), value.service_id)
    }
    #[inline(always)]
    fn frontend_addr(key: &Service6Key) -> (Addr6, u16) {
        (key.addr, key.port)
    }
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

#[inline(always)]
fn socket_cookie(ctx: &SockAddrContext) -> u64 {
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// The call's protocol, when it is one the hooks balance.
#[inline(always)]
fn l4_protocol(addr: *mut bpf_sock_addr) -> Option<u8> {
    match unsafe { (*addr).protocol } as u8 {
        p @ (IPPROTO_TCP | IPPROTO_UDP) => Some(p),
        _ => {
            count(Counter::PassOtherProtocol);
            None
        }
    }
}

/// The call's destination port (the context holds it in a `u32`).
#[inline(always)]
fn user_port(addr: *mut bpf_sock_addr) -> u16 {
    unsafe { (*addr).user_port as u16 }
}

/// The destination of an IPv6 call. Word by word: the context allows only
/// 4-byte accesses (or 8-byte aligned ones) to it.
#[inline(always)]
fn user_ip6(addr: *mut bpf_sock_addr) -> Addr6 {
    unsafe {
        [
            (*addr).user_ip6[0],
            (*addr).user_ip6[1],
            (*addr).user_ip6[2],
            (*addr).user_ip6[3],
        ]
    }
}

#[inline(always)]
fn is_v4_mapped(ip: &Addr6) -> bool {
    ip[0] == 0 && ip[1] == 0 && ip[2] == V4_MAPPED_WORD
}

/// connect4() and sendmsg4() (`SENDMSG`): a frontend becomes one of its backends.
#[inline(always)]
fn to_backend4<const SENDMSG: bool>(ctx: &SockAddrContext) -> i32 {
    if !in_scope(ctx) {
        count(Counter::SockPassOtherNetns);
        return PROCEED;
    }
    let addr: *mut bpf_sock_addr = ctx.sock_addr;
    let Some(proto) = l4_protocol(addr) else {
        return PROCEED;
    };
    // Only sendmsg4 hooks may read `msg_src_ip4`.
    let from_msg = if SENDMSG {
        unsafe { (*addr).msg_src_ip4 }
    } else {
        0
    };
    let client = if from_msg != 0 {
        from_msg
    } else {
        bound_or_node_ipv4(addr)
    };
    let user_ip4 = unsafe { (*addr).user_ip4 };
    match translate4(ctx, user_ip4, user_port(addr), proto, client) {
        Ok((backend, port)) => {
            unsafe {
                (*addr).user_ip4 = backend;
                (*addr).user_port = port as u32;
            }
            PROCEED
        }
        Err(verdict) => verdict,
    }
}

/// connect6() and sendmsg6(): an IPv6 frontend becomes one of its IPv6
/// backends; a v4-mapped IPv4 frontend a v4-mapped IPv4 backend.
#[inline(always)]
fn to_backend6<const SENDMSG: bool>(ctx: &SockAddrContext) -> i32 {
    if !in_scope(ctx) {
        count(Counter::SockPassOtherNetns);
        return PROCEED;
    }
    let addr: *mut bpf_sock_addr = ctx.sock_addr;
    let Some(proto) = l4_protocol(addr) else {
        return PROCEED;
    };
    let dst = user_ip6(addr);
    let port = user_port(addr);
    if is_v4_mapped(&dst) {
        // The kernel hands v4-mapped datagrams to the IPv4 sendmsg hook;
        // connect() of a dual-stack socket comes here.
        let client = bound_or_node_ipv4(addr);
        return match translate4(ctx, dst[3], port, proto, client) {
            Ok((backend, port)) => {
                unsafe {
                    (*addr).user_ip6[3] = backend;
                    (*addr).user_port = port as u32;
                }
                PROCEED
            }
            Err(verdict) => verdict,
        };
    }
    let frontend = V6::service_key(dst, port, proto, SCOPE_INTERNAL);
    match translate::<V6>(socket_cookie(ctx), &frontend, bound_or_node_ipv6(addr)) {
        Ok((backend, port)) => {
            unsafe {
                (*addr).user_ip6[0] = backend[0];
                (*addr).user_ip6[1] = backend[1];
                (*addr).user_ip6[2] = backend[2];
                (*addr).user_ip6[3] = backend[3];
                (*addr).user_port = port as u32;
            }
            PROCEED
        }
        Err(verdict) => verdict,
    }
}

/// An IPv4 destination, from either family's hooks: the backend address
/// and port to write back, or the call's verdict.
#[inline(always)]
fn translate4(
    ctx: &SockAddrContext,
    dst: u32,
    port: u16,
    proto: u8,
    client: u32,
) -> Result<(u32, u16), i32> {
    if dst & LOOPBACK_MASK == LOOPBACK_NET && !in_node_netns(ctx) {
        count(Counter::SockPassNotService);
        return Err(PROCEED);
    }
    let frontend = V4::service_key(dst, port, proto, SCOPE_INTERNAL);
    translate::<V4>(socket_cookie(ctx), &frontend, client)
}

/// Chooses the backend for a socket call to `frontend` and records the
/// frontend for the reverse translation.
#[inline(always)]
fn translate<F: SockFamily>(
    cookie: u64,
    frontend: &F::ServiceKey,
    client: F::Addr,
) -> Result<(F::Addr, u16), i32> {
    let (service, backend) = match socket_backend::<F>(frontend, client, cookie) {
        Ok(chosen) => chosen,
        Err(SocketRefusal::Proceed(counter)) => {
            count(counter);
            return Err(PROCEED);
        }
        Err(SocketRefusal::Fail(counter, errno)) => {
            count(counter);
            return Err(fail_with(errno));
        }
    };
    let to = (F::backend_addr(&backend), F::backend_port(&backend));
    let key = F::rev_key(cookie, to);
    let value = F::rev_value(frontend, service.service_id);
    // Each sendmsg() comes here: write only what changed.
    let known = unsafe { F::sock_revnat().get(&key) }.is_some_and(|v| *v == value);
    if !known && F::sock_revnat().insert(&key, &value, 0).is_err() {
        count(Counter::DropSockRevNatFull);
        return Err(fail_with(ENOMEM));
    }
    count(Counter::SockTranslated);
    Ok(to)
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
pub fn socket_backend<F: Family>(
    frontend: &F::ServiceKey,
    client: F::Addr,
    cookie: u64,
) -> Result<(ServiceValue, F::Backend), SocketRefusal> {
    let Some(service) = lookup_frontend::<F>(frontend).filter(|s| s.flags & SVC_FLAG_DRAINING == 0)
    else {
        return Err(SocketRefusal::Proceed(Counter::SockPassNotService));
    };
    // On the stack: a packet's program may interrupt this one on its CPU.
    let mut keys = F::Keys::default();
    let mut room = KeyRoom::Stack(&mut keys);
    if let Err(reason) = F::admits(&service, client, &mut room) {
        return Err(SocketRefusal::Fail(reason, EHOSTUNREACH));
    }
    match F::new_backend(&service, socket_hash(cookie), client, &mut room) {
        Ok((_, backend)) => Ok((service, backend)),
        Err(Decision::Drop(reason)) => Err(SocketRefusal::Fail(reason, EHOSTUNREACH)),
        Err(_) => Err(SocketRefusal::Fail(Counter::SockRefused, ECONNREFUSED)),
    }
}

/// The client's IPv4 address as the source-range check sees it when the
/// call names none: the one the socket is bound to, else the node's.
#[inline(always)]
fn bound_or_node_ipv4(addr: *mut bpf_sock_addr) -> u32 {
    let sk = unsafe { (*addr).__bindgen_anon_1.sk };
    let bound = if sk.is_null() {
        0
    } else {
        unsafe { (*sk).src_ip4 }
    };
    if bound != 0 { bound } else { node_ipv4() }
}

/// The client's IPv6 address as source ranges and affinity see it: the one
/// the socket is bound to, else the node's IPv6 address (as for IPv4).
#[inline(always)]
fn bound_or_node_ipv6(addr: *mut bpf_sock_addr) -> Addr6 {
    let sk = unsafe { (*addr).__bindgen_anon_1.sk };
    if sk.is_null() {
        return node_ipv6();
    }
    // One load per word at its fixed offset: copied as an array, the
    // compiler steps a pointer through the socket, which the verifier
    // refuses ("pointer arithmetic on sock prohibited").
    let word = |i: usize| unsafe { core::ptr::read_volatile(&raw const (*sk).src_ip6[i]) };
    let bound = [word(0), word(1), word(2), word(3)];
    if bound != [0; 4] { bound } else { node_ipv6() }
}

/// One choice per socket: every datagram an unconnected UDP socket sends
/// goes to the same backend, and new sockets spread over all of them.
#[inline(always)]
fn socket_hash(cookie: u64) -> u32 {
    let h = mix(hash_seed() ^ cookie as u32);
    mix(h ^ (cookie >> 32) as u32)
}

/// recvmsg4() and getpeername4(): a backend's address shows as the frontend
/// the socket asked for.
#[inline(always)]
fn to_frontend4(ctx: &SockAddrContext) {
    if !in_scope(ctx) {
        count(Counter::SockPassOtherNetns);
        return;
    }
    let addr: *mut bpf_sock_addr = ctx.sock_addr;
    let backend = (unsafe { (*addr).user_ip4 }, user_port(addr));
    if let Some((frontend, port)) = frontend_of::<V4>(socket_cookie(ctx), backend) {
        unsafe {
            (*addr).user_ip4 = frontend;
            (*addr).user_port = port as u32;
        }
    }
}

/// recvmsg6() and getpeername6(): the same for IPv6 sockets, whose IPv4
/// peers show v4-mapped.
#[inline(always)]
fn to_frontend6(ctx: &SockAddrContext) {
    if !in_scope(ctx) {
        count(Counter::SockPassOtherNetns);
        return;
    }
    let addr: *mut bpf_sock_addr = ctx.sock_addr;
    let peer = user_ip6(addr);
    let port = user_port(addr);
    let cookie = socket_cookie(ctx);
    if is_v4_mapped(&peer) {
        if let Some((frontend, port)) = frontend_of::<V4>(cookie, (peer[3], port)) {
            unsafe {
                (*addr).user_ip6[3] = frontend;
                (*addr).user_port = port as u32;
            }
        }
        return;
    }
    if let Some((frontend, port)) = frontend_of::<V6>(cookie, (peer, port)) {
        unsafe {
            (*addr).user_ip6[0] = frontend[0];
            (*addr).user_ip6[1] = frontend[1];
            (*addr).user_ip6[2] = frontend[2];
            (*addr).user_ip6[3] = frontend[3];
            (*addr).user_port = port as u32;
        }
    }
}

/// The frontend a socket's `backend` shows as, while that frontend still
/// leads to the same service.
#[inline(always)]
fn frontend_of<F: SockFamily>(cookie: u64, backend: (F::Addr, u16)) -> Option<(F::Addr, u16)> {
    let key = F::rev_key(cookie, backend);
    let Some(entry) = (unsafe { F::sock_revnat().get(&key).copied() }) else {
        count(Counter::SockPassNotTranslated);
        return None;
    };
    let (frontend, service_id) = F::rev_frontend(&entry);
    if lookup_frontend::<F>(&frontend).is_none_or(|s| s.service_id != service_id) {
        let _ = F::sock_revnat().remove(&key);
        count(Counter::SockRevNatStale);
        return None;
    }
    count(Counter::SockRevNat);
    Some(F::frontend_addr(&frontend))
}
