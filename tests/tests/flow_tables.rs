//! kube-proxy's packet-flow tests (pkg/proxy/nftables and iptables
//! proxier_test.go), transcribed row by row and run through vipr: the
//! Services and EndpointSlices as YAML, vipr's model and planner, the real
//! kernel maps and programs (see `vipr_tests::flow_table`). Row names are
//! kube-proxy's. TCP/UDP rows; IPv6 ones where kube-proxy has them in its
//! packet-flow tables (TestNodePorts).
//!
//! A row marked `.differs(...)` is a deliberate, documented difference: it
//! keeps kube-proxy's expectation and holds vipr to its own, saying why. Any
//! other row that vipr does not meet fails its test, listed by name.
//!
//! Needs root (BPF, network namespaces, cgroups); run one test at a time:
//! `cargo test -p vipr-tests --test flow_tables -- --test-threads=1`.
use vipr::healthcheck;
use vipr_tests::flow_table::{
    DROP, Fixture, Masq, NODE_EXTERNAL_IP, NODE_IP, NODE_IP_ALT, REJECT, Report, RowResult,
    UNTOUCHED, ep, ep_cond, model_of, row, slice, subtest, to, to_each,
};

// The crate root's modules live beside it: kept apart from test files.
#[path = "flow_tables/node_ports.rs"]
mod node_ports;

/// Pods reaching a NodePort, LoadBalancer IP or external IP are translated
/// on their own veth, so replies come back through it without masquerade.
const POD_NO_MASQ: &str = "vipr does not masquerade pods reaching NodePorts, LoadBalancer or \
     external IPs (README: 'Pods reaching a NodePort ... without masquerade'; \
     packets_external.rs pods_reaching_a_load_balancer_ip_use_the_internal_frontend_without_masquerade)";
/// externalTrafficPolicy Cluster masquerades only flows to other nodes.
const LOCAL_KEEPS_CLIENT: &str = "eTP Cluster: vipr masquerades only flows to endpoints on other \
     nodes; a local endpoint keeps the client address and its reply is restored by \
     vipr_to_external (README; packets_external.rs a_local_endpoint_keeps_the_client_address...)";
const CLUSTER_IP_NOT_EXTERNAL: &str = "vipr serves ClusterIPs to pods and the node only, not to \
     traffic arriving on external interfaces (packets_external.rs \
     cluster_ips_are_not_reachable_from_outside)";
const HAIRPIN: &str = "a pod landing on itself is masqueraded behind the link-local \
     HAIRPIN_IPV4, not the node address (ARCHITECTURE.md)";
const WRONG_PORT: &str = "vipr knows frontends, not ClusterIPs as such: another port or protocol \
     on a ClusterIP passes untouched, as in kube-proxy's iptables mode (C4; packets.rs 'a \
     service IP on another port is not a service')";
const NO_SERVICE_CIDR: &str = "vipr is not told the Service CIDR: traffic to an unallocated \
     ClusterIP goes where routing sends it, as in kube-proxy's iptables mode";

#[test]
fn test_no_endpoints_reject() {
    let manifests = r#"
apiVersion: v1
kind: Service
metadata: {name: svc1, namespace: ns1}
spec:
  type: LoadBalancer
  clusterIP: 172.30.0.41
  externalIPs: [192.168.99.11]
  ports:
  - {name: p80, port: 80, protocol: TCP, nodePort: 3001}
status:
  loadBalancer:
    ingress: [{ip: 1.2.3.4}]
"#;
    #[rustfmt::skip]
    let rows = [
        row("pod to cluster IP with no endpoints", "10.0.0.2", "172.30.0.41", 80, REJECT),
        row("external to external IP with no endpoints", "203.0.113.2", "192.168.99.11", 80, REJECT),
        row("pod to NodePort with no endpoints", "10.0.0.2", "192.168.0.2", 3001, REJECT),
        row("external to NodePort with no endpoints", "203.0.113.2", "192.168.0.2", 3001, REJECT),
        row("pod to LoadBalancer IP with no endpoints", "10.0.0.2", "1.2.3.4", 80, REJECT),
        row("external to LoadBalancer IP with no endpoints", "203.0.113.2", "1.2.3.4", 80, REJECT),
    ];
    let mut report = Report::default();
    report
        .results
        .extend(subtest("TestNoEndpointsReject", &Fixture::default(), |p| {
            p.sync_valid(manifests)?;
            p.check(&rows)
        }));
    report.finish("TestNoEndpointsReject");
}

