//! External IPv6 end to end (`--ipv6 on`): a client outside the cluster
//! reaches a dual-stack NodePort Service on the nodes' IPv6 addresses under
//! both external traffic policies, while the same Service answers in IPv4;
//! and a pod reaching itself through an IPv6 Service.
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use proxy_common::Counter;
use vipr_tests::{demo::wait_until, echo, external::*};

const TIMEOUT: Duration = Duration::from_secs(2);
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
const CLUSTER_PORT: u16 = 30_090;
const LOCAL_PORT: u16 = 30_091;
const UDP_PORT: u16 = 30_092;
const LOCAL_CLUSTER_IP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x71);

/// `dual6`: eTP Cluster, TCP and UDP, endpoints on both nodes in both
/// families; `local6`: eTP Local, its only endpoint web-2 on node2.
fn manifest(endpoints6: &[(Ipv6Addr, &str)]) -> String {
    let line = |ip: &dyn std::fmt::Display, node: &str| {
        format!("- {{addresses: ['{ip}'], nodeName: {node}}}\n")
    };
    let v4: String = PODS.iter().map(|(_, node, ip)| line(ip, node)).collect();
    let v6: String = endpoints6.iter().map(|(ip, node)| line(ip, node)).collect();
    let web2: String = endpoints6
        .iter()
        .filter(|(_, node)| *node == "node2")
        .map(|(ip, node)| line(ip, node))
        .collect();
    let slice = |service: &str, name: &str, family: &str, list: &str| {
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: ext, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: {family}\nports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: 5353, protocol: UDP}}]\nendpoints:\n{list}"
        )
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: dual6, namespace: ext}}\nspec:\n  type: NodePort\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv6, IPv4]\n  clusterIPs: ['fd00:96::70', 10.96.0.70]\n  ports:\n  - {{name: http, port: 80, targetPort: 8080, nodePort: {CLUSTER_PORT}}}\n  - {{name: dns, port: 53, targetPort: 5353, nodePort: {UDP_PORT}, protocol: UDP}}\n{}{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: local6, namespace: ext}}\nspec:\n  type: NodePort\n  externalTrafficPolicy: Local\n  ipFamilies: [IPv6]\n  clusterIPs: ['{LOCAL_CLUSTER_IP}']\n  ports: [{{name: http, port: 80, targetPort: 8080, nodePort: {LOCAL_PORT}}}]\n{}",
        slice("dual6", "dual6-v6", "IPv6", &v6),
        slice("dual6", "dual6-v4", "IPv4", &v4),
        slice("local6", "local6-v6", "IPv6", &web2),
    )
}

#[test]
fn an_external_ipv6_client_reaches_nodeports_under_both_traffic_policies() {
    run("off");
}

/// The same through the XDP fast path, which must then be what sends the
/// masqueraded IPv6 packets back out.
#[test]
fn the_xdp_fast_path_serves_external_ipv6_alike() {
    run("native");
}

fn run(xdp: &str) {
    let mut cluster =
        ExternalCluster::start_dual_stack(&vipr_tests::vipr_bin(), xdp, &["--socket-lb", "host"])
            .expect("cluster");
    let result = external6(&mut cluster);
    if let Err(e) = result {
        eprintln!("{}", cluster.logs());
        panic!("{e:?}");
    }
}

