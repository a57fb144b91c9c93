//! Service lookup and backend choice.
use aya_ebpf::maps::lpm_trie::Key;
use proxy_common::{Addr6, Counter, ServiceValue, SlotKey, SourceRange6Key, SourceRangeKey};

use crate::{
    family::Family,
    maglev,
    maps::{RangeLookup6, SLOTS, SOURCE_RANGES, SOURCE_RANGES6, hash_seed},
    parse::Flow,
    trace,
};

/// Bits of a `SourceRangeKey` that must always match: the service id.
const SERVICE_ID_BITS: u32 = 32;
const IPV4_BITS: u32 = 32;
const IPV6_BITS: u32 = 128;

#[inline(always)]
pub fn lookup_service<F: Family>(flow: &Flow<F>, scope: u8) -> Option<ServiceValue> {
    let key = F::service_key(flow.dst_addr, flow.dst_port, flow.proto, scope);
    lookup_frontend::<F>(&key)
}

#[inline(always)]
pub fn lookup_frontend<F: Family>(key: &F::ServiceKey) -> Option<ServiceValue> {
    let service = unsafe { F::services().get(key).copied() };
    F::note_frontend(key, service.is_some());
    service
}

/// loadBalancerSourceRanges: one longest-prefix-match lookup.
#[inline(always)]
pub fn source_allowed(service: &ServiceValue, src_addr: u32) -> bool {
    let key = Key::new(
        SERVICE_ID_BITS + IPV4_BITS,
        SourceRangeKey {
            service_id_be: service.service_id.to_be(),
            addr: src_addr,
        },
    );
    SOURCE_RANGES.get(&key).is_some()
}

/// [`source_allowed`] for an IPv6 client, its key built in `key` (20 bytes
/// too many for the IPv6 pod path's stack).
#[inline(always)]
pub fn source_allowed6(service: &ServiceValue, src_addr: Addr6, key: &mut RangeLookup6) -> bool {
    key.prefix_len = SERVICE_ID_BITS + IPV6_BITS;
    key.data = SourceRange6Key {
        service_id_be: service.service_id.to_be(),
        addr: src_addr,
    };
    SOURCE_RANGES6.get(key.as_key()).is_some()
}

#[inline(always)]
pub fn lookup_backend<F: Family>(backend_id: u32) -> Option<F::Backend> {
    unsafe { F::backends().get(&backend_id).copied() }
}

/// murmur3's 32-bit finaliser: cheap, and every input bit affects every output bit.
#[inline(always)]
pub fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
pub fn flow_hash<F: Family>(flow: &Flow<F>) -> u32 {
    let mut h = F::hash_addr(hash_seed(), flow.src_addr);
    h = F::hash_addr(h, flow.dst_addr);
    h = mix(h ^ ((flow.src_port as u32) << 16 | flow.dst_port as u32));
    mix(h ^ flow.proto as u32)
}

/// The backend id a new flow with `hash` gets: from the frontend's Maglev
/// table when it has one, else the slot `hash` falls in; or the drop
/// reason (no slots, inconsistent slots, a hole in the table).
#[inline(always)]
pub fn choose_backend_id(service: &ServiceValue, hash: u32) -> Result<u32, Counter> {
    if let Some(backend_id) = maglev::table_choice(service, hash)? {
        return Ok(backend_id);
    }
    let count = service.backend_count as u32;
    if count == 0 {
        return Err(Counter::DropMissingSlot);
    }
    let slot = SlotKey {
        service_id: service.service_id,
        slot: hash % count,
    };
    let backend_id = unsafe { SLOTS.get(&slot).copied() }.ok_or(Counter::DropMissingSlot)?;
    trace::slot_picked(hash, slot.slot, backend_id);
    Ok(backend_id)
}
