//! Fixtures for the topology tests: endpoints written as kube-proxy's test
//! table writes them, turned into a Service, an EndpointSlice and this
//! node's Node, and the model's answer read back as kube-proxy's categories.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointHints, EndpointSlice, ForNode, ForZone,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::super::*;

pub(super) const NODE: &str = "test-node";

/// One endpoint as the Go fixture writes it: unset fields are Go's zero
/// values, except `serving`, left to the API default (= ready) unless the
/// row sets it; only rows with ready false can tell the difference, and for
/// those both are false.
#[derive(Clone, Copy)]
pub(super) struct Ep {
    addr: &'static str,
    zones: Option<&'static [&'static str]>,
    nodes: Option<&'static [&'static str]>,
    ready: bool,
    serving: Option<bool>,
    terminating: bool,
    local: bool,
}

pub(super) const fn ep(addr: &'static str, ready: bool) -> Ep {
    Ep {
        addr,
        zones: None,
        nodes: None,
        ready,
        serving: None,
        terminating: false,
        local: false,
    }
}

impl Ep {
    pub(super) const fn zones(self, zones: &'static [&'static str]) -> Self {
        Self {
            zones: Some(zones),
            ..self
        }
    }
    pub(super) const fn nodes(self, nodes: &'static [&'static str]) -> Self {
        Self {
            nodes: Some(nodes),
            ..self
        }
    }
    pub(super) const fn local(self) -> Self {
        Self {
            local: true,
            ..self
        }
    }
    /// `serving` as given, `terminating: true`.
    pub(super) const fn terminating(self, serving: bool) -> Self {
        Self {
            serving: Some(serving),
            terminating: true,
            ..self
        }
    }
    pub(super) const fn not_serving(self) -> Self {
        Self {
            serving: Some(false),
            ..self
        }
    }
}

/// The node's labels: none at all, an empty map, or a zone label.
#[derive(Clone, Copy)]
pub(super) enum Labels {
    Nil,
    Empty,
    Zone(&'static str),
}

/// The service port: internal / external policy Local, and nodePort 8080.
#[derive(Clone, Copy, Default)]
pub(super) struct Svc {
    pub itp_local: bool,
    pub etp_local: bool,
    pub node_port: bool,
}

pub(super) const CLUSTER: Svc = Svc {
    itp_local: false,
    etp_local: false,
    node_port: false,
};
pub(super) const ITP: Svc = Svc {
    itp_local: true,
    ..CLUSTER
};
pub(super) const ITP_NP: Svc = Svc {
    node_port: true,
    ..ITP
};
pub(super) const ETP_NP: Svc = Svc {
    etp_local: true,
    node_port: true,
    ..CLUSTER
};
pub(super) const BOTH_NP: Svc = Svc {
    itp_local: true,
    ..ETP_NP
};

pub(super) struct Row {
    pub name: &'static str,
    pub labels: Labels,
    pub svc: Svc,
    pub eps: &'static [Ep],
    pub cluster: Option<&'static [&'static str]>,
    pub local: Option<&'static [&'static str]>,
    /// Only given when both sets are; otherwise the one that is.
    pub all: Option<&'static [&'static str]>,
    pub only_remote: bool,
}

pub(super) const fn row(name: &'static str, labels: Labels, svc: Svc, eps: &'static [Ep]) -> Row {
    Row {
        name,
        labels,
        svc,
        eps,
        cluster: None,
        local: None,
        all: None,
        only_remote: false,
    }
}

impl Row {
    pub(super) const fn cluster(self, set: &'static [&'static str]) -> Self {
        Self {
            cluster: Some(set),
            ..self
        }
    }
    pub(super) const fn local(self, set: &'static [&'static str]) -> Self {
        Self {
            local: Some(set),
            ..self
        }
    }
    pub(super) const fn all(self, set: &'static [&'static str]) -> Self {
        Self {
            all: Some(set),
            ..self
        }
    }
    pub(super) const fn only_remote(self) -> Self {
        Self {
            only_remote: true,
            ..self
        }
    }
}

pub(super) fn service(port: Svc) -> Service {
    let policy = |local| if local { "Local" } else { "Cluster" };
    svc(&format!(
        "metadata: {{name: svc, namespace: ns}}
spec:
  type: {}
  clusterIP: 172.30.0.41
  internalTrafficPolicy: {}
  externalTrafficPolicy: {}
  ports: [{{port: 80{}}}]",
        if port.node_port {
            "NodePort"
        } else {
            "ClusterIP"
        },
        policy(port.itp_local),
        policy(port.etp_local),
        if port.node_port {
            ", nodePort: 8080"
        } else {
            ""
        },
    ))
}