fn external6(cluster: &mut ExternalCluster) -> Result<()> {
    let servers6 = cluster.start_ipv6_servers()?;
    let endpoints6 = PODS
        .iter()
        .map(|(pod, node, _)| Ok((cluster.topology.pod_ip6(pod)?, *node)))
        .collect::<Result<Vec<_>>>()?;
    cluster.write_manifest("dual6.yaml", &manifest(&endpoints6))?;
    let client = cluster.client.clone();
    let node1 = cluster.topology.node_ip6("node1")?;
    let node2 = cluster.topology.node_ip6("node2")?;

    // Both agents must have applied the manifest.
    for node in [node1, node2] {
        let nodeport = SocketAddr::from((node, CLUSTER_PORT));
        let served = wait_until(APPLY_TIMEOUT, || {
            echo::tcp_request(&client, nodeport, TIMEOUT).is_ok()
        });
        ensure!(served, "no answer from {nodeport}");
    }
    // eTP Cluster: connections through node1 spread over both nodes' pods.
    let nodeport = SocketAddr::from((node1, CLUSTER_PORT));
    let seen_before: Vec<usize> = servers6.iter().map(|s| s.peers().len()).collect();
    // Masqueraded packets leave by a FIB redirect on TC, by XDP_TX on XDP.
    let sent_by = if cluster.xdp == "off" {
        Counter::TcRedirected
    } else {
        Counter::XdpTransmitted
    };
    let sent_before = cluster.counter("node1", sent_by)?;
    let mut names = BTreeSet::new();
    for _ in 0..24 {
        names.insert(echo::tcp_request(&client, nodeport, TIMEOUT).context("TCP")?);
    }
    ensure!(names.len() == 2, "{nodeport} reached only {names:?}");
    // Masqueraded behind node1 where the endpoint is on node2 (its reply
    // must come back through node1), the client's own address where local.
    let peers = |server: usize| -> BTreeSet<IpAddr> {
        let peers = servers6[server].peers();
        peers[seen_before[server]..]
            .iter()
            .map(|p| p.ip())
            .collect()
    };
    let client_ip = IpAddr::V6(CLIENT_IP6);
    ensure!(peers(0) == [client_ip].into(), "web-1 saw {:?}", peers(0));
    ensure!(
        peers(1) == [IpAddr::V6(node1)].into(),
        "web-2 saw {:?}",
        peers(1)
    );
    let sent = cluster.counter("node1", sent_by)? - sent_before;
    ensure!(
        sent > 0,
        "no masqueraded IPv6 packet was sent out by {}",
        sent_by.name()
    );

    trace_nodeport6(cluster, node1, &endpoints6)?;

    // UDP through node2: the reply comes from the NodePort itself.
    let udp = SocketAddr::from((node2, UDP_PORT));
    let mut udp_names = BTreeSet::new();
    for _ in 0..12 {
        let (name, from) = echo::udp_request(&client, udp, TIMEOUT).context("UDP")?;
        ensure!(from == udp, "UDP reply from {from}, not {udp}");
        udp_names.insert(name);
    }
    ensure!(udp_names.len() == 2, "{udp} reached only {udp_names:?}");

    // The same Service in IPv4 at the same time.
    let nodeport4 = SocketAddr::from((NODE_IPS[0], CLUSTER_PORT));
    echo::tcp_request(&client, nodeport4, TIMEOUT).context("the IPv4 NodePort")?;

    // eTP Local: node2 serves with its own pod, keeping the client address;
    // node1 has no endpoint of its own and drops.
    let local = SocketAddr::from((node2, LOCAL_PORT));
    for _ in 0..4 {
        let name = echo::tcp_request(&client, local, TIMEOUT).context("eTP Local")?;
        ensure!(name == "web-2", "eTP Local on node2 answered from {name}");
    }
    let seen = servers6[1].peers();
    ensure!(
        seen.last().map(|p| p.ip()) == Some(client_ip),
        "eTP Local: web-2 last saw {:?}, not the client",
        seen.last()
    );
    let dropped_before = cluster.counter("node1", Counter::DropNoLocalEndpoints)?;
    let refused = echo::tcp_request(&client, SocketAddr::from((node1, LOCAL_PORT)), TIMEOUT);
    ensure!(refused.is_err(), "node1 answered eTP Local: {refused:?}");
    ensure!(
        cluster.counter("node1", Counter::DropNoLocalEndpoints)? > dropped_before,
        "node1 did not count the eTP Local drop"
    );

    // Hairpin: web-2 reaching local6's ClusterIP, whose only endpoint it
    // is, is answered by itself from node2's address.
    let pod = cluster.topology.netns("web-2")?;
    let cluster_ip = SocketAddr::from((LOCAL_CLUSTER_IP, 80));
    let name = echo::tcp_request(&pod, cluster_ip, TIMEOUT).context("hairpin")?;
    ensure!(name == "web-2", "hairpin answered by {name}");
    let seen = servers6[1].peers().last().map(|p| p.ip());
    ensure!(
        seen == Some(IpAddr::V6(node2)),
        "hairpin: web-2 saw {seen:?}, not node2's address"
    );
    Ok(())
}

/// `vipr trace` of outside IPv6 flows to node1's NodePort (through XDP when
/// the agents run it): the endpoint chosen, masqueraded behind node1's
/// IPv6 address exactly when it is on node2.
fn trace_nodeport6(
    cluster: &ExternalCluster,
    node1: Ipv6Addr,
    endpoints6: &[(Ipv6Addr, &str)],
) -> Result<()> {
    let node_port = format!("[{node1}]:{CLUSTER_PORT}/tcp");
    let trace = |port: u16| -> Result<serde_json::Value> {
        let client = format!("[{CLIENT_IP6}]:{port}");
        let mut args = vec!["trace", &client, &node_port, "--from", "external"];
        if cluster.xdp != "off" {
            args.push("--xdp");
        }
        cluster.vipr_json("node1", &args)
    };
    // The agent rewrites its name index at most every 2 s: until then a
    // trace shows the frontend without its Service's name and type.
    let named = wait_until(APPLY_TIMEOUT, || {
        trace(41_000).is_ok_and(|r| r["service"]["type"] == "NodePort")
    });
    ensure!(named, "the name index never named {node_port}");
    for port in 41_000..41_008u16 {
        let r = trace(port)?;
        ensure!(r["service"]["type"] == "NodePort", "{r:#}");
        let ip: Ipv6Addr = r["chosen"]["ip"].as_str().context("chosen")?.parse()?;
        let (_, node) = endpoints6
            .iter()
            .find(|(endpoint, _)| *endpoint == ip)
            .with_context(|| format!("{ip} is no endpoint: {r:#}"))?;
        let masquerade = r["masquerade"].as_str();
        ensure!(masquerade.is_some() == (*node == "node2"), "{r:#}");
        if let Some(at) = masquerade {
            ensure!(at.starts_with(&format!("[{node1}]:")), "{r:#}");
        }
    }
    Ok(())
}
