//! Planner ids, diff ordering and the text dump.

use std::net::Ipv4Addr;

use proxy_common::{
    AffinityMember, BackendValue, IPPROTO_TCP, IPPROTO_UDP, ServiceKey, ServiceValue, SlotKey,
};

use super::*;
use crate::model::{
    Backend, Conditions, EndpointModel, Frontend, FrontendKey, FrontendKind, Kind, Model,
    ObjectRef, Protocol,
};

const READY: Conditions = Conditions {
    ready: true,
    serving: true,
    terminating: false,
};
const TERMINATING: Conditions = Conditions {
    ready: false,
    serving: true,
    terminating: true,
};
const GONE: Conditions = Conditions {
    ready: false,
    serving: false,
    terminating: true,
};

/// A frontend `10.96.0.<svc>:80/tcp` whose backends are `10.0.0.<b>:8080`.
type Spec<'a> = (u8, &'a [(u8, Conditions)]);

fn model(specs: &[Spec]) -> Model {
    model_proto(specs, Protocol::Tcp)
}

fn model_proto(specs: &[Spec], protocol: Protocol) -> Model {
    model_with(specs, protocol, |_| false)
}

/// As [`model_proto`], with the services `ipv6` picks in IPv6:
/// `fd00:96::<svc>` with backends `fd00::<b>`.
fn model_with(specs: &[Spec], protocol: Protocol, ipv6: impl Fn(u8) -> bool) -> Model {
    let mut m = Model::default();
    for &(svc, backends) in specs {
        let v6 = ipv6(svc);
        let address = |net: [u16; 2], v4: Ipv4Addr, last: u8| -> std::net::IpAddr {
            if v6 {
                std::net::Ipv6Addr::new(net[0], net[1], 0, 0, 0, 0, 0, u16::from(last)).into()
            } else {
                v4.into()
            }
        };
        let key = FrontendKey {
            ip: address([0xfd00, 0x96], Ipv4Addr::new(10, 96, 0, svc), svc),
            port: 80,
            protocol,
            scope: Default::default(),
        };
        let mut backends: Vec<Backend> = backends
            .iter()
            .map(|&(b, conditions)| Backend {
                local: false,
                endpoint: std::sync::Arc::new(EndpointModel {
                    ip: address([0xfd00, 0], Ipv4Addr::new(10, 0, 0, b), b),
                    conditions,
                    node_name: None,
                    zone: None,
                    hints: Default::default(),
                    target: None,
                }),
                port: 8080,
            })
            .collect();
        backends.sort_by_key(|b| (b.ip, b.port));
        let service = ObjectRef {
            kind: Kind::Service,
            namespace: "default".into(),
            name: format!("s{svc}").into(),
        };
        m.frontends.insert(
            key,
            Frontend {
                policy: Default::default(),
                topology: Default::default(),
                key,
                kind: FrontendKind::ClusterIp,
                service,
                port_name: "".into(),
                backends,
            },
        );
    }
    m
}

fn svc_key(svc: u8) -> ServiceKey {
    ServiceKey::new(Ipv4Addr::new(10, 96, 0, svc), 80, IPPROTO_TCP)
}

fn backend(b: u8) -> BackendValue {
    BackendValue::new(Ipv4Addr::new(10, 0, 0, b), 8080, IPPROTO_TCP)
}

/// Applies `ops` one at a time, checking the ordering invariant after each.
fn apply_checked(applied: &MapContents, ops: &[MapOp]) -> MapContents {
    let mut maps = applied.clone();
    assert_eq!(
        check_consistency(&maps),
        Vec::<String>::new(),
        "start state"
    );
    for (i, op) in ops.iter().enumerate() {
        apply_op(&mut maps, op);
        let problems = check_consistency(&maps);
        assert!(
            problems.is_empty(),
            "after op {i} {op:?}: {problems:?}\nops: {ops:#?}"
        );
    }
    maps
}

