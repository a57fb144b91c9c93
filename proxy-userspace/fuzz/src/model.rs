//! The `model_objects` target: a sequence of object updates, deletions,
//! full relists and Node changes applied to a [`ModelBuilder`] that also
//! holds a fixed set of valid objects. After every commit:
//! - the fixed objects' frontends and notes are what they alone give;
//! - the whole model equals [`build_model`] of every object's last valid
//!   version (a shadow kept here, by the rule ModelBuilder documents);
//! - the commit reports exactly the frontends that changed.
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::LazyLock;

use arbitrary::Arbitrary;
use k8s_openapi::Metadata;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use vipr::model::{
    ConversionError, Kind, Model, ModelBuilder, ModelOptions, NodeModel, ObjectRef, ServiceModel,
    SliceModel, build_model, convert_node, convert_service, convert_slice,
};
use vipr::source::manifests::{Parsed, parse_str};

use crate::objects::{FIXED_NS, FuzzNode, FuzzService, FuzzSlice, Meta, NODE_NAME, PROXY_NAME};

/// Valid objects whose frontends no fuzzed object may change.
const FIXED: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: a-fixed}
spec:
  type: NodePort
  clusterIP: 10.96.1.1
  sessionAffinity: ClientIP
  trafficDistribution: PreferClose
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: a-fixed, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}]
endpoints:
- {addresses: [10.244.1.10], nodeName: node-a, zone: zone-1, hints: {forZones: [{name: zone-1}]}}
- {addresses: [10.244.2.10], nodeName: node-b, zone: zone-2, hints: {forZones: [{name: zone-2}]}}
- {addresses: [10.244.3.10], conditions: {ready: false, serving: true, terminating: true}}
---
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: a-fixed}
spec:
  type: LoadBalancer
  clusterIP: 10.96.1.2
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  loadBalancerSourceRanges: [192.168.1.0/24]
  ports: [{port: 443, nodePort: 30443}]
