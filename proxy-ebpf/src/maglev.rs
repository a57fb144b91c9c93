//! Maglev: a new flow's backend from its frontend's lookup table
//! (`proxy_common::maglev`), the same on every node for the same flow.
use proxy_common::{Counter, SVC_FLAG_MAGLEV, ServiceValue};

use crate::{
    maps::{MAGLEV, MAGLEV_INDEX},
    trace,
};

/// The backend id at `hash`'s position in `service`'s table; `Ok(None)`
/// when the frontend has none (not a Maglev frontend, or its table is not
/// written yet): its slots decide then.
#[inline(always)]
pub fn table_choice(service: &ServiceValue, hash: u32) -> Result<Option<u32>, Counter> {
    if service.flags & SVC_FLAG_MAGLEV == 0 {
        return Ok(None);
    }
    let Some(table) = (unsafe { MAGLEV_INDEX.get(&service.service_id) }) else {
        return Ok(None);
    };
    let (first, size) = (table.first, table.size);
    if size == 0 {
        return Err(Counter::DropMaglevPosition);
    }
    let position = hash % size;
    match MAGLEV.get(first.wrapping_add(position)) {
        // Backend ids start at 1: 0 is a position never written.
        Some(&backend_id) if backend_id != 0 => {
            trace::slot_picked(hash, position, backend_id);
            Ok(Some(backend_id))
        }
        _ => Err(Counter::DropMaglevPosition),
    }
}