#[test]
fn test_cluster_ip_general() {
    let mut manifests = String::from(
        r#"
apiVersion: v1
kind: Service
metadata: {name: svc1, namespace: ns1}
spec:
  clusterIP: 172.30.0.41
  ports:
  - {name: http, port: 80, protocol: TCP}
---
apiVersion: v1
kind: Service
metadata: {name: svc2, namespace: ns2}
spec:
  clusterIP: 172.30.0.42
  ports:
  - {name: http, port: 80, protocol: TCP}
  - {name: https, port: 443, protocol: TCP, targetPort: 8443}
  - {name: dns-udp, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 5353}
  - {name: dns-sctp, port: 53, protocol: SCTP}
"#,
    );
    manifests += &slice(
        "ns1",
        "svc1",
        1,
        &[("http", 80, "TCP")],
        &[ep("10.180.0.1", Some("test-node"))],
    );
    manifests += &slice(
        "ns2",
        "svc2",
        1,
        &[
            ("http", 80, "TCP"),
            ("https", 8443, "TCP"),
            ("dns-udp", 53, "UDP"),
            ("dns-tcp", 5353, "TCP"),
            ("dns-sctp", 53, "SCTP"),
        ],
        &[
            ep("10.180.0.1", Some("test-node")),
            ep("10.180.2.1", Some("node2")),
        ],
    );
    let both = |port: u16| {
        let a = format!("10.180.0.1:{port}");
        let b = format!("10.180.2.1:{port}");
        to(&[&a, &b], false)
    };
    #[rustfmt::skip]
    let rows = [
        row("simple clusterIP", "10.180.0.2", "172.30.0.41", 80, to(&["10.180.0.1:80"], false)),
        row("hairpin to cluster IP", "10.180.0.1", "172.30.0.41", 80, to(&["10.180.0.1:80"], true))
            .differs(to_each(&[("10.180.0.1:80", Masq::Hairpin)]), HAIRPIN),
        row("clusterIP with multiple endpoints", "10.180.0.2", "172.30.0.42", 80, both(80)),
        row("clusterIP with TargetPort", "10.180.0.2", "172.30.0.42", 443, both(8443)),
        row("clusterIP with TCP, UDP, and SCTP on same port (TCP)", "10.180.0.2", "172.30.0.42", 53, both(5353)),
        // nftables names this row "(TCP)" too [sic]; iptables' name is used.
        row("clusterIP with TCP, UDP, and SCTP on same port (UDP)", "10.180.0.2", "172.30.0.42", 53, both(53))
            .udp(),
        row("TCP-only port does not match UDP traffic", "10.180.0.2", "172.30.0.42", 80, REJECT)
            .udp()
            .differs(UNTOUCHED, WRONG_PORT),
        row("svc1 does not accept svc2's ports", "10.180.0.2", "172.30.0.41", 443, REJECT)
            .differs(UNTOUCHED, WRONG_PORT),
        // nftables only (iptables has no such row and would leave it untouched).
        row("packet to unallocated cluster ip", "10.180.0.2", "172.30.0.50", 80, DROP)
            .differs(UNTOUCHED, NO_SERVICE_CIDR),
    ];
    let mut report = Report::default();
    report.skip(
        1,
        "SCTP row 'clusterIP with TCP, UDP, and SCTP on same port (SCTP)'",
    );
    report
        .results
        .extend(subtest("TestClusterIPGeneral", &Fixture::default(), |p| {
            p.sync_valid(&manifests)?;
            p.check(&rows)
        }));
    report.finish("TestClusterIPGeneral");
}

#[test]
fn test_load_balancer() {
    let mut manifests = String::from(
        r#"
apiVersion: v1
kind: Service
metadata: {name: svc1, namespace: ns1}
spec:
  type: LoadBalancer
  clusterIP: 172.30.0.41
  ports:
  - {name: p80, port: 80, protocol: TCP, nodePort: 3001}
  loadBalancerSourceRanges: ["192.168.0.0/24", " 203.0.113.0/25"]
status:
  loadBalancer:
    ingress: [{ip: 1.2.3.4}, {ip: 5.6.7.8}]
"#,
    );
    manifests += &slice(
        "ns1",
        "svc1",
        1,
        &[("p80", 80, "TCP")],
        &[ep("10.180.0.1", None)],
    );
    let ep1 = || to(&["10.180.0.1:80"], false);
    let ep1_masq = || to(&["10.180.0.1:80"], true);
    #[rustfmt::skip]
    let rows = [
        row("pod to cluster IP", "10.0.0.2", "172.30.0.41", 80, ep1()),
        row("external to nodePort", "203.0.113.2", "192.168.0.2", 3001, ep1_masq()),
        row("nodePort bypasses LoadBalancerSourceRanges", "203.0.113.130", "192.168.0.2", 3001, ep1_masq()),
        row("accepted external to LB1", "203.0.113.2", "1.2.3.4", 80, ep1_masq()),
        row("accepted external to LB2", "203.0.113.2", "5.6.7.8", 80, ep1_masq()),
        row("blocked external to LB1", "203.0.113.130", "1.2.3.4", 80, DROP),
        row("blocked external to LB2", "203.0.113.130", "5.6.7.8", 80, DROP),
        row("pod to LB1 (blocked by LoadBalancerSourceRanges)", "10.0.0.2", "1.2.3.4", 80, DROP),
        row("pod to LB2 (blocked by LoadBalancerSourceRanges)", "10.0.0.2", "5.6.7.8", 80, DROP),
        row("node to LB1 (allowed by LoadBalancerSourceRanges)", "192.168.0.2", "1.2.3.4", 80, ep1_masq()),
        row("node to LB2 (allowed by LoadBalancerSourceRanges)", "192.168.0.2", "5.6.7.8", 80, ep1_masq()),
        // The source is no node address: in kube-proxy's tracer (and here)
        // the packet arrives from outside, already SNATted to the LB IP.
        row("same node to LB1, SNATted to LB1 (implicitly allowed)", "1.2.3.4", "1.2.3.4", 80, ep1_masq()),
        row("same node to LB2, SNATted to LB2 (implicitly allowed)", "5.6.7.8", "5.6.7.8", 80, ep1_masq()),
    ];
    let mut report = Report::default();
    report
        .results
        .extend(subtest("TestLoadBalancer", &Fixture::default(), |p| {
            p.sync_valid(&manifests)?;
            p.check(&rows)
        }));
    report.finish("TestLoadBalancer");
}