#[test]
fn desired_contents_follow_endpoint_states() {
    let m = model(&[
        (10, &[(3, READY), (1, READY), (2, TERMINATING)]),
        (20, &[(2, TERMINATING), (4, GONE)]),
        (30, &[]),
    ]);
    let maps = Planner::new().desired(&m);
    let want = "\
svc 10.96.0.10:80/tcp id=1 count=2 has-endpoints
svc 10.96.0.20:80/tcp id=2 count=1 has-endpoints
svc 10.96.0.30:80/tcp id=3 count=0
slot 1/0 -> 1
slot 1/1 -> 3
slot 2/0 -> 2
backend 1 10.0.0.1:8080/tcp
backend 2 10.0.0.2:8080/tcp
backend 3 10.0.0.3:8080/tcp
backend 4 10.0.0.4:8080/tcp not-serving
";
    assert_eq!(dump_text(&maps), want);
}

#[test]
fn same_address_and_port_with_tcp_and_udp_are_distinct() {
    let mut m = model(&[(10, &[(1, READY)])]);
    m.frontends
        .extend(model_proto(&[(10, &[(1, READY)])], Protocol::Udp).frontends);
    let maps = Planner::new().desired(&m);
    assert_eq!(maps.services.len(), 2);
    assert_eq!(maps.backends.len(), 2);
    assert!(dump_text(&maps).contains("backend 2 10.0.0.1:8080/udp\n"));
    let udp = ServiceKey::new(Ipv4Addr::new(10, 96, 0, 10), 80, IPPROTO_UDP);
    assert!(maps.services.contains_key(&udp));
}

#[test]
fn ids_are_stable_while_keys_exist() {
    let mut planner = Planner::new();
    let first = planner.desired(&model(&[
        (10, &[(1, READY), (2, READY)]),
        (20, &[(2, READY)]),
    ]));
    assert_eq!(
        first,
        planner.desired(&model(&[
            (10, &[(1, READY), (2, READY)]),
            (20, &[(2, READY)])
        ]))
    );
    // New service and backend sorted before the others: existing ids do not move.
    let second = planner.desired(&model(&[
        (5, &[(0, READY)]),
        (10, &[(1, READY), (2, READY)]),
        (20, &[(2, READY)]),
    ]));
    assert_eq!(
        second.services[&svc_key(10)].service_id,
        first.services[&svc_key(10)].service_id
    );
    assert_eq!(
        second.services[&svc_key(20)].service_id,
        first.services[&svc_key(20)].service_id
    );
    assert_eq!(second.services[&svc_key(5)].service_id, 3);
    assert_eq!(planner.backend_id(&backend(2)), Some(2));
    assert_eq!(planner.backend_id(&backend(0)), Some(3));
    assert!(!second.services.values().any(|v| v.service_id == 0));
    assert!(!second.backends.contains_key(&0));
}

#[test]
fn freed_ids_are_reused_lowest_first_from_the_next_sync() {
    let mut planner = Planner::new();
    planner.desired(&model(&[
        (10, &[(1, READY)]),
        (20, &[(2, READY)]),
        (30, &[(3, READY)]),
        (40, &[(4, READY)]),
    ]));
    // 20 and 30 go; in the same sync 50 arrives and must not take their ids yet.
    let m = planner.desired(&model(&[
        (10, &[(1, READY)]),
        (40, &[(4, READY)]),
        (50, &[(5, READY)]),
    ]));
    assert_eq!(m.services[&svc_key(50)].service_id, 5);
    assert_eq!(planner.backend_id(&backend(5)), Some(5));
    // Next sync: the lowest freed ids (2, then 3) are handed out again.
    let m = planner.desired(&model(&[
        (10, &[(1, READY)]),
        (40, &[(4, READY)]),
        (50, &[(5, READY)]),
        (60, &[(6, READY)]),
        (70, &[(7, READY)]),
    ]));
    assert_eq!(m.services[&svc_key(60)].service_id, 2);
    assert_eq!(m.services[&svc_key(70)].service_id, 3);
    assert_eq!(planner.backend_id(&backend(6)), Some(2));
    assert_eq!(planner.backend_id(&backend(7)), Some(3));
    assert_eq!(m.services[&svc_key(50)].service_id, 5);
}

