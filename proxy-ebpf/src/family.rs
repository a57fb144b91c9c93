//! The address family of a packet. Conntrack (`ct.rs`), service lookups
//! (`lb.rs`) and the decisions (`decide.rs`) are written once over
//! `Family` and monomorphised: the IPv4 programs the verifier sees are the
//! code they were before IPv6, and IPv6 follows the same rules. What only
//! the families do differently (the hairpin source, where IPv6 builds its
//! lookup keys) sits behind the hooks at the end of the trait.
use aya_ebpf::{maps::HashMap, programs::TcContext};
use proxy_common::{
    Addr6, Affinity6Key, AffinityKey, AffinityValue, BACKEND_FLAG_LOCAL, Backend6Value,
    BackendValue, Counter, Ct6Key, Ct6Value, CtKey, CtValue, HAIRPIN_IPV4, SVC_FLAG_MASQUERADE,
    SVC_FLAG_SOURCE_RANGES, Service6Key, ServiceKey, ServiceValue,
};

use crate::{
    decide::{self, Decision},
    lb,
    maps::{self, KeyRoom, Keys6},
    nat::{self, Side},
    nat6,
    parse::{ETH_LEN, Flow, IPV4_MIN_HDR_LEN},
    parse6::IPV6_HDR_LEN,
    programs, reject, reject6, trace,
};

/// Half of `mix`: one multiply and one shift, so that a word folded in
/// moves both the high bits (the multiply) and the low ones (the shift).
#[inline(always)]
fn fold(h: u32) -> u32 {
    let h = h.wrapping_mul(FOLD_MULTIPLIER);
    h ^ (h >> FOLD_SHIFT)
}
/// murmur3's first finaliser constant and shift.
const FOLD_MULTIPLIER: u32 = 0x85eb_ca6b;
const FOLD_SHIFT: u32 = 13;

/// IPv4: 4-byte addresses, the original maps.
#[derive(Clone, Copy)]
pub struct V4;
/// IPv6: 16-byte addresses, the `*6` maps; slots and ids shared with IPv4.
#[derive(Clone, Copy)]
pub struct V6;