/// Service svc1 of TestExternalTrafficPolicyLocal/Cluster, with `policy`.
fn external_policy_manifests(policy: &str) -> String {
    let health = if policy == "Local" {
        "  healthCheckNodePort: 30000\n"
    } else {
        ""
    };
    let mut manifests = format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: svc1, namespace: ns1}}
spec:
  type: LoadBalancer
  externalTrafficPolicy: {policy}
  clusterIP: 172.30.0.41
  externalIPs: [192.168.99.11]
  ports:
  - {{name: p80, port: 80, protocol: TCP, nodePort: 3001, targetPort: 80}}
{health}status:
  loadBalancer:
    ingress: [{{ip: 1.2.3.4}}]
"#
    );
    manifests += &slice(
        "ns1",
        "svc1",
        1,
        &[("p80", 80, "TCP")],
        &[ep("10.180.0.1", None), ep("10.180.2.1", Some("test-node"))],
    );
    manifests
}

#[test]
fn test_external_traffic_policy_local() {
    let manifests = external_policy_manifests("Local");
    let both = || to(&["10.180.0.1:80", "10.180.2.1:80"], false);
    let local = || to(&["10.180.2.1:80"], false);
    #[rustfmt::skip]
    let rows = [
        row("pod to cluster IP hits both endpoints, unmasqueraded", "10.0.0.2", "172.30.0.41", 80, both()),
        row("pod to external IP hits both endpoints, unmasqueraded", "10.0.0.2", "192.168.99.11", 80, both()),
        row("external to external IP hits only local endpoint, unmasqueraded", "203.0.113.2", "192.168.99.11", 80, local()),
        row("pod to LB IP hits only both endpoints, unmasqueraded", "10.0.0.2", "1.2.3.4", 80, both()),
        row("external to LB IP hits only local endpoint, unmasqueraded", "203.0.113.2", "1.2.3.4", 80, local()),
        row("pod to NodePort hits both endpoints, unmasqueraded", "10.0.0.2", "192.168.0.2", 3001, both()),
        row("external to NodePort hits only local endpoint, unmasqueraded", "203.0.113.2", "192.168.0.2", 3001, local()),
    ];
    let mut report = Report::default();
    report.results.extend(subtest(
        "TestExternalTrafficPolicyLocal",
        &Fixture::default(),
        |p| {
            p.sync_valid(&manifests)?;
            p.check(&rows)
        },
    ));
    report.finish("TestExternalTrafficPolicyLocal");
}

#[test]
fn test_external_traffic_policy_cluster() {
    let manifests = external_policy_manifests("Cluster");
    let both = |masq| to(&["10.180.0.1:80", "10.180.2.1:80"], masq);
    let external_vipr = || to_each(&[("10.180.0.1:80", Masq::Node), ("10.180.2.1:80", Masq::No)]);
    #[rustfmt::skip]
    let rows = [
        row("pod to cluster IP hits both endpoints, unmasqueraded", "10.0.0.2", "172.30.0.41", 80, both(false)),
        row("pod to external IP hits both endpoints, masqueraded", "10.0.0.2", "192.168.99.11", 80, both(true))
            .differs(both(false), POD_NO_MASQ),
        row("external to external IP hits both endpoints, masqueraded", "203.0.113.2", "192.168.99.11", 80, both(true))
            .differs(external_vipr(), LOCAL_KEEPS_CLIENT),
        row("pod to LB IP hits both endpoints, masqueraded", "10.0.0.2", "1.2.3.4", 80, both(true))
            .differs(both(false), POD_NO_MASQ),
        row("external to LB IP hits both endpoints, masqueraded", "203.0.113.2", "1.2.3.4", 80, both(true))
            .differs(external_vipr(), LOCAL_KEEPS_CLIENT),
        row("pod to NodePort hits both endpoints, masqueraded", "10.0.0.2", "192.168.0.2", 3001, both(true))
            .differs(both(false), POD_NO_MASQ),
        row("external to NodePort hits both endpoints, masqueraded", "203.0.113.2", "192.168.0.2", 3001, both(true))
            .differs(external_vipr(), LOCAL_KEEPS_CLIENT),
    ];
    let mut report = Report::default();
    report.results.extend(subtest(
        "TestExternalTrafficPolicyCluster",
        &Fixture::default(),
        |p| {
            p.sync_valid(&manifests)?;
            p.check(&rows)
        },
    ));
    report.finish("TestExternalTrafficPolicyCluster");
}

