//! Why objects, or parts of them, are left out or not used as written:
//! reported (listed in the model, counted by label), never errors.

use std::fmt;
use std::net::IpAddr;

use super::ip::SpecialIp;
use super::{FrontendKey, HintsUnused, LABEL_HEADLESS, LABEL_SERVICE_NAME, ObjectRef, Protocol};

/// Why a valid object (or part of one) produces no frontend or backend, or
/// is not used as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// `clusterIP: None`.
    Headless,
    /// Carries the `service.kubernetes.io/headless` label.
    HeadlessLabel,
    ExternalName,
    /// Labelled for another proxy (the label's value).
    OtherProxy(String),
    /// No cluster IP allocated (manifests written without one).
    NoClusterIp,
    Ipv6ClusterIp(String),
    /// Service port with protocol SCTP (its index in spec.ports).
    Sctp {
        port_index: usize,
    },
    /// EndpointSlice address types other than IPv4 (IPv6, FQDN).
    AddressType(String),
    /// EndpointSlice without the `kubernetes.io/service-name` label.
    NoServiceNameLabel,
    /// Another Service (sorted first by namespace/name) already owns this frontend.
    FrontendConflict {
        key: FrontendKey,
        owner: ObjectRef,
    },
    /// `spec.trafficDistribution` with a value this proxy does not know.
    UnknownTrafficDistribution(String),
    /// A Service port's topology hints do not apply on this node (all its
    /// endpoints take new connections, as with kube-proxy).
    TopologyUnused {
        port: u16,
        protocol: Protocol,
        why: HintsUnused,
    },
    /// A cluster IP, external IP, LoadBalancer IP or endpoint address (at
    /// `field`) that would reach or capture the node's own services: that
    /// address alone is left out, the rest of the object is served.
    SpecialAddress {
        field: String,
        ip: IpAddr,
        class: SpecialIp,
    },
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Headless => write!(f, "headless (clusterIP None)"),
            SkipReason::HeadlessLabel => write!(f, "labelled {LABEL_HEADLESS}"),
            SkipReason::ExternalName => write!(f, "type ExternalName"),
            SkipReason::OtherProxy(p) => write!(f, "handled by proxy {p:?}"),
            SkipReason::NoClusterIp => write!(f, "no cluster IP allocated"),
            SkipReason::Ipv6ClusterIp(ip) => write!(f, "IPv6 cluster IP {ip} not supported"),
            SkipReason::Sctp { port_index } => {
                write!(f, "spec.ports[{port_index}]: SCTP not supported")
            }
            SkipReason::AddressType(t) => write!(f, "addressType {t} not supported"),
            SkipReason::NoServiceNameLabel => write!(f, "no {LABEL_SERVICE_NAME} label"),
            SkipReason::FrontendConflict { key, owner } => {
                write!(f, "frontend {key} already used by {owner}")
            }
            SkipReason::UnknownTrafficDistribution(v) => write!(
                f,
                "spec.trafficDistribution: {v:?} is not PreferClose, PreferSameZone or PreferSameNode; ignored"
            ),
            SkipReason::TopologyUnused {
                port,
                protocol,
                why,
            } => write!(f, "port {port}/{protocol}: topology hints not used: {why}"),
            SkipReason::SpecialAddress { field, ip, class } => {
                write!(f, "{field}: {ip} is {}; not served", class.describe(*ip))
            }
        }
    }
}

impl SkipReason {
    /// A short stable name, for counters.
    pub fn label(&self) -> &'static str {
        match self {
            SkipReason::Headless => "headless",
            SkipReason::HeadlessLabel => "headless-label",
            SkipReason::ExternalName => "external-name",
            SkipReason::OtherProxy(_) => "other-proxy",
            SkipReason::NoClusterIp => "no-cluster-ip",
            SkipReason::Ipv6ClusterIp(_) => "ipv6-cluster-ip",
            SkipReason::Sctp { .. } => "sctp",
            SkipReason::AddressType(t) if t == "IPv6" => "ipv6-address-type",
            SkipReason::AddressType(_) => "address-type",
            SkipReason::NoServiceNameLabel => "no-service-name",
            SkipReason::FrontendConflict { .. } => "frontend-conflict",
            SkipReason::UnknownTrafficDistribution(_) => "traffic-distribution",
            SkipReason::TopologyUnused { .. } => "topology-unused",
            SkipReason::SpecialAddress { class, .. } => class.label(),
        }
    }

    /// Why `ip`, found at `field`, may not be used, if it is a special
    /// address. `field` is only formatted then: slices hold many endpoints.
    pub(super) fn special_address(ip: IpAddr, field: impl FnOnce() -> String) -> Option<Self> {
        SpecialIp::of(ip).map(|class| SkipReason::SpecialAddress {
            field: field(),
            ip,
            class,
        })
    }
}

/// A skipped object or part of one, reported but not an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub object: ObjectRef,
    pub reason: SkipReason,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.reason)
    }
}
