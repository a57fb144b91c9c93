//! The fuzzer's cluster: Services programmed through the real pipeline
//! (manifests → model → planner → map writes), switched between two
//! versions as an agent would, and the checks on the live maps afterwards.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use aya::maps::{HashMap as BpfHash, MapData};
use proxy_common::{
    AffinityKey, AffinityValue, CT_FLAG_SNAT, CT_FORWARD, CT_REVERSE, CtKey, CtValue, HAIRPIN_IPV4,
    IPPROTO_TCP, IPPROTO_UDP, SNAT_PORT_FIRST,
};
use vipr::datapath::ServiceMaps;
use vipr::model::{ModelBuilder, ModelOptions};
use vipr::plan::{MapContents, Planner, apply_op, check_consistency, diff, diff_touched};
use vipr::source::manifests::parse_str;

use crate::packet::Harness;

/// The node's address: NodePorts answer on it, masqueraded flows leave with
/// it (ext0's address in a `FibNamespace`).
pub const NODE: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);

/// Version A. Endpoints on this node (node-a), on node-b (routed via
/// 172.30.0.2 in the FIB namespace) and node-c (an unresolved neighbour).
/// `web` and `alias` share endpoints, so flows of one client port to both
/// meet at the same backend.
const CLUSTER_A: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: fz}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  ports:
  - {name: http, port: 80, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP, nodePort: 30053}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: fz, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}]
endpoints:
- {addresses: [10.244.1.11], nodeName: node-a}
- {addresses: [10.244.2.11], nodeName: node-b}
- {addresses: [10.244.3.11], nodeName: node-c}
- {addresses: [10.244.1.12], nodeName: node-a, conditions: {ready: false, serving: true, terminating: true}}
---
apiVersion: v1
kind: Service
metadata: {name: alias, namespace: fz}
spec:
  clusterIP: 10.96.0.11
  ports: [{name: http, port: 80}, {name: dns, port: 53, protocol: UDP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: alias-1, namespace: fz, labels: {kubernetes.io/service-name: alias}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}]
endpoints: [{addresses: [10.244.1.11], nodeName: node-a}]
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: fz}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: http, port: 80}, {name: dns, port: 53, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: sticky, namespace: fz}
spec:
  clusterIP: 10.96.0.30
  sessionAffinity: ClientIP
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: sticky-1, namespace: fz, labels: {kubernetes.io/service-name: sticky}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [10.244.1.11], nodeName: node-a}
- {addresses: [10.244.2.11], nodeName: node-b}
---
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: fz}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.40
  externalTrafficPolicy: Local
  internalTrafficPolicy: Local
  healthCheckNodePort: 32000
  loadBalancerSourceRanges: [198.51.100.0/24]
  ports: [{name: https, port: 443, nodePort: 30443}]
status: {loadBalancer: {ingress: [{ip: 192.0.2.10}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: lb-1, namespace: fz, labels: {kubernetes.io/service-name: lb}}
addressType: IPv4
ports: [{name: https, port: 8443}]
endpoints:
- {addresses: [10.244.1.13], nodeName: node-a}
- {addresses: [10.244.2.13], nodeName: node-b}
---
apiVersion: v1
kind: Service
metadata: {name: elsewhere, namespace: fz}
spec:
  type: NodePort
  clusterIP: 10.96.0.50
  externalTrafficPolicy: Local
  internalTrafficPolicy: Local
  externalIPs: [203.0.113.50]
  ports: [{name: http, port: 80, nodePort: 30081}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: elsewhere-1, namespace: fz, labels: {kubernetes.io/service-name: elsewhere}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.244.2.14], nodeName: node-b}]
"#;

/// Version B: endpoints leave and arrive, `alias` is deleted (its frontends
/// drain until the next full sync), `empty` gets an endpoint.
fn cluster_b() -> String {
    let docs = CLUSTER_A.split("\n---\n");
    let docs = docs.filter(|d| !d.contains("kind: Service\nmetadata: {name: alias,"));
    let a = docs.collect::<Vec<_>>().join("\n---\n");
    let web = "- {addresses: [10.244.2.11], nodeName: node-b}\n- {addresses: [10.244.3.11]";
    a.replace(web, "- {addresses: [10.244.3.11]") + EMPTY_SLICE
}

const EMPTY_SLICE: &str = r#"
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: empty-1, namespace: fz, labels: {kubernetes.io/service-name: empty}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}]
endpoints: [{addresses: [10.244.2.20], nodeName: node-b}]
"#;

/// Address, port and protocol.
pub type Endpoint3 = (Ipv4Addr, u16, u8);

/// Everything ever programmed, in wire order: flows outlive their
/// endpoint's removal, and ids are reused.
#[derive(Debug, Default)]
pub struct Programmed {
    /// Every (address, port, protocol) each backend id has had.
    pub backends: BTreeMap<u32, BTreeSet<(u32, u16, u8)>>,
    pub service_ids: BTreeSet<u32>,
    /// Frontend (address, port, protocol) → every endpoint (address, port)
    /// in its slots, any scope.
    pub frontends: BTreeMap<(u32, u16, u8), BTreeSet<(u32, u16)>>,
}

/// What the agent has programmed, through its own model and planner.
pub struct Cluster {
    builder: ModelBuilder,
    planner: Planner,
    pub applied: MapContents,
    version_b: bool,
    syncs: usize,
    pub ever: Programmed,
}