pub(super) fn endpoint_slice(eps: &[Ep]) -> EndpointSlice {
    let mut slice = slice(
        "metadata: {name: svc-1, namespace: ns, labels: {kubernetes.io/service-name: svc}}
addressType: IPv4
ports: [{port: 80}]
endpoints: []",
    );
    let names = |list: Option<&[&str]>| list.map(|l| l.iter().map(|n| n.to_string()).collect());
    slice.endpoints = eps
        .iter()
        .map(|e| Endpoint {
            addresses: vec![e.addr.trim_end_matches(":80").to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(e.ready),
                serving: e.serving,
                terminating: Some(e.terminating),
            }),
            node_name: e.local.then(|| NODE.to_string()),
            hints: (e.zones.is_some() || e.nodes.is_some()).then(|| EndpointHints {
                for_zones: names(e.zones)
                    .map(|v: Vec<String>| v.into_iter().map(|name| ForZone { name }).collect()),
                for_nodes: names(e.nodes)
                    .map(|v: Vec<String>| v.into_iter().map(|name| ForNode { name }).collect()),
            }),
            ..Endpoint::default()
        })
        .collect();
    slice
}

pub(super) fn node(labels: Labels) -> Node {
    let labels = match labels {
        Labels::Nil => None,
        Labels::Empty => Some(Default::default()),
        Labels::Zone(z) => {
            Some([(crate::model::node::LABEL_ZONE.to_string(), z.to_string())].into())
        }
    };
    Node {
        metadata: ObjectMeta {
            name: Some(NODE.into()),
            labels,
            ..ObjectMeta::default()
        },
        ..Node::default()
    }
}

pub(super) fn options() -> ModelOptions {
    ModelOptions {
        node_name: Some(NODE.into()),
        nodeport_addresses: vec![ip("192.168.0.2").into()],
        ..ModelOptions::default()
    }
}

/// What kube-proxy's CategorizeEndpoints would return, read off the model.
pub(super) struct Categorized {
    pub cluster: Option<BTreeSet<String>>,
    pub local: Option<BTreeSet<String>>,
    pub has_any: bool,
}

pub(super) fn categorize(row: &Row) -> Categorized {
    let mut builder = ModelBuilder::new(options());
    builder.set_node(Some(&node(row.labels)));
    let (m, errors) = builder.update(&[service(row.svc)], &[endpoint_slice(row.eps)]);
    assert!(errors.is_empty(), "{}: {errors:?}", row.name);
    assert!(!m.frontends.is_empty(), "{}: no frontends", row.name);
    // Every frontend of one policy must offer the same set.
    let offered = |local_only: bool| -> Option<BTreeSet<String>> {
        let mut sets = m
            .frontends
            .values()
            .filter(|fe| fe.policy.local_only == local_only)
            .map(|fe| backends(fe).1.into_iter().collect::<BTreeSet<String>>());
        let first = sets.next()?;
        for other in sets {
            assert_eq!(other, first, "{}: frontends disagree", row.name);
        }
        Some(first)
    };
    let has_any: BTreeSet<bool> = m
        .frontends
        .values()
        .map(Frontend::has_endpoints_anywhere)
        .collect();
    assert_eq!(has_any.len(), 1, "{}: frontends disagree", row.name);
    Categorized {
        cluster: offered(false),
        local: offered(true),
        has_any: has_any.contains(&true),
    }
}

pub(super) fn check(row: &Row) {
    let set = |s: Option<&[&str]>| s.map(|s| s.iter().map(|e| e.to_string()).collect());
    let got = categorize(row);
    let (cluster, local): (Option<BTreeSet<String>>, Option<BTreeSet<String>>) =
        (set(row.cluster), set(row.local));
    assert_eq!(got.cluster, cluster, "{}: cluster endpoints", row.name);
    assert_eq!(got.local, local, "{}: local endpoints", row.name);
    let want_all: BTreeSet<String> = match (&cluster, &local) {
        (Some(c), None) => c.clone(),
        (None, Some(l)) => l.clone(),
        _ => set(row.all).unwrap_or_default(),
    };
    let got_all: BTreeSet<String> = got
        .cluster
        .iter()
        .chain(got.local.iter())
        .flatten()
        .cloned()
        .collect();
    assert_eq!(got_all, want_all, "{}: all reachable endpoints", row.name);
    let want_any = !want_all.is_empty() || row.only_remote;
    assert_eq!(got.has_any, want_any, "{}: hasAnyEndpoints", row.name);
}
