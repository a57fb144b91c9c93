//! Conversion semantics, written as small YAML objects.

mod dual_stack;
mod incremental;
mod invalid;
mod special;
mod topology;

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::*;

fn svc(yaml: &str) -> Service {
    serde_yaml_ng::from_str(&format!("apiVersion: v1\nkind: Service\n{yaml}"))
        .expect("test Service")
}

fn slice(yaml: &str) -> EndpointSlice {
    serde_yaml_ng::from_str(&format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n{yaml}"
    ))
    .expect("test EndpointSlice")
}

/// A one-port TCP service `web` in `default`.
fn web(cluster_ip: &str) -> Service {
    svc(&format!(
        "metadata: {{name: web, namespace: default}}
spec:
  clusterIP: {cluster_ip}
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]"
    ))
}

/// A slice of `default/web` with port http → `port` and the given endpoints (flow YAML).
fn web_slice(name: &str, port: u16, endpoints: &str) -> EndpointSlice {
    slice(&format!(
        "metadata:
  name: {name}
  namespace: default
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{{name: http, port: {port}, protocol: TCP}}]
endpoints: {endpoints}"
    ))
}

fn model(services: &[Service], slices: &[EndpointSlice]) -> Model {
    let (model, errors) = ModelBuilder::new(ModelOptions::default()).update(services, slices);
    assert!(errors.is_empty(), "unexpected errors: {errors:?}");
    model
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("test IP")
}

/// `ip:port` of every backend, and of the active ones.
fn backends(fe: &Frontend) -> (Vec<String>, Vec<String>) {
    let show = |b: &&Backend| format!("{}:{}", b.ip, b.port);
    (
        fe.backends.iter().map(|b| show(&b)).collect(),
        fe.active_backends().iter().map(show).collect(),
    )
}

fn frontend<'a>(m: &'a Model, addr: &str, port: u16, protocol: Protocol) -> &'a Frontend {
    m.frontend(ip(addr), port, protocol).unwrap_or_else(|| {
        panic!(
            "no frontend {addr}:{port}/{protocol} in {:?}",
            m.frontends.keys()
        )
    })
}

#[test]
fn basic_service_with_endpoints() {
    let m = model(
        &[web("10.96.0.10")],
        &[web_slice(
            "web-1",
            8080,
            "[{addresses: [10.244.2.11], nodeName: node2, zone: z2},
              {addresses: [10.244.1.11], nodeName: node1, targetRef: {kind: Pod, name: web-1}}]",
        )],
    );
    assert_eq!(m.frontends.len(), 1);
    let fe = frontend(&m, "10.96.0.10", 80, Protocol::Tcp);
    assert_eq!(fe.service.to_string(), "Service default/web");
    assert_eq!(fe.port_name, "http");
    let (all, active) = backends(fe);
    assert_eq!(
        all,
        ["10.244.1.11:8080", "10.244.2.11:8080"],
        "sorted by ip"
    );
    assert_eq!(active, all);
    assert_eq!(fe.backends[0].node_name.as_deref(), Some("node1"));
    assert_eq!(fe.backends[0].target.as_deref(), Some("Pod/default/web-1"));
    assert_eq!(fe.backends[1].zone.as_deref(), Some("z2"));
}

#[test]
fn multiport_named_target_ports_resolve_through_slice_port_names() {
    let service = svc("metadata: {name: app, namespace: ns1}
spec:
  clusterIPs: [10.96.1.1]
  ports:
  - {name: http, port: 80, targetPort: web}
  - {name: metrics, port: 9090, targetPort: 9100}
  - {name: dns, port: 53, protocol: UDP, targetPort: dns}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: dns}");
    let s = slice(
        "metadata: {name: app-x, namespace: ns1, labels: {kubernetes.io/service-name: app}}
addressType: IPv4
ports:
- {name: metrics, port: 9100}
- {name: http, port: 8080, protocol: TCP}
- {name: dns, port: 5353, protocol: UDP}
- {name: dns-tcp, port: 5354, protocol: UDP}
endpoints: [{addresses: [10.0.0.1]}]",
    );
    let m = model(&[service], &[s]);
    let cases = [
        (80, Protocol::Tcp, vec!["10.0.0.1:8080"]),
        (9090, Protocol::Tcp, vec!["10.0.0.1:9100"]),
        (53, Protocol::Udp, vec!["10.0.0.1:5353"]),
        // Name matches but protocol does not: no backend, frontend still exists.
        (53, Protocol::Tcp, vec![]),
    ];
    assert_eq!(m.frontends.len(), cases.len());
    for (port, proto, want) in cases {
        let (all, _) = backends(frontend(&m, "10.96.1.1", port, proto));
        assert_eq!(all, want, "{port}/{proto}");
    }
}

