//! Node hints (PreferSameNode, no kube-proxy table: the rules of its
//! topologyModeFromHints), `spec.trafficDistribution`, and the notes left
//! when hints do not apply here.

use k8s_openapi::api::core::v1::Service;

use super::super::*;
use super::harness::{
    CLUSTER, ETP_NP, Ep, ITP, Labels, NODE, Row, check, endpoint_slice, ep, node, options, row,
    service,
};

const A: &[&str] = &["zone-a"];
const B: &[&str] = &["zone-b"];
const HERE: &[&str] = &[NODE];
const N2: &[&str] = &["node-2"];
const N3: &[&str] = &["node-3"];

#[test]
fn node_hints_for_this_node_win_over_zone_hints() {
    const ZONE: Labels = Labels::Zone("zone-a");
    const ROWS: &[Row] = &[
        row(
            "every ready endpoint has a node hint, one for this node",
            ZONE,
            CLUSTER,
            &[
                ep("10.1.2.3:80", true).zones(A).nodes(HERE),
                ep("10.1.2.4:80", true).zones(A).nodes(N2),
                ep("10.1.2.5:80", true).zones(B).nodes(N3),
            ],
        )
        .cluster(&["10.1.2.3:80"]),
        row(
            "a ready endpoint without a node hint: zone hints decide",
            ZONE,
            CLUSTER,
            &[
                ep("10.1.2.3:80", true).zones(A).nodes(HERE),
                ep("10.1.2.4:80", true).zones(A),
                ep("10.1.2.5:80", true).zones(B).nodes(N3),
            ],
        )
        .cluster(&["10.1.2.3:80", "10.1.2.4:80"]),
        row(
            "no endpoint hinted for this node: zone hints decide",
            ZONE,
            CLUSTER,
            &[
                ep("10.1.2.3:80", true).zones(A).nodes(N2),
                ep("10.1.2.4:80", true).zones(B).nodes(N3),
            ],
        )
        .cluster(&["10.1.2.3:80"]),
        row(
            "only an unready endpoint hinted for this node",
            ZONE,
            CLUSTER,
            &[
                ep("10.1.2.3:80", false).zones(A).nodes(HERE),
                ep("10.1.2.4:80", true).zones(A).nodes(N2),
                ep("10.1.2.5:80", true).zones(B).nodes(N3),
            ],
        )
        .cluster(&["10.1.2.4:80"]),
        row(
            "node hints without zone hints, none for this node: no filtering",
            ZONE,
            CLUSTER,
            &[
                ep("10.1.2.3:80", true).nodes(N2),
                ep("10.1.2.4:80", true).nodes(N3),
            ],
        )
        .cluster(&["10.1.2.3:80", "10.1.2.4:80"]),
        row(
            "Local endpoints ignore node hints",
            ZONE,
            ETP_NP,
            &[
                ep("10.1.2.3:80", true).zones(A).nodes(HERE).local(),
                ep("10.1.2.4:80", true).zones(A).nodes(N2).local(),
                ep("10.1.2.5:80", true).zones(B).nodes(N3),
            ],
        )
        .cluster(&["10.1.2.3:80"])
        .local(&["10.1.2.3:80", "10.1.2.4:80"])
        .all(&["10.1.2.3:80", "10.1.2.4:80"]),
    ];
    for row in ROWS {
        check(row);
    }
}

fn with_distribution(value: &str) -> Service {
    let mut s = service(CLUSTER);
    if let Some(spec) = s.spec.as_mut() {
        spec.traffic_distribution = Some(value.into());
    }
    s
}

/// The model for one Service on a node with `labels`; conversion must succeed.
fn build(svc: &Service, labels: Labels, eps: &[Ep]) -> Model {
    let mut builder = ModelBuilder::new(options());
    builder.set_node(Some(&node(labels)));
    let (m, errors) = builder.update(std::slice::from_ref(svc), &[endpoint_slice(eps)]);
    assert!(errors.is_empty(), "{errors:?}");
    m
}

fn notes(m: &Model) -> Vec<String> {
    m.skipped.iter().map(ToString::to_string).collect()
}