pub trait Family: Copy + 'static {
    /// An address in wire order.
    type Addr: Copy + PartialEq;
    type ServiceKey;
    type Backend: Copy;
    type CtKey;
    type CtValue: Copy;
    /// Room for the keys of lookups too large for the TC path's stack
    /// (`KeyRoom`); IPv4's keys are 8 bytes and need none.
    type Keys: Default;
    /// Whether `--lb-mode dsr|hybrid` applies to this family's external
    /// flows (`dsr.rs`); the others stay masqueraded.
    const SERVES_DSR: bool;
    /// Where TCP or UDP starts in a frame whose IP header carries nothing
    /// beyond its fixed part (no IPv4 options, no IPv6 extension headers).
    const PLAIN_L4_OFF: usize;

    fn services() -> &'static HashMap<Self::ServiceKey, ServiceValue>;
    fn backends() -> &'static HashMap<u32, Self::Backend>;
    fn conntrack() -> &'static HashMap<Self::CtKey, Self::CtValue>;

    fn service_key(addr: Self::Addr, port: u16, proto: u8, scope: u8) -> Self::ServiceKey;
    /// For `vipr trace`: the frontend looked up, and whether it was found.
    fn note_frontend(key: &Self::ServiceKey, found: bool);
    /// Folds an address into the flow hash `h`.
    fn hash_addr(h: u32, addr: Self::Addr) -> u32;

    fn backend_addr(b: &Self::Backend) -> Self::Addr;
    fn backend_port(b: &Self::Backend) -> u16;
    fn backend_flags(b: &Self::Backend) -> u8;

    fn ct_key(
        src: (Self::Addr, u16),
        dst: (Self::Addr, u16),
        proto: u8,
        direction: u8,
    ) -> Self::CtKey;
    /// The other direction's key (`CtKey::partner`).
    fn partner(key: &Self::CtKey, value: &Self::CtValue) -> Self::CtKey;
    /// An entry without source translation.
    fn ct_entry(
        backend_id: u32,
        nat: (Self::Addr, u16),
        flags: u8,
        last_seen: u32,
    ) -> Self::CtValue;
    /// An entry of a masqueraded flow: `snat` is the source it leaves
    /// with (forward) or the client to restore (reverse).
    fn ct_entry_snat(
        backend_id: u32,
        nat: (Self::Addr, u16),
        snat: (Self::Addr, u16),
        flags: u8,
        last_seen: u32,
    ) -> Self::CtValue;
    fn set_snat_port(v: &mut Self::CtValue, port: u16);
    fn entry_backend_id(v: &Self::CtValue) -> u32;
    fn entry_nat(v: &Self::CtValue) -> (Self::Addr, u16);
    fn entry_snat(v: &Self::CtValue) -> (Self::Addr, u16);
    fn entry_flags(v: &Self::CtValue) -> u8;
    /// Where a packet notes itself on an entry: `last_seen` and `flags`.
    fn entry_notes(v: *mut Self::CtValue) -> (*mut u32, *mut u8);

    /// A frontend's admission of a client (loadBalancerSourceRanges).
    fn admits(
        service: &ServiceValue,
        src: Self::Addr,
        room: &mut KeyRoom<Self::Keys>,
    ) -> Result<(), Counter>;
    /// The endpoint a new connection gets, or what to do instead.
    fn new_backend(
        service: &ServiceValue,
        hash: u32,
        client: Self::Addr,
        room: &mut KeyRoom<Self::Keys>,
    ) -> Result<(u32, Self::Backend), Decision<Self>>;
    /// The client's session affinity at a frontend, if it has one.
    fn affinity_of(
        service_id: u32,
        client: Self::Addr,
        room: &mut KeyRoom<Self::Keys>,
    ) -> Option<AffinityValue>;
    /// (Re)writes the client's session affinity at a frontend.
    fn set_affinity(
        service_id: u32,
        client: Self::Addr,
        value: &AffinityValue,
        room: &mut KeyRoom<Self::Keys>,
    );
    /// The source a new flow to `backend` must leave with instead of its
    /// own (masquerade, hairpin), if any; `Err`: drop.
    fn snat_source(
        flow: &Flow<Self>,
        service: &ServiceValue,
        backend: &Self::Backend,
    ) -> Result<Option<Self::Addr>, Counter>;
    /// Whether `addr` is where the replies of hairpin flows go.
    fn is_hairpin(addr: Self::Addr) -> bool;

    /// Rewrites one end of the flow in an skb, checksums included.
    fn rewrite(
        ctx: &TcContext,
        flow: &Flow<Self>,
        side: Side,
        addr: Self::Addr,
        port: u16,
    ) -> Result<(), i64>;
    /// Turns a TCP segment to a frontend without endpoints into a RST back.
    fn tcp_reset(ctx: &TcContext, flow: &Flow<Self>) -> Result<i32, i64>;
    /// Turns a UDP datagram to a frontend without endpoints into an ICMP
    /// port unreachable back.
    fn port_unreachable(ctx: &TcContext, flow: &Flow<Self>) -> Result<i32, i64>;
    /// One of the two above, counted: the TC verdict.
    #[inline(always)]
    fn refuse(ctx: &TcContext, flow: &Flow<Self>) -> i32 {
        programs::refuse(ctx, flow)
    }
}

impl Family for V4 {
    const SERVES_DSR: bool = true;
    const PLAIN_L4_OFF: usize = ETH_LEN + IPV4_MIN_HDR_LEN;
    type Addr = u32;
    type ServiceKey = ServiceKey;
    type Backend = BackendValue;
    type CtKey = CtKey;
    type CtValue = CtValue;
    type Keys = ();

