//! This node's `Node`: the addresses and topology labels a proxy needs
//! (node ports, topology-aware routing). Pure.

use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::Node;

/// Well-known topology labels.
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
pub const LABEL_REGION: &str = "topology.kubernetes.io/region";
pub const LABEL_HOSTNAME: &str = "kubernetes.io/hostname";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeModel {
    pub name: String,
    /// `InternalIP` / `ExternalIP` IPv4 addresses in status order.
    pub addresses: Vec<NodeAddress>,
    /// IPv6 addresses left out (dual-stack nodes), counted for the log.
    pub ipv6_skipped: usize,
    pub zone: Option<String>,
    pub region: Option<String>,
    pub hostname: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAddress {
    /// `InternalIP` or `ExternalIP`.
    pub kind: String,
    pub ip: Ipv4Addr,
}

/// Reduces a Node to [`NodeModel`]. Never fails: an unparsable address is
/// left out (the kubelet writes these, and nothing else depends on them yet).
pub fn convert_node(node: &Node) -> NodeModel {
    let label = |key: &str| {
        node.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(key))
            .cloned()
    };
    let mut model = NodeModel {
        name: node.metadata.name.clone().unwrap_or_default(),
        zone: label(LABEL_ZONE),
        region: label(LABEL_REGION),
        hostname: label(LABEL_HOSTNAME),
        ..NodeModel::default()
    };
    let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    for a in addresses.into_iter().flatten() {
        if a.type_ != "InternalIP" && a.type_ != "ExternalIP" {
            continue;
        }
        match a.address.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => model.addresses.push(NodeAddress {
                kind: a.type_.clone(),
                ip,
            }),
            Ok(IpAddr::V6(_)) => model.ipv6_skipped += 1,
            Err(_) => {}
        }
    }
    model
}
