//! Session affinity (`sessionAffinity: ClientIP`): a client's new
//! connections to a frontend go to the endpoint its last one went to, while
//! that endpoint is one new connections may use (`VIPR_AFFINITY_MEMBERS`,
//! written by the agent: never a removed endpoint, never a terminating one
//! while ready ones exist) and the client came back within the timeout.
//! The timeout slides with each new connection, as kube-proxy's `recent`
//! match does; packets of established flows follow conntrack and leave it.
//! Each family keeps its clients in its own table (`Family::affinity_of`);
//! the members are shared, keyed by ids that never overlap.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use proxy_common::{AffinityMember, AffinityValue, ServiceValue};

use crate::{
    family::Family,
    lb::lookup_backend,
    maps::{AFFINITY_MEMBERS, KeyRoom},
};

const NS_PER_SECOND: u64 = 1_000_000_000;

#[inline(always)]
fn now_s() -> u32 {
    (unsafe { bpf_ktime_get_ns() } / NS_PER_SECOND) as u32
}

/// The endpoint the client's affinity leads to, if it still may.
#[inline(always)]
pub fn followed<F: Family>(
    service: &ServiceValue,
    client_addr: F::Addr,
    room: &mut KeyRoom<F::Keys>,
) -> Option<(u32, F::Backend)> {
    let entry = F::affinity_of(service.service_id, client_addr, room)?;
    let member = AffinityMember {
        service_id: service.service_id,
        backend_id: entry.backend_id,
    };
    let timeout_s = unsafe { AFFINITY_MEMBERS.get(&member).copied() }?;
    if now_s().wrapping_sub(entry.last_used_s) > timeout_s {
        return None;
    }
    Some((entry.backend_id, lookup_backend::<F>(entry.backend_id)?))
}

/// The client's new connection went to `backend_id`: (re)starts its timeout.
#[inline(always)]
pub fn remember<F: Family>(
    service: &ServiceValue,
    client_addr: F::Addr,
    backend_id: u32,
    room: &mut KeyRoom<F::Keys>,
) {
    let value = AffinityValue {
        backend_id,
        last_used_s: now_s(),
    };
    F::set_affinity(service.service_id, client_addr, &value, room);
}
