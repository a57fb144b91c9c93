//! The Maglev part of the diff: whole tables first (into pool numbers no
//! index entry points at), then the index switches, deletes after the
//! services stop reading them. See `diff` for the phases.
use std::collections::BTreeSet;

use super::maps::{MapContents, MapOp};
use super::planner::Touched;

/// Tables `desired` points at that `applied` does not hold: a table is
/// known written when an applied index entry names its place and digest
/// (the kernel's tables are not read back).
pub(super) fn table_writes(applied: &MapContents, desired: &MapContents, ops: &mut Vec<MapOp>) {
    let written: BTreeSet<(u32, u64)> = applied
        .maglev
        .values()
        .map(|r| (r.first, r.digest))
        .collect();
    for (&first, table) in &desired.maglev_tables {
        if !written.contains(&(first, table.digest)) {
            ops.push(MapOp::WriteMaglevTable(first, table.clone()));
        }
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