#[test]
fn restore_keeps_ids_and_gives_an_empty_diff() {
    let history = [
        model(&[
            (10, &[(1, READY), (2, READY)]),
            (20, &[(3, READY)]),
            (30, &[(4, READY)]),
        ]),
        model(&[
            (10, &[(2, READY), (5, TERMINATING)]),
            (30, &[(4, READY), (6, READY)]),
        ]),
    ];
    let mut planner = Planner::new();
    let mut applied = MapContents::default();
    for m in &history {
        applied = planner.desired(m);
    }
    let mut restored = Planner::restore(&applied);
    let again = restored.desired(&history[1]);
    assert_eq!(again, applied);
    assert!(diff(&applied, &again).is_empty());
    // New keys after restore take the lowest gaps left by the history.
    let next = history[1].clone();
    let mut next = next;
    next.frontends
        .extend(model(&[(40, &[(7, READY)])]).frontends);
    let grown = restored.desired(&next);
    assert_eq!(grown.services[&svc_key(40)].service_id, 2);
    assert_eq!(restored.backend_id(&backend(7)), Some(1));
    assert_eq!(grown.services[&svc_key(10)], applied.services[&svc_key(10)]);
}

#[test]
fn restore_from_inconsistent_maps_quarantines_duplicate_ids() {
    let mut applied = MapContents::default();
    applied.services.insert(
        svc_key(10),
        ServiceValue {
            service_id: 1,
            backend_count: 0,
            flags: 0,
        },
    );
    applied.services.insert(
        svc_key(20),
        ServiceValue {
            service_id: 1,
            backend_count: 0,
            flags: 0,
        },
    );
    applied.backends.insert(4, backend(1));
    applied.backends.insert(2, backend(1));
    let mut planner = Planner::restore(&applied);
    let desired = planner.desired(&model(&[(10, &[(1, READY)]), (20, &[(1, READY)])]));
    let ids: Vec<u32> = desired.services.values().map(|v| v.service_id).collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1], "each service gets its own id");
    assert_eq!(desired.backends.len(), 1);
    apply_checked(&applied, &diff(&applied, &desired));
}

#[test]
fn one_endpoint_change_touches_only_its_service() {
    let mut planner = Planner::new();
    let before = planner.desired(&model(&[
        (10, &[(1, READY), (2, READY)]),
        (20, &[(3, READY)]),
    ]));
    let after = planner.desired(&model(&[
        (10, &[(1, READY), (2, READY), (9, READY)]),
        (20, &[(3, READY)]),
    ]));
    let s10 = before.services[&svc_key(10)].service_id;
    assert_eq!(
        diff(&before, &after),
        [
            MapOp::UpsertBackend(4, backend(9)),
            MapOp::UpsertSlot(
                SlotKey {
                    service_id: s10,
                    slot: 2
                },
                4
            ),
            MapOp::UpsertService(
                svc_key(10),
                ServiceValue {
                    service_id: s10,
                    backend_count: 3,
                    flags: proxy_common::SVC_FLAG_HAS_ENDPOINTS
                }
            ),
        ]
    );
    // Removing it again: count first, then the trailing slot, then the backend.
    assert_eq!(
        diff(&after, &before),
        [
            MapOp::UpsertService(
                svc_key(10),
                ServiceValue {
                    service_id: s10,
                    backend_count: 2,
                    flags: proxy_common::SVC_FLAG_HAS_ENDPOINTS
                }
            ),
            MapOp::DeleteSlot(SlotKey {
                service_id: s10,
                slot: 2
            }),
            MapOp::DeleteBackend(4),
        ]
    );
    // A pod turning terminating: the backend entry stays, only slots and count change.
    let terminating = planner.desired(&model(&[
        (10, &[(1, READY), (2, TERMINATING)]),
        (20, &[(3, READY)]),
    ]));
    let ops = diff(&before, &terminating);
    assert_eq!(ops.len(), 2, "{ops:?}");
    assert!(
        matches!(ops[0], MapOp::UpsertService(k, v) if k == svc_key(10) && v.backend_count == 1)
    );
    assert!(matches!(ops[1], MapOp::DeleteSlot(k) if k.service_id == s10 && k.slot == 1));
}

