//! The incremental builder against the from-scratch [`build_model`]: after
//! any sequence of single-object changes, both give the same model.

use std::collections::{BTreeMap, BTreeSet};

use super::*;

/// xorshift64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A Service whose cluster IP comes from a small pool, so Services collide.
fn random_service(rng: &mut Rng, name: &str, rv: u64) -> Service {
    let ip = if rng.next(10) == 0 {
        "fd00::1, 10.96.0.1".to_string()
    } else {
        format!("10.96.0.{}", rng.next(6) + 1)
    };
    let ports = match rng.next(3) {
        0 => "[{name: http, port: 80}]",
        1 => "[{name: http, port: 80}, {name: dns, port: 53, protocol: UDP}]",
        _ => "[{name: http, port: 8080}]",
    };
    svc(&format!(
        "metadata: {{name: {name}, namespace: default, resourceVersion: '{rv}'}}
spec: {{clusterIPs: [{ip}], ports: {ports}}}"
    ))
}

fn random_slice(rng: &mut Rng, name: &str, rv: u64) -> EndpointSlice {
    let service = format!("s{}", rng.next(5));
    let endpoints: Vec<String> = (0..rng.next(4))
        .map(|_| {
            let hints = match rng.next(3) {
                0 => "",
                n => &format!(", hints: {{forZones: [{{name: z{n}}}]}}"),
            };
            // Same draws as ever; the fifth address is one that is skipped.
            let address = match rng.next(5) + 1 {
                5 => "169.254.169.254".to_string(),
                n => format!("10.0.0.{n}"),
            };
            format!(
                "{{addresses: [{address}], conditions: {{ready: {}}}{hints}}}",
                rng.next(3) != 0
            )
        })
        .collect();
    slice(&format!(
        "metadata:
  name: {name}
  namespace: default
  resourceVersion: '{rv}'
  labels: {{kubernetes.io/service-name: {service}}}
addressType: IPv4
ports: [{{name: http, port: {}}}, {{name: dns, port: 5353, protocol: UDP}}]
endpoints: [{}]",
        8000 + rng.next(2),
        endpoints.join(", ")
    ))
}

/// This node in zone `z1`, `z2`, or without a zone label.
fn random_node(rng: &mut Rng) -> k8s_openapi::api::core::v1::Node {
    let labels = match rng.next(3) {
        0 => "{}".to_string(),
        n => format!("{{topology.kubernetes.io/zone: z{n}}}"),
    };
    serde_yaml_ng::from_str(&format!("metadata: {{name: node1, labels: {labels}}}"))
        .expect("test Node")
}

fn reference(
    services: &BTreeMap<String, Service>,
    slices: &BTreeMap<String, EndpointSlice>,
    node: &k8s_openapi::api::core::v1::Node,
) -> Model {
    let opts = ModelOptions::default();
    let services: Vec<ServiceModel> = services
        .values()
        .filter_map(|s| convert_service(s, &opts).ok())
        .collect();
    let slices: Vec<SliceModel> = slices
        .values()
        .filter_map(|s| convert_slice(s, &opts).ok())
        .collect();
    let node = convert_node(node);
    build_model(&services, &slices, &ModelOptions::default(), Some(&node))
}

#[test]
fn incremental_model_equals_full_rebuild() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut builder = ModelBuilder::new(ModelOptions::default());
    let mut services = BTreeMap::new();
    let mut slices = BTreeMap::new();
    let mut previous = Model::default();
    let mut rv = 0;
    let mut node = random_node(&mut rng);
    builder.set_node(Some(&node));
    for round in 0..400u64 {
        // Now and then the node moves zone (or loses its label).
        if rng.next(5) == 0 {
            node = random_node(&mut rng);
            builder.set_node(Some(&node));
        }
        // A few changes per round, as between two syncs.
        for _ in 0..=rng.next(3) {
            rv += 1;
            let name = format!("s{}", rng.next(5));
            let slice_name = format!("e{}", rng.next(8));
            let object = |kind, name: &str| ObjectRef {
                kind,
                namespace: "default".into(),
                name: name.into(),
            };
            match rng.next(4) {
                0 => {
                    builder.apply_service(&object(Kind::Service, &name), None);
                    services.remove(&name);
                }
                1 => {
                    let s = random_service(&mut rng, &name, rv);
                    builder.apply_service(&object(Kind::Service, &name), Some(&s));
                    services.insert(name, s);
                }
                2 => {
                    builder.apply_slice(&object(Kind::EndpointSlice, &slice_name), None);
                    slices.remove(&slice_name);
                }
                _ => {
                    let s = random_slice(&mut rng, &slice_name, rv);
                    builder.apply_slice(&object(Kind::EndpointSlice, &slice_name), Some(&s));
                    slices.insert(slice_name, s);
                }
            }
        }
        let commit = builder.commit();
        let want = reference(&services, &slices, &node);
        assert_eq!(builder.model().frontends, want.frontends, "round {round}");
        assert_eq!(builder.model().skipped, want.skipped, "round {round}");
        // `changed` is exactly the set of frontends that differ.
        let keys: BTreeSet<FrontendKey> = previous
            .frontends
            .keys()
            .chain(want.frontends.keys())
            .filter(|k| previous.frontends.get(k) != want.frontends.get(k))
            .copied()
            .collect();
        assert_eq!(commit.changed, keys, "round {round}");
        previous = want;
    }
    assert!(
        !previous.frontends.is_empty(),
        "the walk should end with frontends"
    );
}