#[test]
fn test_internal_traffic_policy() {
    let service = |policy: &str| {
        format!(
            r#"
apiVersion: v1
kind: Service
metadata: {{name: svc1, namespace: ns1}}
spec:
  clusterIP: 172.30.1.1
  selector: {{foo: bar}}
  internalTrafficPolicy: {policy}
  ports:
  - {{port: 80, protocol: TCP}}
"#
        )
    };
    // kube-proxy sets Ready=true only; serving then defaults to ready and
    // terminating to false, exactly what unset conditions give.
    let endpoints = |nodes: [&str; 3]| {
        slice(
            "ns1",
            "svc1",
            1,
            &[("", 80, "TCP")],
            &[
                ep("10.0.1.1", Some(nodes[0])),
                ep("10.0.1.2", Some(nodes[1])),
                ep("10.0.1.3", Some(nodes[2])),
            ],
        )
    };
    let cases = [
        (
            "internalTrafficPolicy is cluster",
            "Cluster",
            ["test-node", "node1", "node2"],
            row(
                "pod to ClusterIP hits all endpoints",
                "10.0.0.2",
                "172.30.1.1",
                80,
                to(&["10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80"], false),
            ),
        ),
        (
            "internalTrafficPolicy is local and there is one local endpoint",
            "Local",
            ["test-node", "node1", "node2"],
            row(
                "pod to ClusterIP hits only local endpoint",
                "10.0.0.2",
                "172.30.1.1",
                80,
                to(&["10.0.1.1:80"], false),
            ),
        ),
        (
            "internalTrafficPolicy is local and there are multiple local endpoints",
            "Local",
            ["test-node", "test-node", "node2"],
            row(
                "pod to ClusterIP hits all local endpoints",
                "10.0.0.2",
                "172.30.1.1",
                80,
                to(&["10.0.1.1:80", "10.0.1.2:80"], false),
            ),
        ),
        (
            "internalTrafficPolicy is local and there are no local endpoints",
            "Local",
            ["node0", "node1", "node2"],
            row("no endpoints", "10.0.0.2", "172.30.1.1", 80, DROP),
        ),
    ];
    let mut report = Report::default();
    for (name, policy, nodes, flow) in cases {
        let svc = service(policy);
        let with_endpoints = svc.clone() + &endpoints(nodes);
        report
            .results
            .extend(subtest(name, &Fixture::default(), |p| {
                p.sync_valid(&with_endpoints)?;
                p.check(&[flow])?;
                // The EndpointSlice is deleted and the proxier resyncs.
                p.sync_valid(&svc)?;
                p.check(&[row(
                    "endpoints deleted",
                    "10.0.0.2",
                    "172.30.1.1",
                    80,
                    REJECT,
                )])
            }));
    }
    report.finish("TestInternalTrafficPolicy");
}

/// Service svc1 of TestTerminatingEndpointsTrafficPolicyLocal/Cluster.
fn terminating_service(policy: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: svc1, namespace: ns1}}
spec:
  type: LoadBalancer
  externalTrafficPolicy: {policy}
  clusterIP: 172.30.1.1
  selector: {{foo: bar}}
  healthCheckNodePort: 30000
  ports:
  - {{port: 80, protocol: TCP, targetPort: 80}}
status:
  loadBalancer:
    ingress: [{{ip: 1.2.3.4}}]
"#
    )
}

const RST: (bool, bool, bool) = (true, true, false);
const TERMINATING_SERVING: (bool, bool, bool) = (false, true, true);
const TERMINATING: (bool, bool, bool) = (false, false, true);

/// The four subtests of TestTerminatingEndpointsTrafficPolicy{Local,Cluster},
/// each with its endpoints and flows, and the two flows after deletion.
fn terminating_subtests(
    policy: &str,
    cases: Vec<(
        &'static str,
        Vec<vipr_tests::flow_table::Ep<'static>>,
        Vec<vipr_tests::flow_table::Row>,
    )>,
) -> Report {
    let svc = terminating_service(policy);
    let mut report = Report::default();
    for (name, endpoints, rows) in cases {
        let with_endpoints = svc.clone() + &slice("ns1", "svc1", 1, &[("", 80, "TCP")], &endpoints);
        report
            .results
            .extend(subtest(name, &Fixture::default(), |p| {
                p.sync_valid(&with_endpoints)?;
                p.check(&rows)?;
                p.sync_valid(&svc)?;
                p.check(&[
                    row(
                        "pod to clusterIP after endpoints deleted",
                        "10.0.0.2",
                        "172.30.1.1",
                        80,
                        REJECT,
                    ),
                    row(
                        "external to LB after endpoints deleted",
                        "203.0.113.2",
                        "1.2.3.4",
                        80,
                        REJECT,
                    ),
                ])
            }));
    }
    report
}