/// A small deterministic generator, so the walk below needs no extra crates.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn every_prefix_of_every_diff_is_consistent() {
    let mut rng = Lcg(42);
    let mut planner = Planner::new();
    let mut applied = MapContents::default();
    let states = [READY, READY, TERMINATING, GONE];
    for round in 0..300 {
        // Up to 6 services, each with up to 6 of 10 backends in random states;
        // every 50 rounds everything goes away.
        let mut specs: Vec<(u8, Vec<(u8, Conditions)>)> = Vec::new();
        if round % 50 != 49 {
            for svc in 1..=6u8 {
                if rng.next(4) == 0 {
                    continue;
                }
                let backends =
                    (0..rng.next(7)).map(|_| (rng.next(10) as u8, states[rng.next(4) as usize]));
                let mut backends: Vec<(u8, Conditions)> = backends.collect();
                backends.sort_by_key(|b| b.0);
                backends.dedup_by_key(|b| b.0);
                specs.push((svc, backends));
            }
        }
        let specs: Vec<Spec> = specs.iter().map(|(s, b)| (*s, b.as_slice())).collect();
        let desired = planner.desired(&model(&specs));
        assert_eq!(check_consistency(&desired), Vec::<String>::new());
        let ops = diff(&applied, &desired);
        applied = apply_checked(&applied, &ops);
        assert_eq!(applied, desired, "round {round}");
        assert!(diff(&applied, &desired).is_empty());
    }
}

#[test]
fn diff_reaches_any_target_from_any_consistent_start() {
    // Different planners give clashing ids: the diff must still be safe.
    let a = Planner::new().desired(&model(&[
        (10, &[(1, READY), (2, READY), (3, READY)]),
        (20, &[(4, READY)]),
    ]));
    let b = Planner::new().desired(&model(&[
        (20, &[(5, READY), (6, READY)]),
        (30, &[(1, READY)]),
    ]));
    for (from, to) in [
        (&a, &b),
        (&b, &a),
        (&a, &MapContents::default()),
        (&MapContents::default(), &b),
    ] {
        assert_eq!(&apply_checked(from, &diff(from, to)), to);
    }
}

#[test]
fn checker_catches_bad_orders() {
    // The checker itself must be able to fail, or the tests above prove nothing.
    let maps = Planner::new().desired(&model(&[(10, &[(1, READY)])]));
    let mut no_slot = maps.clone();
    no_slot.slots.clear();
    assert_eq!(check_consistency(&no_slot).len(), 1);
    let mut no_backend = maps;
    no_backend.backends.clear();
    assert_eq!(check_consistency(&no_backend).len(), 1);
}

/// Incremental updates against the full planner: after each model change,
/// `update` + `diff_touched` give the same contents and ops as `desired` +
/// `diff`, and every intermediate state is consistent.
#[test]
fn incremental_update_matches_full_desired() {
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let conditions = [READY, TERMINATING, GONE];
    let mut planner = Planner::new();
    let mut applied = MapContents::default();
    let mut previous = Model::default();
    for round in 0..300 {
        let mut specs: Vec<(u8, Vec<(u8, Conditions)>)> = Vec::new();
        for svc in 1..=8u8 {
            if next(4) == 0 {
                continue;
            }
            let mut backends = Vec::new();
            for b in 1..=6u8 {
                if next(2) == 0 {
                    backends.push((b, conditions[next(3) as usize]));
                }
            }
            specs.push((svc, backends));
        }
        let specs: Vec<Spec> = specs.iter().map(|(s, b)| (*s, b.as_slice())).collect();
        // Odd services in IPv6: both families' ids share the slot map.
        let m = model_with(&specs, Protocol::Tcp, |svc| svc % 2 == 1);
        let changed = previous
            .frontends
            .keys()
            .chain(m.frontends.keys())
            .filter(|k| previous.frontends.get(k) != m.frontends.get(k))
            .copied()
            .collect();
        let (touched, before) = planner.update_noting_before(&m, &changed);
        let desired = planner.current().clone();
        // Deleted frontends drain until the next full sync; otherwise the same.
        let mut settled = desired.clone();
        let draining = |v: &ServiceValue| v.flags & proxy_common::SVC_FLAG_DRAINING != 0;
        settled.services.retain(|_, v| !draining(v));
        settled.services6.retain(|_, v| !draining(v));
        assert_eq!(settled, planner.clone().desired(&m), "round {round}");
        let ops = diff_touched(&applied, &desired, &touched);
        assert_eq!(ops, diff(&applied, &desired), "round {round}");
        // What the touched keys held before is all the syncer keeps.
        let from_before = diff_touched(&before, &desired, &touched);
        assert_eq!(from_before, ops, "round {round}: noted before");
        for op in &ops {
            apply_op(&mut applied, op);
            let problems = check_consistency(&applied);
            assert!(
                problems.is_empty(),
                "round {round} after {op:?}: {problems:?}"
            );
        }
        assert_eq!(applied, desired);
        previous = m;
    }
}

