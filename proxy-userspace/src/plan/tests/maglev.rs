//! Maglev frontends in the planner: the same table on every node, atomic
//! switches to fresh tables, no rewrite of what is still right.
use std::collections::BTreeSet;

use proxy_common::SVC_FLAG_MAGLEV;

use super::*;
use crate::plan::maglev::MaglevParams;

fn maglev(max_tables: u32) -> LbConfig {
    LbConfig {
        default: LbDefault::Maglev,
        params: MaglevParams { size: 251, seed: 7 },
        max_tables,
    }
}

/// Each frontend's table by backend address: what a node's choice means,
/// whatever ids it gave.
fn tables_by_address(maps: &MapContents) -> Vec<(ServiceKey, Vec<Ipv4Addr>)> {
    maps.services
        .iter()
        .map(|(key, value)| {
            let r = maps.maglev[&value.service_id];
            let table = &maps.maglev_tables[&r.first];
            let addrs = table.ids.iter().map(|id| maps.backends[id].ip()).collect();
            (*key, addrs)
        })
        .collect()
}

#[test]
fn two_nodes_with_other_ids_build_the_same_tables() {
    let wanted: &[Spec] = &[
        (10, &[(1, READY), (2, READY), (3, READY)]),
        (20, &[(3, READY), (4, READY)]),
    ];
    let mut a = Planner::with_lb(maglev(16));
    let a_maps = a.desired(&model(wanted));
    // Node b saw other Services and endpoints first: other ids, other order.
    let mut b = Planner::with_lb(maglev(16));
    b.desired(&model(&[
        (30, &[(9, READY), (8, READY)]),
        (20, &[(4, READY)]),
    ]));
    b.desired(&model(&[
        (20, &[(4, READY), (3, READY)]),
        (10, &[(3, READY), (2, READY), (1, READY)]),
    ]));
    let b_maps = b.desired(&model(wanted));
    assert_ne!(a_maps.backends, b_maps.backends, "the ids differ");
    assert_eq!(tables_by_address(&a_maps), tables_by_address(&b_maps));
    for maps in [&a_maps, &b_maps] {
        assert!(
            maps.services
                .values()
                .all(|v| v.flags & SVC_FLAG_MAGLEV != 0)
        );
        assert!(check_consistency(maps).is_empty());
    }
}

#[test]
fn terminating_and_gone_endpoints_stay_out_of_the_table() {
    let maps = Planner::with_lb(maglev(16)).desired(&model(&[(
        10,
        &[(1, READY), (2, TERMINATING), (3, GONE), (4, READY)],
    )]));
    let (_, addrs) = &tables_by_address(&maps)[0];
    let used: BTreeSet<Ipv4Addr> = addrs.iter().copied().collect();
    assert_eq!(
        used,
        BTreeSet::from([Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 4)])
    );
}

#[test]
fn an_endpoint_change_writes_one_fresh_table_then_switches() {
    let mut planner = Planner::with_lb(maglev(16));
    let before = model(&[
        (10, &[(1, READY), (2, READY), (3, READY)]),
        (20, &[(5, READY)]),
    ]);
    let applied = apply_checked(
        &MapContents::default(),
        &diff(&MapContents::default(), &planner.desired(&before)),
    );
    let old = applied.maglev[&applied.services[&svc_key(10)].service_id];

    let after = model(&[(10, &[(1, READY), (2, READY)]), (20, &[(5, READY)])]);
    let changed = BTreeSet::from([*after.frontends.keys().next().unwrap()]);
    let (touched, noted) = planner.update_noting_before(&after, &changed);
    let ops = diff_touched(&noted, planner.current(), &touched);
    let writes: Vec<&MapOp> = ops
        .iter()
        .filter(|op| matches!(op, MapOp::WriteMaglevTable(..)))
        .collect();
    assert_eq!(writes.len(), 1, "{ops:#?}");
    let MapOp::WriteMaglevTable(first, _) = writes[0] else {
        unreachable!()
    };
    assert_ne!(*first, old.first, "never over the table in use");
    // The table goes in before the entry that points at it.
    let write_at = ops
        .iter()
        .position(|op| matches!(op, MapOp::WriteMaglevTable(..)))
        .unwrap();
    let switch_at = ops
        .iter()
        .position(|op| matches!(op, MapOp::UpsertMaglevRef(..)))
        .unwrap();
    assert!(write_at < switch_at);
    let applied = apply_checked(&applied, &ops);
    assert_eq!(
        ops,
        diff(&noted, planner.current())
            .into_iter()
            .filter(|op| ops.contains(op))
            .collect::<Vec<_>>()
    );
    assert_eq!(applied.maglev, planner.current().maglev);
    println!(
        "one endpoint change: {} map writes, {} table positions",
        ops.len(),
        251
    );

    // The freed table is reused from the next round on, not in this one.
    let again = model(&[
        (10, &[(1, READY), (2, READY), (3, READY)]),
        (20, &[(5, READY)]),
    ]);
    planner.update(&again, &changed);
    let current = planner.current().maglev[&applied.services[&svc_key(10)].service_id];
    assert_eq!(
        current.first, old.first,
        "the first table's number, free again"
    );
}

