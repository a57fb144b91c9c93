//! What to do with a packet, independent of the program type: the TC and
//! XDP programs share these decisions and differ only in how they carry
//! them out. Deciding may record conntrack entries.
use proxy_common::{
    BACKEND_FLAG_LOCAL, BACKEND_FLAG_NOT_SERVING, BackendValue, CT_FLAG_REPLIED, CT_FLAG_SNAT,
    Counter, HAIRPIN_IPV4, IPPROTO_TCP, SCOPE_INTERNAL, SVC_FLAG_AFFINITY, SVC_FLAG_DRAINING,
    SVC_FLAG_HAS_ENDPOINTS, SVC_FLAG_MASQUERADE, SVC_FLAG_SOURCE_RANGES, ServiceValue,
};

use crate::{
    affinity,
    ct::{self, RecordError},
    dsr,
    family::{Family, V4},
    lb::{choose_backend_id, flow_hash, lookup_backend, lookup_service, source_allowed},
    maps::{KeyRoom, count, node_ipv4},
    parse::{Flow, TCP_FLAG_RST},
    trace,
};

pub enum Decision<F: Family = V4> {
    /// Leave the packet as it is (and count why).
    Pass(Counter),
    Drop(Counter),
    /// Rewrite the destination (and with `CT_FLAG_SNAT` the source) as the entry says.
    Translate(F::CtValue, Counter),
    /// A reply to a masqueraded flow: source back to the frontend,
    /// destination back to the client.
    Unmasquerade(F::CtValue),
    /// A backend's reply: source back to the frontend.
    RestoreSource(F::CtValue),
    /// No endpoints at all: answer with a RST or ICMP port unreachable.
    Refuse,
}

impl<F: Family> Decision<F> {
    /// Masqueraded packets (source: the node) and restored replies to them
    /// (source: the frontend) leave with a local source address, which the
    /// stack's input routing would take for a martian.
    #[inline(always)]
    pub fn leaves_with_a_local_source(&self) -> bool {
        match self {
            Decision::Translate(entry, _) => F::entry_flags(entry) & CT_FLAG_SNAT != 0,
            Decision::Unmasquerade(_) => true,
            _ => false,
        }
    }
}

/// loadBalancerSourceRanges: whether a client at `src_addr` may use `service`.
#[inline(always)]
pub fn admits(service: &ServiceValue, src_addr: u32) -> bool {
    service.flags & SVC_FLAG_SOURCE_RANGES == 0 || source_allowed(service, src_addr)
}

/// The endpoint a new connection from `client_addr` to `service` gets: the
/// one its session affinity leads to, else the slot `hash` picks; or what to
/// do instead: refuse when the service has no endpoints at all, drop when a
/// traffic policy leaves none for this node.
#[inline(always)]
pub fn new_backend<F: Family>(
    service: &ServiceValue,
    hash: u32,
    client_addr: F::Addr,
    room: &mut KeyRoom<F::Keys>,
) -> Result<(u32, F::Backend), Decision<F>> {
    let sticky = service.flags & SVC_FLAG_AFFINITY != 0;
    if sticky
        && let Some((backend_id, backend)) = affinity::followed::<F>(service, client_addr, room)
    {
        affinity::remember::<F>(service, client_addr, backend_id, room);
        count(Counter::AffinityFollowed);
        trace::affinity_followed(backend_id);
        return Ok((backend_id, backend));
    }
    let chosen = pick_backend::<F>(service, hash)?;
    if sticky {
        affinity::remember::<F>(service, client_addr, chosen.0, room);
    }
    Ok(chosen)
}

