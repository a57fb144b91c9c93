//! Socket load balancing in IPv6 end to end (`--socket-lb host --ipv6
//! on`): processes in node1's own network namespace and cgroup reach a
//! dual-stack Service's IPv6 ClusterIP through the connect6, sendmsg6,
//! recvmsg6 and getpeername6 hooks (endpoints on both nodes, the ClusterIP
//! shown as the peer and as the UDP reply's source), its IPv4 ClusterIP as
//! a v4-mapped address on IPv6 sockets, and an IPv6 Service without
//! endpoints refuses connect() at once; connected UDP sockets of both
//! kinds leave an endpoint that leaves.
use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use proxy_common::Counter;
use vipr_tests::{
    demo::wait_until,
    echo::{self, ClientError, EchoServer, tcp_request_full},
    external::*,
    netns,
};

const TIMEOUT: Duration = Duration::from_secs(2);
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
const CLUSTER_IP6: &str = "fd00:96::70";
const CLUSTER_IP4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 70);
const EMPTY_IP6: &str = "fd00:96::71";
/// Connections enough to land on both endpoints (one in 2^24 misses).
const CONNECTIONS: usize = 24;

/// A dual-stack Service on `v4_pods` in IPv4 and `v6_pods` in IPv6, and
/// an IPv6-only one without endpoints.
fn manifest(cluster: &ExternalCluster, v4_pods: &[&str], v6_pods: &[&str]) -> Result<String> {
    let node_of = |pod: &str| PODS.iter().find(|p| p.0 == pod).map(|p| p.1);
    let mut v4 = Vec::new();
    for (_, node, ip) in PODS.iter().filter(|p| v4_pods.contains(&p.0)) {
        v4.push((ip.to_string(), *node));
    }
    let mut v6 = Vec::new();
    for pod in v6_pods {
        let node = node_of(pod).context("known pod")?;
        v6.push((cluster.topology.pod_ip6(pod)?.to_string(), node));
    }
    let endpoints = |list: &[(String, &str)]| -> String {
        list.iter()
            .map(|(ip, node)| format!("- {{addresses: ['{ip}'], nodeName: {node}}}\n"))
            .collect()
    };
    let slice = |name: &str, family: &str, list: &[(String, &str)]| {
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: sock6, labels: {{kubernetes.io/service-name: dual}}}}\naddressType: {family}\nports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: 5353, protocol: UDP}}]\nendpoints:\n{}",
            endpoints(list)
        )
    };
    Ok(format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: dual, namespace: sock6}}\nspec:\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  clusterIPs: [{CLUSTER_IP4}, '{CLUSTER_IP6}']\n  ports: [{{name: http, port: 80, targetPort: 8080}}, {{name: dns, port: 53, targetPort: 5353, protocol: UDP}}]\n{}{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: none6, namespace: sock6}}\nspec:\n  ipFamilies: [IPv6]\n  clusterIPs: ['{EMPTY_IP6}']\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n",
        slice("dual-v4", "IPv4", &v4),
        slice("dual-v6", "IPv6", &v6),
    ))
}

/// A dual-stack cluster whose pods answer in both families, serving the
/// Services of [`manifest`] on every pod.
fn dual_stack_cluster() -> Result<(ExternalCluster, Vec<EchoServer>)> {
    let mut cluster = ExternalCluster::start_with_args(
        &vipr_tests::vipr_bin(),
        "off",
        &["--socket-lb", "host", "--ipv6", "on"],
    )?;
    cluster.topology.enable_ipv6()?;
    let servers6 = cluster.start_ipv6_servers()?;
    let all: Vec<&str> = PODS.iter().map(|p| p.0).collect();
    cluster.write_manifest("sock6.yaml", &manifest(&cluster, &all, &all)?)?;
    Ok((cluster, servers6))
}