impl Cluster {
    pub fn new(h: &mut Harness) -> Self {
        let mut cluster = Self {
            builder: ModelBuilder::new(ModelOptions {
                node_name: Some("node-a".into()),
                nodeport_addresses: vec![NODE.into()],
                ..ModelOptions::default()
            }),
            planner: Planner::new(),
            applied: MapContents::default(),
            version_b: true,
            syncs: 0,
            ever: Programmed::default(),
        };
        cluster.switch(h);
        cluster
    }

    /// Moves to the other version: incrementally (frontends drain), and on
    /// every other switch with a full sync, as the agent's schedule does.
    pub fn switch(&mut self, h: &mut Harness) {
        self.version_b = !self.version_b;
        let text = if self.version_b {
            cluster_b()
        } else {
            CLUSTER_A.to_string()
        };
        let parsed = parse_str(&text).expect("fuzzer cluster parses");
        let errors = self
            .builder
            .replace_all(&parsed.services, &parsed.endpoint_slices, false);
        assert!(errors.is_empty(), "fuzzer cluster is valid: {errors:?}");
        let changed = self.builder.commit().changed;
        let model = self.builder.model();
        let ops = if self.syncs.is_multiple_of(2) {
            diff(&self.applied, &self.planner.desired(model))
        } else {
            let touched = self.planner.update(model, &changed);
            diff_touched(&self.applied, self.planner.current(), &touched)
        };
        self.syncs += 1;
        for op in &ops {
            h.maps.apply(op).expect("map write");
            apply_op(&mut self.applied, op);
        }
        let ever = &mut self.ever;
        for (id, b) in &self.applied.backends {
            let addresses = ever.backends.entry(*id).or_default();
            addresses.insert((b.addr, b.port, b.proto));
        }
        for (key, value) in &self.applied.services {
            ever.service_ids.insert(value.service_id);
            let slots = self.applied.slot_backends(value).flatten();
            let endpoints = ever
                .frontends
                .entry((key.addr, key.port, key.proto))
                .or_default();
            endpoints.extend(slots.map(|b| (b.addr, b.port)));
        }
    }

    /// Frontends and backends of the current version, (address, port, protocol).
    pub fn endpoints(&self) -> (Vec<Endpoint3>, Vec<Endpoint3>) {
        let frontends = self
            .applied
            .services
            .keys()
            .map(|k| (k.ip(), k.port(), k.proto));
        let backends = self
            .applied
            .backends
            .values()
            .map(|b| (b.ip(), b.port(), b.proto));
        (frontends.collect(), backends.collect())
    }
}

/// A problem with the live maps, and the conntrack keys it involves.
pub type Problem = (Vec<CtKey>, String);

/// What the live maps hold that they never should. The service maps are
/// the agent's alone and must be exactly what it wrote; every conntrack
/// entry has its partner, which leads back to it; entries and affinities
/// refer to backends that existed with the address they record.
pub fn map_problems(
    h: &Harness,
    cluster: &Cluster,
    affinity: &BpfHash<MapData, AffinityKey, AffinityValue>,
) -> Vec<Problem> {
    let mut problems: Vec<Problem> = Vec::new();
    match h.maps.dump() {
        Ok(dump) if dump == cluster.applied => {}
        Ok(_) => problems.push((
            vec![],
            "service maps differ from what the agent wrote".into(),
        )),
        Err(e) => problems.push((vec![], format!("dumping service maps: {e}"))),
    }
    let consistency = check_consistency(&cluster.applied).into_iter();
    problems.extend(consistency.map(|p| (vec![], p)));
    let entries: HashMap<CtKey, CtValue> = h.conntrack.iter().filter_map(Result::ok).collect();
    for (key, value) in &entries {
        problems.extend(entry_problem(key, value, &entries, cluster));
    }
    for (key, value) in affinity.iter().filter_map(Result::ok) {
        if !cluster.ever.service_ids.contains(&key.service_id)
            || !cluster.ever.backends.contains_key(&value.backend_id)
        {
            let problem = format!("affinity {key:?} → {value:?}: unknown service or backend");
            problems.push((vec![], problem));
        }
    }
    problems
}

fn entry_problem(
    key: &CtKey,
    value: &CtValue,
    entries: &HashMap<CtKey, CtValue>,
    cluster: &Cluster,
) -> Option<Problem> {
    let partner = key.partner(value);
    let what = |problem: &str| {
        let keys = vec![*key, partner];
        Some((keys, format!("conntrack {key:?} → {value:?}: {problem}")))
    };
    if ![CT_FORWARD, CT_REVERSE].contains(&key.direction)
        || ![IPPROTO_TCP, IPPROTO_UDP].contains(&key.proto)
    {
        return what("not a TCP/UDP forward or reverse key");
    }
    let Some(partner_value) = entries.get(&partner) else {
        return what("its partner is missing");
    };
    if partner.partner(partner_value) != *key {
        return what(&format!(
            "its partner {partner:?} → {partner_value:?} leads elsewhere"
        ));
    }
    if partner_value.backend_id != value.backend_id {
        return what("its partner names another backend");
    }
    let Some(ever) = cluster.ever.backends.get(&value.backend_id) else {
        return what("unknown backend id");
    };
    if key.direction == CT_FORWARD && !ever.contains(&(value.nat_addr, value.nat_port, key.proto)) {
        return what("the backend id never had this address");
    }
    if key.direction == CT_FORWARD && value.flags & CT_FLAG_SNAT != 0 {
        let node = [
            u32::from_ne_bytes(NODE.octets()),
            u32::from_ne_bytes(HAIRPIN_IPV4),
        ];
        if !node.contains(&value.snat_addr) || u16::from_be(value.snat_port) < SNAT_PORT_FIRST {
            return what("masqueraded behind a foreign address or port");
        }
    }
    None
}
