//! Dual-stack and IPv6-only Services (`ModelOptions::ipv6`), as kube-proxy
//! serves them with one proxier per family: each frontend has the endpoints
//! and source ranges of its own family, and NodePorts answer on the node
//! addresses of the families the Service has a cluster IP in.

use std::net::{IpAddr, SocketAddr};

use super::*;

fn dual_options() -> ModelOptions {
    ModelOptions {
        nodeport_addresses: vec![
            "172.30.0.1".parse().expect("test IP"),
            "fd00:30::1".parse().expect("test IP"),
        ],
        ipv6: true,
        ..ModelOptions::default()
    }
}

const DUAL: &str = "metadata: {name: web, namespace: default}
spec:
  type: NodePort
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIPs: [10.96.0.10, 'fd00:96::10']
  ports: [{name: http, port: 80, nodePort: 30080}]";

fn family_slice(name: &str, family: &str, endpoints: &str) -> EndpointSlice {
    slice(&format!(
        "metadata:
  name: {name}
  namespace: default
  labels: {{kubernetes.io/service-name: web}}
addressType: {family}
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints: {endpoints}"
    ))
}

fn slices() -> Vec<EndpointSlice> {
    vec![
        family_slice(
            "web-v4",
            "IPv4",
            "[{addresses: [10.0.0.1]}, {addresses: [10.0.0.2]}]",
        ),
        family_slice("web-v6", "IPv6", "[{addresses: ['fd00::1']}]"),
    ]
}

fn endpoints(fe: &Frontend) -> Vec<String> {
    fe.backends
        .iter()
        .map(|b| SocketAddr::new(b.ip, b.port).to_string())
        .collect()
}

fn keys(m: &Model) -> Vec<String> {
    m.frontends.keys().map(ToString::to_string).collect()
}

fn at(m: &Model, addr: &str, port: u16, scope: Scope) -> Frontend {
    let key = FrontendKey {
        ip: addr.parse().expect("test IP"),
        port,
        protocol: Protocol::Tcp,
        scope,
    };
    m.frontends
        .get(&key)
        .cloned()
        .unwrap_or_else(|| panic!("no {key} in {:?}", keys(m)))
}

#[test]
fn a_dual_stack_service_is_served_in_both_families_each_with_its_own_endpoints() {
    let (m, errors) = ModelBuilder::new(dual_options()).update(&[svc(DUAL)], &slices());
    assert!(errors.is_empty(), "{errors:?}");
    assert!(m.skipped.is_empty(), "{:?}", m.skipped);
    assert_eq!(
        keys(&m),
        [
            "10.96.0.10:80/tcp",
            "172.30.0.1:30080/tcp",
            "172.30.0.1:30080/tcp (external)",
            "[fd00:30::1]:30080/tcp",
            "[fd00:30::1]:30080/tcp (external)",
            "[fd00:96::10]:80/tcp",
        ]
    );
    let v4 = ["10.0.0.1:8080", "10.0.0.2:8080"];
    let v6 = ["[fd00::1]:8080"];
    assert_eq!(endpoints(&at(&m, "10.96.0.10", 80, Scope::Internal)), v4);
    assert_eq!(endpoints(&at(&m, "fd00:96::10", 80, Scope::Internal)), v6);
    assert_eq!(endpoints(&at(&m, "172.30.0.1", 30080, Scope::External)), v4);
    assert_eq!(endpoints(&at(&m, "fd00:30::1", 30080, Scope::External)), v6);
}

#[test]
fn without_ipv6_the_same_objects_give_ipv4_only_with_counted_reasons() {
    let options = ModelOptions {
        ipv6: false,
        ..dual_options()
    };
    let mut builder = ModelBuilder::new(options);
    let (m, errors) = builder.update(&[svc(DUAL)], &slices());
    assert!(errors.is_empty(), "{errors:?}");
    assert!(m.frontends.keys().all(|k| k.ip.is_ipv4()), "{:?}", keys(&m));
    assert_eq!(m.frontends.len(), 3, "{:?}", keys(&m));
    let counts: Vec<(&str, usize)> = builder
        .skip_counts()
        .iter()
        .map(|(k, v)| (*k, *v))
        .collect();
    assert_eq!(counts, [("ipv6-address-type", 1), ("ipv6-cluster-ip", 1)]);
}

#[test]
fn a_single_stack_ipv6_service_answers_on_ipv6_node_addresses_only() {
    let service = svc("metadata: {name: web, namespace: default}
spec:
  type: NodePort
  ipFamilies: [IPv6]
  clusterIPs: ['fd00:96::11']
  ports: [{name: http, port: 80, nodePort: 30081}]");
    let (m, errors) = ModelBuilder::new(dual_options()).update(&[service], &slices());
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        keys(&m),
        [
            "[fd00:30::1]:30081/tcp",
            "[fd00:30::1]:30081/tcp (external)",
            "[fd00:96::11]:80/tcp",
        ]
    );
    assert_eq!(
        endpoints(&at(&m, "fd00:96::11", 80, Scope::Internal)),
        ["[fd00::1]:8080"]
    );
}