status: {loadBalancer: {ingress: [{ip: 192.0.2.10}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: lb-1, namespace: a-fixed, labels: {kubernetes.io/service-name: lb}}
addressType: IPv4
ports: [{port: 8443}]
endpoints: [{addresses: [10.244.1.20], nodeName: node-a}]
"#;

#[derive(Arbitrary, Debug)]
pub struct Input {
    nodeport_localhost: bool,
    /// IPv6 (dual-stack) served, or skipped with its reasons.
    ipv6: bool,
    /// Set resourceVersions (a hash of the content, as the API's identify it).
    versions: bool,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// The store key: the object's own metadata, or (rarely, a buggy
    /// source) other metadata.
    Service(Option<Meta>, FuzzService),
    Slice(Option<Meta>, FuzzSlice),
    DeleteService(Meta),
    DeleteSlice(Meta),
    Node(Option<FuzzNode>),
    /// A relist: the fixed objects, then these.
    ReplaceAll {
        services: Vec<FuzzService>,
        slices: Vec<FuzzSlice>,
        trust_versions: bool,
    },
    Commit,
}

pub fn run(input: Input) {
    let opts = ModelOptions {
        proxy_name: Some(PROXY_NAME.into()),
        node_name: Some(NODE_NAME.into()),
        nodeport_addresses: vec![
            "192.168.1.10".parse().expect("address"),
            "fd00:1::10".parse().expect("address"),
        ],
        nodeport_localhost: input.nodeport_localhost,
        ipv6: input.ipv6,
    };
    static PARSED: LazyLock<Parsed> = LazyLock::new(|| parse_str(FIXED).expect("fixed objects"));
    let fixed = &*PARSED;
    let v = input.versions;
    let all = |services: &[FuzzService], slices: &[FuzzSlice]| {
        let fixed_services = fixed.services.iter().cloned();
        let services = fixed_services.chain(services.iter().map(FuzzService::build));
        let fixed_slices = fixed.endpoint_slices.iter().cloned();
        let slices = fixed_slices.chain(slices.iter().map(FuzzSlice::build));
        let services: Vec<Service> = services.map(|s| versioned(s, v)).collect();
        (
            services,
            slices.map(|s| versioned(s, v)).collect::<Vec<_>>(),
        )
    };
    let mut builder = ModelBuilder::new(opts.clone());
    let mut shadow = Shadow::default();
    let (services, slices) = all(&[], &[]);
    builder.replace_all(&services, &slices, false);
    shadow.replace_all(&services, &slices, &opts);
    check(&mut builder, &shadow, fixed, &opts);
    for op in &input.ops {
        match op {
            Op::Service(key, svc) => {
                let Some(key) = store_key(Kind::Service, key.as_ref().unwrap_or(&svc.meta)) else {
                    continue;
                };
                let svc = versioned(svc.build(), v);
                builder.apply_service(&key, Some(&svc));
                let converted = convert_service(&svc, &opts).ok();
                keep_valid(&mut shadow.services, &key, converted, |m| &m.object);
            }
            Op::Slice(key, slice) => {
                let meta = key.as_ref().unwrap_or(&slice.meta);
                let Some(key) = store_key(Kind::EndpointSlice, meta) else {
                    continue;
                };
                let slice = versioned(slice.build(), v);
                builder.apply_slice(&key, Some(&slice));
                let converted = convert_slice(&slice, &opts).ok();
                keep_valid(&mut shadow.slices, &key, converted, |m| &m.object);
            }
            Op::DeleteService(meta) => {
                if let Some(key) = store_key(Kind::Service, meta) {
                    builder.apply_service(&key, None);
                    shadow.services.remove(&key);
                }
            }
            Op::DeleteSlice(meta) => {
                if let Some(key) = store_key(Kind::EndpointSlice, meta) {
                    builder.apply_slice(&key, None);
                    shadow.slices.remove(&key);
                }
            }
            Op::Node(node) => {
                let node = node.as_ref().map(FuzzNode::build);
                builder.set_node(node.as_ref());
                let ours = |n: &&Node| n.metadata.name.as_deref() == Some(NODE_NAME);
                shadow.node = node.as_ref().filter(ours).map(convert_node);
            }
            Op::ReplaceAll {
                services,
                slices,
                trust_versions,
            } => {
                let (services, slices) = all(services, slices);
                builder.replace_all(&services, &slices, *trust_versions);
                shadow.replace_all(&services, &slices, &opts);
            }
            Op::Commit => check(&mut builder, &shadow, fixed, &opts),
        }
    }
    check(&mut builder, &shadow, fixed, &opts);
}

/// The store key a source would use for this metadata (none without a name).
fn store_key(kind: Kind, meta: &Meta) -> Option<ObjectRef> {
    ObjectRef::of(kind, &meta.object_meta(None)).ok()
}

/// With `on`, a resourceVersion that identifies the content, as the API's do.
fn versioned<T: Metadata<Ty = ObjectMeta> + serde::Serialize>(mut object: T, on: bool) -> T {
    if on {
        let mut h = DefaultHasher::new();
        serde_json::to_string(&object)
            .expect("serialize")
            .hash(&mut h);
        object.metadata_mut().resource_version = Some(h.finish().to_string());
    }
    object
}

type Table<M> = BTreeMap<ObjectRef, (Option<M>, bool)>;

/// Every object's last valid version, and whether its current one is invalid.
#[derive(Default)]
struct Shadow {
    services: Table<ServiceModel>,
    slices: Table<SliceModel>,
    node: Option<NodeModel>,
}

impl Shadow {
    /// A full set: the first valid definition of each object counts; an
    /// invalid one keeps its last valid version; absent objects go.
    fn replace_all(&mut self, services: &[Service], slices: &[EndpointSlice], opts: &ModelOptions) {
        relist(
            &mut self.services,
            services,
            |s| convert_service(s, opts),
            |m| &m.object,
        );
        relist(
            &mut self.slices,
            slices,
            |s| convert_slice(s, opts),
            |m| &m.object,
        );
    }

    fn model(&self, opts: &ModelOptions) -> Model {
        let services = self.services.values().filter_map(|(m, _)| m.as_ref());
        let slices = self.slices.values().filter_map(|(m, _)| m.as_ref());
        let mut model = build_model(services, slices, opts, self.node.as_ref());
        // Services sort before EndpointSlices.
        model.stale = stale(&self.services);
        model.stale.extend(stale(&self.slices));
        model
    }
}

/// One object's new version under `key`: valid and matching the key, it
/// replaces; anything else keeps the last valid version, marked stale.
fn keep_valid<M: Clone>(
    table: &mut Table<M>,
    key: &ObjectRef,
    converted: Option<M>,
    object_of: impl Fn(&M) -> &ObjectRef,
) {
    let entry = match converted {
        Some(m) if object_of(&m) == key => (Some(m), false),
        _ => (table.get(key).and_then(|(m, _)| m.clone()), true),
    };
    table.insert(key.clone(), entry);
}

fn stale<M>(table: &Table<M>) -> Vec<ObjectRef> {
    let stale = table.iter().filter(|(_, (m, stale))| m.is_some() && *stale);
    stale.map(|(k, _)| k.clone()).collect()
}

fn relist<T, M: Clone>(
    table: &mut Table<M>,
    objects: &[T],
    convert: impl Fn(&T) -> Result<M, ConversionError>,
    object_of: impl Fn(&M) -> &ObjectRef,
) {
    let mut seen = BTreeSet::new();
    for o in objects {
        match convert(o) {
            Ok(m) => {
                let key = object_of(&m).clone();
                if seen.insert(key.clone()) {
                    table.insert(key, (Some(m), false));
                }
            }
            Err(e) => {
                let key = e.object();
                let previous = table.get(&key).and_then(|(m, _)| m.clone());
                if previous.is_some() && seen.insert(key.clone()) {
                    table.insert(key, (previous, true));
                }
            }
        }
    }
    table.retain(|k, _| seen.contains(k));
}

fn check(builder: &mut ModelBuilder, shadow: &Shadow, fixed: &Parsed, opts: &ModelOptions) {
    let before = builder.model().frontends.clone();
    let commit = builder.commit();
    let model = builder.model();

    let reported: BTreeSet<_> = before
        .keys()
        .chain(model.frontends.keys())
        .filter(|k| before.get(k) != model.frontends.get(k))
        .copied()
        .collect();
    assert_eq!(commit.changed, reported, "the commit's changed frontends");

    let expected = shadow.model(opts);
    assert_eq!(
        model.frontends, expected.frontends,
        "incremental model ≠ full build"
    );
    assert_eq!(model.skipped, expected.skipped, "skipped");
    assert_eq!(model.stale, expected.stale, "stale objects");
    assert_eq!(model.node, expected.node, "node");

    // The fixed objects alone, for this node: nothing fuzzed may change them.
    let services: Vec<_> = fixed
        .services
        .iter()
        .map(|s| convert_service(s, opts))
        .collect();
    let slices: Vec<_> = fixed
        .endpoint_slices
        .iter()
        .map(|s| convert_slice(s, opts))
        .collect();
    let services: Vec<_> = services
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("valid");
    let slices: Vec<_> = slices.into_iter().collect::<Result<_, _>>().expect("valid");
    let alone = build_model(&services, &slices, opts, shadow.node.as_ref());
    let ours = |m: &Model| {
        let fes = m
            .frontends
            .values()
            .filter(|f| f.service.namespace == FIXED_NS);
        let skipped = m.skipped.iter().filter(|s| s.object.namespace == FIXED_NS);
        (
            fes.cloned().collect::<Vec<_>>(),
            skipped.cloned().collect::<Vec<_>>(),
        )
    };
    assert!(
        alone.frontends.len() >= 8,
        "the fixed objects give frontends"
    );
    assert_eq!(
        ours(model),
        ours(&alone),
        "fixed objects' frontends changed"
    );
}