/// With resourceVersions trusted, a full resync converts only what changed,
/// and one changed slice recomputes one Service.
#[test]
fn full_resync_converts_only_changed_objects() {
    let services: Vec<Service> = (0..100)
        .map(|i| {
            svc(&format!(
                "metadata: {{name: s{i}, resourceVersion: '1'}}
spec: {{clusterIP: 10.96.1.{i}, ports: [{{name: http, port: 80}}]}}"
            ))
        })
        .collect();
    let slice_of = |i: usize, rv: u32, ip: &str| {
        slice(&format!(
            "metadata: {{name: s{i}-a, resourceVersion: '{rv}', labels: {{kubernetes.io/service-name: s{i}}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints: [{{addresses: [{ip}]}}]"
        ))
    };
    let mut slices: Vec<EndpointSlice> = (0..100).map(|i| slice_of(i, 1, "10.0.0.1")).collect();
    let mut builder = ModelBuilder::new(ModelOptions::default());
    assert!(builder.replace_all(&services, &slices, true).is_empty());
    let first = builder.commit();
    assert_eq!((first.converted, first.changed.len()), (200, 100));

    slices[7] = slice_of(7, 2, "10.0.0.2");
    builder.replace_all(&services, &slices, true);
    let second = builder.commit();
    assert_eq!(second.converted, 1);
    assert_eq!(second.services_recomputed, 1);
    let key = FrontendKey {
        ip: ip("10.96.1.7").into(),
        port: 80,
        protocol: Protocol::Tcp,
        scope: Default::default(),
    };
    assert_eq!(second.changed, BTreeSet::from([key]));
    assert_eq!(
        backends(&builder.model().frontends[&key]).0,
        ["10.0.0.2:8080"]
    );
}

#[test]
fn node_addresses_and_topology_are_recorded() {
    let node: k8s_openapi::api::core::v1::Node = serde_yaml_ng::from_str(
        "apiVersion: v1
kind: Node
metadata:
  name: node-a
  labels: {topology.kubernetes.io/zone: z1, topology.kubernetes.io/region: r1}
status:
  addresses:
  - {type: InternalIP, address: 192.168.1.10}
  - {type: InternalIP, address: 'fd00::10'}
  - {type: Hostname, address: node-a}",
    )
    .expect("test Node");
    let mut builder = ModelBuilder::new(ModelOptions::default());
    builder.set_node(Some(&node));
    let got = builder.model().node.clone().expect("node recorded");
    assert_eq!(got.name, "node-a");
    assert_eq!(got.zone.as_deref(), Some("z1"));
    assert_eq!(got.region.as_deref(), Some("r1"));
    assert_eq!(got.addresses.len(), 1);
    assert_eq!(got.addresses[0].ip, ip("192.168.1.10"));
    assert_eq!(got.ipv6_skipped, 1);
}

/// When the owner of a contested frontend goes, the other claimant (not
/// itself changed) takes it over in the same commit.
#[test]
fn contested_frontend_passes_to_the_unchanged_claimant() {
    let a = svc(
        "metadata: {name: a, resourceVersion: '1'}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}",
    );
    let b = svc(
        "metadata: {name: b, resourceVersion: '1'}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}",
    );
    let object = |name: &str| ObjectRef {
        kind: Kind::Service,
        namespace: "default".into(),
        name: name.into(),
    };
    let mut builder = ModelBuilder::new(ModelOptions::default());
    builder.apply_service(&object("a"), Some(&a));
    builder.apply_service(&object("b"), Some(&b));
    builder.commit();
    let key = FrontendKey {
        ip: ip("10.96.0.1").into(),
        port: 80,
        protocol: Protocol::Tcp,
        scope: Default::default(),
    };
    assert_eq!(&*builder.model().frontends[&key].service.name, "a");
    assert_eq!(builder.model().skipped.len(), 1, "b's conflict is reported");

    builder.apply_service(&object("a"), None);
    let commit = builder.commit();
    assert_eq!(commit.services_recomputed, 1, "only a changed");
    assert_eq!(commit.changed, BTreeSet::from([key]));
    assert_eq!(&*builder.model().frontends[&key].service.name, "b");
    assert!(builder.model().skipped.is_empty());
}

/// A Service claiming one frontend twice (an external IP equal to its
/// cluster IP) is no conflict with itself, built at once or incrementally
/// (found by the `model_objects` fuzz target).
#[test]
fn a_service_repeating_its_own_frontend_is_no_conflict() {
    let web = svc(
        "metadata: {name: web}\nspec: {clusterIP: 10.96.0.10, externalIPs: [10.96.0.10], ports: [{port: 80}]}",
    );
    let converted = convert_service(&web, &ModelOptions::default()).expect("valid");
    let full = build_model([&converted], [], &ModelOptions::default(), None);
    assert_eq!(full.skipped, vec![], "no self-conflict");
    let mut builder = ModelBuilder::new(ModelOptions::default());
    let (model, errors) = builder.update(&[web], &[]);
    assert!(errors.is_empty());
    assert_eq!(model, full);
}
