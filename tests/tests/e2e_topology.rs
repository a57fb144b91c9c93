//! Topology-aware routing end to end: node1 in zone-a and node2 in zone-b
//! (Node manifests), a Service with `trafficDistribution: PreferClose`
//! whose endpoints are hinted for their zones. Each node keeps its clients
//! (its pods through TC, itself through the socket hooks) in its zone, until
//! an endpoint loses its hint and kube-proxy's fallback spreads them again.
use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use vipr_tests::{demo::wait_until, echo::tcp_request_full, external::*};

const TIMEOUT: Duration = Duration::from_secs(2);
const NEAR_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 65);

/// Both Nodes with their zones, and the Service; `hinted`: whether web-2
/// keeps its hint.
fn manifests(hinted: bool) -> String {
    let nodes: String = [("node1", "zone-a"), ("node2", "zone-b")]
        .iter()
        .map(|(node, zone)| {
            format!(
                "---\napiVersion: v1\nkind: Node\nmetadata: {{name: {node}, labels: {{topology.kubernetes.io/zone: {zone}}}}}\n"
            )
        })
        .collect();
    let endpoints: String = PODS
        .iter()
        .map(|(pod, node, ip)| {
            let zone = if *node == "node1" { "zone-a" } else { "zone-b" };
            let hint = if hinted || *pod == "web-1" {
                format!(", hints: {{forZones: [{{name: {zone}}}]}}")
            } else {
                String::new()
            };
            format!("- {{addresses: [{ip}], nodeName: {node}, zone: {zone}{hint}}}\n")
        })
        .collect();
    format!(
        "{nodes}---\napiVersion: v1\nkind: Service\nmetadata: {{name: near, namespace: topo}}\nspec:\n  clusterIP: {NEAR_IP}\n  trafficDistribution: PreferClose\n  ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: near-x, namespace: topo, labels: {{kubernetes.io/service-name: near}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n{endpoints}"
    )
}

/// Who answered `n` new connections from `netns`.
fn answers(netns: &str, n: usize) -> BTreeSet<String> {
    let addr = SocketAddr::from((NEAR_IP, 80));
    (0..n)
        .filter_map(|_| tcp_request_full(netns, addr, TIMEOUT).ok().map(|r| r.name))
        .collect()
}

#[test]
fn hints_keep_each_nodes_clients_in_its_zone() {
    let c = ExternalCluster::start(&vipr_tests::vipr_bin(), "off").expect("cluster");
    c.write_manifest("topology.yaml", &manifests(true)).unwrap();
    let node2_pod = c.topology.netns("web-2").unwrap();
    let only = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
    assert!(
        wait_until(Duration::from_secs(10), || answers(&node2_pod, 10)
            == only(&["web-2"])),
        "node2's pod is not kept in zone-b"
    );
    for node in ["node1", "node2"] {
        let ns = c.topology.netns(node).unwrap();
        let _inside = c.node_cgroup(node).enter().unwrap();
        let zone_pod = if node == "node1" { "web-1" } else { "web-2" };
        assert_eq!(answers(&ns, 20), only(&[zone_pod]), "{node} itself");
    }
    // web-2 loses its hint: not every ready endpoint is hinted, so every
    // client uses every endpoint again.
    c.write_manifest("topology.yaml", &manifests(false))
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || answers(&node2_pod, 20)
            == only(&["web-1", "web-2"])),
        "no fallback to all endpoints"
    );
}