#[test]
fn test_terminating_endpoints_traffic_policy_local() {
    let pod = |output| row("pod to clusterIP", "10.0.0.2", "172.30.1.1", 80, output);
    let lb = |name, output| row(name, "203.0.113.2", "1.2.3.4", 80, output);
    let tn = Some("test-node");
    let cases = vec![
        (
            "ready endpoints exist",
            vec![
                ep_cond("10.0.1.1", tn, RST),
                ep_cond("10.0.1.2", tn, RST),
                ep_cond("10.0.1.3", tn, TERMINATING_SERVING),
                ep_cond("10.0.1.4", tn, TERMINATING),
                ep_cond("10.0.1.5", Some("node-1"), RST),
            ],
            vec![
                pod(to(&["10.0.1.1:80", "10.0.1.2:80", "10.0.1.5:80"], false)),
                lb("external to LB", to(&["10.0.1.1:80", "10.0.1.2:80"], false)),
            ],
        ),
        (
            "only terminating endpoints exist",
            vec![
                ep_cond("10.0.1.2", tn, TERMINATING_SERVING),
                ep_cond("10.0.1.3", tn, TERMINATING_SERVING),
                ep_cond("10.0.1.4", tn, TERMINATING),
                ep_cond("10.0.1.5", Some("node-1"), RST),
            ],
            vec![
                pod(to(&["10.0.1.5:80"], false)),
                lb("external to LB", to(&["10.0.1.2:80", "10.0.1.3:80"], false)),
            ],
        ),
        (
            "terminating endpoints on remote node",
            vec![ep_cond("10.0.1.5", Some("node-1"), TERMINATING_SERVING)],
            vec![
                pod(to(&["10.0.1.5:80"], false)),
                lb("external to LB, no locally-usable endpoints", DROP),
            ],
        ),
        (
            "no usable endpoints on any node",
            vec![
                ep_cond("10.0.1.5", tn, TERMINATING),
                ep_cond("10.0.1.5", Some("node-1"), TERMINATING),
            ],
            vec![
                row(
                    "pod to clusterIP, no usable endpoints",
                    "10.0.0.2",
                    "172.30.1.1",
                    80,
                    REJECT,
                ),
                lb("external to LB, no usable endpoints", REJECT),
            ],
        ),
    ];
    terminating_subtests("Local", cases).finish("TestTerminatingEndpointsTrafficPolicyLocal");
}

#[test]
fn test_terminating_endpoints_traffic_policy_cluster() {
    let pod = |output| row("pod to clusterIP", "10.0.0.2", "172.30.1.1", 80, output);
    let lb = |name, output| row(name, "203.0.113.2", "1.2.3.4", 80, output);
    let (tn, other) = (Some("test-node"), Some("another-node"));
    let cases = vec![
        (
            "ready endpoints exist",
            vec![
                ep_cond("10.0.1.1", tn, RST),
                ep_cond("10.0.1.2", tn, RST),
                ep_cond("10.0.1.3", other, TERMINATING_SERVING),
                ep_cond("10.0.1.4", other, TERMINATING),
                ep_cond("10.0.1.5", other, RST),
            ],
            vec![
                pod(to(&["10.0.1.1:80", "10.0.1.2:80", "10.0.1.5:80"], false)),
                lb(
                    "external to LB",
                    to(&["10.0.1.1:80", "10.0.1.2:80", "10.0.1.5:80"], true),
                )
                .differs(
                    to_each(&[
                        ("10.0.1.1:80", Masq::No),
                        ("10.0.1.2:80", Masq::No),
                        ("10.0.1.5:80", Masq::Node),
                    ]),
                    LOCAL_KEEPS_CLIENT,
                ),
            ],
        ),
        (
            "only terminating endpoints exist",
            vec![
                ep_cond("10.0.1.2", tn, TERMINATING_SERVING),
                ep_cond("10.0.1.3", tn, TERMINATING_SERVING),
                ep_cond("10.0.1.4", other, TERMINATING),
                ep_cond("10.0.1.5", other, TERMINATING_SERVING),
            ],
            vec![
                pod(to(&["10.0.1.2:80", "10.0.1.3:80", "10.0.1.5:80"], false)),
                lb(
                    "external to LB",
                    to(&["10.0.1.2:80", "10.0.1.3:80", "10.0.1.5:80"], true),
                )
                .differs(
                    to_each(&[
                        ("10.0.1.2:80", Masq::No),
                        ("10.0.1.3:80", Masq::No),
                        ("10.0.1.5:80", Masq::Node),
                    ]),
                    LOCAL_KEEPS_CLIENT,
                ),
            ],
        ),
        (
            "terminating endpoints on remote node",
            vec![ep_cond("10.0.1.5", Some("node-1"), TERMINATING_SERVING)],
            vec![
                pod(to(&["10.0.1.5:80"], false)),
                lb("external to LB", to(&["10.0.1.5:80"], true)),
            ],
        ),
        (
            "no usable endpoints on any node",
            vec![
                ep_cond("10.0.1.5", tn, TERMINATING),
                ep_cond("10.0.1.5", Some("node-1"), TERMINATING),
            ],
            vec![
                row(
                    "pod to clusterIP, no usable endpoints",
                    "10.0.0.2",
                    "172.30.1.1",
                    80,
                    REJECT,
                ),
                lb("external to LB, no usable endpoints", REJECT),
            ],
        ),
    ];
    terminating_subtests("Cluster", cases).finish("TestTerminatingEndpointsTrafficPolicyCluster");
}