#[test]
fn unnamed_ports_match_unnamed_slice_ports() {
    let service = svc("metadata: {name: web}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}");
    let s = slice(
        "metadata: {name: web-a, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [10.0.0.1]}]",
    );
    let m = model(&[service], &[s]);
    let fe = frontend(&m, "10.96.0.1", 80, Protocol::Tcp);
    assert_eq!(
        fe.service.namespace, "default",
        "namespace defaults like kubectl"
    );
    assert_eq!(backends(fe).0, ["10.0.0.1:8080"]);
}

#[test]
fn several_slices_merge_and_only_matching_ones_join() {
    let other_ns = slice(
        "metadata: {name: web-z, namespace: other, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.9.9.9]}]",
    );
    let unlabelled = slice(
        "metadata: {name: web-u, namespace: default}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.9.9.8]}]",
    );
    let m = model(
        &[web("10.96.0.10")],
        &[
            web_slice(
                "web-b",
                8080,
                "[{addresses: [10.0.0.3]}, {addresses: [10.0.0.1]}]",
            ),
            web_slice("web-a", 8080, "[{addresses: [10.0.0.2]}]"),
            other_ns,
            unlabelled,
        ],
    );
    let (all, active) = backends(frontend(&m, "10.96.0.10", 80, Protocol::Tcp));
    assert_eq!(all, ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"]);
    assert_eq!(active, all);
    assert!(
        m.skipped
            .iter()
            .any(|s| s.reason == SkipReason::NoServiceNameLabel)
    );
}

#[test]
fn endpoint_conditions_select_active_backends() {
    // (endpoints as flow YAML, expected active ips); all endpoints stay known.
    let cases = [
        ("all ready", "[{addresses: [10.0.0.1]}, {addresses: [10.0.0.2], conditions: {ready: true}}]", vec![
            "10.0.0.1", "10.0.0.2",
        ]),
        (
            "ready wins over serving-terminating",
            "[{addresses: [10.0.0.1], conditions: {ready: false, serving: true, terminating: true}},
              {addresses: [10.0.0.2], conditions: {ready: true}}]",
            vec!["10.0.0.2"],
        ),
        (
            "fallback to serving-terminating",
            "[{addresses: [10.0.0.1], conditions: {ready: false, serving: true, terminating: true}},
              {addresses: [10.0.0.2], conditions: {ready: false, serving: false, terminating: true}},
              {addresses: [10.0.0.3], conditions: {ready: false}}]",
            vec!["10.0.0.1"],
        ),
        (
            "terminating but not serving: none",
            "[{addresses: [10.0.0.1], conditions: {ready: false, serving: false, terminating: true}}]",
            vec![],
        ),
        (
            "serving unset follows ready (false)",
            "[{addresses: [10.0.0.1], conditions: {ready: false, terminating: true}}]",
            vec![],
        ),
        (
            "serving but not terminating and not ready: none",
            "[{addresses: [10.0.0.1], conditions: {ready: false, serving: true}}]",
            vec![],
        ),
        ("conditions unset: ready", "[{addresses: [10.0.0.1], conditions: {}}]", vec!["10.0.0.1"]),
        ("no endpoints", "[]", vec![]),
    ];
    for (name, endpoints, want) in cases {
        let m = model(&[web("10.96.0.10")], &[web_slice("web-a", 8080, endpoints)]);
        let fe = frontend(&m, "10.96.0.10", 80, Protocol::Tcp);
        let active: Vec<String> = fe
            .active_backends()
            .iter()
            .map(|b| b.ip.to_string())
            .collect();
        assert_eq!(active, want, "{name}");
        assert_eq!(
            fe.backends.len(),
            endpoints.matches("addresses").count(),
            "{name}: all stay known"
        );
    }
}

#[test]
fn service_without_slices_has_a_frontend_without_backends() {
    let m = model(&[web("10.96.0.10")], &[]);
    assert!(
        frontend(&m, "10.96.0.10", 80, Protocol::Tcp)
            .backends
            .is_empty()
    );
}