#[test]
fn load_balancers_and_source_ranges_follow_their_family() {
    let service = svc("metadata: {name: web, namespace: default}
spec:
  type: LoadBalancer
  clusterIPs: [10.96.0.10, 'fd00:96::10']
  loadBalancerSourceRanges: [198.51.100.0/24, '2001:db8:7::/48']
  externalIPs: [203.0.113.7, '2001:db8:9::7']
  ports: [{name: http, port: 80, nodePort: 30080}]
status:
  loadBalancer:
    ingress: [{ip: 192.0.2.10}, {ip: '2001:db8:1::10'}]");
    let (m, errors) = ModelBuilder::new(dual_options()).update(&[service], &slices());
    assert!(errors.is_empty(), "{errors:?}");
    let ranges = |addr| at(&m, addr, 80, Scope::External).policy.source_ranges;
    let net = |s: &str, len| (s.parse::<IpAddr>().expect("test IP"), len);
    assert_eq!(ranges("192.0.2.10"), [net("198.51.100.0", 24)]);
    assert_eq!(ranges("2001:db8:1::10"), [net("2001:db8:7::", 48)]);
    assert_eq!(
        endpoints(&at(&m, "2001:db8:1::10", 80, Scope::External)),
        ["[fd00::1]:8080"]
    );
    assert_eq!(
        endpoints(&at(&m, "2001:db8:9::7", 80, Scope::External)),
        ["[fd00::1]:8080"]
    );
    assert_eq!(
        endpoints(&at(&m, "203.0.113.7", 80, Scope::External)),
        ["10.0.0.1:8080", "10.0.0.2:8080"]
    );
}

#[test]
fn an_ipv4_only_service_ignores_ipv6_addresses_it_was_given() {
    // kube-proxy's IPv6 proxier never sees a Service without an IPv6 cluster IP.
    let service = svc("metadata: {name: web, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  externalIPs: ['2001:db8:9::7']
  ports: [{name: http, port: 80, nodePort: 30080}]
status:
  loadBalancer:
    ingress: [{ip: '2001:db8:1::10'}]");
    let (m, errors) = ModelBuilder::new(dual_options()).update(&[service], &slices());
    assert!(errors.is_empty(), "{errors:?}");
    assert!(m.frontends.keys().all(|k| k.ip.is_ipv4()), "{:?}", keys(&m));
}

#[test]
fn family_fields_that_contradict_the_cluster_ips_are_refused() {
    for (spec, field) in [
        ("clusterIPs: [10.96.0.10, 10.96.0.11]", "spec.clusterIPs[1]"),
        (
            "clusterIPs: [10.96.0.10, 'fd00::10']\n  ipFamilies: [IPv6, IPv4]",
            "spec.ipFamilies[0]",
        ),
        (
            "clusterIPs: [10.96.0.10]\n  ipFamilies: [IPv5]",
            "spec.ipFamilies[0]",
        ),
        (
            "clusterIPs: [10.96.0.10]\n  ipFamilyPolicy: DualStackPlease",
            "spec.ipFamilyPolicy",
        ),
        (
            "clusterIPs: [10.96.0.10, 'fd00::10']\n  ipFamilyPolicy: SingleStack",
            "spec.clusterIPs",
        ),
    ] {
        let service = svc(&format!(
            "metadata: {{name: web, namespace: default}}\nspec:\n  {spec}\n  ports: [{{port: 80}}]"
        ));
        let error = convert_service(&service, &dual_options()).expect_err(spec);
        assert!(error.to_string().contains(field), "{spec}: {error}");
    }
}

#[test]
fn an_ipv6_slice_address_must_be_ipv6() {
    let bad = family_slice("web-v6", "IPv6", "[{addresses: [10.0.0.1]}]");
    let error = convert_slice(&bad, &dual_options()).expect_err("IPv4 in an IPv6 slice");
    assert!(
        error.to_string().contains("not a valid IPv6 address"),
        "{error}"
    );
    let special = family_slice(
        "web-v6",
        "IPv6",
        "[{addresses: ['::1']}, {addresses: ['fe80::1']}, {addresses: ['fd00::2']}]",
    );
    let converted = convert_slice(&special, &dual_options()).expect("valid slice");
    let kept: Vec<String> = converted
        .endpoints
        .iter()
        .map(|e| e.ip.to_string())
        .collect();
    assert_eq!(kept, ["fd00::2"]);
    assert_eq!(converted.skipped.len(), 2);
}

#[test]
fn incremental_updates_keep_each_family_to_its_own_endpoints() {
    let object = |kind, name: &str| ObjectRef {
        kind,
        namespace: "default".into(),
        name: name.into(),
    };
    let mut builder = ModelBuilder::new(dual_options());
    builder.apply_service(&object(Kind::Service, "web"), Some(&svc(DUAL)));
    builder.commit();
    for s in slices() {
        let name = s.metadata.name.clone().unwrap_or_default();
        builder.apply_slice(&object(Kind::EndpointSlice, &name), Some(&s));
        builder.commit();
    }
    let (full, _) = ModelBuilder::new(dual_options()).update(&[svc(DUAL)], &slices());
    assert_eq!(builder.model().frontends, full.frontends);
    // The IPv6 slice goes: only the IPv6 frontends lose their endpoints.
    builder.apply_slice(&object(Kind::EndpointSlice, "web-v6"), None);
    let commit = builder.commit();
    let changed: Vec<String> = commit.changed.iter().map(ToString::to_string).collect();
    assert_eq!(
        changed,
        [
            "[fd00:30::1]:30080/tcp",
            "[fd00:30::1]:30080/tcp (external)",
            "[fd00:96::10]:80/tcp",
        ]
    );
    let m = builder.model();
    assert!(endpoints(&at(m, "fd00:96::10", 80, Scope::Internal)).is_empty());
    assert_eq!(
        endpoints(&at(m, "10.96.0.10", 80, Scope::Internal)).len(),
        2
    );
}