#[test]
fn test_internal_external_masquerade() {
    let mut manifests = String::from(
        r#"
apiVersion: v1
kind: Service
metadata: {name: svc1, namespace: ns1}
spec:
  type: LoadBalancer
  clusterIP: 172.30.0.41
  healthCheckNodePort: 30001
  ports:
  - {name: p80, port: 80, protocol: TCP, nodePort: 3001}
status:
  loadBalancer:
    ingress: [{ip: 1.2.3.4}]
---
apiVersion: v1
kind: Service
metadata: {name: svc2, namespace: ns2}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  clusterIP: 172.30.0.42
  healthCheckNodePort: 30002
  ports:
  - {name: p80, port: 80, protocol: TCP, nodePort: 3002}
status:
  loadBalancer:
    ingress: [{ip: 5.6.7.8}]
---
apiVersion: v1
kind: Service
metadata: {name: svc3, namespace: ns3}
spec:
  type: LoadBalancer
  internalTrafficPolicy: Local
  clusterIP: 172.30.0.43
  healthCheckNodePort: 30003
  ports:
  - {name: p80, port: 80, protocol: TCP, nodePort: 3003}
status:
  loadBalancer:
    ingress: [{ip: 9.10.11.12}]
"#,
    );
    for (ns, svc, n) in [("ns1", "svc1", 1), ("ns2", "svc2", 2), ("ns3", "svc3", 3)] {
        let local = format!("10.180.0.{n}");
        let remote = format!("10.180.1.{n}");
        manifests += &slice(
            ns,
            svc,
            1,
            &[("p80", 80, "TCP")],
            &[ep(&local, Some("test-node")), ep(&remote, None)],
        );
    }
    let all = |n: u8, masq| {
        let (a, b) = (format!("10.180.0.{n}:80"), format!("10.180.1.{n}:80"));
        to(&[&a, &b], masq)
    };
    let only_local = |n: u8, masq| to(&[&format!("10.180.0.{n}:80")], masq);
    // External clients of an eTP Cluster frontend: the local endpoint keeps
    // the client address (see LOCAL_KEEPS_CLIENT).
    let external_vipr = |n: u8| {
        let (a, b) = (format!("10.180.0.{n}:80"), format!("10.180.1.{n}:80"));
        to_each(&[(&a, Masq::No), (&b, Masq::Node)])
    };
    let (pod, node, ext) = ("10.0.0.2", "192.168.0.2", "203.0.113.2");
    #[rustfmt::skip]
    let rows = [
        row("pod to ClusterIP", pod, "172.30.0.41", 80, all(1, false)),
        row("pod to NodePort", pod, node, 3001, all(1, true)).differs(all(1, false), POD_NO_MASQ),
        row("pod to LB", pod, "1.2.3.4", 80, all(1, true)).differs(all(1, false), POD_NO_MASQ),
        row("node to ClusterIP", node, "172.30.0.41", 80, all(1, true)),
        row("node to NodePort", node, node, 3001, all(1, true)),
        row("node to LB", node, "1.2.3.4", 80, all(1, true)),
        row("external to ClusterIP", ext, "172.30.0.41", 80, all(1, true))
            .differs(UNTOUCHED, CLUSTER_IP_NOT_EXTERNAL),
        row("external to NodePort", ext, node, 3001, all(1, true))
            .differs(external_vipr(1), LOCAL_KEEPS_CLIENT),
        row("external to LB", ext, "1.2.3.4", 80, all(1, true))
            .differs(external_vipr(1), LOCAL_KEEPS_CLIENT),
        row("pod to ClusterIP with eTP:Local", pod, "172.30.0.42", 80, all(2, false)),
        row("pod to NodePort with eTP:Local", pod, node, 3002, all(2, false)),
        row("pod to LB with eTP:Local", pod, "5.6.7.8", 80, all(2, false)),
        row("node to ClusterIP with eTP:Local", node, "172.30.0.42", 80, all(2, true)),
        // [sic] kube-proxy's row sends to 3001, svc1's NodePort.
        row("node to NodePort with eTP:Local", node, node, 3001, all(1, true)),
        row("node to LB with eTP:Local", node, "5.6.7.8", 80, all(2, true)),
        row("external to ClusterIP with eTP:Local", ext, "172.30.0.42", 80, all(2, true))
            .differs(UNTOUCHED, CLUSTER_IP_NOT_EXTERNAL),
        row("external to NodePort with eTP:Local", ext, node, 3002, only_local(2, false)),
        row("external to LB with eTP:Local", ext, "5.6.7.8", 80, only_local(2, false)),
        row("pod to ClusterIP with iTP:Local", pod, "172.30.0.43", 80, only_local(3, false)),
        row("pod to NodePort with iTP:Local", pod, node, 3003, all(3, true))
            .differs(all(3, false), POD_NO_MASQ),
        row("pod to LB with iTP:Local", pod, "9.10.11.12", 80, all(3, true))
            .differs(all(3, false), POD_NO_MASQ),
        row("node to ClusterIP with iTP:Local", node, "172.30.0.43", 80, only_local(3, true)),
        row("node to NodePort with iTP:Local", node, node, 3003, all(3, true)),
        row("node to LB with iTP:Local", node, "9.10.11.12", 80, all(3, true)),
        row("external to ClusterIP with iTP:Local", ext, "172.30.0.43", 80, only_local(3, true))
            .differs(UNTOUCHED, CLUSTER_IP_NOT_EXTERNAL),
        row("external to NodePort with iTP:Local", ext, node, 3003, all(3, true))
            .differs(external_vipr(3), LOCAL_KEEPS_CLIENT),
        row("external to LB with iTP:Local", ext, "9.10.11.12", 80, all(3, true))
            .differs(external_vipr(3), LOCAL_KEEPS_CLIENT),
    ];
    // iptables mode adds three rows (localhostNodePorts on, NodePorts on
    // every local address).
    #[rustfmt::skip]
    let localhost_rows = [
        row("localhost to NodePort", "127.0.0.1", "127.0.0.1", 3001, all(1, true)),
        row("localhost to NodePort with eTP:Local", "127.0.0.1", "127.0.0.1", 3002, all(2, true)),
        row("localhost to NodePort with iTP:Local", "127.0.0.1", "127.0.0.1", 3003, all(3, true)),
    ];
    let mut report = Report::default();
    report.skip(
        3 * 27,
        "subtests 'no LocalTrafficDetector', 'masqueradeAll', 'masqueradeAll, no \
         LocalTrafficDetector': vipr has neither option",
    );
    report
        .results
        .extend(subtest("base", &Fixture::default(), |p| {
            p.sync_valid(&manifests)?;
            p.check(&rows)
        }));
    let iptables = Fixture {
        nodeport_addresses: vec![NODE_IP.into(), NODE_IP_ALT.into(), NODE_EXTERNAL_IP.into()],
        nodeport_localhost: true,
        ipv6: false,
    };
    report
        .results
        .extend(subtest("iptables: base", &iptables, |p| {
            p.sync_valid(&manifests)?;
            p.check(&localhost_rows)
        }));
    report.finish("TestInternalExternalMasquerade");
}

