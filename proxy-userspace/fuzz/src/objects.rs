//! Arbitrary Services, EndpointSlices and Nodes. Fields are drawn mostly from
//! small tables of values the conversion tells apart (so objects collide,
//! join and conflict often), sometimes as any string or number.
use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use k8s_openapi::api::core::v1::{
    ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Node, NodeAddress, NodeStatus,
    ObjectReference, Service, ServicePort, ServiceSpec, ServiceStatus, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForNode, ForZone,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use vipr::model::{LABEL_HEADLESS, LABEL_SERVICE_NAME, LABEL_SERVICE_PROXY_NAME};

/// The fixed objects' namespace: fuzzed objects are kept out of it and sort
/// after it, so they can never legitimately change the fixed frontends.
pub const FIXED_NS: &str = "a-fixed";
/// The agent's proxy name and node in every fuzzed model.
pub const PROXY_NAME: &str = "vipr";
pub const NODE_NAME: &str = "node-a";

const NAMES: &[&str] = &["web", "dns", "db", ""];
const NAMESPACES: &[&str] = &["default", "", "ns1", FIXED_NS];
const IPS: &[&str] = &[
    "10.96.0.10",
    "10.96.0.11",
    "10.96.1.1",
    "192.168.1.10",
    "10.244.1.5",
    "10.244.2.5",
    "010.096.000.010",
    "fd00::1",
    "None",
    "",
    "127.0.0.1",
    "169.254.1.1",
    "224.0.0.1",
    "0.0.0.0",
    "255.255.255.255",
    "10.96.0.256",
];
const TYPES: &[&str] = &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName", "x"];
const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP", "tcp"];
const PORTS: &[i32] = &[80, 53, 443, 8080, 30080, 0, -1, 65536];
const POLICIES: &[&str] = &["Cluster", "Local", "local"];
const CIDRS: &[&str] = &[
    "10.0.0.0/8",
    "192.168.1.0/24",
    "0.0.0.0/0",
    "fd00::/8",
    "1.0.0.0/33",
];
const AFFINITIES: &[&str] = &["None", "ClientIP", "Cookie"];
const DISTRIBUTIONS: &[&str] = &["PreferClose", "PreferSameZone", "PreferSameNode", "x"];
const ADDRESS_TYPES: &[&str] = &["IPv4", "IPv6", "FQDN", "ipv4"];
const NODES: &[&str] = &[NODE_NAME, "node-b", ""];
const ZONES: &[&str] = &["zone-1", "zone-2", ""];
const ADDRESS_KINDS: &[&str] = &["InternalIP", "ExternalIP", "Hostname"];
const IP_MODES: &[&str] = &["VIP", "Proxy"];

/// A string: an index into the field's table, or anything.
#[derive(Arbitrary, Debug, Clone)]
pub enum Text {
    Pick(u8),
    Any(String),
}

impl Text {
    fn get(&self, table: &[&str]) -> String {
        match self {
            Text::Pick(i) => table[usize::from(*i) % table.len()].to_string(),
            Text::Any(s) => s.clone(),
        }
    }
}

/// A port number: from the table, or any `i32`.
#[derive(Arbitrary, Debug, Clone)]
pub enum Num {
    Pick(u8),
    Any(i32),
}

impl Num {
    fn get(&self) -> i32 {
        match self {
            Num::Pick(i) => PORTS[usize::from(*i) % PORTS.len()],
            Num::Any(n) => *n,
        }
    }
}

/// An object's namespace and name.
#[derive(Arbitrary, Debug, Clone)]
pub struct Meta {
    pub namespace: Option<Text>,
    pub name: Option<Text>,
    pub proxy_label: Option<Text>,
    pub headless_label: bool,
}

impl Meta {
    pub fn object_meta(&self, extra: Option<(&str, String)>) -> ObjectMeta {
        let mut labels = BTreeMap::new();
        if let Some(proxy) = &self.proxy_label {
            labels.insert(
                LABEL_SERVICE_PROXY_NAME.into(),
                proxy.get(&[PROXY_NAME, "other"]),
            );
        }
        if self.headless_label {
            labels.insert(LABEL_HEADLESS.into(), String::new());
        }
        labels.extend(extra.map(|(k, v)| (k.to_string(), v)));
        ObjectMeta {
            namespace: self
                .namespace
                .as_ref()
                .map(|t| outside_fixed(t.get(NAMESPACES))),
            name: self.name.as_ref().map(|t| t.get(NAMES)),
            labels: (!labels.is_empty()).then_some(labels),
            ..ObjectMeta::default()
        }
    }
}

/// Moves a namespace that would sort at or before the fixed one after it.
fn outside_fixed(ns: String) -> String {
    if ns.is_empty() || ns.as_str() > FIXED_NS {
        ns
    } else {
        format!("~{ns}")
    }
}

#[derive(Arbitrary, Debug, Clone)]
pub struct FuzzPort {
    name: Option<Text>,
    port: Num,
    protocol: Option<Text>,
    node_port: Option<Num>,
    target_port: Option<Result<Num, Text>>,
}

#[derive(Arbitrary, Debug, Clone)]
pub struct FuzzService {
    pub meta: Meta,
    has_spec: bool,
    type_: Option<Text>,
    cluster_ip: Option<Text>,
    cluster_ips: Option<Vec<Text>>,
    ports: Option<Vec<FuzzPort>>,
    external_ips: Option<Vec<Text>>,
    ingress: Option<Vec<(Option<Text>, Option<Text>)>>,
    external_policy: Option<Text>,
    internal_policy: Option<Text>,
    health_check_node_port: Option<Num>,
    source_ranges: Option<Vec<Text>>,
    affinity: Option<Text>,
    affinity_timeout: Option<i32>,
    distribution: Option<Text>,
}

impl FuzzService {
    pub fn build(&self) -> Service {
        let texts = |v: &Option<Vec<Text>>, table| {
            v.as_ref().map(|v| v.iter().map(|t| t.get(table)).collect())
        };
        let port = |p: &FuzzPort| ServicePort {
            name: p.name.as_ref().map(|t| t.get(NAMES)),
            port: p.port.get(),
            protocol: p.protocol.as_ref().map(|t| t.get(PROTOCOLS)),
            node_port: p.node_port.as_ref().map(Num::get),
            target_port: p.target_port.as_ref().map(|t| match t {
                Ok(n) => IntOrString::Int(n.get()),
                Err(s) => IntOrString::String(s.get(NAMES)),
            }),
            ..ServicePort::default()
        };
        let spec = ServiceSpec {
            type_: self.type_.as_ref().map(|t| t.get(TYPES)),
            cluster_ip: self.cluster_ip.as_ref().map(|t| t.get(IPS)),
            cluster_ips: texts(&self.cluster_ips, IPS),
            ports: self.ports.as_ref().map(|ps| ps.iter().map(port).collect()),
            external_ips: texts(&self.external_ips, IPS),
            external_traffic_policy: self.external_policy.as_ref().map(|t| t.get(POLICIES)),
            internal_traffic_policy: self.internal_policy.as_ref().map(|t| t.get(POLICIES)),
            health_check_node_port: self.health_check_node_port.as_ref().map(Num::get),
            load_balancer_source_ranges: texts(&self.source_ranges, CIDRS),
            session_affinity: self.affinity.as_ref().map(|t| t.get(AFFINITIES)),
            session_affinity_config: self.affinity_timeout.map(|t| SessionAffinityConfig {
                client_ip: Some(ClientIPConfig {
                    timeout_seconds: Some(t),
                }),
            }),
            traffic_distribution: self.distribution.as_ref().map(|t| t.get(DISTRIBUTIONS)),
            ..ServiceSpec::default()
        };
        let ingress = |(ip, mode): &(Option<Text>, Option<Text>)| LoadBalancerIngress {
            ip: ip.as_ref().map(|t| t.get(IPS)),
            ip_mode: mode.as_ref().map(|t| t.get(IP_MODES)),
            ..LoadBalancerIngress::default()
        };
        Service {
            metadata: self.meta.object_meta(None),
            spec: self.has_spec.then_some(spec),
            status: self.ingress.as_ref().map(|i| ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(i.iter().map(ingress).collect()),
                }),
                ..ServiceStatus::default()
            }),
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
pub struct FuzzEndpoint {
    addresses: Vec<Text>,
    conditions: Option<(Option<bool>, Option<bool>, Option<bool>)>,
    node_name: Option<Text>,
    zone: Option<Text>,
    hints: Option<(Vec<Text>, Vec<Text>)>,
    target: Option<(Option<String>, Option<Text>)>,
}

/// An EndpointSlice port: name, number, protocol.
#[derive(Arbitrary, Debug, Clone)]
pub struct FuzzSlicePort(Option<Text>, Option<Num>, Option<Text>);

#[derive(Arbitrary, Debug, Clone)]
pub struct FuzzSlice {
    pub meta: Meta,
    service_label: Option<Text>,
    address_type: Text,
    ports: Option<Vec<FuzzSlicePort>>,
    endpoints: Vec<FuzzEndpoint>,
}

impl FuzzSlice {
    pub fn build(&self) -> EndpointSlice {
        let endpoint = |e: &FuzzEndpoint| Endpoint {
            addresses: e.addresses.iter().map(|t| t.get(IPS)).collect(),
            conditions: e
                .conditions
                .map(|(ready, serving, terminating)| EndpointConditions {
                    ready,
                    serving,
                    terminating,
                }),
            node_name: e.node_name.as_ref().map(|t| t.get(NODES)),
            zone: e.zone.as_ref().map(|t| t.get(ZONES)),
            hints: e.hints.as_ref().map(|(zones, nodes)| EndpointHints {
                for_zones: Some(
                    zones
                        .iter()
                        .map(|z| ForZone { name: z.get(ZONES) })
                        .collect(),
                ),
                for_nodes: Some(
                    nodes
                        .iter()
                        .map(|n| ForNode { name: n.get(NODES) })
                        .collect(),
                ),
            }),
            target_ref: e.target.as_ref().map(|(kind, name)| ObjectReference {
                kind: kind.clone(),
                name: name.as_ref().map(|t| t.get(NAMES)),
                ..ObjectReference::default()
            }),
            ..Endpoint::default()
        };
        let port = |FuzzSlicePort(name, port, protocol): &FuzzSlicePort| EndpointPort {
            name: name.as_ref().map(|t| t.get(NAMES)),
            port: port.as_ref().map(Num::get),
            protocol: protocol.as_ref().map(|t| t.get(PROTOCOLS)),
            ..EndpointPort::default()
        };
        let label = self.service_label.as_ref().map(|t| t.get(NAMES));
        EndpointSlice {
            metadata: self
                .meta
                .object_meta(label.map(|l| (LABEL_SERVICE_NAME, l))),
            address_type: self.address_type.get(ADDRESS_TYPES),
            ports: self.ports.as_ref().map(|ps| ps.iter().map(port).collect()),
            endpoints: self.endpoints.iter().map(endpoint).collect(),
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
pub struct FuzzNode {
    name: Text,
    zone: Option<Text>,
    addresses: Vec<(Text, Text)>,
}

impl FuzzNode {
    pub fn build(&self) -> Node {
        let labels = self
            .zone
            .as_ref()
            .map(|z| BTreeMap::from([(vipr::model::node::LABEL_ZONE.to_string(), z.get(ZONES))]));
        let address = |(kind, ip): &(Text, Text)| NodeAddress {
            type_: kind.get(ADDRESS_KINDS),
            address: ip.get(IPS),
        };
        Node {
            metadata: ObjectMeta {
                name: Some(self.name.get(NODES)),
                labels,
                ..ObjectMeta::default()
            },
            status: Some(NodeStatus {
                addresses: Some(self.addresses.iter().map(address).collect()),
                ..NodeStatus::default()
            }),
            ..Node::default()
        }
    }
}