#[test]
fn serves_tells_which_endpoints_a_frontend_still_uses() {
    // Frontend 1 uses a ready and, beside it, a terminating endpoint (only
    // ready ones take new connections); frontend 2 uses endpoint 3.
    let m = model(&[(1, &[(1, READY), (2, TERMINATING)]), (2, &[(3, READY)])]);
    let maps = Planner::new().desired(&m);
    let frontend = |svc| ServiceKey::new(Ipv4Addr::new(10, 96, 0, svc), 80, IPPROTO_TCP);
    let endpoint = |b| {
        let v = BackendValue::new(Ipv4Addr::new(10, 0, 0, b), 8080, IPPROTO_TCP);
        (v.addr, v.port)
    };
    let serves = |svc, b| {
        let (addr, port) = endpoint(b);
        maps.serves(&frontend(svc), addr, port)
    };
    assert!(serves(1, 1));
    assert!(!serves(1, 2), "terminating while a ready one exists");
    assert!(!serves(1, 3), "another frontend's endpoint");
    assert!(serves(2, 3));
    assert!(!serves(9, 3), "no such frontend");
    let wrong_port = maps.serves(&frontend(1), endpoint(1).0, 9090u16.to_be());
    assert!(!wrong_port);
}

/// `model` with ClientIP affinity (`timeout` seconds) on every frontend.
fn sticky(specs: &[Spec], timeout: u32) -> Model {
    let mut m = model(specs);
    for fe in m.frontends.values_mut() {
        fe.policy.affinity_timeout = Some(timeout);
    }
    m
}

#[test]
fn affinity_members_are_the_endpoints_new_connections_use() {
    let m = sticky(&[(10, &[(1, READY), (2, TERMINATING), (3, READY)])], 600);
    let maps = Planner::new().desired(&m);
    let want = "\
svc 10.96.0.10:80/tcp id=1 count=2 has-endpoints affinity
slot 1/0 -> 1
slot 1/1 -> 3
backend 1 10.0.0.1:8080/tcp
backend 2 10.0.0.2:8080/tcp
backend 3 10.0.0.3:8080/tcp
affinity 1/1 timeout=600s
affinity 1/3 timeout=600s
";
    assert_eq!(dump_text(&maps), want);
}

#[test]
fn affinity_members_follow_endpoint_changes_incrementally() {
    let before = sticky(&[(10, &[(1, READY), (2, READY)])], 600);
    let mut planner = Planner::new();
    let applied = planner.desired(&before);
    // Endpoint 1 starts terminating and the timeout changes.
    let after = sticky(&[(10, &[(1, TERMINATING), (2, READY)])], 60);
    let changed: std::collections::BTreeSet<FrontendKey> =
        after.frontends.keys().copied().collect();
    let touched = planner.update(&after, &changed);
    let ops = diff_touched(&applied, planner.current(), &touched);
    let maps = apply_checked(&applied, &ops);
    assert_eq!(maps, Planner::new().desired(&after));
    let members: Vec<_> = maps
        .affinity
        .iter()
        .map(|(m, t)| (m.backend_id, *t))
        .collect();
    assert_eq!(members, vec![(2, 60)]);
}