/// What vipr's health checks answer, one line per port ("none" for none).
fn health_checks(fixture: &Fixture, manifests: &str) -> Vec<String> {
    let (model, errors) = model_of(fixture, manifests);
    assert!(errors.is_empty(), "{errors:?}");
    let checks: Vec<String> = healthcheck::desired(&model)
        .iter()
        .map(|(port, check)| {
            let (code, _) = healthcheck::response(check);
            format!(
                "{port}: {}/{} localEndpoints {} → {code}",
                check.service.namespace, check.service.name, check.local_endpoints
            )
        })
        .collect();
    if checks.is_empty() {
        vec!["none".into()]
    } else {
        checks
    }
}

#[test]
fn test_health_check_node_port() {
    // iptables' test: NodePorts restricted to 127.0.0.0/8, which vipr's
    // agent resolves to no node address (it never takes loopback there);
    // localhostNodePorts as in the iptables fixture.
    let fixture = Fixture {
        nodeport_addresses: vec![],
        nodeport_localhost: true,
        ipv6: false,
    };
    let manifests = r#"
apiVersion: v1
kind: Service
metadata: {name: svc1, namespace: ns1}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  clusterIP: 172.30.0.42
  healthCheckNodePort: 30000
  ports:
  - {name: p80, port: 80, protocol: TCP, nodePort: 3001}
"#;
    let mut report = Report::default();
    // kube-proxy ACCEPTs the port in its firewall; the health check itself
    // answers 503 with no local endpoints.
    report.results.push(RowResult::new(
        "TestHealthCheckNodePort",
        "firewall accepts HealthCheckNodePort",
        vec!["30000: ns1/svc1 localEndpoints 0 → 503".into()],
        health_checks(&fixture, manifests),
    ));
    report.results.push(RowResult::new(
        "TestHealthCheckNodePort",
        "HealthCheckNodePort no longer has any rule",
        vec!["none".into()],
        health_checks(&fixture, ""),
    ));
    report.finish("TestHealthCheckNodePort");
}

