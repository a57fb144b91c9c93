//! A change of this node's zone reaches the maps through the incremental
//! path: the builder recomputes the Services whose endpoints carry zone
//! hints (and only those), and the planner rewrites their slots.

use std::collections::BTreeSet;

use proxy_common::ServiceKey;

use super::super::*;
use super::harness::{CLUSTER, Labels, endpoint_slice, ep, node, options, service};
use crate::plan::Planner;

/// The `ip:port` each slot of `key` points at in the planner's contents.
fn slots(planner: &Planner, key: &FrontendKey) -> Vec<String> {
    let maps = planner.current();
    let std::net::IpAddr::V4(ip) = key.ip else {
        return Vec::new();
    };
    let skey = ServiceKey::scoped(ip, key.port, key.protocol.number(), key.scope.number());
    let Some(value) = maps.services.get(&skey) else {
        return Vec::new();
    };
    (0..u32::from(value.backend_count))
        .map(|slot| {
            let slot_key = proxy_common::SlotKey {
                service_id: value.service_id,
                slot,
            };
            let backend = maps.backends[&maps.slots[&slot_key]];
            format!("{}:{}", backend.ip(), backend.port())
        })
        .collect()
}

/// A second Service with endpoints but no hints: a zone change leaves it be.
fn plain() -> (k8s_openapi::api::core::v1::Service, EndpointSlice) {
    (
        svc("metadata: {name: plain, namespace: ns}
spec: {clusterIP: 172.30.0.42, ports: [{port: 80}]}"),
        slice(
            "metadata: {name: plain-1, namespace: ns, labels: {kubernetes.io/service-name: plain}}
addressType: IPv4
ports: [{port: 80}]
endpoints: [{addresses: [10.9.0.1]}, {addresses: [10.9.0.2]}]",
        ),
    )
}

#[test]
fn zone_change_replans_hinted_services_only() {
    let hinted = service(CLUSTER);
    let hinted_slice = endpoint_slice(&[
        ep("10.1.2.3:80", true).zones(&["zone-a"]),
        ep("10.1.2.4:80", true).zones(&["zone-b"]),
        ep("10.1.2.5:80", true).zones(&["zone-b"]),
    ]);
    let (plain, plain_slice) = plain();
    let key = FrontendKey::internal(ip("172.30.0.41"), 80, Protocol::Tcp);

    let mut builder = ModelBuilder::new(options());
    builder.set_node(Some(&node(Labels::Zone("zone-a"))));
    builder.replace_all([&hinted, &plain], [&hinted_slice, &plain_slice], false);
    builder.commit();
    let mut planner = Planner::new();
    planner.desired(builder.model());
    assert_eq!(slots(&planner, &key), ["10.1.2.3:80"]);

    // The kube source hands the node over with every change: same zone, no work.
    builder.set_node(Some(&node(Labels::Zone("zone-a"))));
    let same = builder.commit();
    assert_eq!((same.services_recomputed, same.changed.len()), (0, 0));

    builder.set_node(Some(&node(Labels::Zone("zone-b"))));
    let moved = builder.commit();
    assert_eq!(moved.services_recomputed, 1, "only the hinted Service");
    assert_eq!(moved.changed, BTreeSet::from([key]));
    let touched = planner.update(builder.model(), &moved.changed);
    assert!(!touched.slots.is_empty());
    assert_eq!(slots(&planner, &key), ["10.1.2.4:80", "10.1.2.5:80"]);
    // The incremental contents are what a full plan of the new model gives.
    let mut fresh = Planner::new();
    fresh.desired(builder.model());
    for key in builder.model().frontends.keys() {
        assert_eq!(slots(&planner, key), slots(&fresh, key), "{key}");
    }

    // A node without the zone label (or no Node at all): every endpoint.
    builder.set_node(None);
    let gone = builder.commit();
    assert_eq!(gone.changed, BTreeSet::from([key]));
    planner.update(builder.model(), &gone.changed);
    assert_eq!(
        slots(&planner, &key),
        ["10.1.2.3:80", "10.1.2.4:80", "10.1.2.5:80"]
    );
    let plain_key = FrontendKey::internal(ip("172.30.0.42"), 80, Protocol::Tcp);
    assert_eq!(slots(&planner, &plain_key), ["10.9.0.1:80", "10.9.0.2:80"]);
}

/// A slice gaining hints is recomputed by its own change, and the zone
/// then in force applies.
#[test]
fn hints_arriving_after_the_zone_apply() {
    let object = ObjectRef {
        kind: Kind::EndpointSlice,
        namespace: "ns".into(),
        name: "svc-1".into(),
    };
    let mut builder = ModelBuilder::new(options());
    builder.set_node(Some(&node(Labels::Zone("zone-b"))));
    let bare = endpoint_slice(&[ep("10.1.2.3:80", true), ep("10.1.2.4:80", true)]);
    builder.replace_all([&service(CLUSTER)], [&bare], false);
    builder.commit();
    let hinted = endpoint_slice(&[
        ep("10.1.2.3:80", true).zones(&["zone-a"]),
        ep("10.1.2.4:80", true).zones(&["zone-b"]),
    ]);
    builder.apply_slice(&object, Some(&hinted));
    let commit = builder.commit();
    assert_eq!(commit.changed.len(), 1);
    let fe = builder.model().frontends.values().next().expect("frontend");
    assert_eq!(backends(fe).1, ["10.1.2.4:80"]);
}