/// The endpoint `hash` picks (Maglev table or slot), or why there is none.
#[inline(always)]
pub fn pick_backend<F: Family>(
    service: &ServiceValue,
    hash: u32,
) -> Result<(u32, F::Backend), Decision<F>> {
    if service.backend_count == 0 {
        if service.flags & SVC_FLAG_HAS_ENDPOINTS != 0 {
            return Err(Decision::Drop(Counter::DropNoLocalEndpoints));
        }
        return Err(Decision::Refuse);
    }
    let backend_id = choose_backend_id(service, hash).map_err(Decision::Drop)?;
    match lookup_backend::<F>(backend_id) {
        Some(backend) => Ok((backend_id, backend)),
        None => Err(Decision::Drop(Counter::DropMissingBackend)),
    }
}

/// Forward path: a packet for a service frontend of `scope`.
#[inline(always)]
pub fn to_service<F: Family>(flow: &Flow<F>, scope: u8) -> Decision<F> {
    // Non-service traffic pays for exactly this one lookup.
    let Some(service) = lookup_service(flow, scope) else {
        return Decision::Pass(Counter::PassNotService);
    };
    if let Err(reason) = F::admits(&service, flow.src_addr, &mut KeyRoom::PerCpu) {
        return Decision::Drop(reason);
    }
    let mut outcome = Counter::DnatNew;
    if let Some(entry) = ct::lookup_for(&ct::forward_key(flow), flow, 0) {
        // A new SYN on a reused tuple is a new connection: choose again.
        if !flow.is_tcp_syn() && stays_on(flow, &entry) {
            trace::conntrack_followed(F::entry_backend_id(&entry));
            return Decision::Translate(entry, Counter::DnatEstablished);
        }
        ct::forget(flow, &entry);
        outcome = Counter::DnatReselected;
    }
    if service.flags & SVC_FLAG_DRAINING != 0 {
        return Decision::Pass(Counter::PassNotService);
    }
    let chosen = F::new_backend(
        &service,
        flow_hash(flow),
        flow.src_addr,
        &mut KeyRoom::PerCpu,
    );
    let (backend_id, backend) = match chosen {
        Ok(chosen) => chosen,
        // As a TCP stack never answers a RST with one (RFC 9293).
        Err(Decision::Refuse) if flow.tcp_flags & TCP_FLAG_RST != 0 => {
            return Decision::Drop(Counter::DropRstNotRefused);
        }
        Err(no_backend) => return no_backend,
    };
    let masquerade_source = match F::snat_source(flow, &service, &backend) {
        Ok(Some(node)) => Ok(node),
        Ok(None) => {
            let (addr, port) = (F::backend_addr(&backend), F::backend_port(&backend));
            match ct::record(flow, backend_id, addr, port) {
                Ok(()) => {}
                Err(RecordError::Collision) => {
                    return Decision::Drop(Counter::DropConntrackCollision);
                }
                Err(_) => return Decision::Drop(Counter::DropConntrackFull),
            }
            return Decision::Translate(F::ct_entry(backend_id, (addr, port), 0, 0), outcome);
        }
        Err(reason) => Err(reason),
    };
    // Where it would be masqueraded (or could not be, for want of a node
    // address of the flow's family), `--lb-mode dsr|hybrid` may keep the
    // client: DSR needs no node address.
    if dsr::applies(flow, scope, &backend) {
        return dsr::forwarded(flow, backend_id, &backend, outcome);
    }
    match masquerade_source {
        Ok(node) => masqueraded(flow, backend_id, &backend, node, outcome),
        Err(reason) => Decision::Drop(reason),
    }
}

/// IPv4: the source a new flow to `backend` leaves with instead of its own.
/// A pod landing on itself would see its own address as the source and
/// drop the packet; it gets the hairpin address instead.
#[inline(always)]
pub fn snat_source4(
    flow: &Flow,
    service: &ServiceValue,
    backend: &BackendValue,
) -> Result<Option<u32>, Counter> {
    let hairpin = backend.addr == flow.src_addr;
    let masquerade = hairpin
        || service.flags & SVC_FLAG_MASQUERADE != 0 && backend.flags & BACKEND_FLAG_LOCAL == 0;
    if !masquerade {
        return Ok(None);
    }
    let node = if hairpin {
        u32::from_ne_bytes(HAIRPIN_IPV4)
    } else {
        node_ipv4()
    };
    if node == 0 {
        return Err(Counter::DropSnatPortsExhausted);
    }
    Ok(Some(node))
}

