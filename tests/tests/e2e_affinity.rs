//! Session affinity (ClientIP) end to end, on every path a client can take:
//! a pod (TC), the node itself (socket hooks), and the outside through a
//! NodePort (XDP in native mode, then TC alone).
use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use proxy_common::Counter;
use vipr_tests::{demo::wait_until, echo::tcp_request_full, external::*};

const TIMEOUT: Duration = Duration::from_secs(2);
const STICKY_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 63);
const STICKY_NODE_PORT: u16 = 30_090;

/// A NodePort Service with ClientIP affinity on both pods.
fn sticky_manifest() -> String {
    let endpoints: String = PODS
        .iter()
        .map(|(_, node, ip)| {
            format!("- {{addresses: [{ip}], nodeName: {node}, conditions: {{ready: true}}}}\n")
        })
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: sticky, namespace: aff}}\nspec:\n  type: NodePort\n  clusterIP: {STICKY_IP}\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: 600}}}}\n  ports: [{{name: http, port: 80, targetPort: 8080, nodePort: {STICKY_NODE_PORT}, protocol: TCP}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: sticky-x, namespace: aff, labels: {{kubernetes.io/service-name: sticky}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n{endpoints}"
    )
}

/// Who answered `n` new connections from `netns` to `addr`.
fn answers(netns: &str, addr: SocketAddr, n: usize) -> BTreeSet<String> {
    (0..n)
        .map(|_| {
            tcp_request_full(netns, addr, TIMEOUT)
                .expect("request")
                .name
        })
        .collect()
}

#[test]
fn clients_stick_to_one_endpoint_on_every_path() {
    for xdp in ["native", "off"] {
        eprintln!("-- with --xdp {xdp}");
        sticky_on_every_path(xdp);
    }
}

/// `xdp`: the agents' `--xdp`; with it on, the NodePort path is XDP's.
fn sticky_on_every_path(xdp: &str) {
    let c = ExternalCluster::start(&vipr_tests::vipr_bin(), xdp).expect("cluster");
    c.write_manifest("sticky.yaml", &sticky_manifest()).unwrap();
    let cluster_ip = SocketAddr::from((STICKY_IP, 80));
    let pod = c.topology.netns("web-1").unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || {
            tcp_request_full(&pod, cluster_ip, TIMEOUT).is_ok()
        }),
        "the sticky Service is not served"
    );
    let followed_before = c.counter("node1", Counter::AffinityFollowed).unwrap();

    // A pod: the TC path.
    assert_eq!(answers(&pod, cluster_ip, 20).len(), 1, "pod");
    // The node itself: the socket hooks.
    let node1 = c.topology.netns("node1").unwrap();
    {
        let _inside = c.node_cgroup("node1").enter().unwrap();
        assert_eq!(answers(&node1, cluster_ip, 20).len(), 1, "node");
    }
    // The outside, through node1's NodePort.
    let node_port = SocketAddr::from((NODE_IPS[0], STICKY_NODE_PORT));
    assert_eq!(answers(&c.client, node_port, 20).len(), 1, "outside");

    if xdp != "off" {
        // XDP translated them (sent on itself, or handed to the stack for a
        // local endpoint), whichever endpoint the client sticks to.
        let by_xdp = c.counter("node1", Counter::XdpTransmitted).unwrap()
            + c.counter("node1", Counter::XdpToStack).unwrap();
        assert!(by_xdp >= 20, "XDP handled {by_xdp} NodePort packets");
    }
    let followed = c.counter("node1", Counter::AffinityFollowed).unwrap() - followed_before;
    assert!(followed >= 3 * 19, "affinity followed {followed} times");
    // Without affinity the same clients spread: the stickiness is not luck.
    let web = SocketAddr::from((Ipv4Addr::new(10, 96, 0, 50), 80));
    assert_eq!(answers(&pod, web, 20).len(), 2, "the web Service spreads");
}
