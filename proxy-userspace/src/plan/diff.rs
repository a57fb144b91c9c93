//! Ordered, minimal difference between two map contents.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use proxy_common::{SVC_FLAG_SOURCE_RANGES, ServiceValue};

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
///    1 or kept; then Maglev tables (into pool numbers no index entry
///    points at) and the index entries switched to them;
/// 3. upsert source ranges (IPv4, then IPv6), then services: a higher count only covers slots
///    written in 2; a lower count still covers slots that exist (they are
///    deleted only in 5); a service checking source ranges has them already;
/// 4. delete services gone from `desired`, then source ranges: nothing refers
///    to services, and no service checks a removed range any more;
/// 5. delete slots, affinity members and Maglev index entries: no service
///    counts over them or reads them any more (3 and 4);
/// 6. delete backends: no slot points at them any more (2 and 5).
///
/// Within a phase, ops are in key order, so the output is deterministic.
pub fn diff(applied: &MapContents, desired: &MapContents) -> Vec<MapOp> {
    let mut ops = Vec::new();
    upserts(
        &applied.backends,
        &desired.backends,
        MapOp::UpsertBackend,
        &mut ops,
    );
    upserts(
        &applied.backends6,
        &desired.backends6,
        MapOp::UpsertBackend6,
        &mut ops,
    );
    upserts(&applied.slots, &desired.slots, MapOp::UpsertSlot, &mut ops);
    upserts(
        &applied.affinity,
        &desired.affinity,
        MapOp::UpsertAffinity,
        &mut ops,
    );
    super::diff_maglev::table_writes(applied, desired, &mut ops);
    upserts(
        &applied.maglev,
        &desired.maglev,
        MapOp::UpsertMaglevRef,
        &mut ops,
    );
    for range in desired.source_ranges.difference(&applied.source_ranges) {
        ops.push(MapOp::UpsertSourceRange(*range));
    }
    for range in desired.source_ranges6.difference(&applied.source_ranges6) {
        ops.push(MapOp::UpsertSourceRange6(*range));
    }
    upserts(
        &applied.services,
        &desired.services,
        MapOp::UpsertService,
        &mut ops,
    );
    upserts(
        &applied.services6,
        &desired.services6,
        MapOp::UpsertService6,
        &mut ops,
    );
    deletes(
        &applied.services,
        &desired.services,
        MapOp::DeleteService,
        &mut ops,
    );
    deletes(
        &applied.services6,
        &desired.services6,
        MapOp::DeleteService6,
        &mut ops,
    );
    for range in applied.source_ranges.difference(&desired.source_ranges) {
        ops.push(MapOp::DeleteSourceRange(*range));
    }
    for range in applied.source_ranges6.difference(&desired.source_ranges6) {
        ops.push(MapOp::DeleteSourceRange6(*range));
    }
    deletes(&applied.slots, &desired.slots, MapOp::DeleteSlot, &mut ops);
    deletes(
        &applied.affinity,
        &desired.affinity,
        MapOp::DeleteAffinity,
        &mut ops,
    );
    deletes(
        &applied.maglev,
        &desired.maglev,
        MapOp::DeleteMaglevRef,
        &mut ops,
    );
    deletes(
        &applied.backends,
        &desired.backends,
        MapOp::DeleteBackend,
        &mut ops,
    );
    deletes(
        &applied.backends6,
        &desired.backends6,
        MapOp::DeleteBackend6,
        &mut ops,
    );
    ops
}

/// An upsert per entry of `desired` that `applied` lacks or holds otherwise.
fn upserts<K: Ord + Copy, V: PartialEq + Copy>(
    applied: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
    op: impl Fn(K, V) -> MapOp,
    ops: &mut Vec<MapOp>,
) {
    touched_upserts(desired.keys(), applied, desired, op, ops);
}

/// A delete per key of `applied` that `desired` lacks.
fn deletes<K: Ord + Copy, V>(
    applied: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
    op: impl Fn(K) -> MapOp,
    ops: &mut Vec<MapOp>,
) {
    touched_deletes(applied.keys(), applied, desired, op, ops);
}

/// [`upserts`] for `keys` only.
fn touched_upserts<'a, K: Ord + Copy + 'a, V: PartialEq + Copy>(
    keys: impl IntoIterator<Item = &'a K>,
    applied: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
    op: impl Fn(K, V) -> MapOp,
    ops: &mut Vec<MapOp>,
) {
    for key in keys {
        if let Some(value) = desired.get(key)
            && applied.get(key) != Some(value)
        {
            ops.push(op(*key, *value));
        }
    }
}

/// [`deletes`] for `keys` only.
fn touched_deletes<'a, K: Ord + Copy + 'a, V>(
    keys: impl IntoIterator<Item = &'a K>,
    applied: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
    op: impl Fn(K) -> MapOp,
    ops: &mut Vec<MapOp>,
) {
    for key in keys {
        if applied.contains_key(key) && !desired.contains_key(key) {
            ops.push(op(*key));
        }
    }
}