#[test]
fn a_deleted_frontend_drains_until_the_next_full_sync() {
    let mut planner = Planner::new();
    let before = model(&[(10, &[(1, READY)]), (20, &[(2, READY)])]);
    let applied = planner.desired(&before);
    let after = model(&[(20, &[(2, READY)])]);
    let changed: std::collections::BTreeSet<FrontendKey> =
        before.frontends.keys().copied().collect();
    let touched = planner.update(&after, &changed);
    let ops = diff_touched(&applied, planner.current(), &touched);
    let maps = apply_checked(&applied, &ops);
    let want = "\
svc 10.96.0.10:80/tcp id=1 count=0 draining
svc 10.96.0.20:80/tcp id=2 count=1 has-endpoints
slot 2/0 -> 2
backend 2 10.0.0.2:8080/tcp
";
    assert_eq!(dump_text(&maps), want);
    // Back before the drain ended: the same id, serving again.
    let touched = planner.update(&before, &changed);
    let again = apply_checked(&maps, &diff_touched(&maps, planner.current(), &touched));
    assert_eq!(again.services[&svc_key(10)].service_id, 1);
    assert_eq!(
        again.services[&svc_key(10)].flags & proxy_common::SVC_FLAG_DRAINING,
        0
    );
    // A full sync ends any drain.
    planner.update(&after, &changed);
    assert!(!planner.desired(&after).services.contains_key(&svc_key(10)));
}

/// A restarted agent keeps every id of both families, and IPv6 ids stay
/// in their own range (they share the slot map with IPv4's).
#[test]
fn restore_keeps_the_ids_of_both_families() {
    let specs: [Spec; 3] = [
        (1, &[(1, READY), (2, READY)]),
        (2, &[(1, READY)]),
        (3, &[(3, READY), (4, TERMINATING)]),
    ];
    let m = model_with(&specs, Protocol::Tcp, |svc| svc != 2);
    let desired = Planner::new().desired(&m);
    assert_eq!(desired.services.len(), 1);
    assert_eq!(desired.services6.len(), 2);
    assert!(
        desired.services6.values().all(|v| v.service_id >= 1 << 31)
            && desired.backends6.keys().all(|id| *id >= 1 << 31)
            && desired.services.values().all(|v| v.service_id < 1 << 31),
        "{desired:?}"
    );
    assert!(check_consistency(&desired).is_empty());
    let mut restored = Planner::restore(&desired);
    assert_eq!(restored.desired(&m), desired);
}

/// `model_with` (every service in IPv6) whose frontends allow `ranges`.
fn ranged6(specs: &[Spec], ranges: &[(&str, u8)]) -> Model {
    let mut m = model_with(specs, Protocol::Tcp, |_| true);
    let ranges: Vec<(std::net::IpAddr, u8)> = ranges
        .iter()
        .map(|&(net, len)| (net.parse().expect("test prefix"), len))
        .collect();
    for fe in m.frontends.values_mut() {
        fe.policy.source_ranges = ranges.clone();
    }
    m
}

#[test]
fn ipv6_source_ranges_fill_their_own_map_and_follow_changes() {
    let before = ranged6(
        &[(10, &[(1, READY)])],
        &[("fd00:244:1::", 64), ("2001:db8::7", 128)],
    );
    let mut planner = Planner::new();
    let applied = apply_checked(
        &MapContents::default(),
        &diff(&MapContents::default(), &planner.desired(&before)),
    );
    let want = "\
svc [fd00:96::a]:80/tcp id=2147483648 count=1 has-endpoints source-ranges
slot 2147483648/0 -> 2147483648
backend 2147483648 [fd00::1]:8080/tcp
source-range 2147483648 2001:db8::7/128
source-range 2147483648 fd00:244:1::/64
";
    assert_eq!(dump_text(&applied), want);
    assert!(applied.source_ranges.is_empty(), "no IPv4 entry");

    // One range goes, another comes: added before, removed after the service.
    let after = ranged6(
        &[(10, &[(1, READY)])],
        &[("fd00:244:1::", 64), ("fd00:244:2::", 64)],
    );
    let changed: std::collections::BTreeSet<FrontendKey> =
        after.frontends.keys().copied().collect();
    let touched = planner.update(&after, &changed);
    let ops = diff_touched(&applied, planner.current(), &touched);
    let id = 1 << 31;
    let net = |s: &str| s.parse::<std::net::Ipv6Addr>().expect("test prefix");
    assert_eq!(
        ops,
        vec![
            MapOp::UpsertSourceRange6((id, net("fd00:244:2::"), 64)),
            MapOp::DeleteSourceRange6((id, net("2001:db8::7"), 128)),
        ]
    );
    let maps = apply_checked(&applied, &ops);
    assert_eq!(maps, Planner::new().desired(&after));

    // The frontend gone: it drains, and its ranges go with its slots.
    let touched = planner.update(&Model::default(), &changed);
    let maps = apply_checked(&maps, &diff_touched(&maps, planner.current(), &touched));
    assert!(maps.source_ranges6.is_empty(), "{maps:?}");
}

