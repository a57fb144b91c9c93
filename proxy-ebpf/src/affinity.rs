//! Session affinity (`sessionAffinity: ClientIP`): a client's new
//! connections to a frontend go to the endpoint its last one went to, while
//! that endpoint is one new connections may use (`VIPR_AFFINITY_MEMBERS`,
//! written by the agent: never a removed endpoint, never a terminating one
//! while ready ones exist) and the client came back within the timeout.
//! The timeout slides with each new connection, as kube-proxy's `recent`
//! match does; packets of established flows follow conntrack and leave it.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use proxy_common::{AffinityKey, AffinityMember, AffinityValue, BackendValue, ServiceValue};

use crate::{
    family::V4,
    lb::lookup_backend,
    maps::{AFFINITY, AFFINITY_MEMBERS},
};

const NS_PER_SECOND: u64 = 1_000_000_000;

#[inline(always)]
fn now_s() -> u32 {
    (unsafe { bpf_ktime_get_ns() } / NS_PER_SECOND) as u32
}

#[inline(always)]
fn key(service: &ServiceValue, client_addr: u32) -> AffinityKey {
    AffinityKey {
        service_id: service.service_id,
        client_addr,
    }
}

/// The endpoint the client's affinity leads to, if it still may.
#[inline(always)]
pub fn followed(service: &ServiceValue, client_addr: u32) -> Option<(u32, BackendValue)> {
    let entry = unsafe { AFFINITY.get(&key(service, client_addr)).copied() }?;
    let member = AffinityMember {
        service_id: service.service_id,
        backend_id: entry.backend_id,
    };
    let timeout_s = unsafe { AFFINITY_MEMBERS.get(&member).copied() }?;
    if now_s().wrapping_sub(entry.last_used_s) > timeout_s {
        return None;
    }
    Some((entry.backend_id, lookup_backend::<V4>(entry.backend_id)?))
}

/// The client's new connection went to `backend_id`: (re)starts its timeout.
#[inline(always)]
pub fn remember(service: &ServiceValue, client_addr: u32, backend_id: u32) {
    let value = AffinityValue {
        backend_id,
        last_used_s: now_s(),
    };
    // A full LRU evicts the oldest affinity; failing here only loses stickiness.
    let _ = AFFINITY.insert(&key(service, client_addr), &value, 0);
}