#[test]
fn a_restarted_agent_rewrites_no_table_it_still_wants() {
    let m = model(&[
        (10, &[(1, READY), (2, READY)]),
        (20, &[(1, READY), (2, READY)]),
        (30, &[(3, READY)]),
    ]);
    let applied = Planner::with_lb(maglev(16)).desired(&m);
    // The kernel's read-back has the index entries, not the tables.
    let read_back = MapContents {
        maglev_tables: Default::default(),
        ..applied.clone()
    };
    let mut restored = Planner::restore_with(&read_back, maglev(16));
    assert_eq!(diff(&read_back, &restored.desired(&m)), vec![]);
    // Frontends with the same endpoints share one table.
    assert_eq!(applied.maglev_tables.len(), 2);
}

#[test]
fn a_full_pool_leaves_frontends_on_their_slots() {
    let mut planner = Planner::with_lb(maglev(1));
    let maps = planner.desired(&model(&[(10, &[(1, READY)]), (20, &[(2, READY)])]));
    assert_eq!(planner.maglev_exhausted(), 1);
    let flagged = maps
        .services
        .values()
        .filter(|v| v.flags & SVC_FLAG_MAGLEV != 0)
        .count();
    assert_eq!(flagged, 1);
    assert_eq!(maps.maglev.len(), 1);
    assert!(check_consistency(&maps).is_empty());
}

#[test]
fn the_annotation_overrides_the_agent_default() {
    let mut m = model(&[(10, &[(1, READY)]), (20, &[(2, READY)])]);
    let first = *m.frontends.keys().next().unwrap();
    m.frontends.get_mut(&first).unwrap().policy.lb_algorithm =
        Some(crate::model::LbAlgorithm::Random);
    let maps = Planner::with_lb(maglev(16)).desired(&m);
    assert_eq!(maps.maglev.len(), 1);
    assert_eq!(maps.services[&svc_key(10)].flags & SVC_FLAG_MAGLEV, 0);
    // With slots by default, the annotation turns Maglev on.
    m.frontends.get_mut(&first).unwrap().policy.lb_algorithm =
        Some(crate::model::LbAlgorithm::Maglev);
    let maps = Planner::new().desired(&m);
    assert_eq!(maps.maglev.len(), 1);
    assert_ne!(maps.services[&svc_key(10)].flags & SVC_FLAG_MAGLEV, 0);
}

#[test]
fn a_restart_never_writes_over_a_table_an_entry_may_still_read() {
    let m = model(&[
        (10, &[(1, READY)]),
        (20, &[(1, READY)]),
        (30, &[(2, READY)]),
    ]);
    let mut applied = Planner::with_lb(maglev(16)).desired(&m);
    // As if 20 had been given the same contents at another number (two
    // numbers, one digest): only one survives, the other is an orphan
    // that entry 10 or 20 may still read until the first sync switches it.
    let id = |svc| applied.services[&svc_key(svc)].service_id;
    let (id10, id20, id30) = (id(10), id(20), id(30));
    applied.maglev.get_mut(&id20).unwrap().first = 2 * 251;
    applied.maglev_tables.clear();
    let mut restored = Planner::restore_with(&applied, maglev(16));
    // 30 changes: its new table needs a number no entry reads.
    let after = model(&[
        (10, &[(1, READY)]),
        (20, &[(1, READY)]),
        (30, &[(3, READY)]),
    ]);
    let desired = restored.desired(&after);
    let read: BTreeSet<u32> = applied.maglev.values().map(|r| r.first).collect();
    assert!(
        !read.contains(&desired.maglev[&id30].first),
        "{:?} over {read:?}",
        desired.maglev[&id30]
    );
    assert_eq!(desired.maglev[&id10].first, desired.maglev[&id20].first);
    let ops = diff(&applied, &desired);
    let writes: Vec<u32> = ops
        .iter()
        .filter_map(|op| match op {
            MapOp::WriteMaglevTable(first, _) => Some(*first),
            _ => None,
        })
        .collect();
    assert_eq!(writes, vec![desired.maglev[&id30].first], "{ops:#?}");
}