#[test]
fn test_health_check_node_port_when_terminating() {
    // kube-proxy reads LocalReadyEndpoints() of a ClusterIP Service; vipr
    // exposes that count only through health checks, so the Service gets
    // type LoadBalancer, eTP Local and a healthCheckNodePort (as the
    // winkernel version of this test has it).
    let service = r#"
apiVersion: v1
kind: Service
metadata: {name: svc1, namespace: ns1}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  clusterIP: 172.30.1.1
  selector: {foo: bar}
  healthCheckNodePort: 30000
  ports:
  - {port: 80, protocol: TCP, targetPort: 80, nodePort: 30010}
"#;
    let tn = Some("test-node");
    let initial = String::from(service)
        + &slice(
            "ns1",
            "svc1",
            1,
            &[("", 80, "TCP")],
            &[
                ep_cond("10.0.1.1", tn, RST),
                ep_cond("10.0.1.2", tn, RST),
                ep_cond("10.0.1.3", tn, RST),
                // Ready false; serving follows ready, terminating unset.
                ep_cond("10.0.1.4", tn, (false, false, false)),
            ],
        );
    let terminating = String::from(service)
        + &slice(
            "ns1",
            "svc1",
            1,
            &[("", 80, "TCP")],
            &[
                ep_cond("10.0.1.1", tn, (false, true, false)),
                ep_cond("10.0.1.2", tn, TERMINATING_SERVING),
                ep_cond("10.0.1.3", tn, TERMINATING_SERVING),
                ep_cond("10.0.1.4", tn, TERMINATING),
            ],
        );
    let fixture = Fixture::default();
    let mut report = Report::default();
    report.results.push(RowResult::new(
        "TestHealthCheckNodePortWhenTerminating",
        "three ready local endpoints: one service with local ready endpoints",
        vec!["30000: ns1/svc1 localEndpoints 3 → 200".into()],
        health_checks(&fixture, &initial),
    ));
    report.results.push(RowResult::new(
        "TestHealthCheckNodePortWhenTerminating",
        "all local endpoints terminating or not ready: no local ready endpoints",
        vec!["30000: ns1/svc1 localEndpoints 0 → 503".into()],
        health_checks(&fixture, &terminating),
    ));
    report.finish("TestHealthCheckNodePortWhenTerminating");
}

#[test]
fn test_bad_ips() {
    // kube-proxy's test compares rules; these flows check the same facts
    // (every address normalised), so the row names are ours.
    let manifests = String::from(
        r#"
apiVersion: v1
kind: Service
metadata: {name: svc1, namespace: ns1}
spec:
  type: LoadBalancer
  clusterIP: 172.30.0.041
  externalIPs: [192.168.099.022]
  loadBalancerSourceRanges: [203.0.113.000/025]
  ports:
  - {name: p80, port: 80, protocol: TCP, nodePort: 3001}
status:
  loadBalancer:
    ingress: [{ip: 1.2.3.004}]
"#,
    ) + &slice(
        "ns1",
        "svc1",
        1,
        &[("p80", 80, "TCP")],
        &[ep("10.180.00.001", None)],
    );
    let ep1_masq = || to(&["10.180.0.1:80"], true);
    #[rustfmt::skip]
    let rows = [
        row("ClusterIP 172.30.0.041 is 172.30.0.41", "10.0.0.2", "172.30.0.41", 80, to(&["10.180.0.1:80"], false)),
        row("LoadBalancer IP 1.2.3.004 is 1.2.3.4 (client in 203.0.113.000/025)", "203.0.113.2", "1.2.3.4", 80, ep1_masq()),
        row("source range 203.0.113.000/025 is 203.0.113.0/25 (blocks 203.0.113.130)", "203.0.113.130", "1.2.3.4", 80, DROP),
        row("external IP 192.168.099.022 is 192.168.99.22", "203.0.113.2", "192.168.99.22", 80, ep1_masq()),
        row("endpoint 10.180.00.001 is 10.180.0.1 (through the NodePort)", "203.0.113.2", "192.168.0.2", 3001, ep1_masq()),
    ];
    let mut report = Report::default();
    report
        .results
        .extend(subtest("TestBadIPs", &Fixture::default(), |p| {
            let errors = p.sync(&manifests)?;
            p.results.push(RowResult::new(
                "TestBadIPs",
                "the Service and EndpointSlice are accepted",
                vec![],
                errors,
            ));
            p.check(&rows)
        }));
    report.finish("TestBadIPs");
}
