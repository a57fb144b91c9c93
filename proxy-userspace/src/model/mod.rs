//! Pure conversion of Kubernetes `Service`s and `EndpointSlice`s into the
//! frontends and backends vipr programs, with kube-proxy's semantics for
//! ClusterIP, IPv4, TCP and UDP.
//!
//! Three steps, each pure except the last which keeps history:
//! - [`convert_service`] / [`convert_slice`]: validate one object, normalise it;
//! - [`build_model`]: join slices to services and pick backends per frontend;
//! - [`ModelBuilder`]: remembers the last valid version of every object so an
//!   invalid update never un-programs what was working.

mod affinity;
mod build;
mod builder;
mod error;
mod external;
mod frontends;
mod index;
pub mod ip;
mod lb_algorithm;
pub mod name;
pub mod node;
mod service;
mod skip;
mod slice;
#[cfg(test)]
mod tests;
mod topology;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

pub use build::build_model;
pub use builder::{Commit, Converted, Counts, ModelBuilder, ModelOptions};
pub use error::ConversionError;
pub use lb_algorithm::{ANNOTATION_LB_ALGORITHM, LbAlgorithm};
pub use name::{Name, Unique};
pub use node::{NodeAddress, NodeModel, convert_node};
pub use service::{ExternalModel, ServiceModel, ServicePortModel, convert_service};
pub use skip::{SkipReason, Skipped};
pub use slice::{EndpointModel, SliceModel, SlicePortModel, Triggered, convert_slice};
pub use topology::{Hints, HintsUnused, Topology, TrafficDistribution};

/// Label naming the proxy that should handle a Service (absent: the default proxy).
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Label the control plane puts on headless Services' objects.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// Label joining an EndpointSlice to its Service (same namespace).
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

/// The two object kinds the model reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    EndpointSlice,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
        })
    }
}

/// Identity of an input object: kind + namespace/name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: Kind,
    pub namespace: Name,
    pub name: Unique,
}

impl ObjectRef {
    /// The identity `meta` gives an object of `kind` (namespace defaulted);
    /// an error when it has no name.
    pub fn of(
        kind: Kind,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    ) -> Result<Self, ConversionError> {
        service::object_ref(kind, meta)
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// Load-balanced transport protocols.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// IANA protocol number, as the maps store it.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => proxy_common::IPPROTO_TCP,
            Protocol::Udp => proxy_common::IPPROTO_UDP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// Endpoint conditions with the API's defaults applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conditions {
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl Conditions {
    /// kube-proxy defaults: ready unset ⇒ true, serving unset ⇒ ready, terminating unset ⇒ false.
    pub fn from_api(ready: Option<bool>, serving: Option<bool>, terminating: Option<bool>) -> Self {
        let ready = ready.unwrap_or(true);
        Self {
            ready,
            serving: serving.unwrap_or(ready),
            terminating: terminating.unwrap_or(false),
        }
    }

    /// Preference when the same endpoint appears twice: ready, then
    /// serving-terminating, then anything else.
    pub(crate) fn rank(self) -> u8 {
        if self.ready {
            2
        } else if self.serving && self.terminating {
            1
        } else {
            0
        }
    }
}

/// Which traffic a frontend answers: what pods send, or what arrives on the
/// node's external interfaces. A LoadBalancer IP has one of each, with
/// different endpoint sets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    #[default]
    Internal,
    External,
}

impl Scope {
    /// As the maps store it.
    pub fn number(self) -> u8 {
        match self {
            Scope::Internal => proxy_common::SCOPE_INTERNAL,
            Scope::External => proxy_common::SCOPE_EXTERNAL,
        }
    }
}

/// A frontend's identity: where clients send packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrontendKey {
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub scope: Scope,
}

impl FrontendKey {
    /// A frontend for pod traffic (cluster IPs).
    pub fn internal(ip: impl Into<IpAddr>, port: u16, protocol: Protocol) -> Self {
        Self {
            ip: ip.into(),
            port,
            protocol,
            scope: Scope::Internal,
        }
    }
}

impl fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // As a socket address: IPv6 in brackets.
        let at = std::net::SocketAddr::new(self.ip, self.port);
        write!(f, "{at}/{}", self.protocol)?;
        if self.scope == Scope::External {
            f.write_str(" (external)")?;
        }
        Ok(())
    }
}