    #[inline(always)]
    fn services() -> &'static HashMap<ServiceKey, ServiceValue> {
        &maps::SERVICES
    }
    #[inline(always)]
    fn backends() -> &'static HashMap<u32, BackendValue> {
        &maps::BACKENDS
    }
    #[inline(always)]
    fn conntrack() -> &'static HashMap<CtKey, CtValue> {
        &maps::CONNTRACK
    }
    #[inline(always)]
    fn service_key(addr: u32, port: u16, proto: u8, scope: u8) -> ServiceKey {
        ServiceKey {
            addr,
            port,
            proto,
            scope,
        }
    }
    #[inline(always)]
    fn note_frontend(key: &ServiceKey, found: bool) {
        trace::frontend(key, found);
    }
    #[inline(always)]
    fn hash_addr(h: u32, addr: u32) -> u32 {
        crate::lb::mix(h ^ addr)
    }
    #[inline(always)]
    fn backend_addr(b: &BackendValue) -> u32 {
        b.addr
    }
    #[inline(always)]
    fn backend_port(b: &BackendValue) -> u16 {
        b.port
    }
    #[inline(always)]
    fn backend_flags(b: &BackendValue) -> u8 {
        b.flags
    }
    #[inline(always)]
    fn ct_key(src: (u32, u16), dst: (u32, u16), proto: u8, direction: u8) -> CtKey {
        CtKey {
            src_addr: src.0,
            dst_addr: dst.0,
            src_port: src.1,
            dst_port: dst.1,
            proto,
            direction,
            _pad: [0; 2],
        }
    }
    #[inline(always)]
    fn partner(key: &CtKey, value: &CtValue) -> CtKey {
        key.partner(value)
    }
    #[inline(always)]
    fn ct_entry(backend_id: u32, nat: (u32, u16), flags: u8, last_seen: u32) -> CtValue {
        CtValue {
            backend_id,
            nat_addr: nat.0,
            nat_port: nat.1,
            flags,
            last_seen,
            ..CtValue::default()
        }
    }
    #[inline(always)]
    fn ct_entry_snat(
        backend_id: u32,
        nat: (u32, u16),
        snat: (u32, u16),
        flags: u8,
        last_seen: u32,
    ) -> CtValue {
        CtValue {
            backend_id,
            nat_addr: nat.0,
            nat_port: nat.1,
            snat_addr: snat.0,
            snat_port: snat.1,
            flags,
            last_seen,
            ..CtValue::default()
        }
    }
    #[inline(always)]
    fn set_snat_port(v: &mut CtValue, port: u16) {
        v.snat_port = port;
    }
    #[inline(always)]
    fn entry_backend_id(v: &CtValue) -> u32 {
        v.backend_id
    }
    #[inline(always)]
    fn entry_nat(v: &CtValue) -> (u32, u16) {
        (v.nat_addr, v.nat_port)
    }
    #[inline(always)]
    fn entry_snat(v: &CtValue) -> (u32, u16) {
        (v.snat_addr, v.snat_port)
    }
    #[inline(always)]
    fn entry_flags(v: &CtValue) -> u8 {
        v.flags
    }
    #[inline(always)]
    fn entry_notes(v: *mut CtValue) -> (*mut u32, *mut u8) {
        unsafe { (&raw mut (*v).last_seen, &raw mut (*v).flags) }
    }
    #[inline(always)]
    fn admits(service: &ServiceValue, src: u32, _room: &mut KeyRoom<()>) -> Result<(), Counter> {
        if decide::admits(service, src) {
            Ok(())
        } else {
            Err(Counter::DropSourceRange)
        }
    }
    #[inline(always)]
    fn new_backend(
        service: &ServiceValue,
        hash: u32,
        client: u32,
        room: &mut KeyRoom<()>,
    ) -> Result<(u32, BackendValue), Decision<V4>> {
        decide::new_backend::<V4>(service, hash, client, room)
    }
    #[inline(always)]
    fn affinity_of(service_id: u32, client: u32, _room: &mut KeyRoom<()>) -> Option<AffinityValue> {
        let key = AffinityKey {
            service_id,
            client_addr: client,
        };
        unsafe { maps::AFFINITY.get(&key).copied() }
    }
    #[inline(always)]
    fn set_affinity(service_id: u32, client: u32, value: &AffinityValue, _room: &mut KeyRoom<()>) {
        let key = AffinityKey {
            service_id,
            client_addr: client,
        };
        // A full LRU evicts the oldest affinity; failing here only loses stickiness.
        let _ = maps::AFFINITY.insert(&key, value, 0);
    }
    #[inline(always)]
    fn snat_source(
        flow: &Flow<V4>,
        service: &ServiceValue,
        backend: &BackendValue,
    ) -> Result<Option<u32>, Counter> {
        decide::snat_source4(flow, service, backend)
    }
    #[inline(always)]
    fn is_hairpin(addr: u32) -> bool {
        addr == u32::from_ne_bytes(HAIRPIN_IPV4)
    }
    #[inline(always)]
    fn rewrite(
        ctx: &TcContext,
        flow: &Flow<V4>,
        side: Side,
        addr: u32,
        port: u16,
    ) -> Result<(), i64> {
        nat::rewrite(ctx, flow, side, addr, port)
    }
    #[inline(always)]
    fn tcp_reset(ctx: &TcContext, flow: &Flow<V4>) -> Result<i32, i64> {
        reject::tcp_reset(ctx, flow)
    }
    #[inline(always)]
    fn port_unreachable(ctx: &TcContext, flow: &Flow<V4>) -> Result<i32, i64> {
        reject::icmp_port_unreachable(ctx, flow)
    }
}

