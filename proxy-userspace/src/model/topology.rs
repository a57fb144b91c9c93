//! Topology-aware routing with kube-proxy's rules (its CategorizeEndpoints).
//!
//! Under a Cluster policy, new connections prefer the endpoints hinted for
//! this node (`hints.forNodes`), else for this node's zone (`hints.forZones`),
//! but only when every ready endpoint carries such a hint and at least one
//! names this node (zone); otherwise every endpoint is used. Local policies
//! never look at hints.
//!
//! Like kube-proxy, the choice trusts the hints alone: `spec.trafficDistribution`
//! tells the EndpointSlice controller to write them, and for a value it does
//! not know it writes none, so an unknown value means no topology. Pure.

use std::fmt;

use k8s_openapi::api::discovery::v1::EndpointHints;

use super::{Backend, Name, ServiceModel, ServicePortModel, SkipReason};

/// `spec.trafficDistribution` (PreferClose is the older name of PreferSameZone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrafficDistribution {
    PreferClose,
    PreferSameZone,
    PreferSameNode,
}

/// The field's value, or why it is ignored. Newer API servers may know values
/// this proxy does not, so an unknown one is reported, not an error.
pub(super) fn traffic_distribution(
    raw: Option<&str>,
) -> Result<Option<TrafficDistribution>, SkipReason> {
    match raw {
        None => Ok(None),
        Some("PreferClose") => Ok(Some(TrafficDistribution::PreferClose)),
        Some("PreferSameZone") => Ok(Some(TrafficDistribution::PreferSameZone)),
        Some("PreferSameNode") => Ok(Some(TrafficDistribution::PreferSameNode)),
        Some(other) => Err(SkipReason::UnknownTrafficDistribution(other.to_string())),
    }
}

/// An endpoint's `hints`: the zones and nodes it should serve first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hints {
    /// `hints.forZones[].name`.
    pub zones: Box<[Name]>,
    /// `hints.forNodes[].name`.
    pub nodes: Box<[Name]>,
}

impl Hints {
    pub(super) fn from_api(hints: Option<&EndpointHints>) -> Self {
        let Some(hints) = hints else {
            return Self::default();
        };
        Self {
            zones: hints
                .for_zones
                .iter()
                .flatten()
                .map(|z| super::name::name(z.name.as_str()))
                .collect(),
            nodes: hints
                .for_nodes
                .iter()
                .flatten()
                .map(|n| super::name::name(n.name.as_str()))
                .collect(),
        }
    }
}

/// Which ready endpoints a Cluster-policy frontend offers new connections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Topology {
    /// All of them: no usable hints (kube-proxy's mode "").
    #[default]
    Any,
    /// Those whose `hints.forZones` names this zone.
    SameZone(Name),
    /// Those whose `hints.forNodes` names this node.
    SameNode(Name),
}

impl Topology {
    pub fn admits(&self, backend: &Backend) -> bool {
        match self {
            Topology::Any => true,
            Topology::SameZone(zone) => backend.hints.zones.contains(zone),
            Topology::SameNode(node) => backend.hints.nodes.contains(node),
        }
    }
}

/// Why a port's hints are not used on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HintsUnused {
    /// Some ready endpoints have no zone hint.
    MissingZoneHints {
        missing: usize,
        ready: usize,
    },
    NoZoneLabel,
    NoEndpointForZone(String),
}

impl fmt::Display for HintsUnused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HintsUnused::MissingZoneHints { missing, ready } => write!(
                f,
                "{missing} of {ready} ready endpoints have no hints.forZones"
            ),
            HintsUnused::NoZoneLabel => {
                write!(f, "this node has no {} label", super::node::LABEL_ZONE)
            }
            HintsUnused::NoEndpointForZone(zone) => write!(
                f,
                "no ready endpoint's hints.forZones names this node's zone {zone:?}"
            ),
        }
    }
}

/// The topology of one Service port's Cluster-policy frontends, and a note
/// when hints (or a trafficDistribution asking for them) go unused here.
pub(super) fn for_port(
    svc: &ServiceModel,
    port: &ServicePortModel,
    backends: &[Backend],
    node_name: Option<&str>,
    zone: Option<&str>,
) -> (Topology, Option<SkipReason>) {
    let ext = &svc.external;
    let externally_accessible = port.node_port.is_some()
        || !ext.load_balancer_ips.is_empty()
        || !ext.external_ips.is_empty();
    // kube-proxy computes no topology for a port only Local policies serve.
    if ext.internal_local && !externally_accessible {
        return (Topology::Any, None);
    }
    let (topology, unused) = choose(
        backends,
        node_name,
        zone,
        svc.traffic_distribution.is_some(),
    );
    let note = unused.map(|why| SkipReason::TopologyUnused {
        port: port.port,
        protocol: port.protocol,
        why,
    });
    (topology, note)
}

/// kube-proxy's topologyModeFromHints, over ready endpoints only (with its
/// PreferSameTrafficDistribution gate on, the default since 1.34). A missing
/// node name or zone label compares as "", as there. `HintsUnused` is given only
/// when some hint exists or `asked` (trafficDistribution is set).
fn choose(
    backends: &[Backend],
    node_name: Option<&str>,
    zone: Option<&str>,
    asked: bool,
) -> (Topology, Option<HintsUnused>) {
    let ready: Vec<&Backend> = backends.iter().filter(|b| b.conditions.ready).collect();
    if ready.is_empty() {
        return (Topology::Any, None);
    }
    let node = node_name.unwrap_or("");
    let names = |list: &[Name], name: &str| list.iter().any(|n| &**n == name);
    if ready.iter().all(|b| !b.hints.nodes.is_empty())
        && ready.iter().any(|b| names(&b.hints.nodes, node))
    {
        return (Topology::SameNode(super::name::name(node)), None);
    }
    let zone = zone.unwrap_or("");
    let missing = ready.iter().filter(|b| b.hints.zones.is_empty()).count();
    if missing == 0 && ready.iter().any(|b| names(&b.hints.zones, zone)) {
        return (Topology::SameZone(super::name::name(zone)), None);
    }
    let hinted = ready
        .iter()
        .any(|b| !b.hints.zones.is_empty() || !b.hints.nodes.is_empty());
    if !(hinted || asked) {
        return (Topology::Any, None);
    }
    let why = if missing > 0 {
        HintsUnused::MissingZoneHints {
            missing,
            ready: ready.len(),
        }
    } else if zone.is_empty() {
        HintsUnused::NoZoneLabel
    } else {
        HintsUnused::NoEndpointForZone(zone.to_string())
    };
    (Topology::Any, Some(why))
}