#[test]
fn selectorless_service_with_hand_written_slice() {
    let service = svc("metadata: {name: ext, namespace: default}
spec: {clusterIP: 10.96.0.50, ports: [{name: db, port: 5432}]}");
    let s = slice(
        "metadata: {name: ext-manual, namespace: default, labels: {kubernetes.io/service-name: ext}}
addressType: IPv4
ports: [{name: db, port: 5432}]
endpoints: [{addresses: [192.168.1.10]}]",
    );
    let m = model(&[service], &[s]);
    assert_eq!(
        backends(frontend(&m, "10.96.0.50", 5432, Protocol::Tcp)).1,
        ["192.168.1.10:5432"]
    );
}

#[test]
fn ignored_objects_and_skipped_parts() {
    let label = |labels: &str, ip: &str| {
        svc(&format!(
            "metadata: {{name: l, labels: {{{labels}}}}}
spec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}"
        ))
    };
    // (name, proxy name, service, frontends, skip reasons)
    type Case = (
        &'static str,
        Option<&'static str>,
        Service,
        usize,
        Vec<SkipReason>,
    );
    let cases: Vec<Case> = vec![
        (
            "headless",
            None,
            svc("metadata: {name: h}\nspec: {clusterIP: None, ports: [{port: 80}]}"),
            0,
            vec![SkipReason::Headless],
        ),
        (
            "external name",
            None,
            svc("metadata: {name: e}\nspec: {type: ExternalName, externalName: example.com}"),
            0,
            vec![SkipReason::ExternalName],
        ),
        (
            "other proxy, default proxy name",
            None,
            label("service.kubernetes.io/service-proxy-name: foo", "10.96.0.1"),
            0,
            vec![SkipReason::OtherProxy("foo".into())],
        ),
        (
            "other proxy, named proxy",
            Some("vipr"),
            label("service.kubernetes.io/service-proxy-name: foo", "10.96.0.1"),
            0,
            vec![SkipReason::OtherProxy("foo".into())],
        ),
        (
            "our proxy name",
            Some("vipr"),
            label(
                "service.kubernetes.io/service-proxy-name: vipr",
                "10.96.0.1",
            ),
            1,
            vec![],
        ),
        (
            "unlabelled with a proxy name",
            Some("vipr"),
            label("app: x", "10.96.0.1"),
            1,
            vec![],
        ),
        (
            "headless label",
            None,
            label("service.kubernetes.io/headless: ''", "10.96.0.1"),
            0,
            vec![SkipReason::HeadlessLabel],
        ),
        (
            "ipv6 only",
            None,
            label("app: x", "fd00::1"),
            0,
            vec![SkipReason::Ipv6ClusterIp("fd00::1".into())],
        ),
        (
            "dual stack",
            None,
            svc(
                "metadata: {name: d}\nspec: {clusterIPs: [10.96.0.2, 'fd00::2'], ports: [{port: 80}]}",
            ),
            1,
            vec![SkipReason::Ipv6ClusterIp("fd00::2".into())],
        ),
        (
            "sctp port",
            None,
            svc(
                "metadata: {name: s}\nspec: {clusterIP: 10.96.0.3, ports: [{name: a, port: 80, protocol: SCTP}, {name: b, port: 81}]}",
            ),
            1,
            vec![SkipReason::Sctp { port_index: 0 }],
        ),
        (
            "no cluster ip yet",
            None,
            svc("metadata: {name: n}\nspec: {ports: [{port: 80}]}"),
            0,
            vec![SkipReason::NoClusterIp],
        ),
    ];
    for (name, proxy_name, service, frontends, skipped) in cases {
        let options = ModelOptions {
            proxy_name: proxy_name.map(String::from),
            ..Default::default()
        };
        let (m, errors) = ModelBuilder::new(options).update(&[service], &[]);
        assert!(errors.is_empty(), "{name}: {errors:?}");
        assert_eq!(m.frontends.len(), frontends, "{name}");
        let reasons: Vec<SkipReason> = m.skipped.into_iter().map(|s| s.reason).collect();
        assert_eq!(reasons, skipped, "{name}");
    }
}

#[test]
fn ipv6_cluster_ips_are_counted() {
    let dual =
        svc("metadata: {name: d}\nspec: {clusterIPs: [10.96.0.2, 'fd00::2'], ports: [{port: 80}]}");
    let v6 = svc("metadata: {name: e}\nspec: {clusterIPs: ['fd00::3'], ports: [{port: 80}]}");
    assert_eq!(model(&[dual, v6], &[]).ipv6_skipped(), 2);
}

