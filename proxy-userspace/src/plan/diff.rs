//! Ordered, minimal difference between two map contents.

use super::maps::{MapContents, MapOp};
use super::planner::Touched;

/// The ops that turn `applied` into `desired`; unchanged entries give none.
///
/// Ordering invariant — after EVERY single op, for every service in the maps
/// its slots `0..backend_count` exist, and every slot's backend exists.
/// (Assuming it held for `applied`; `desired` from the planner always has it.)
/// The phases that guarantee it:
/// 1. upsert backends: nothing refers to new ones yet;
/// 2. upsert slots and affinity members: they point at backends written in
///    1 or kept;
/// 3. upsert source ranges, then services: a higher count only covers slots
///    written in 2; a lower count still covers slots that exist (they are
///    deleted only in 5); a service checking source ranges has them already;
/// 4. delete services gone from `desired`, then source ranges: nothing refers
///    to services, and no service checks a removed range any more;
/// 5. delete slots and affinity members: no service counts over them any
///    more (3 and 4);
/// 6. delete backends: no slot points at them any more (2 and 5).
///
/// Within a phase, ops are in key order, so the output is deterministic.
pub fn diff(applied: &MapContents, desired: &MapContents) -> Vec<MapOp> {
    let mut ops = Vec::new();
    for (id, value) in &desired.backends {
        if applied.backends.get(id) != Some(value) {
            ops.push(MapOp::UpsertBackend(*id, *value));
        }
    }
    for (key, id) in &desired.slots {
        if applied.slots.get(key) != Some(id) {
            ops.push(MapOp::UpsertSlot(*key, *id));
        }
    }
    for (member, timeout) in &desired.affinity {
        if applied.affinity.get(member) != Some(timeout) {
            ops.push(MapOp::UpsertAffinity(*member, *timeout));
        }
    }
    for range in desired.source_ranges.difference(&applied.source_ranges) {
        ops.push(MapOp::UpsertSourceRange(*range));
    }
    for (key, value) in &desired.services {
        if applied.services.get(key) != Some(value) {
            ops.push(MapOp::UpsertService(*key, *value));
        }
    }
    for key in applied.services.keys() {
        if !desired.services.contains_key(key) {
            ops.push(MapOp::DeleteService(*key));
        }
    }
    for range in applied.source_ranges.difference(&desired.source_ranges) {
        ops.push(MapOp::DeleteSourceRange(*range));
    }
    for key in applied.slots.keys() {
        if !desired.slots.contains_key(key) {
            ops.push(MapOp::DeleteSlot(*key));
        }
    }
    for member in applied.affinity.keys() {
        if !desired.affinity.contains_key(member) {
            ops.push(MapOp::DeleteAffinity(*member));
        }
    }
    for id in applied.backends.keys() {
        if !desired.backends.contains_key(id) {
            ops.push(MapOp::DeleteBackend(*id));
        }
    }
    ops
}

/// [`diff`] restricted to the keys in `touched`: the same ops in the same
/// order as `diff` gives when only those keys differ. What keeps a sync's
/// cost proportional to what changed.
pub fn diff_touched(applied: &MapContents, desired: &MapContents, touched: &Touched) -> Vec<MapOp> {
    let mut ops = Vec::new();
    for id in &touched.backends {
        if let Some(value) = desired.backends.get(id)
            && applied.backends.get(id) != Some(value)
        {
            ops.push(MapOp::UpsertBackend(*id, *value));
        }
    }
    for key in &touched.slots {
        if let Some(id) = desired.slots.get(key)
            && applied.slots.get(key) != Some(id)
        {
            ops.push(MapOp::UpsertSlot(*key, *id));
        }
    }
    for member in &touched.affinity {
        if let Some(timeout) = desired.affinity.get(member)
            && applied.affinity.get(member) != Some(timeout)
        {
            ops.push(MapOp::UpsertAffinity(*member, *timeout));
        }
    }
    for range in &touched.source_ranges {
        if desired.source_ranges.contains(range) && !applied.source_ranges.contains(range) {
            ops.push(MapOp::UpsertSourceRange(*range));
        }
    }
    for key in &touched.services {
        if let Some(value) = desired.services.get(key)
            && applied.services.get(key) != Some(value)
        {
            ops.push(MapOp::UpsertService(*key, *value));
        }
    }
    for key in &touched.services {
        if applied.services.contains_key(key) && !desired.services.contains_key(key) {
            ops.push(MapOp::DeleteService(*key));
        }
    }
    for range in &touched.source_ranges {
        if applied.source_ranges.contains(range) && !desired.source_ranges.contains(range) {
            ops.push(MapOp::DeleteSourceRange(*range));
        }
    }
    for key in &touched.slots {
        if applied.slots.contains_key(key) && !desired.slots.contains_key(key) {
            ops.push(MapOp::DeleteSlot(*key));
        }
    }
    for member in &touched.affinity {
        if applied.affinity.contains_key(member) && !desired.affinity.contains_key(member) {
            ops.push(MapOp::DeleteAffinity(*member));
        }
    }
    for id in &touched.backends {
        if applied.backends.contains_key(id) && !desired.backends.contains_key(id) {
            ops.push(MapOp::DeleteBackend(*id));
        }
    }
    ops
}

/// Applies `op` to `maps`, as the kernel would. Deleting a missing key is not
/// an error. Used by tests and by fake datapaths.
pub fn apply_op(maps: &mut MapContents, op: &MapOp) {
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
    }
}

/// Every way `maps` breaks the invariant documented on [`diff`], as text.
/// Empty when consistent.
pub fn check_consistency(maps: &MapContents) -> Vec<String> {
    let mut problems = Vec::new();
    for (key, value) in &maps.services {
        for slot in 0..u32::from(value.backend_count) {
            let slot_key = proxy_common::SlotKey {
                service_id: value.service_id,
                slot,
            };
            if !maps.slots.contains_key(&slot_key) {
                problems.push(format!(
                    "service {}:{} id={} count={} lacks slot {slot}",
                    key.ip(),
                    key.port(),
                    value.service_id,
                    value.backend_count
                ));
            }
        }
    }
    for (key, id) in &maps.slots {
        if !maps.backends.contains_key(id) {
            problems.push(format!(
                "slot {}/{} points at missing backend {id}",
                key.service_id, key.slot
            ));
        }
    }
    for member in maps.affinity.keys() {
        if !maps.backends.contains_key(&member.backend_id) {
            problems.push(format!(
                "affinity member {}/{} is a missing backend",
                member.service_id, member.backend_id
            ));
        }
    }
    problems
}