/// How a frontend treats traffic (traffic policies, masquerade, source ranges).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Only endpoints on this node take new connections (a `Local` policy).
    pub local_only: bool,
    /// Flows to endpoints on other nodes leave with the node's address
    /// (externalTrafficPolicy Cluster).
    pub masquerade: bool,
    /// loadBalancerSourceRanges: allowed client prefixes of the frontend's
    /// family; empty = everyone.
    pub source_ranges: Vec<(IpAddr, u8)>,
    /// Where kube-proxy-style health checks for this frontend's Service are
    /// answered (externalTrafficPolicy Local only).
    pub health_check_node_port: Option<u16>,
    /// `sessionAffinity: ClientIP`: how long (seconds) a client's affinity
    /// to an endpoint outlives its last new connection.
    pub affinity_timeout: Option<u32>,
    /// The Service's `vipr.io/lb-algorithm`; `None`: the agent's default.
    pub lb_algorithm: Option<LbAlgorithm>,
}

/// One endpoint behind a frontend; the protocol is the frontend's. It
/// reads as its endpoint (`backend.ip`, `backend.conditions`, ...), which it
/// shares with the EndpointSlice it came from rather than copying it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub endpoint: Arc<EndpointModel>,
    pub port: u16,
    /// Runs on this node (`nodeName` equals the agent's node name).
    pub local: bool,
}

impl std::ops::Deref for Backend {
    type Target = EndpointModel;
    fn deref(&self) -> &EndpointModel {
        &self.endpoint
    }
}

/// Which field of its Service a frontend's address comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalIp,
}

impl FrontendKind {
    /// The Service type's spelling (`externalIPs` for external IPs).
    pub fn as_str(self) -> &'static str {
        match self {
            FrontendKind::ClusterIp => "ClusterIP",
            FrontendKind::NodePort => "NodePort",
            FrontendKind::LoadBalancer => "LoadBalancer",
            FrontendKind::ExternalIp => "ExternalIP",
        }
    }
}

/// A (cluster IP, port, protocol) of a Service with every endpoint known for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    pub key: FrontendKey,
    pub kind: FrontendKind,
    /// Owning Service (namespace/name) and the name of its port ("" if unnamed).
    pub service: ObjectRef,
    pub port_name: Name,
    /// All known endpoints, any condition, sorted by (ip, port), no duplicates.
    /// Non-active ones stay known so established flows to them keep working.
    pub backends: Vec<Backend>,
    pub policy: Policy,
    /// Which ready endpoints topology hints leave to new connections
    /// (always `Any` with a `Local` policy).
    pub topology: Topology,
}

impl Frontend {
    /// Backends for NEW connections (kube-proxy semantics): the ready ones
    /// `topology` admits; if none, the serving-and-terminating ones anywhere;
    /// else none (the datapath rejects). Keeps the (ip, port) order of `backends`.
    ///
    /// With a `Local` policy the same rule applies to this node's endpoints
    /// only, and hints are never looked at.
    pub fn active_backends(&self) -> Vec<&Backend> {
        let candidates = self
            .backends
            .iter()
            .filter(|b| !self.policy.local_only || b.local);
        let admits = |b: &Backend| self.policy.local_only || self.topology.admits(b);
        let ready: Vec<&Backend> = candidates
            .clone()
            .filter(|b| b.conditions.ready && admits(b))
            .collect();
        if !ready.is_empty() {
            return ready;
        }
        candidates
            .filter(|b| b.conditions.serving && b.conditions.terminating)
            .collect()
    }

    /// Whether any endpoint in the cluster could serve new connections. With
    /// none here but some elsewhere, the datapath drops instead of refusing.
    pub fn has_endpoints_anywhere(&self) -> bool {
        self.backends
            .iter()
            .any(|b| b.conditions.ready || (b.conditions.serving && b.conditions.terminating))
    }
}

/// What the cluster wants, independent of how the datapath programs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    pub frontends: BTreeMap<FrontendKey, Frontend>,
    /// Sorted by object, then in discovery order.
    pub skipped: Vec<Skipped>,
    /// Objects whose current version is invalid and whose last valid version is used.
    pub stale: Vec<ObjectRef>,
    /// This node, when the source knows it (the Kubernetes API does).
    pub node: Option<NodeModel>,
}

impl Model {
    pub fn frontend(
        &self,
        ip: impl Into<IpAddr>,
        port: u16,
        protocol: Protocol,
    ) -> Option<&Frontend> {
        self.frontends
            .get(&FrontendKey::internal(ip, port, protocol))
    }

    /// How many IPv6 cluster IPs were skipped.
    pub fn ipv6_skipped(&self) -> usize {
        self.skipped
            .iter()
            .filter(|s| matches!(s.reason, SkipReason::Ipv6ClusterIp(_)))
            .count()
    }
}
