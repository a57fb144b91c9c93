//! The name index: what the pinned maps' addresses and ids are in
//! Kubernetes terms (Service, port name, type, endpoint conditions). The
//! agent writes it as JSON in its state directory whenever the model moved
//! (at most every few seconds); `vipr service list` and `vipr conntrack
//! list` read it beside the pins, so they work without the API server.
//! Building it is pure; the agent and the CLI do the file IO.
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize};

use crate::model::{Frontend, Model, Scope};

/// Where an agent pinned at `pin_dir` keeps its name index: bpffs holds
/// only BPF objects, so the file lives in `state_dir`, named after the pins.
pub fn index_path(state_dir: &Path, pin_dir: &Path) -> PathBuf {
    let pins = pin_dir
        .file_name()
        .map_or_else(|| "vipr".into(), |n| n.to_string_lossy().into_owned());
    state_dir.join(format!("{pins}.names.json"))
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameIndex {
    pub frontends: Vec<FrontendNames>,
}

/// One frontend as the model made it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontendNames {
    pub ip: IpAddr,
    pub port: u16,
    /// "tcp" or "udp".
    pub protocol: String,
    /// "internal" (pods and the node) or "external" (from outside).
    pub scope: String,
    /// namespace/name of the Service.
    pub service: String,
    /// The Service port's name ("" when unnamed).
    pub port_name: String,
    /// ClusterIP, NodePort, LoadBalancer or ExternalIP.
    #[serde(rename = "type")]
    pub kind: String,
    pub affinity_timeout: Option<u32>,
    pub backends: Vec<EndpointNames>,
}

/// One endpoint behind a frontend, with its conditions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointNames {
    pub ip: IpAddr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// On this node.
    pub local: bool,
    pub node: Option<String>,
    /// kind/namespace/name of what the endpoint is (usually a Pod).
    pub target: Option<String>,
}

pub fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::Internal => "internal",
        Scope::External => "external",
    }
}

/// The name index of a model, serialized one frontend at a time: at
/// 100,000 Services a whole owned copy would be a second model.
pub struct ModelNames<'a>(pub &'a Model);

impl Serialize for ModelNames<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut index = serializer.serialize_struct("NameIndex", 1)?;
        index.serialize_field("frontends", &Frontends(self.0))?;
        index.end()
    }
}

struct Frontends<'a>(&'a Model);

impl Serialize for Frontends<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.frontends.values().map(FrontendNames::of))
    }
}

impl FrontendNames {
    pub fn of(fe: &Frontend) -> Self {
        Self {
            ip: fe.key.ip,
            port: fe.key.port,
            protocol: fe.key.protocol.to_string(),
            scope: scope_name(fe.key.scope).into(),
            service: format!("{}/{}", fe.service.namespace, fe.service.name),
            port_name: fe.port_name.to_string(),
            kind: fe.kind.as_str().into(),
            affinity_timeout: fe.policy.affinity_timeout,
            backends: fe
                .backends
                .iter()
                .map(|b| EndpointNames {
                    ip: b.ip,
                    port: b.port,
                    ready: b.conditions.ready,
                    serving: b.conditions.serving,
                    terminating: b.conditions.terminating,
                    local: b.local,
                    node: b.node_name.as_ref().map(|n| n.to_string()),
                    target: b.target.as_ref().map(|t| t.to_string()),
                })
                .collect(),
        }
    }
}

impl NameIndex {
    /// The frontend at (ip, port, protocol, scope), if the index has it.
    pub fn frontend(
        &self,
        ip: IpAddr,
        port: u16,
        protocol: &str,
        scope: &str,
    ) -> Option<&FrontendNames> {
        self.frontends
            .iter()
            .find(|f| f.ip == ip && f.port == port && f.protocol == protocol && f.scope == scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelBuilder, ModelOptions};
    use crate::source::manifests::parse_str;

    #[test]
    fn the_index_names_each_frontend_and_reads_back() {
        let yaml = include_str!("../testdata/golden/external.yaml");
        let parsed = parse_str(yaml).expect("golden YAML parses");
        let options = ModelOptions {
            node_name: Some("node1".into()),
            nodeport_addresses: vec![std::net::Ipv4Addr::new(172, 30, 0, 1).into()],
            ..ModelOptions::default()
        };
        let (model, _) =
            ModelBuilder::new(options).update(&parsed.services, &parsed.endpoint_slices);
        let text = serde_json::to_string(&ModelNames(&model)).expect("serializes");
        let index: NameIndex = serde_json::from_str(&text).expect("reads back");
        assert_eq!(index.frontends.len(), model.frontends.len());
        for (fe, named) in model.frontends.values().zip(&index.frontends) {
            assert_eq!(named, &FrontendNames::of(fe));
            let found = index.frontend(fe.key.ip, fe.key.port, &named.protocol, &named.scope);
            assert_eq!(found, Some(named));
        }
        assert!(
            index
                .frontends
                .iter()
                .any(|f| f.kind == "NodePort" && f.scope == "external"),
            "{text}"
        );
    }
}
