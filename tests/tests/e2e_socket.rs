//! Socket load balancing end to end: processes in a node's own network
//! namespace and cgroup (host-network clients) reach every Service type
//! through the cgroup hooks; in `all` scope pods do too; a connected UDP
//! socket does not stay on a removed backend; switching modes, restarting
//! and `vipr cleanup` leave exactly the attachments they should.
use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use proxy_common::Counter;
use vipr_tests::{
    echo::{ClientError, TcpSession, tcp_request_full, udp_connected_request, udp_request},
    external::*,
    netns::{self, ChildGuard},
};

const TIMEOUT: Duration = Duration::from_secs(2);
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);
/// A Service without endpoints.
const EMPTY_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 60);
/// A UDP Service whose endpoints the stale-socket test changes.
const DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 61);
/// A TCP Service the stale reverse-entry test deletes.
const GONE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 62);

/// The Service at `GONE_IP`, on both pods.
fn gone_service() -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: gone, namespace: sock}}\nspec:\n  clusterIP: {GONE_IP}\n  ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: gone-x, namespace: sock, labels: {{kubernetes.io/service-name: gone}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n- {{addresses: [{}], nodeName: node1, conditions: {{ready: true}}}}\n",
        PODS[0].2
    )
}

/// The extra Services: one without endpoints, one UDP Service on `dns_pods`.
fn extra_manifests(dns_pods: &[&str]) -> String {
    let endpoints: String = dns_pods
        .iter()
        .map(|pod| {
            let (_, node, ip) = PODS.iter().find(|p| p.0 == *pod).expect("known pod");
            format!("- {{addresses: [{ip}], nodeName: {node}, conditions: {{ready: true}}}}\n")
        })
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: empty, namespace: sock}}\nspec:\n  clusterIP: {EMPTY_IP}\n  ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}, {{name: dns, port: 53, targetPort: 5353, protocol: UDP}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: dns, namespace: sock}}\nspec:\n  clusterIP: {DNS_IP}\n  ports: [{{name: dns, port: 53, targetPort: 5353, protocol: UDP}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: dns-x, namespace: sock, labels: {{kubernetes.io/service-name: dns}}}}\naddressType: IPv4\nports: [{{name: dns, port: 5353, protocol: UDP}}]\nendpoints:{}\n{endpoints}",
        if endpoints.is_empty() { " []" } else { "" }
    )
}

fn cluster(socket_lb: &str) -> ExternalCluster {
    let c =
        ExternalCluster::start_with(&vipr_tests::vipr_bin(), "off", socket_lb).expect("cluster");
    c.write_manifest("sock.yaml", &extra_manifests(&["web-1", "web-2"]))
        .expect("manifest");
    // Wait until both agents serve the extra Services.
    for node in ["node1", "node2"] {
        let ns = c.topology.netns(node).unwrap();
        let _inside = c.node_cgroup(node).enter().unwrap();
        wait_for(|| udp_request(&ns, SocketAddr::from((DNS_IP, 53)), TIMEOUT).is_ok());
    }
    c
}

