//! Socket load balancing in IPv6 end to end (`--socket-lb host --ipv6
//! on`): processes in node1's own network namespace and cgroup reach a
//! dual-stack Service's IPv6 ClusterIP through the connect6, sendmsg6,
//! recvmsg6 and getpeername6 hooks (endpoints on both nodes, the ClusterIP
//! shown as the peer and as the UDP reply's source), its IPv4 ClusterIP as
//! a v4-mapped address on IPv6 sockets, and an IPv6 Service without
//! endpoints refuses connect() at once.
use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use proxy_common::Counter;
use vipr_tests::{
    demo::wait_until,
    echo::{self, ClientError, EchoServer, tcp_request_full},
    external::*,
};

const TIMEOUT: Duration = Duration::from_secs(2);
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
const CLUSTER_IP6: &str = "fd00:96::70";
const CLUSTER_IP4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 70);
const EMPTY_IP6: &str = "fd00:96::71";
/// Connections enough to land on both endpoints (one in 2^24 misses).
const CONNECTIONS: usize = 24;

/// A dual-stack Service on both pods in both families, and an IPv6-only
/// one without endpoints.
fn manifest(endpoints6: &[(String, &str)]) -> String {
    let endpoints = |list: &[(String, &str)]| -> String {
        list.iter()
            .map(|(ip, node)| format!("- {{addresses: ['{ip}'], nodeName: {node}}}\n"))
            .collect()
    };
    let v4: Vec<(String, &str)> = PODS
        .iter()
        .map(|(_, node, ip)| (ip.to_string(), *node))
        .collect();
    let slice = |name: &str, family: &str, list: &[(String, &str)]| {
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: sock6, labels: {{kubernetes.io/service-name: dual}}}}\naddressType: {family}\nports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: 5353, protocol: UDP}}]\nendpoints:\n{}",
            endpoints(list)
        )
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: dual, namespace: sock6}}\nspec:\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  clusterIPs: [{CLUSTER_IP4}, '{CLUSTER_IP6}']\n  ports: [{{name: http, port: 80, targetPort: 8080}}, {{name: dns, port: 53, targetPort: 5353, protocol: UDP}}]\n{}{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: none6, namespace: sock6}}\nspec:\n  ipFamilies: [IPv6]\n  clusterIPs: ['{EMPTY_IP6}']\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n",
        slice("dual-v4", "IPv4", &v4),
        slice("dual-v6", "IPv6", endpoints6),
    )
}

#[test]
fn host_clients_reach_ipv6_and_v4_mapped_services_through_the_socket_hooks() {
    let mut cluster = ExternalCluster::start_with_args(
        &vipr_tests::vipr_bin(),
        "off",
        &["--socket-lb", "host", "--ipv6", "on"],
    )
    .expect("cluster");
    let result = host_clients(&mut cluster);
    if let Err(e) = result {
        eprintln!("{}", cluster.logs());
        panic!("{e:?}");
    }
}