#[test]
fn ignored_slices() {
    let cases = [
        (
            "addressType: IPv6",
            "",
            SkipReason::AddressType("IPv6".into()),
        ),
        (
            "addressType: FQDN",
            "",
            SkipReason::AddressType("FQDN".into()),
        ),
        (
            "addressType: IPv4",
            ", service.kubernetes.io/headless: ''",
            SkipReason::HeadlessLabel,
        ),
        (
            "addressType: IPv4",
            ", service.kubernetes.io/service-proxy-name: x",
            SkipReason::OtherProxy("x".into()),
        ),
    ];
    for (address_type, labels, reason) in cases {
        let s = slice(&format!(
            "metadata: {{name: web-a, labels: {{kubernetes.io/service-name: web{labels}}}}}
{address_type}
ports: [{{name: http, port: 8080}}]
endpoints: [{{addresses: [10.0.0.1]}}]"
        ));
        let m = model(&[web("10.96.0.10")], &[s]);
        assert!(
            frontend(&m, "10.96.0.10", 80, Protocol::Tcp)
                .backends
                .is_empty(),
            "{reason}"
        );
        assert_eq!(m.skipped.len(), 1);
        assert_eq!(m.skipped[0].reason, reason);
        assert_eq!(
            m.skipped[0].object.to_string(),
            "EndpointSlice default/web-a"
        );
    }
}

#[test]
fn objects_defined_twice_use_the_first() {
    let (m, errors) = ModelBuilder::new(ModelOptions::default())
        .update(&[web("10.96.0.10"), web("10.96.0.11")], &[]);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].field, "metadata.name");
    assert!(m.frontend(ip("10.96.0.10"), 80, Protocol::Tcp).is_some());
    assert_eq!(m.frontends.len(), 1);
}

#[test]
fn duplicate_endpoints_across_slices_are_merged() {
    let m = model(
        &[web("10.96.0.10")],
        &[
            web_slice(
                "web-a",
                8080,
                "[{addresses: [10.0.0.1], conditions: {ready: false}}, {addresses: [10.0.0.2]}]",
            ),
            web_slice(
                "web-b",
                8080,
                "[{addresses: [10.0.0.1], nodeName: n1}, {addresses: [10.0.0.2]}]",
            ),
            // Same IP, other target port (e.g. while the port changes): a distinct backend.
            web_slice("web-c", 9090, "[{addresses: [10.0.0.1]}]"),
        ],
    );
    let fe = frontend(&m, "10.96.0.10", 80, Protocol::Tcp);
    let (all, active) = backends(fe);
    assert_eq!(all, ["10.0.0.1:8080", "10.0.0.1:9090", "10.0.0.2:8080"]);
    assert_eq!(active, all, "the ready copy of 10.0.0.1:8080 wins");
    assert_eq!(fe.backends[0].node_name.as_deref(), Some("n1"));
}

#[test]
fn frontend_claimed_twice_goes_to_the_first_service() {
    let other = svc("metadata: {name: aaa, namespace: default}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}");
    let m = model(&[web("10.96.0.10"), other], &[]);
    assert_eq!(
        &*frontend(&m, "10.96.0.10", 80, Protocol::Tcp).service.name,
        "aaa"
    );
    assert_eq!(m.skipped.len(), 1);
    assert_eq!(
        m.skipped[0].to_string(),
        "Service default/web: frontend 10.96.0.10:80/tcp already used by Service default/aaa"
    );
}

#[test]
fn model_does_not_depend_on_input_order() {
    let services = [
        web("10.96.0.10"),
        svc("metadata: {name: b}\nspec: {clusterIP: 10.96.0.11, ports: [{port: 81}]}"),
    ];
    let slices = [
        web_slice("web-a", 8080, "[{addresses: [10.0.0.2]}]"),
        web_slice(
            "web-b",
            8080,
            "[{addresses: [10.0.0.1], conditions: {ready: false}}]",
        ),
    ];
    let forward = model(&services, &slices);
    let mut rs = services.to_vec();
    rs.reverse();
    let mut rl = slices.to_vec();
    rl.reverse();
    assert_eq!(forward, model(&rs, &rl));
}