fn wait_for(mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        assert!(Instant::now() < deadline, "condition not met within 10 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn counter(c: &ExternalCluster, node: &str, counter: Counter) -> u64 {
    c.counter(node, counter).expect("counter")
}

#[test]
fn host_clients_reach_every_service_type() {
    let c = cluster("host");
    let node1 = c.topology.netns("node1").unwrap();
    let _inside = c.node_cgroup("node1").enter().unwrap();
    let translated_before = counter(&c, "node1", Counter::SockTranslated);
    let dnat_before = counter(&c, "node1", Counter::DnatNew);

    // ClusterIP over TCP: every backend, and the peer shows the ClusterIP.
    let cluster_ip = SocketAddr::from((CLUSTER_IP, 80));
    let mut served = BTreeSet::new();
    for _ in 0..30 {
        let reply = tcp_request_full(&node1, cluster_ip, TIMEOUT).expect("ClusterIP over TCP");
        assert_eq!(reply.peer, cluster_ip, "getpeername shows the ClusterIP");
        served.insert(reply.name);
    }
    assert_eq!(served.len(), 2, "both backends: {served:?}");

    // ClusterIP over UDP, connected and not: recvfrom shows the ClusterIP.
    let dns = SocketAddr::from((CLUSTER_IP, 53));
    let name = udp_connected_request(&node1, dns, TIMEOUT).expect("connected UDP");
    assert!(name.starts_with("web-"), "{name}");
    let (name, from) = udp_request(&node1, dns, TIMEOUT).expect("unconnected UDP");
    assert!(name.starts_with("web-"), "{name}");
    assert_eq!(from, dns, "the reply's source is the ClusterIP");

    // NodePort on this node's address and on the other node's.
    for node_ip in NODE_IPS {
        let addr = SocketAddr::from((node_ip, NODE_PORT_TCP));
        let reply = tcp_request_full(&node1, addr, TIMEOUT).expect("NodePort from the node");
        assert_eq!(reply.peer, addr);
    }
    // LoadBalancer IP of an externalTrafficPolicy Local Service whose only
    // endpoint is on node2: the node is short-circuited to every endpoint.
    let lb = SocketAddr::from((LB_LOCAL, 80));
    let reply = tcp_request_full(&node1, lb, TIMEOUT).expect("LoadBalancer IP from the node");
    assert_eq!((reply.name.as_str(), reply.peer), ("web-2", lb));

    // Every one of those went through the socket hooks, none through TC NAT.
    let translated = counter(&c, "node1", Counter::SockTranslated) - translated_before;
    assert!(translated >= 34, "socket translations: {translated}");
    assert_eq!(counter(&c, "node1", Counter::DnatNew), dnat_before);
}

#[test]
fn host_clients_meet_source_ranges_and_refusal_at_once() {
    let c = cluster("host");
    let _inside = c.node_cgroup("node1").enter().unwrap();
    let node1 = c.topology.netns("node1").unwrap();
    let node2 = c.topology.netns("node2").unwrap();
    let allowed = SocketAddr::from((LB_ALLOWED, 80));
    // The ranges hold node1's address but not node2's.
    tcp_request_full(&node1, allowed, TIMEOUT).expect("node1 is in the source ranges");
    drop(_inside);
    let _inside = c.node_cgroup("node2").enter().unwrap();
    let refused = tcp_request_full(&node2, allowed, TIMEOUT).expect_err("node2 is not");
    assert!(!refused.is_timeout(), "fails at once: {refused}");
    assert!(counter(&c, "node2", Counter::DropSourceRange) > 0);

    // No endpoints: connect() and a UDP send fail at once with ECONNREFUSED.
    let start = Instant::now();
    let tcp = tcp_request_full(&node2, SocketAddr::from((EMPTY_IP, 80)), TIMEOUT);
    assert!(matches!(tcp, Err(ClientError::Refused)), "{tcp:?}");
    let udp = netns::run_in(&node2, || -> std::io::Result<usize> {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.send_to(b"who", SocketAddr::from((EMPTY_IP, 53)))
    })
    .unwrap();
    let error = udp.expect_err("sendto a Service without endpoints");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
    // Refused, not timed out (the clients wait 2 s): the same bound as the
    // TC path's refusal tests in e2e.rs.
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert!(counter(&c, "node2", Counter::SockRefused) >= 2);
}

#[test]
fn a_connected_udp_socket_leaves_a_removed_backend() {
    let c = cluster("host");
    let node1 = c.topology.netns("node1").unwrap();
    let _inside = c.node_cgroup("node1").enter().unwrap();
    stale_udp_socket_is_closed(&c, &node1);
}

#[test]
fn a_pods_connected_udp_socket_leaves_a_removed_backend_in_all_scope() {
    let c = cluster("all");
    let pod = c.topology.netns("web-1").unwrap();
    let _inside = c.node_cgroup("node1").enter().unwrap();
    // A process living in the pod's namespace, as a pod's would: the agent
    // finds pods' namespaces through the processes in its cgroup.
    let _pod_process = ChildGuard::spawn(
        netns::command_in(&pod, "sleep")
            .arg("60")
            .stdout(std::process::Stdio::null()),
    )
    .unwrap();
    stale_udp_socket_is_closed(&c, &pod);
}

/// A UDP socket made in `netns` and connected to the dns Service stays on
/// its backend until that backend leaves; then it is destroyed, and
/// reconnecting reaches the live backend.
fn stale_udp_socket_is_closed(c: &ExternalCluster, netns_name: &str) {
    let dns = SocketAddr::from((DNS_IP, 53));
    let socket = netns::run_in(netns_name, || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect(dns).unwrap();
        s
    })
    .unwrap();
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    let ask = |s: &UdpSocket| -> std::io::Result<String> {
        s.send(b"who")?;
        let mut buf = [0u8; 64];
        let n = s.recv(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    let first = ask(&socket).expect("first answer");
    assert_eq!(
        socket.peer_addr().unwrap(),
        dns,
        "getpeername shows the ClusterIP"
    );
    let other = if first == "web-1" { "web-2" } else { "web-1" };
    c.write_manifest("sock.yaml", &extra_manifests(&[other]))
        .unwrap();
    // The socket, still connected to the removed backend (whose pod still
    // answers), is destroyed: its next call fails instead of being answered.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ask(&socket) {
            Ok(name) => {
                assert_eq!(name, first, "answered by another backend unasked");
                assert!(Instant::now() < deadline, "the socket stayed on {first}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => {
                eprintln!("the stale socket failed with: {e}");
                break;
            }
        }
    }
    // Reconnecting (what a resolver does) reaches the live backend, once the
    // error the destruction left pending (ECONNABORTED) has been read.
    socket.connect(dns).unwrap();
    let answers: Vec<_> = (0..3).map(|_| ask(&socket)).collect();
    let answer = answers.iter().find_map(|a| a.as_ref().ok());
    assert_eq!(answer, Some(&other.to_string()), "{answers:?}");
}

#[test]
fn pods_use_the_socket_hooks_in_all_scope_and_tc_in_host_scope() {
    for (scope, by_socket) in [("all", true), ("host", false)] {
        let c = cluster(scope);
        let pod = c.topology.netns("web-1").unwrap();
        let _inside = c.node_cgroup("node1").enter().unwrap();
        let sock_before = counter(&c, "node1", Counter::SockTranslated);
        let dnat_before = counter(&c, "node1", Counter::DnatNew);
        let addr = SocketAddr::from((CLUSTER_IP, 80));
        let mut served = BTreeSet::new();
        for _ in 0..30 {
            let reply = tcp_request_full(&pod, addr, TIMEOUT).expect("pod to ClusterIP");
            assert_eq!(reply.peer, addr, "getpeername shows the ClusterIP");
            served.insert(reply.name);
        }
        assert_eq!(served.len(), 2, "--socket-lb {scope}: {served:?}");
        let by_hooks = counter(&c, "node1", Counter::SockTranslated) - sock_before;
        let by_tc = counter(&c, "node1", Counter::DnatNew) - dnat_before;
        if by_socket {
            assert_eq!((by_hooks, by_tc), (30, 0), "--socket-lb all");
        } else {
            assert_eq!((by_hooks, by_tc), (0, 30), "--socket-lb host");
        }
    }
}

/// How many socket programs `node`'s cgroup carries once it settles on
/// `expected`: the kernel frees a link whose last pin went in a work queue.
fn socket_programs(c: &ExternalCluster, node: &str, expected: usize) -> usize {
    let count = || {
        let names = c.node_cgroup(node).attached_programs().expect("bpftool");
        names.iter().filter(|n| n.starts_with("vipr_sock")).count()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found = count();
        if found == expected || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn restarts_mode_switches_and_cleanup_leave_no_attachment_behind() {
    let mut c = cluster("host");
    let node1 = c.topology.netns("node1").unwrap();
    let hooks = vipr::datapath::SOCKET_PROGRAMS.len();
    assert_eq!(socket_programs(&c, "node1", hooks), hooks);
    assert_pins_private(&c.pins("node1"));
    for mode in ["host", "all", "host"] {
        c.start_agent("node1", &["--socket-lb", mode]).unwrap();
        assert_eq!(
            socket_programs(&c, "node1", hooks),
            hooks,
            "after a restart with {mode}"
        );
    }
    {
        let _inside = c.node_cgroup("node1").enter().unwrap();
        tcp_request_full(&node1, SocketAddr::from((CLUSTER_IP, 80)), TIMEOUT)
            .expect("served after the restarts");
    }
    c.start_agent("node1", &["--socket-lb", "off"]).unwrap();
    assert_eq!(
        socket_programs(&c, "node1", 0),
        0,
        "--socket-lb off detaches"
    );
    c.start_agent("node1", &["--socket-lb", "host"]).unwrap();
    assert_eq!(socket_programs(&c, "node1", hooks), hooks);
    c.cleanup_agent("node1").unwrap();
    assert_eq!(socket_programs(&c, "node1", 0), 0, "vipr cleanup detaches");
    assert_eq!(
        socket_programs(&c, "node2", hooks),
        hooks,
        "node2 keeps its own"
    );
}

#[test]
fn a_deleted_service_leaves_established_connections_and_no_stale_reverse_entry() {
    let mut c = cluster("host");
    let node1 = c.topology.netns("node1").unwrap();
    c.write_manifest(
        "sock.yaml",
        &(extra_manifests(&["web-1"]) + &gone_service()),
    )
    .unwrap();
    let inside = c.node_cgroup("node1").enter().unwrap();
    let gone = SocketAddr::from((GONE_IP, 80));
    wait_for(|| tcp_request_full(&node1, gone, TIMEOUT).is_ok());
    let mut session = TcpSession::connect(&node1, gone, TIMEOUT).expect("connect");
    assert_eq!(session.peer_addr(), gone);
    let stale_before = counter(&c, "node1", Counter::SockRevNatStale);
    c.write_manifest("sock.yaml", &extra_manifests(&["web-1"]))
        .unwrap();
    // The Service is gone: new connections are no longer translated...
    wait_for(|| tcp_request_full(&node1, gone, Duration::from_millis(300)).is_err());
    // ...while the established one carries on, as with kube-proxy, and still
    // shows the address it asked for (the frontend drains).
    assert_eq!(session.request().expect("request after deletion"), "web-1");
    assert_eq!(session.current_peer_addr().unwrap(), gone);
    drop(inside);
    // The drain ends with the next full sync (here: a restart); then the
    // reverse entry is found stale and dropped, and getpeername shows the
    // backend the socket really talks to.
    c.start_agent("node1", &["--socket-lb", "host"]).unwrap();
    let backend = SocketAddr::from((PODS[0].2, 8080));
    wait_for(|| session.current_peer_addr().is_ok_and(|p| p == backend));
    assert!(counter(&c, "node1", Counter::SockRevNatStale) > stale_before);
    assert_eq!(session.request().expect("request after the drain"), "web-1");
}

#[test]
fn nodeports_answer_the_node_on_localhost_only_when_asked() {
    let mut c = cluster("host");
    let node1 = c.topology.netns("node1").unwrap();
    let localhost = SocketAddr::from((Ipv4Addr::LOCALHOST, NODE_PORT_TCP));
    {
        let _inside = c.node_cgroup("node1").enter().unwrap();
        let off = tcp_request_full(&node1, localhost, TIMEOUT);
        assert!(matches!(off, Err(ClientError::Refused)), "{off:?}");
    }
    c.start_agent("node1", &["--socket-lb", "host", "--nodeport-localhost"])
        .unwrap();
    let _inside = c.node_cgroup("node1").enter().unwrap();
    let mut served = BTreeSet::new();
    for _ in 0..20 {
        let reply = tcp_request_full(&node1, localhost, TIMEOUT).expect("NodePort on 127.0.0.1");
        assert_eq!(reply.peer, localhost);
        served.insert(reply.name);
    }
    assert_eq!(served.len(), 2, "{served:?}");
}

/// Pinned maps and links are the datapath's state: directories 0700, pins
/// 0600, owned by root.
fn assert_pins_private(dir: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir).unwrap();
    assert_eq!(
        (meta.mode() & 0o777, meta.uid()),
        (0o700, 0),
        "{}",
        dir.display()
    );
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            assert_pins_private(&path);
        } else {
            let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
        seen += 1;
    }
    assert!(seen > 0, "{} is empty", dir.display());
}

/// `--lb-algorithm maglev`: the socket hooks and the pods' TC path choose
/// from the ClusterIP's Maglev table, and still reach every endpoint.
#[test]
fn host_and_pod_clients_use_maglev_tables_when_asked() {
    let vipr = vipr_tests::vipr_bin();
    let args = ["--socket-lb", "host", "--lb-algorithm", "maglev"];
    let c = ExternalCluster::start_with_args(&vipr, "off", &args).expect("cluster");
    let rows = c
        .vipr_json("node1", &["service", "list"])
        .expect("service list");
    let cluster_ip = SocketAddr::from((CLUSTER_IP, 80));
    let row = rows
        .as_array()
        .and_then(|rows| {
            rows.iter().find(|r| {
                r["ip"] == CLUSTER_IP.to_string() && r["port"] == 80 && r["scope"] == "internal"
            })
        })
        .cloned()
        .unwrap_or_else(|| panic!("no ClusterIP row: {rows:#}"));
    assert_eq!(row["lb_algorithm"], "maglev", "{row:#}");

    let node1 = c.topology.netns("node1").unwrap();
    let inside = c.node_cgroup("node1").enter().unwrap();
    let translated_before = counter(&c, "node1", Counter::SockTranslated);
    let mut served = BTreeSet::new();
    for _ in 0..30 {
        let reply = tcp_request_full(&node1, cluster_ip, TIMEOUT).expect("ClusterIP over TCP");
        assert_eq!(reply.peer, cluster_ip, "getpeername shows the ClusterIP");
        served.insert(reply.name);
    }
    assert_eq!(served.len(), 2, "both backends from the host: {served:?}");
    let (name, from) =
        udp_request(&node1, SocketAddr::from((CLUSTER_IP, 53)), TIMEOUT).expect("UDP");
    assert!(name.starts_with("web-"), "{name}");
    assert_eq!(from, SocketAddr::from((CLUSTER_IP, 53)));
    assert!(counter(&c, "node1", Counter::SockTranslated) - translated_before >= 31);
    drop(inside);

    // A pod's packets take the TC path: the same table.
    let pod = c.topology.netns("web-1").unwrap();
    let dnat_before = counter(&c, "node1", Counter::DnatNew);
    let mut served = BTreeSet::new();
    for _ in 0..30 {
        let reply = tcp_request_full(&pod, cluster_ip, TIMEOUT).expect("pod to ClusterIP");
        served.insert(reply.name);
    }
    assert_eq!(served.len(), 2, "both backends from a pod: {served:?}");
    assert!(counter(&c, "node1", Counter::DnatNew) > dnat_before);
    assert_eq!(counter(&c, "node1", Counter::DropMaglevPosition), 0);
}