#[test]
fn a_restarted_agent_finds_its_ipv6_ranges_in_place() {
    let m = ranged6(&[(10, &[(1, READY)]), (11, &[])], &[("2001:db8::", 32)]);
    let applied = Planner::new().desired(&m);
    assert_eq!(applied.source_ranges6.len(), 2);
    let mut restored = Planner::restore(&applied);
    assert_eq!(diff(&applied, &restored.desired(&m)), Vec::<MapOp>::new());
}

#[test]
fn checker_catches_a_service_checking_ranges_it_lacks() {
    let m = ranged6(&[(10, &[(1, READY)])], &[("2001:db8::", 32)]);
    let maps = Planner::new().desired(&m);
    assert!(check_consistency(&maps).is_empty());
    let mut no_range = maps.clone();
    no_range.source_ranges6.clear();
    assert_eq!(check_consistency(&no_range).len(), 1, "IPv6");
    // An IPv4 service's ranges are looked for in the IPv4 map only.
    let mut elsewhere = no_range.clone();
    let (&key6, &value) = maps.services6.iter().next().expect("one frontend");
    elsewhere.services6.remove(&key6);
    elsewhere.services.insert(svc_key(10), value);
    elsewhere.source_ranges6 = maps.source_ranges6.clone();
    assert_eq!(check_consistency(&elsewhere).len(), 1, "IPv4");
}

/// IPv6 clients' affinities lead only where the shared member map says, so
/// an IPv6 endpoint or frontend leaving takes its members with it, as an
/// IPv4 one does.
#[test]
fn ipv6_affinity_members_go_with_their_endpoint_and_frontend() {
    let sticky6 = |backends: &[(u8, Conditions)]| {
        let mut m = model_with(&[(10, backends)], Protocol::Tcp, |_| true);
        for fe in m.frontends.values_mut() {
            fe.policy.affinity_timeout = Some(600);
        }
        m
    };
    let mut planner = Planner::new();
    let applied = planner.desired(&sticky6(&[(1, READY), (2, READY)]));
    let members =
        |maps: &MapContents| -> Vec<AffinityMember> { maps.affinity.keys().copied().collect() };
    let id = 1 << 31;
    assert_eq!(
        members(&applied),
        [1, 2].map(|b| AffinityMember {
            service_id: id,
            backend_id: id + b - 1,
        })
    );
    let changed: std::collections::BTreeSet<FrontendKey> = applied_frontends(&applied).collect();
    let touched = planner.update(&sticky6(&[(1, READY)]), &changed);
    let maps = apply_checked(
        &applied,
        &diff_touched(&applied, planner.current(), &touched),
    );
    assert_eq!(members(&maps).len(), 1, "{maps:?}");
    let touched = planner.update(&Model::default(), &changed);
    let maps = apply_checked(&maps, &diff_touched(&maps, planner.current(), &touched));
    assert!(maps.affinity.is_empty(), "{maps:?}");
}

/// The model keys of the IPv6 frontends in `maps`.
fn applied_frontends(maps: &MapContents) -> impl Iterator<Item = FrontendKey> + '_ {
    maps.services6.keys().map(|k| FrontendKey {
        ip: k.ip().into(),
        port: k.port(),
        protocol: Protocol::Tcp,
        scope: Default::default(),
    })
}

mod maglev;