/// Runs `scenario` on a fresh cluster; on failure prints the agents' logs.
fn with_cluster(scenario: impl FnOnce(&ExternalCluster, &[EchoServer]) -> Result<()>) {
    let (cluster, servers6) = dual_stack_cluster().expect("cluster");
    if let Err(e) = scenario(&cluster, &servers6) {
        eprintln!("{}", cluster.logs());
        panic!("{e:?}");
    }
}

#[test]
fn host_clients_reach_ipv6_and_v4_mapped_services_through_the_socket_hooks() {
    with_cluster(host_clients);
}

fn host_clients(cluster: &ExternalCluster, servers6: &[EchoServer]) -> Result<()> {
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

#[test]
fn connected_ipv6_and_v4_mapped_udp_sockets_leave_a_removed_backend() {
    with_cluster(|cluster, _| stale_udp_sockets_are_closed(cluster));
}

/// UDP sockets of node1 connected to the dual Service's DNS port, one to
/// its IPv6 ClusterIP and one to its IPv4 ClusterIP v4-mapped, stay on
/// their backends until those leave; then both are destroyed, and
/// reconnecting reaches the live backend.
fn stale_udp_sockets_are_closed(cluster: &ExternalCluster) -> Result<()> {
    let node1 = cluster.topology.netns("node1")?;
    let _inside = cluster.node_cgroup("node1").enter()?;
    let dns6 = SocketAddr::from((CLUSTER_IP6.parse::<Ipv6Addr>()?, 53));
    let mapped = SocketAddr::from((CLUSTER_IP4.to_ipv6_mapped(), 53));
    let served = wait_until(APPLY_TIMEOUT, || {
        echo::udp_request(&node1, dns6, TIMEOUT).is_ok()
    });
    ensure!(served, "no answer from {dns6}");
    let connect = |to: SocketAddr| -> Result<UdpSocket> {
        let socket = netns::run_in(&node1, || -> std::io::Result<UdpSocket> {
            let s = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0))?;
            s.connect(to)?;
            Ok(s)
        })??;
        socket.set_read_timeout(Some(TIMEOUT))?;
        Ok(socket)
    };
    let ask = |s: &UdpSocket| -> std::io::Result<String> {
        s.send(b"who")?;
        let mut buf = [0u8; 64];
        let n = s.recv(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    let sockets = [connect(dns6)?, connect(mapped)?];
    let mut first = Vec::new();
    for (socket, to) in sockets.iter().zip([dns6, mapped]) {
        first.push(ask(socket).with_context(|| format!("first answer via {to}"))?);
        ensure!(
            socket.peer_addr()? == to,
            "getpeername showed {}",
            socket.peer_addr()?
        );
    }
    let other = |name: &str| if name == "web-1" { "web-2" } else { "web-1" };
    let keep = [other(&first[0]), other(&first[1])];
    // The IPv6 socket's backend leaves the IPv6 slice, the v4-mapped
    // socket's the IPv4 one (their pods still answer).
    cluster.write_manifest("sock6.yaml", &manifest(cluster, &[keep[1]], &[keep[0]])?)?;
    let targets = [dns6, mapped];
    for (((socket, to), name), keep) in sockets.iter().zip(targets).zip(&first).zip(keep) {
        let deadline = Instant::now() + APPLY_TIMEOUT;
        // Answers until the socket is destroyed; then its next call fails.
        while let Ok(answer) = ask(socket) {
            ensure!(answer == *name, "answered by {answer} unasked");
            ensure!(Instant::now() < deadline, "the socket stayed on {name}");
            std::thread::sleep(Duration::from_millis(200));
        }
        // Reconnecting (what a resolver does) reaches the live backend,
        // once the error the destruction left pending has been read.
        socket.connect(to)?;
        let answers: Vec<_> = (0..3).map(|_| ask(socket)).collect();
        let answer = answers.iter().find_map(|a| a.as_ref().ok());
        ensure!(answer == Some(&keep.to_string()), "{answers:?}");
    }
    Ok(())
}