fn host_clients(cluster: &mut ExternalCluster) -> Result<()> {
    cluster.topology.enable_ipv6()?;
    let mut servers6: Vec<EchoServer> = Vec::new();
    let mut endpoints6 = Vec::new();
    for (pod, node, _) in PODS {
        let ip = cluster.topology.pod_ip6(pod)?;
        let netns = cluster.topology.netns(pod)?;
        servers6.push(EchoServer::start_on(
            &netns,
            pod,
            ip.into(),
            Some(8080),
            Some(5353),
        )?);
        endpoints6.push((ip.to_string(), node));
    }
    cluster.write_manifest("sock6.yaml", &manifest(&endpoints6))?;
    let node1 = cluster.topology.netns("node1")?;
    let node1_ip6 = cluster.topology.node_ip6("node1")?;
    // The node's own sockets meet the hooks in the node's cgroup.
    let _inside = cluster.node_cgroup("node1").enter()?;

    let cluster_ip6: Ipv6Addr = CLUSTER_IP6.parse()?;
    let http6 = SocketAddr::from((cluster_ip6, 80));
    let served = wait_until(APPLY_TIMEOUT, || {
        tcp_request_full(&node1, http6, TIMEOUT).is_ok()
    });
    ensure!(served, "no answer from {http6}");
    let translated_before = cluster.counter("node1", Counter::SockTranslated)?;
    let dnat_before = cluster.counter("node1", Counter::DnatNew)?;

    // TCP: new connections spread over the endpoints of both nodes, and
    // getpeername shows the ClusterIP.
    let mut names = BTreeSet::new();
    for _ in 0..CONNECTIONS {
        let reply = tcp_request_full(&node1, http6, TIMEOUT).context("TCP over IPv6")?;
        ensure!(reply.peer == http6, "getpeername showed {}", reply.peer);
        names.insert(reply.name);
    }
    ensure!(names.len() == 2, "IPv6 connections reached only {names:?}");
    // The endpoints see the node's own address: the socket was sent to them.
    let peers: Vec<SocketAddr> = servers6.iter().flat_map(|s| s.peers()).collect();
    ensure!(
        peers.iter().all(|p| p.ip() == node1_ip6),
        "endpoints saw {peers:?}, not {node1_ip6}"
    );

    // UDP, unconnected: the reply's source is the ClusterIP (recvmsg6).
    let dns6 = SocketAddr::from((cluster_ip6, 53));
    let (name, from) = echo::udp_request(&node1, dns6, TIMEOUT).context("UDP over IPv6")?;
    ensure!(PODS.iter().any(|p| p.0 == name), "UDP answered by {name:?}");
    ensure!(from == dns6, "the UDP reply came from {from}, not {dns6}");
    // Connected: connect6 chose the backend once.
    let name = echo::udp_connected_request(&node1, dns6, TIMEOUT).context("connected UDP")?;
    ensure!(PODS.iter().any(|p| p.0 == name), "UDP answered by {name:?}");

    let translated = cluster.counter("node1", Counter::SockTranslated)? - translated_before;
    ensure!(
        translated >= CONNECTIONS as u64 + 2,
        "socket translations: {translated}"
    );
    ensure!(
        cluster.counter("node1", Counter::DnatNew)? == dnat_before,
        "the node's IPv6 connections went through TC NAT"
    );

    // The IPv4 ClusterIP, v4-mapped on IPv6 sockets (dual-stack clients):
    // IPv4 endpoints, and the mapped ClusterIP shown back.
    let mapped = SocketAddr::from((CLUSTER_IP4.to_ipv6_mapped(), 80));
    let mut names = BTreeSet::new();
    for _ in 0..CONNECTIONS {
        let reply = tcp_request_full(&node1, mapped, TIMEOUT).context("v4-mapped TCP")?;
        ensure!(reply.peer == mapped, "getpeername showed {}", reply.peer);
        names.insert(reply.name);
    }
    ensure!(names.len() == 2, "v4-mapped connections reached {names:?}");
    let mapped_dns = SocketAddr::from((CLUSTER_IP4.to_ipv6_mapped(), 53));
    let (name, from) = echo::udp_request(&node1, mapped_dns, TIMEOUT).context("v4-mapped UDP")?;
    ensure!(PODS.iter().any(|p| p.0 == name), "UDP answered by {name:?}");
    ensure!(from == mapped_dns, "the v4-mapped reply came from {from}");

    // An IPv6 Service without endpoints: connect() fails at once.
    let refused_before = cluster.counter("node1", Counter::SockRefused)?;
    let empty = SocketAddr::from((EMPTY_IP6.parse::<Ipv6Addr>()?, 80));
    let start = Instant::now();
    match tcp_request_full(&node1, empty, TIMEOUT) {
        Err(ClientError::Refused) => {}
        other => anyhow::bail!("{empty}: expected a refusal, got {other:?}"),
    }
    // Refused, not timed out (the client waits 2 s).
    ensure!(
        start.elapsed() < Duration::from_secs(1),
        "refused after {:?}",
        start.elapsed()
    );
    ensure!(
        cluster.counter("node1", Counter::SockRefused)? > refused_before,
        "the refusal was not the socket hooks'"
    );
    Ok(())
}