/// Records a new flow masqueraded behind `node`.
#[inline(always)]
pub fn masqueraded<F: Family>(
    flow: &Flow<F>,
    backend_id: u32,
    backend: &F::Backend,
    node: F::Addr,
    outcome: Counter,
) -> Decision<F> {
    let to = (F::backend_addr(backend), F::backend_port(backend));
    match ct::record_masqueraded(flow, backend_id, to, node) {
        Ok(entry) => Decision::Translate(entry, outcome),
        Err(RecordError::Full) => Decision::Drop(Counter::DropConntrackFull),
        Err(RecordError::PortsExhausted | RecordError::Collision) => {
            Decision::Drop(Counter::DropSnatPortsExhausted)
        }
    }
}

/// Whether an established flow keeps its endpoint. TCP always does, as
/// with kube-proxy's conntrack: a connection outlives its endpoint leaving
/// the EndpointSlice (a failed readiness probe, a scale-down) while the pod
/// still answers. A UDP flow moves once its endpoint is gone or no longer
/// serving, instead of sending into the void (kube-proxy #19029, #48370).
#[inline(always)]
fn stays_on<F: Family>(flow: &Flow<F>, entry: &F::CtValue) -> bool {
    if flow.proto == IPPROTO_TCP {
        return true;
    }
    // The id may have been reused for another endpoint since.
    let (nat_addr, nat_port) = F::entry_nat(entry);
    lookup_backend::<F>(F::entry_backend_id(entry)).is_some_and(|b| {
        F::backend_addr(&b) == nat_addr
            && F::backend_port(&b) == nat_port
            && F::backend_flags(&b) & BACKEND_FLAG_NOT_SERVING == 0
    })
}

/// Ingress of an external interface: replies to masqueraded flows first,
/// then external frontends.
#[inline(always)]
pub fn from_outside<F: Family>(flow: &Flow<F>, scope: u8) -> Decision<F> {
    match masqueraded_reply(flow) {
        Some(entry) => {
            trace::conntrack_followed(F::entry_backend_id(&entry));
            Decision::Unmasquerade(entry)
        }
        None => to_service(flow, scope),
    }
}

/// The conntrack entry of a reply to a masqueraded (or hairpin) flow.
#[inline(always)]
fn masqueraded_reply<F: Family>(flow: &Flow<F>) -> Option<F::CtValue> {
    ct::lookup_for(&ct::reply_key(flow), flow, CT_FLAG_REPLIED)
        .filter(|e| F::entry_flags(e) & CT_FLAG_SNAT != 0)
}

/// What pods send: their own hairpin replies first (one compare for all
/// other traffic), then service frontends.
#[inline(always)]
pub fn from_pod<F: Family>(flow: &Flow<F>) -> Decision<F> {
    if F::is_hairpin(flow.dst_addr)
        && let Some(entry) = masqueraded_reply(flow)
    {
        trace::conntrack_followed(F::entry_backend_id(&entry));
        return Decision::Unmasquerade(entry);
    }
    to_service(flow, SCOPE_INTERNAL)
}

/// Reply path towards a client: restore the frontend as the source.
#[inline(always)]
pub fn from_service<F: Family>(flow: &Flow<F>) -> Decision<F> {
    match ct::lookup_for(&ct::reply_key(flow), flow, CT_FLAG_REPLIED) {
        // Replies of masqueraded flows are handled where they arrive.
        Some(entry) if F::entry_flags(&entry) & CT_FLAG_SNAT == 0 => {
            trace::conntrack_followed(F::entry_backend_id(&entry));
            Decision::RestoreSource(entry)
        }
        _ => Decision::Pass(Counter::PassNotTranslated),
    }
}