/// [`diff`] restricted to the keys in `touched`: the same ops in the same
/// order as `diff` gives when only those keys differ. What keeps a sync's
/// cost proportional to what changed.
pub fn diff_touched(applied: &MapContents, desired: &MapContents, touched: &Touched) -> Vec<MapOp> {
    let mut ops = Vec::new();
    let t = touched;
    touched_upserts(
        &t.backends,
        &applied.backends,
        &desired.backends,
        MapOp::UpsertBackend,
        &mut ops,
    );
    touched_upserts(
        &t.backends6,
        &applied.backends6,
        &desired.backends6,
        MapOp::UpsertBackend6,
        &mut ops,
    );
    touched_upserts(
        &t.slots,
        &applied.slots,
        &desired.slots,
        MapOp::UpsertSlot,
        &mut ops,
    );
    touched_upserts(
        &t.affinity,
        &applied.affinity,
        &desired.affinity,
        MapOp::UpsertAffinity,
        &mut ops,
    );
    super::diff_maglev::touched_table_writes(desired, t, &mut ops);
    touched_upserts(
        &t.maglev,
        &applied.maglev,
        &desired.maglev,
        MapOp::UpsertMaglevRef,
        &mut ops,
    );
    for range in &t.source_ranges {
        if desired.source_ranges.contains(range) && !applied.source_ranges.contains(range) {
            ops.push(MapOp::UpsertSourceRange(*range));
        }
    }
    for range in &t.source_ranges6 {
        if desired.source_ranges6.contains(range) && !applied.source_ranges6.contains(range) {
            ops.push(MapOp::UpsertSourceRange6(*range));
        }
    }
    touched_upserts(
        &t.services,
        &applied.services,
        &desired.services,
        MapOp::UpsertService,
        &mut ops,
    );
    touched_upserts(
        &t.services6,
        &applied.services6,
        &desired.services6,
        MapOp::UpsertService6,
        &mut ops,
    );
    touched_deletes(
        &t.services,
        &applied.services,
        &desired.services,
        MapOp::DeleteService,
        &mut ops,
    );
    touched_deletes(
        &t.services6,
        &applied.services6,
        &desired.services6,
        MapOp::DeleteService6,
        &mut ops,
    );
    for range in &t.source_ranges {
        if applied.source_ranges.contains(range) && !desired.source_ranges.contains(range) {
            ops.push(MapOp::DeleteSourceRange(*range));
        }
    }
    for range in &t.source_ranges6 {
        if applied.source_ranges6.contains(range) && !desired.source_ranges6.contains(range) {
            ops.push(MapOp::DeleteSourceRange6(*range));
        }
    }
    touched_deletes(
        &t.slots,
        &applied.slots,
        &desired.slots,
        MapOp::DeleteSlot,
        &mut ops,
    );
    touched_deletes(
        &t.affinity,
        &applied.affinity,
        &desired.affinity,
        MapOp::DeleteAffinity,
        &mut ops,
    );
    touched_deletes(
        &t.maglev,
        &applied.maglev,
        &desired.maglev,
        MapOp::DeleteMaglevRef,
        &mut ops,
    );
    touched_deletes(
        &t.backends,
        &applied.backends,
        &desired.backends,
        MapOp::DeleteBackend,
        &mut ops,
    );
    touched_deletes(
        &t.backends6,
        &applied.backends6,
        &desired.backends6,
        MapOp::DeleteBackend6,
        &mut ops,
    );
    ops
}

/// Every way `maps` breaks the invariant documented on [`diff`], as text.
/// Empty when consistent.
pub fn check_consistency(maps: &MapContents) -> Vec<String> {
    let mut problems = Vec::new();
    let frontends = maps
        .services
        .iter()
        .map(|(k, v)| (std::net::SocketAddr::from((k.ip(), k.port())), v))
        .chain(
            maps.services6
                .iter()
                .map(|(k, v)| (std::net::SocketAddr::from((k.ip(), k.port())), v)),
        );
    for (at, value) in frontends {
        for slot in 0..u32::from(value.backend_count) {
            let slot_key = proxy_common::SlotKey {
                service_id: value.service_id,
                slot,
            };
            if !maps.slots.contains_key(&slot_key) {
                problems.push(format!(
                    "service {at} id={} count={} lacks slot {slot}",
                    value.service_id, value.backend_count
                ));
            }
        }
    }
    let backend_exists =
        |id: &u32| maps.backends.contains_key(id) || maps.backends6.contains_key(id);
    for (key, id) in &maps.slots {
        if !backend_exists(id) {
            problems.push(format!(
                "slot {}/{} points at missing backend {id}",
                key.service_id, key.slot
            ));
        }
    }
    for member in maps.affinity.keys() {
        if !backend_exists(&member.backend_id) {
            problems.push(format!(
                "affinity member {}/{} is a missing backend",
                member.service_id, member.backend_id
            ));
        }
    }
    super::diff_maglev::check(maps, &mut problems);
    // The datapath would admit no client at all; ranges go in before the
    // flag and come out after it (phases 3 and 4).
    let ranged = |value: &ServiceValue| value.flags & SVC_FLAG_SOURCE_RANGES != 0;
    for (key, value) in maps.services.iter().filter(|(_, v)| ranged(v)) {
        if !has_range(&maps.source_ranges, value.service_id, Ipv4Addr::UNSPECIFIED) {
            problems.push(format!(
                "service {}:{} id={} checks source ranges it has none of",
                key.ip(),
                key.port(),
                value.service_id
            ));
        }
    }
    for (key, value) in maps.services6.iter().filter(|(_, v)| ranged(v)) {
        if !has_range(
            &maps.source_ranges6,
            value.service_id,
            Ipv6Addr::UNSPECIFIED,
        ) {
            problems.push(format!(
                "service [{}]:{} id={} checks source ranges it has none of",
                key.ip(),
                key.port(),
                value.service_id
            ));
        }
    }
    problems
}

/// Whether `ranges` has an entry of service `id` (`lowest`: the family's
/// lowest address, where the id's entries start).
fn has_range<A: Ord + Copy>(ranges: &BTreeSet<(u32, A, u8)>, id: u32, lowest: A) -> bool {
    ranges
        .range((id, lowest, 0)..)
        .next()
        .is_some_and(|r| r.0 == id)
}
