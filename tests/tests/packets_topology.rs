//! Topology-aware routing through the real programs (TC for pods, the
//! socket hooks for the node), built from Service, EndpointSlice and Node
//! YAML: hints keep a zone's clients in their zone, and every one of
//! kube-proxy's fallbacks spreads them over all endpoints again.
use vipr_tests::flow_table::*;

/// This node (`test-node`) in `zone`.
fn node(zone: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: {NODE_NAME}\n  labels: {{topology.kubernetes.io/zone: {zone}}}\n"
    )
}

/// A ClusterIP Service with `trafficDistribution: PreferClose` and two
/// endpoints hinted for zone-a and zone-b (`hints`: which get their hint).
fn service(hints: [bool; 2]) -> String {
    let endpoint = |ip: &str, zone: &str, hinted: bool| {
        let hint = if hinted {
            format!("\n  hints: {{forZones: [{{name: {zone}}}]}}")
        } else {
            String::new()
        };
        format!("- addresses: [\"{ip}\"]\n  zone: {zone}{hint}\n")
    };
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: near, namespace: ns1}}\nspec:\n  clusterIP: 172.30.0.41\n  trafficDistribution: PreferClose\n  ports: [{{name: p80, port: 80, protocol: TCP}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: near-1, namespace: ns1, labels: {{kubernetes.io/service-name: near}}}}\naddressType: IPv4\nports: [{{name: p80, port: 80, protocol: TCP}}]\nendpoints:\n{}{}",
        endpoint("10.180.0.1", "zone-a", hints[0]),
        endpoint("10.180.2.1", "zone-b", hints[1]),
    )
}

#[test]
fn hints_keep_clients_in_their_zone_and_fallbacks_spread_them() {
    let both = || to(&["10.180.0.1:80", "10.180.2.1:80"], false);
    #[rustfmt::skip]
    let cases = [
        ("hinted, node in zone-a", node("zone-a") + &service([true, true]), to(&["10.180.0.1:80"], false)),
        ("hinted, node in zone-b", node("zone-b") + &service([true, true]), to(&["10.180.2.1:80"], false)),
        ("an endpoint without a hint", node("zone-a") + &service([true, false]), both()),
        ("no endpoint hinted for this zone", node("zone-c") + &service([true, true]), both()),
        ("node without a zone label", service([true, true]), both()),
    ];
    let mut report = Report::default();
    for (name, manifests, expect) in cases {
        // The node's own sockets see the same endpoints (kube-proxy
        // masquerades them; a socket needs no masquerade at all).
        let node_expect = match &expect {
            Expect::To(eps) => Expect::To(eps.iter().map(|(e, _)| (*e, Masq::Node)).collect()),
            other => other.clone(),
        };
        let rows = [
            row("pod to ClusterIP", "10.0.0.2", "172.30.0.41", 80, expect),
            row(
                "node to ClusterIP",
                "192.168.0.2",
                "172.30.0.41",
                80,
                node_expect,
            ),
        ];
        report
            .results
            .extend(subtest(name, &Fixture::default(), |p| {
                p.sync_valid(&manifests)?;
                p.check(&rows)
            }));
    }
    report.finish("topology");
}
