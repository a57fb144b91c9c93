//! Special addresses (loopback, link-local, multicast, unspecified,
//! broadcast) are never programmed: each is reported and left out, and the
//! rest of its object is served.

use super::*;

/// The skip lines of a model, as the golden dumps and logs show them.
fn skip_lines(m: &Model) -> Vec<String> {
    m.skipped.iter().map(ToString::to_string).collect()
}

fn keys(m: &Model) -> Vec<String> {
    m.frontends.keys().map(ToString::to_string).collect()
}

#[test]
fn external_ips_keep_only_ordinary_addresses() {
    let service = svc("metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  externalIPs: [203.0.113.7, 127.0.0.1, 169.254.169.254, 224.0.0.251, 255.255.255.255]
  ports: [{name: http, port: 80}]");
    let mut builder = ModelBuilder::new(ModelOptions::default());
    let (m, errors) = builder.update(&[service], &[]);
    assert!(errors.is_empty(), "{errors:?}");
    assert!(m.stale.is_empty());
    assert_eq!(
        keys(&m),
        [
            "10.96.0.10:80/tcp",
            "203.0.113.7:80/tcp",
            "203.0.113.7:80/tcp (external)"
        ]
    );
    assert_eq!(
        skip_lines(&m),
        [
            "Service default/web: spec.externalIPs[1]: 127.0.0.1 is in the loopback range (127.0.0.0/8); not served",
            "Service default/web: spec.externalIPs[2]: 169.254.169.254 is in the link-local range (169.254.0.0/16); not served",
            "Service default/web: spec.externalIPs[3]: 224.0.0.251 is multicast (224.0.0.0/4); not served",
            "Service default/web: spec.externalIPs[4]: 255.255.255.255 is the broadcast address; not served",
        ]
    );
    let counts: Vec<(&str, usize)> = builder
        .skip_counts()
        .iter()
        .map(|(k, v)| (*k, *v))
        .collect();
    assert_eq!(
        counts,
        [
            ("broadcast-address", 1),
            ("link-local-address", 1),
            ("loopback-address", 1),
            ("multicast-address", 1)
        ]
    );
}

#[test]
fn load_balancer_ingress_keeps_only_ordinary_addresses() {
    let service = svc("metadata: {name: lb, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.11
  ports: [{name: http, port: 80, nodePort: 30080}]
status:
  loadBalancer:
    ingress: [{ip: 0.0.0.0}, {ip: 198.51.100.10}, {ip: 127.0.0.53}]");
    let m = model(&[service], &[]);
    let lb: Vec<String> = m
        .frontends
        .keys()
        .filter(|k| k.port == 80 && k.ip != ip("10.96.0.11"))
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        lb,
        ["198.51.100.10:80/tcp", "198.51.100.10:80/tcp (external)"]
    );
    assert_eq!(
        skip_lines(&m),
        [
            "Service default/lb: status.loadBalancer.ingress[0].ip: 0.0.0.0 is unspecified; not served",
            "Service default/lb: status.loadBalancer.ingress[2].ip: 127.0.0.53 is in the loopback range (127.0.0.0/8); not served",
        ]
    );
}

#[test]
fn endpoints_keep_only_ordinary_addresses() {
    let hairpin = Ipv4Addr::from(proxy_common::HAIRPIN_IPV4);
    let eps = format!(
        "[{{addresses: [10.0.0.1]}}, {{addresses: [169.254.169.254]}}, \
         {{addresses: [127.0.0.1]}}, {{addresses: ['{hairpin}']}}, {{addresses: [0.0.0.0]}}]"
    );
    let m = model(&[web("10.96.0.10")], &[web_slice("web-a", 8080, &eps)]);
    assert_eq!(
        backends(frontend(&m, "10.96.0.10", 80, Protocol::Tcp)),
        (vec!["10.0.0.1:8080".into()], vec!["10.0.0.1:8080".into()])
    );
    assert_eq!(
        skip_lines(&m),
        [
            "EndpointSlice default/web-a: endpoints[1].addresses[0]: 169.254.169.254 is in the link-local range (169.254.0.0/16); not served",
            "EndpointSlice default/web-a: endpoints[2].addresses[0]: 127.0.0.1 is in the loopback range (127.0.0.0/8); not served",
            "EndpointSlice default/web-a: endpoints[3].addresses[0]: 169.254.7.1 is in the link-local range (169.254.0.0/16); not served",
            "EndpointSlice default/web-a: endpoints[4].addresses[0]: 0.0.0.0 is unspecified; not served",
        ]
    );
}

#[test]
fn special_cluster_ip_is_left_out_and_the_rest_served() {
    let service = svc("metadata: {name: web, namespace: default}
spec:
  type: NodePort
  clusterIPs: [169.254.169.254]
  externalIPs: [203.0.113.7]
  ports: [{name: http, port: 80, nodePort: 30080}]");
    let options = ModelOptions {
        nodeport_addresses: vec![ip("172.30.0.1").into()],
        ..ModelOptions::default()
    };
    let (m, errors) = ModelBuilder::new(options).update(&[service], &[]);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        keys(&m),
        [
            "172.30.0.1:30080/tcp",
            "172.30.0.1:30080/tcp (external)",
            "203.0.113.7:80/tcp",
            "203.0.113.7:80/tcp (external)"
        ]
    );
    assert_eq!(
        skip_lines(&m),
        [
            "Service default/web: spec.clusterIPs[0]: 169.254.169.254 is in the link-local range (169.254.0.0/16); not served"
        ]
    );
}

/// kube-proxy programs an external IP that is a node address (the
/// CVE-2020-8554 class); the mitigation is admission control, not the proxy.
#[test]
fn node_address_as_external_ip_is_served_as_kube_proxy_does() {
    let service = svc("metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  externalIPs: [172.30.0.1]
  ports: [{name: http, port: 22}]");
    let options = ModelOptions {
        nodeport_addresses: vec![ip("172.30.0.1").into()],
        ..ModelOptions::default()
    };
    let (m, errors) = ModelBuilder::new(options).update(&[service], &[]);
    assert!(errors.is_empty() && m.skipped.is_empty());
    assert!(
        m.frontends
            .keys()
            .any(|k| k.ip == ip("172.30.0.1") && k.port == 22 && k.scope == Scope::External)
    );
}

/// A skip is not an error: the object stays current (not stale), and the
/// reason goes as soon as the address does.
#[test]
fn special_addresses_come_and_go_with_updates() {
    let mut builder = ModelBuilder::new(ModelOptions::default());
    let good = web_slice("web-a", 8080, "[{addresses: [10.0.0.1]}]");
    let bad = web_slice(
        "web-a",
        8080,
        "[{addresses: [10.0.0.1]}, {addresses: [10.0.0.2]}, {addresses: [169.254.169.254]}]",
    );
    let (m, errors) = builder.update(&[web("10.96.0.10")], std::slice::from_ref(&bad));
    assert!(errors.is_empty() && m.stale.is_empty());
    assert_eq!(m.skipped.len(), 1);
    // The ordinary endpoint added by the same version is served.
    assert_eq!(
        backends(frontend(&m, "10.96.0.10", 80, Protocol::Tcp)).0,
        ["10.0.0.1:8080", "10.0.0.2:8080"]
    );
    assert_eq!(builder.skip_counts().get("link-local-address"), Some(&1));
    let (m, _) = builder.update(&[web("10.96.0.10")], &[good]);
    assert!(m.skipped.is_empty());
    assert!(builder.skip_counts().is_empty());
}