#[test]
fn traffic_distribution_values_are_parsed() {
    let opts = options();
    for (raw, want) in [
        ("PreferClose", TrafficDistribution::PreferClose),
        ("PreferSameZone", TrafficDistribution::PreferSameZone),
        ("PreferSameNode", TrafficDistribution::PreferSameNode),
    ] {
        let got = convert_service(&with_distribution(raw), &opts).expect("valid");
        assert_eq!(got.traffic_distribution, Some(want), "{raw}");
        assert!(got.skipped.is_empty(), "{raw}: {:?}", got.skipped);
    }
    let plain = convert_service(&service(CLUSTER), &opts).expect("valid");
    assert_eq!(plain.traffic_distribution, None);
}

/// An unknown value is reported, not an error, and the hints decide as
/// before (the EndpointSlice controller writes none for such a value).
#[test]
fn unknown_traffic_distribution_is_reported_and_ignored() {
    let eps = [
        ep("10.1.2.3:80", true).zones(A),
        ep("10.1.2.4:80", true).zones(B),
    ];
    let m = build(
        &with_distribution("PreferFaraway"),
        Labels::Zone("zone-a"),
        &eps,
    );
    assert_eq!(
        notes(&m),
        [
            "Service ns/svc: spec.trafficDistribution: \"PreferFaraway\" is not PreferClose, \
             PreferSameZone or PreferSameNode; ignored"
        ]
    );
    let fe = m.frontends.values().next().expect("frontend");
    assert_eq!(backends(fe).1, ["10.1.2.3:80"]);
    assert_eq!(fe.topology, Topology::SameZone("zone-a".into()));
}

#[test]
fn hints_unused_here_are_noted_on_the_service() {
    let zoned = [
        ep("10.1.2.3:80", true).zones(A),
        ep("10.1.2.4:80", true).zones(B),
    ];
    let plain = service(CLUSTER);
    let note = |m: &Model| notes(m).join("\n");
    let prefix = "Service ns/svc: port 80/tcp: topology hints not used: ";
    assert_eq!(
        note(&build(&plain, Labels::Zone("zone-c"), &zoned)),
        format!("{prefix}no ready endpoint's hints.forZones names this node's zone \"zone-c\"")
    );
    assert_eq!(
        note(&build(&plain, Labels::Empty, &zoned)),
        format!("{prefix}this node has no topology.kubernetes.io/zone label")
    );
    // Hand-written manifests asking for topology but carrying no hints.
    let bare = [ep("10.1.2.3:80", true), ep("10.1.2.4:80", false)];
    assert_eq!(
        note(&build(
            &with_distribution("PreferClose"),
            Labels::Zone("zone-a"),
            &bare
        )),
        format!("{prefix}1 of 1 ready endpoints have no hints.forZones")
    );
    // Nothing asked, nothing hinted, or hints in use: nothing to say.
    assert_eq!(note(&build(&plain, Labels::Zone("zone-a"), &bare)), "");
    assert_eq!(note(&build(&plain, Labels::Zone("zone-a"), &zoned)), "");
    let counts = {
        let mut builder = ModelBuilder::new(options());
        builder.set_node(Some(&node(Labels::Zone("zone-c"))));
        builder.update(std::slice::from_ref(&plain), &[endpoint_slice(&zoned)]);
        builder.skip_counts().clone()
    };
    assert_eq!(counts.get("topology-unused"), Some(&1));
}

/// A port only Local policies serve never consults hints, so says nothing.
#[test]
fn local_only_ports_have_no_topology() {
    let eps = [ep("10.1.2.3:80", true).zones(B).local()];
    let m = build(&service(ITP), Labels::Zone("zone-a"), &eps);
    assert!(m.skipped.is_empty(), "{:?}", m.skipped);
    let fe = m.frontends.values().next().expect("frontend");
    assert_eq!(fe.topology, Topology::Any);
    assert_eq!(backends(fe).1, ["10.1.2.3:80"]);
}

/// Only the Node named like this node counts; another is as none.
#[test]
fn another_nodes_node_object_is_ignored() {
    let mut other = node(Labels::Zone("zone-a"));
    other.metadata.name = Some("node-2".into());
    let mut builder = ModelBuilder::new(options());
    builder.set_node(Some(&other));
    assert_eq!(builder.model().node, None);
    builder.set_node(Some(&node(Labels::Zone("zone-a"))));
    let zone = builder.model().node.as_ref().and_then(|n| n.zone.clone());
    assert_eq!(zone.as_deref(), Some("zone-a"));
}
