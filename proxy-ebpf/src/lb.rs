//! Service lookup and backend choice.
use proxy_common::{BackendValue, ServiceKey, ServiceValue, SlotKey};

use crate::{
    maps::{BACKENDS, SERVICES, SLOTS, hash_seed},
    parse::Flow,
};

#[inline(always)]
pub fn lookup_service(flow: &Flow) -> Option<ServiceValue> {
    let key = ServiceKey {
        addr: flow.dst_addr,
        port: flow.dst_port,
        proto: flow.proto,
        _pad: 0,
    };
    unsafe { SERVICES.get(&key).copied() }
}

#[inline(always)]
pub fn lookup_backend(backend_id: u32) -> Option<BackendValue> {
    unsafe { BACKENDS.get(&backend_id).copied() }
}

/// murmur3's 32-bit finaliser: cheap, and every input bit affects every output bit.
#[inline(always)]
fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
pub fn flow_hash(flow: &Flow) -> u32 {
    let mut h = mix(hash_seed() ^ flow.src_addr);
    h = mix(h ^ flow.dst_addr);
    h = mix(h ^ ((flow.src_port as u32) << 16 | flow.dst_port as u32));
    mix(h ^ flow.proto as u32)
}

/// Picks the slot for a new flow; `None` if the service has no backends or
/// its slots are inconsistent (the caller counts which).
#[inline(always)]
pub fn choose_backend_id(service: &ServiceValue, flow: &Flow) -> Option<u32> {
    let count = service.backend_count as u32;
    if count == 0 {
        return None;
    }
    let slot = SlotKey {
        service_id: service.service_id,
        slot: flow_hash(flow) % count,
    };
    unsafe { SLOTS.get(&slot).copied() }
}