impl Family for V6 {
    const SERVES_DSR: bool = true;
    const PLAIN_L4_OFF: usize = ETH_LEN + IPV6_HDR_LEN;
    type Addr = Addr6;
    type ServiceKey = Service6Key;
    type Backend = Backend6Value;
    type CtKey = Ct6Key;
    type CtValue = Ct6Value;
    type Keys = Keys6;

    #[inline(always)]
    fn services() -> &'static HashMap<Service6Key, ServiceValue> {
        &maps::SERVICES6
    }
    #[inline(always)]
    fn backends() -> &'static HashMap<u32, Backend6Value> {
        &maps::BACKENDS6
    }
    #[inline(always)]
    fn conntrack() -> &'static HashMap<Ct6Key, Ct6Value> {
        &maps::CONNTRACK6
    }
    #[inline(always)]
    fn service_key(addr: Addr6, port: u16, proto: u8, scope: u8) -> Service6Key {
        Service6Key {
            addr,
            port,
            proto,
            scope,
        }
    }
    #[inline(always)]
    fn note_frontend(key: &Service6Key, found: bool) {
        trace::frontend6(key, found);
    }
    #[inline(always)]
    fn hash_addr(h: u32, addr: Addr6) -> u32 {
        // Every word folded in, all 16 bytes decide; a light step per word
        // instead of a full mix (four of them cost a new flow about 20 ns),
        // since `flow_hash` mixes fully twice after the addresses.
        let mut h = h;
        for word in addr {
            h = fold(h ^ word);
        }
        h
    }
    #[inline(always)]
    fn backend_addr(b: &Backend6Value) -> Addr6 {
        b.addr
    }
    #[inline(always)]
    fn backend_port(b: &Backend6Value) -> u16 {
        b.port
    }
    #[inline(always)]
    fn backend_flags(b: &Backend6Value) -> u8 {
        b.flags
    }
    #[inline(always)]
    fn ct_key(src: (Addr6, u16), dst: (Addr6, u16), proto: u8, direction: u8) -> Ct6Key {
        Ct6Key {
            src_addr: src.0,
            dst_addr: dst.0,
            src_port: src.1,
            dst_port: dst.1,
            proto,
            direction,
            _pad: [0; 2],
        }
    }
    #[inline(always)]
    fn partner(key: &Ct6Key, value: &Ct6Value) -> Ct6Key {
        key.partner(value)
    }
    #[inline(always)]
    fn ct_entry(backend_id: u32, nat: (Addr6, u16), flags: u8, last_seen: u32) -> Ct6Value {
        Ct6Value {
            backend_id,
            nat_addr: nat.0,
            nat_port: nat.1,
            flags,
            last_seen,
            ..Ct6Value::default()
        }
    }
    #[inline(always)]
    fn ct_entry_snat(
        backend_id: u32,
        nat: (Addr6, u16),
        snat: (Addr6, u16),
        flags: u8,
        last_seen: u32,
    ) -> Ct6Value {
        Ct6Value {
            backend_id,
            nat_addr: nat.0,
            nat_port: nat.1,
            snat_addr: snat.0,
            snat_port: snat.1,
            flags,
            last_seen,
            ..Ct6Value::default()
        }
    }
    #[inline(always)]
    fn set_snat_port(v: &mut Ct6Value, port: u16) {
        v.snat_port = port;
    }
    #[inline(always)]
    fn entry_backend_id(v: &Ct6Value) -> u32 {
        v.backend_id
    }
    #[inline(always)]
    fn entry_nat(v: &Ct6Value) -> (Addr6, u16) {
        (v.nat_addr, v.nat_port)
    }
    #[inline(always)]
    fn entry_snat(v: &Ct6Value) -> (Addr6, u16) {
        (v.snat_addr, v.snat_port)
    }
    #[inline(always)]
    fn entry_flags(v: &Ct6Value) -> u8 {
        v.flags
    }
    #[inline(always)]
    fn entry_notes(v: *mut Ct6Value) -> (*mut u32, *mut u8) {
        unsafe { (&raw mut (*v).last_seen, &raw mut (*v).flags) }
    }
    #[inline(always)]
    fn admits(
        service: &ServiceValue,
        src: Addr6,
        room: &mut KeyRoom<Keys6>,
    ) -> Result<(), Counter> {
        if service.flags & SVC_FLAG_SOURCE_RANGES == 0 {
            return Ok(());
        }
        // Fail closed: a range we cannot check must not admit anyone.
        let Some(keys) = room.keys() else {
            return Err(Counter::DropNoScratch);
        };
        if lb::source_allowed6(service, src, &mut keys.range) {
            Ok(())
        } else {
            Err(Counter::DropSourceRange)
        }
    }
    #[inline(always)]
    fn new_backend(
        service: &ServiceValue,
        hash: u32,
        client: Addr6,
        room: &mut KeyRoom<Keys6>,
    ) -> Result<(u32, Backend6Value), Decision<V6>> {
        decide::new_backend::<V6>(service, hash, client, room)
    }
    #[inline(always)]
    fn affinity_of(
        service_id: u32,
        client: Addr6,
        room: &mut KeyRoom<Keys6>,
    ) -> Option<AffinityValue> {
        let keys = room.keys()?;
        keys.affinity = Affinity6Key {
            service_id,
            client_addr: client,
        };
        unsafe { maps::AFFINITY6.get(&keys.affinity).copied() }
    }
    #[inline(always)]
    fn set_affinity(
        service_id: u32,
        client: Addr6,
        value: &AffinityValue,
        room: &mut KeyRoom<Keys6>,
    ) {
        // Without room (never) only stickiness is lost.
        let Some(keys) = room.keys() else { return };
        keys.affinity = Affinity6Key {
            service_id,
            client_addr: client,
        };
        // A full LRU evicts the oldest affinity; failing here only loses stickiness.
        let _ = maps::AFFINITY6.insert(&keys.affinity, value, 0);
    }
    #[inline(always)]
    fn snat_source(
        flow: &Flow<V6>,
        service: &ServiceValue,
        backend: &Backend6Value,
    ) -> Result<Option<Addr6>, Counter> {
        // A pod reaching itself would see its own address as the source
        // and drop the packet: as kube-proxy's masquerade does, it sees the
        // node's address instead. (IPv4 uses a link-local stand-in; in IPv6
        // a pod would have to resolve one with neighbour discovery on its
        // own link, where nothing answers for it.)
        let hairpin = backend.addr == flow.src_addr;
        let masquerade =
            service.flags & SVC_FLAG_MASQUERADE != 0 && backend.flags & BACKEND_FLAG_LOCAL == 0;
        if !hairpin && !masquerade {
            return Ok(None);
        }
        let node = maps::node_ipv6();
        if node == [0; 4] {
            return Err(Counter::DropSnatPortsExhausted);
        }
        Ok(Some(node))
    }
    #[inline(always)]
    fn is_hairpin(addr: Addr6) -> bool {
        // Hairpin flows leave with the node's address (`snat_source`).
        addr == maps::node_ipv6()
    }
    #[inline(always)]
    fn rewrite(
        ctx: &TcContext,
        flow: &Flow<V6>,
        side: Side,
        addr: Addr6,
        port: u16,
    ) -> Result<(), i64> {
        nat6::rewrite(ctx, flow, side, addr, port)
    }
    #[inline(always)]
    fn tcp_reset(ctx: &TcContext, flow: &Flow<V6>) -> Result<i32, i64> {
        reject6::tcp_reset(ctx, flow)
    }
    #[inline(always)]
    fn port_unreachable(ctx: &TcContext, flow: &Flow<V6>) -> Result<i32, i64> {
        reject6::icmp_port_unreachable(ctx, flow)
    }
}
