//! The Maglev part of the diff: whole tables first (into pool numbers no
//! index entry points at), then the index switches, deletes after the
//! services stop reading them. See `diff` for the phases.
use std::collections::BTreeSet;

use super::maps::{MaglevTable, MapContents, MapOp};
use super::planner::Touched;

/// Tables `desired` points at that `applied` does not hold: a table is
/// known written when an applied index entry names its place and digest
/// (read back from the kernel, or as last written).
///
/// The planner writes a changed table only where no index entry points.
/// After a failed write or a change behind the agent's back, the kernel's
/// index may still point where a table is to be written: such entries are
/// deleted first (their frontends use their slots meanwhile, which always
/// exist), so no flow reads a table being written; the index upserts that
/// follow the writes point them where the plan wants.
pub(super) fn table_writes(applied: &MapContents, desired: &MapContents, ops: &mut Vec<MapOp>) {
    let written: BTreeSet<(u32, u64)> = applied
        .maglev
        .values()
        .map(|r| (r.first, r.digest))
        .collect();
    let to_write: Vec<(u32, &MaglevTable)> = desired
        .maglev_tables
        .iter()
        .filter(|(first, table)| !written.contains(&(**first, table.digest)))
        .map(|(first, table)| (*first, table))
        .collect();
    let overwritten: BTreeSet<u32> = to_write.iter().map(|(first, _)| *first).collect();
    for (service_id, r) in &applied.maglev {
        if overwritten.contains(&r.first) {
            ops.push(MapOp::DeleteMaglevRef(*service_id));
        }
    }
    for (first, table) in to_write {
        ops.push(MapOp::WriteMaglevTable(first, table.clone()));
    }
}

/// [`table_writes`] for an incremental update: the tables it gave a
/// number no frontend used (and still wants).
pub(super) fn touched_table_writes(desired: &MapContents, touched: &Touched, ops: &mut Vec<MapOp>) {
    for first in &touched.maglev_tables {
        if let Some(table) = desired.maglev_tables.get(first) {
            ops.push(MapOp::WriteMaglevTable(*first, table.clone()));
        }
    }
}

/// Every index entry whose table `maps` holds must point at that table
/// (same digest, same size), and every backend in it must exist. Entries
/// whose table is not held (read back from the kernel) are not checked.
pub(super) fn check(maps: &MapContents, problems: &mut Vec<String>) {
    for (service_id, r) in &maps.maglev {
        let Some(table) = maps.maglev_tables.get(&r.first) else {
            continue;
        };
        if table.digest != r.digest || table.ids.len() != r.size as usize {
            problems.push(format!(
                "maglev entry of service {service_id} points at table {} of other contents",
                r.first
            ));
        }
        let missing = table
            .ids
            .iter()
            .find(|id| !maps.backends.contains_key(id) && !maps.backends6.contains_key(id));
        if let Some(id) = missing {
            problems.push(format!(
                "maglev table {} of service {service_id} points at missing backend {id}",
                r.first
            ));
        }
    }
}
