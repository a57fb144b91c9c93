//! Map ops applied to map contents, as the kernel would apply them.
use super::maps::{MapContents, MapOp};

/// Applies `op` to `maps`, as the kernel would. Deleting a missing key is not
/// an error. Used by tests and by fake datapaths.
pub fn apply_op(maps: &mut MapContents, op: &MapOp) {
    match op {
        MapOp::WriteMaglevTable(first, table) => {
            maps.maglev_tables.insert(*first, table.clone());
        }
        MapOp::UpsertMaglevRef(id, r) => {
            maps.maglev.insert(*id, *r);
        }
        MapOp::DeleteMaglevRef(id) => {
            maps.maglev.remove(id);
        }
        _ => apply_entry_op(maps, op),
    }
}

/// [`apply_op`] for the ops of plain entries.
fn apply_entry_op(maps: &mut MapContents, op: &MapOp) {
    match *op {
        MapOp::UpsertBackend(id, value) => {
            maps.backends.insert(id, value);
        }
        MapOp::UpsertSlot(key, id) => {
            maps.slots.insert(key, id);
        }
        MapOp::UpsertService(key, value) => {
            maps.services.insert(key, value);
        }
        MapOp::DeleteService(key) => {
            maps.services.remove(&key);
        }
        MapOp::DeleteSlot(key) => {
            maps.slots.remove(&key);
        }
        MapOp::DeleteBackend(id) => {
            maps.backends.remove(&id);
        }
        MapOp::UpsertSourceRange(range) => {
            maps.source_ranges.insert(range);
        }
        MapOp::DeleteSourceRange(range) => {
            maps.source_ranges.remove(&range);
        }
        MapOp::UpsertAffinity(member, timeout) => {
            maps.affinity.insert(member, timeout);
        }
        MapOp::DeleteAffinity(member) => {
            maps.affinity.remove(&member);
        }
        MapOp::UpsertBackend6(id, value) => {
            maps.backends6.insert(id, value);
        }
        MapOp::UpsertService6(key, value) => {
            maps.services6.insert(key, value);
        }
        MapOp::DeleteService6(key) => {
            maps.services6.remove(&key);
        }
        MapOp::DeleteBackend6(id) => {
            maps.backends6.remove(&id);
        }
        MapOp::UpsertSourceRange6(range) => {
            maps.source_ranges6.insert(range);
        }
        MapOp::DeleteSourceRange6(range) => {
            maps.source_ranges6.remove(&range);
        }
        MapOp::WriteMaglevTable(..) | MapOp::UpsertMaglevRef(..) | MapOp::DeleteMaglevRef(_) => {}
    }
}
