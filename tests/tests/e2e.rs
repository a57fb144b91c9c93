//! End-to-end tests: real `vipr run` agents in network namespaces emulating two
//! Kubernetes nodes, real TCP/UDP servers and clients in pod namespaces.
//!
//! Require root and the built agent (`VIPR_BIN`, else `target/debug/vipr`).
//! Run with `--test-threads=1`: the agents share the kernel's BPF state.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use vipr_tests::demo::{self, BACKENDS, CLIENTS, DemoCluster};
use vipr_tests::echo::{self, ClientError, EchoServer, TcpSession};
use vipr_tests::metrics::Metrics;
use vipr_tests::netns::{self, Topology};

const REQ_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the agent may take to apply a manifest change.
const APPLY_TIMEOUT: Duration = Duration::from_secs(3);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate lives in the workspace")
        .to_owned()
}

fn vipr_bin() -> PathBuf {
    vipr_tests::vipr_bin()
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!("vipr-e2e-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running demo cluster with its own copy of the manifests.
/// Field order matters: the cluster stops before its manifests go away.
struct Env {
    cluster: DemoCluster,
    _manifests: TempDir,
}

impl std::ops::Deref for Env {
    type Target = DemoCluster;
    fn deref(&self) -> &DemoCluster {
        &self.cluster
    }
}

fn start(tag: &str) -> Env {
    let bin = vipr_bin();
    if let Ok(cleaned) = demo::cleanup_dead_runs(&bin)
        && !cleaned.is_empty()
    {
        eprintln!("cleaned up leftovers of killed runs: {cleaned:?}");
    }
    let manifests = TempDir::new(tag);
    demo::prepare_manifests(&manifests.0, Some(&workspace_root().join("examples")))
        .expect("prepare manifests");
    let cluster = DemoCluster::start(&bin, &manifests.0).unwrap_or_else(|e| panic!("{e:#}"));
    Env {
        cluster,
        _manifests: manifests,
    }
}

/// Runs `test` against a fresh demo cluster; on failure prints the agent logs.
fn with_cluster(tag: &str, test: impl FnOnce(&Env) -> Result<()>) {
    let env = start(tag);
    if let Err(e) = test(&env) {
        eprintln!("{}", env.logs());
        panic!("{e:?}");
    }
}

fn tcp(env: &Env, pod: &str) -> Result<String, ClientError> {
    echo::tcp_request(&env.netns(pod), demo::http_addr(), REQ_TIMEOUT)
}

/// Sends `n` TCP requests from `pod` to the ClusterIP; counts per backend.
fn tcp_counts(env: &Env, pod: &str, n: usize) -> Result<BTreeMap<String, usize>> {
    let mut counts = BTreeMap::new();
    for i in 0..n {
        let name = tcp(env, pod).with_context(|| format!("request {i} from {pod}"))?;
        *counts.entry(name).or_insert(0) += 1;
    }
    Ok(counts)
}

/// Waits until `n` consecutive requests from `client` avoid `backend`.
fn wait_backend_gone(env: &Env, backend: &str, n: usize) -> bool {
    let mut clean = 0;
    demo::wait_until(APPLY_TIMEOUT, || {
        while clean < n {
            match tcp(env, "client") {
                Ok(name) if name != backend => clean += 1,
                _ => {
                    clean = 0;
                    return false;
                }
            }
        }
        true
    })
}

/// Waits until a request from `client` reaches `backend`.
fn wait_backend_seen(env: &Env, backend: &str) -> bool {
    demo::wait_until(APPLY_TIMEOUT, || {
        (0..10).any(|_| tcp(env, "client").is_ok_and(|n| n == backend))
    })
}

fn all_backend_names() -> Vec<&'static str> {
    BACKENDS.iter().map(|b| b.name).collect()
}

fn assert_nothing_left(prefix: &str, pins: &[PathBuf]) {
    let ns: Vec<_> = netns::list_netns()
        .expect("ip netns list")
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect();
    assert!(ns.is_empty(), "namespaces left behind: {ns:?}");
    let links: Vec<_> = netns::list_root_links()
        .expect("ip link")
        .into_iter()
        .filter(|l| l.starts_with(prefix))
        .collect();
    assert!(links.is_empty(), "links left behind: {links:?}");
    for pin in pins {
        assert!(!pin.exists(), "pin directory {} left behind", pin.display());
    }
}

// ---------------------------------------------------------------------------
// Harness self-test (no vipr).

#[test]
fn harness_pod_to_pod_without_vipr() -> Result<()> {
    let prefix;
    {
        let mut topo = Topology::new()?;
        prefix = topo.prefix().to_owned();
        topo.add_node("node1")?.add_node("node2")?;
        topo.add_pod("node1", "a", "10.244.1.11")?
            .add_pod("node1", "b", "10.244.1.12")?
            .add_pod("node2", "c", "10.244.2.11")?;
        assert_eq!(topo.pod_interface_glob(), "vp*");
        let servers = ["a", "b", "c"]
            .iter()
            .map(|p| EchoServer::start(&topo.netns(p)?, p, Some(8080), Some(5353)))
            .collect::<Result<Vec<_>>>()?;
        topo.set_tx_checksum_offload("a", false)?;
        topo.set_tx_checksum_offload("c", false)?;
        let out = topo
            .command_in("a", "ethtool")?
            .args(["-k", "eth0"])
            .output()?;
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("tx-checksumming: off"),
            "ethtool -K had no effect"
        );
        let udp_in = || -> Result<u64> {
            netns::snmp_field(&netns::snmp_text(&topo.netns("c")?)?, "Udp", "InDatagrams")
        };
        let c_udp_before = udp_in()?;
        let before: Vec<_> = ["a", "b", "c", "node1", "node2"]
            .iter()
            .map(|p| topo.snmp_checksum_errors(p))
            .collect::<Result<_>>()?;
        for (from, to, ip) in [
            ("a", "b", "10.244.1.12"),
            ("a", "c", "10.244.2.11"),
            ("c", "a", "10.244.1.11"),
            ("b", "c", "10.244.2.11"),
        ] {
            let ip: IpAddr = ip.parse()?;
            let addr = SocketAddr::new(ip, 8080);
            let r = echo::tcp_request_full(&topo.netns(from)?, addr, REQ_TIMEOUT)
                .with_context(|| format!("tcp {from} -> {to}"))?;
            assert_eq!(r.name, to);
            assert_eq!(r.local.ip(), IpAddr::V4(topo.pod_ip(from)?));
            let mut session = TcpSession::connect(&topo.netns(from)?, addr, REQ_TIMEOUT)?;
            for _ in 0..3 {
                assert_eq!(session.request()?, to);
            }
            let (name, src) =
                echo::udp_request(&topo.netns(from)?, SocketAddr::new(ip, 5353), REQ_TIMEOUT)
                    .with_context(|| format!("udp {from} -> {to}"))?;
            assert_eq!((name.as_str(), src), (to, SocketAddr::new(ip, 5353)));
        }
        // The counters are per namespace: c received two requests and one reply.
        assert_eq!(udp_in()? - c_udp_before, 3);
        // The server saw the client's own pod address.
        let seen = servers[2].peers();
        assert!(
            seen.iter()
                .any(|p| p.ip() == IpAddr::V4(topo.pod_ip("a").unwrap())),
            "c saw {seen:?}"
        );
        assert_eq!(servers[2].tcp_connections(), 4);
        // Nothing listens on 9999: RST, reported as refused, quickly.
        let t = Instant::now();
        let err = echo::tcp_request(&topo.netns("a")?, "10.244.2.11:9999".parse()?, REQ_TIMEOUT)
            .expect_err("nothing listens on 9999");
        assert!(err.is_refused(), "{err}");
        assert!(t.elapsed() < Duration::from_secs(1));
        let err = echo::udp_connected_request(
            &topo.netns("a")?,
            "10.244.2.11:9999".parse()?,
            REQ_TIMEOUT,
        )
        .expect_err("nothing listens on udp 9999");
        assert!(err.is_refused(), "{err}");
        // Unconnected UDP socket: the ICMP error is not reported, so it is a timeout.
        let err = echo::udp_request(
            &topo.netns("a")?,
            "10.244.2.11:9999".parse()?,
            Duration::from_millis(300),
        )
        .expect_err("nothing listens on udp 9999");
        assert!(err.is_timeout(), "{err}");
        let after: Vec<_> = ["a", "b", "c", "node1", "node2"]
            .iter()
            .map(|p| topo.snmp_checksum_errors(p))
            .collect::<Result<_>>()?;
        assert_eq!(before, after, "checksum errors appeared");
        // A process in a node netns keeps the mount namespace (sees host paths).
        let mut child = topo.spawn_in("node1", "sleep", &["30"])?;
        assert!(child.try_wait()?.is_none());
        let out = topo
            .command_in("node1", "ip")?
            .args(["-o", "addr"])
            .output()?;
        assert!(String::from_utf8_lossy(&out.stdout).contains("172.30.0.1/24"));
        drop(child);
        drop(servers);
    }
    assert_nothing_left(&prefix, &[]);
    Ok(())
}

#[test]
fn harness_parses_snmp() -> Result<()> {
    let text = "Tcp: RtoAlgorithm InErrs InCsumErrors\nTcp: 1 5 7\n\
                Udp: InDatagrams InCsumErrors\nUdp: 3 9\n";
    assert_eq!(netns::snmp_field(text, "Tcp", "InCsumErrors")?, 7);
    assert_eq!(netns::snmp_field(text, "Udp", "InCsumErrors")?, 9);
    Ok(())
}

// ---------------------------------------------------------------------------
// With vipr.

#[test]
fn every_backend_gets_connections() {
    with_cluster("every-backend", |env| {
        let counts = env.run_demo(60)?;
        for b in BACKENDS {
            assert!(
                counts.get(b.name).copied().unwrap_or(0) > 0,
                "{} got no connections: {counts:?}",
                b.name
            );
        }
        assert_eq!(counts.values().sum::<usize>(), 60);
        let served = env.tcp_connections();
        assert_eq!(served.values().sum::<usize>(), 60, "{served:?}");
        Ok(())
    });
}

#[test]
fn replies_come_from_the_cluster_ip() {
    with_cluster("reply-source", |env| {
        let client_ip = CLIENTS[0].1;
        for _ in 0..10 {
            let r = echo::tcp_request_full(&env.netns("client"), demo::http_addr(), REQ_TIMEOUT)?;
            assert_eq!(r.peer, demo::http_addr());
            assert_eq!(r.local.ip(), IpAddr::V4(client_ip));
            let (name, from) =
                echo::udp_request(&env.netns("client"), demo::dns_addr(), REQ_TIMEOUT)?;
            assert!(demo::backend(&name).is_some(), "unexpected reply {name:?}");
            assert_eq!(
                from,
                demo::dns_addr(),
                "UDP reply from {from}, not the ClusterIP"
            );
        }
        // The backends saw the client's own address (no masquerade for pod → ClusterIP).
        for b in BACKENDS {
            for peer in env.server(b.name).peers() {
                assert_eq!(peer.ip(), IpAddr::V4(client_ip), "{} saw {peer}", b.name);
            }
        }
        Ok(())
    });
}

#[test]
fn long_lived_session_stays_on_its_backend() {
    with_cluster("session", |env| {
        let mut session =
            TcpSession::connect(&env.netns("client"), demo::http_addr(), REQ_TIMEOUT)?;
        let mine = session.request()?;
        let other = all_backend_names()
            .into_iter()
            .find(|n| *n != mine)
            .expect("three backends");
        // Remove another endpoint.
        let remaining: Vec<_> = all_backend_names()
            .into_iter()
            .filter(|n| *n != other)
            .collect();
        env.set_endpoints(&remaining)?;
        assert!(
            wait_backend_gone(env, other, 20),
            "{other} still gets traffic"
        );
        for _ in 0..5 {
            assert_eq!(session.request()?, mine);
        }
        // Add it back.
        env.set_endpoints(&all_backend_names())?;
        assert!(wait_backend_seen(env, other), "{other} never came back");
        for _ in 0..5 {
            assert_eq!(session.request()?, mine);
        }
        assert!(env.server(&mine).tcp_requests() >= 11);
        Ok(())
    });
}

#[test]
fn established_tcp_outlives_its_endpoint_leaving() {
    with_cluster("outlives", |env| {
        let mut session =
            TcpSession::connect(&env.netns("client"), demo::http_addr(), REQ_TIMEOUT)?;
        let mine = session.request()?;
        // Its endpoint leaves the Service (a failed readiness probe, a
        // scale-down) while the pod still answers.
        let remaining: Vec<_> = all_backend_names()
            .into_iter()
            .filter(|n| *n != mine)
            .collect();
        env.set_endpoints(&remaining)?;
        assert!(
            wait_backend_gone(env, &mine, 20),
            "{mine} still gets new connections"
        );
        for _ in 0..5 {
            assert_eq!(session.request()?, mine, "the established connection stays");
        }
        Ok(())
    });
}

/// A connected UDP socket in `client` that the test keeps across changes.
fn kept_udp_socket(env: &Env) -> Result<std::net::UdpSocket> {
    let socket = netns::run_in(&env.netns("client"), || -> std::io::Result<_> {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        s.connect(demo::dns_addr())?;
        s.set_read_timeout(Some(REQ_TIMEOUT))?;
        Ok(s)
    })??;
    Ok(socket)
}

fn ask(socket: &std::net::UdpSocket) -> std::io::Result<String> {
    socket.send(b"who")?;
    let mut buf = [0u8; 64];
    let n = socket.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn a_udp_client_keeping_its_socket_follows_endpoint_changes() {
    with_cluster("udp-kept", |env| {
        let socket = kept_udp_socket(env)?;
        let mine = ask(&socket)?;
        // Its endpoint leaves: the same socket is answered by a live one,
        // not left sending into the void.
        let remaining: Vec<_> = all_backend_names()
            .into_iter()
            .filter(|n| *n != mine)
            .collect();
        env.set_endpoints(&remaining)?;
        let moved = demo::wait_until(APPLY_TIMEOUT, || {
            ask(&socket).is_ok_and(|name| name != mine)
        });
        assert!(moved, "the UDP flow stayed on {mine}");
        // No endpoints, then endpoints again: the socket is served again.
        env.set_endpoints(&[])?;
        let refused = demo::wait_until(APPLY_TIMEOUT, || {
            ask(&socket).is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
        });
        assert!(refused, "no endpoints: refused");
        env.set_endpoints(&all_backend_names())?;
        let served = demo::wait_until(APPLY_TIMEOUT, || ask(&socket).is_ok());
        assert!(served, "the kept socket is served once endpoints are back");
        Ok(())
    });
}

#[test]
fn removed_endpoint_gets_no_new_connections() {
    with_cluster("removed", |env| {
        env.set_endpoints(&["echo-1", "echo-3"])?;
        assert!(
            wait_backend_gone(env, "echo-2", 20),
            "echo-2 still gets traffic"
        );
        let before = env.server("echo-2").tcp_connections();
        let counts = tcp_counts(env, "client", 40)?;
        assert!(!counts.contains_key("echo-2"), "{counts:?}");
        assert!(
            counts.contains_key("echo-1") && counts.contains_key("echo-3"),
            "{counts:?}"
        );
        assert_eq!(env.server("echo-2").tcp_connections(), before);
        // UDP flows avoid it too.
        for _ in 0..20 {
            let (name, _) = echo::udp_request(&env.netns("client"), demo::dns_addr(), REQ_TIMEOUT)?;
            assert_ne!(name, "echo-2");
        }
        // Adding it back makes it reachable again.
        env.set_endpoints(&all_backend_names())?;
        assert!(wait_backend_seen(env, "echo-2"), "echo-2 never came back");
        Ok(())
    });
}

#[test]
fn backend_on_the_other_node_both_ways() {
    with_cluster("cross-node", |env| {
        // node1 → node2
        let counts = tcp_counts(env, "client", 60)?;
        assert!(
            counts.contains_key("echo-3"),
            "client never reached echo-3: {counts:?}"
        );
        env.set_endpoints(&["echo-3"])?;
        assert!(wait_backend_gone(env, "echo-1", 5) && wait_backend_gone(env, "echo-2", 20));
        for _ in 0..5 {
            let (name, from) =
                echo::udp_request(&env.netns("client"), demo::dns_addr(), REQ_TIMEOUT)?;
            assert_eq!((name.as_str(), from), ("echo-3", demo::dns_addr()));
        }
        // node2 → node1
        env.set_endpoints(&["echo-1", "echo-2"])?;
        assert!(demo::wait_until(APPLY_TIMEOUT, || {
            tcp(env, "client2").is_ok_and(|n| n != "echo-3")
                && tcp(env, "client2").is_ok_and(|n| n != "echo-3")
        }));
        let counts = tcp_counts(env, "client2", 40)?;
        assert!(
            counts.contains_key("echo-1") && counts.contains_key("echo-2") && counts.len() == 2,
            "client2: {counts:?}"
        );
        for _ in 0..5 {
            let (name, from) =
                echo::udp_request(&env.netns("client2"), demo::dns_addr(), REQ_TIMEOUT)?;
            assert!(name == "echo-1" || name == "echo-2", "{name}");
            assert_eq!(from, demo::dns_addr());
        }
        Ok(())
    });
}

#[test]
fn a_pod_reaches_itself_through_its_service() {
    with_cluster("hairpin", |env| {
        env.set_endpoints(&["echo-1"])?;
        assert!(wait_backend_gone(env, "echo-2", 20) && wait_backend_gone(env, "echo-3", 20));
        for _ in 0..5 {
            let name = tcp(env, "echo-1")?;
            assert_eq!(name, "echo-1", "hairpin: the pod is its own backend");
        }
        Ok(())
    });
}

#[test]
fn service_without_endpoints_is_refused_at_once() {
    with_cluster("empty", |env| {
        let client = env.netns("client");
        let t = Instant::now();
        let err = echo::tcp_request(&client, demo::empty_http_addr(), Duration::from_secs(3))
            .expect_err("demo/empty has no endpoints");
        assert!(err.is_refused(), "expected connection refused, got: {err}");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "refusal took {:?}",
            t.elapsed()
        );
        // demo/echo going to zero endpoints: TCP refused, UDP ICMP unreachable.
        env.set_endpoints(&[])?;
        assert!(
            demo::wait_until(APPLY_TIMEOUT, || {
                echo::tcp_request(&client, demo::http_addr(), Duration::from_millis(500))
                    .is_err_and(|e| e.is_refused())
            }),
            "TCP to demo/echo without endpoints was not refused"
        );
        let t = Instant::now();
        let err = echo::udp_connected_request(&client, demo::dns_addr(), Duration::from_secs(2))
            .expect_err("demo/echo has no endpoints");
        assert!(err.is_refused(), "expected ECONNREFUSED on UDP, got: {err}");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "refusal took {:?}",
            t.elapsed()
        );
        // And 0 → N works again for both (UDP must not stay stuck).
        env.set_endpoints(&all_backend_names())?;
        assert!(demo::wait_until(APPLY_TIMEOUT, || tcp(env, "client").is_ok()));
        assert!(demo::wait_until(APPLY_TIMEOUT, || {
            echo::udp_connected_request(&client, demo::dns_addr(), Duration::from_millis(500))
                .is_ok()
        }));
        Ok(())
    });
}

#[test]
fn checksums_hold_without_tx_offload() {
    with_cluster("checksums", |env| {
        let topo = env.topology();
        let pods: Vec<&str> = BACKENDS
            .iter()
            .map(|b| b.name)
            .chain(CLIENTS.iter().map(|c| c.0))
            .collect();
        for p in &pods {
            topo.set_tx_checksum_offload(p, false)?;
        }
        let watched: Vec<&str> = pods.iter().copied().chain(demo::NODES).collect();
        let read = || -> Result<Vec<_>> {
            watched
                .iter()
                .map(|p| topo.snmp_checksum_errors(p))
                .collect()
        };
        let before = read()?;
        for client in ["client", "client2"] {
            let mut seen = BTreeMap::new();
            for _ in 0..15 {
                *seen.entry(tcp(env, client)?).or_insert(0) += 1;
                let (name, from) =
                    echo::udp_request(&env.netns(client), demo::dns_addr(), REQ_TIMEOUT)?;
                assert_eq!(from, demo::dns_addr());
                *seen.entry(name).or_insert(0) += 1;
            }
            let mut session =
                TcpSession::connect(&env.netns(client), demo::http_addr(), REQ_TIMEOUT)?;
            for _ in 0..5 {
                session.request()?;
            }
            assert!(seen.len() >= 2, "{client} reached only {seen:?}");
        }
        let after = read()?;
        for ((name, b), a) in watched.iter().zip(&before).zip(&after) {
            assert_eq!(b, a, "checksum errors in {name}: before {b:?}, after {a:?}");
        }
        Ok(())
    });
}

#[test]
fn teardown_leaves_nothing_behind() -> Result<()> {
    let env = start("teardown");
    tcp(&env, "client")?;
    let prefix = env.prefix();
    let pins = env.pin_dirs();
    assert!(
        pins.iter().all(|p| p.exists()),
        "agents pinned nothing in {pins:?}"
    );
    let Env {
        cluster,
        _manifests,
    } = env;
    cluster.shutdown()?;
    assert_nothing_left(&prefix, &pins);
    Ok(())
}

#[test]
fn manifests_match_the_demo_and_rewrite_cleanly() -> Result<()> {
    let dir = TempDir::new("manifests");
    demo::prepare_manifests(&dir.0, Some(&workspace_root().join("examples")))?;
    let all: String = std::fs::read_dir(&dir.0)?
        .map(|e| std::fs::read_to_string(e?.path()).map_err(Into::into))
        .collect::<Result<Vec<_>>>()?
        .concat();
    for needle in [
        demo::CLUSTER_IP.to_string(),
        demo::EMPTY_CLUSTER_IP.to_string(),
    ]
    .into_iter()
    .chain(BACKENDS.iter().map(|b| b.ip.to_string()))
    {
        assert!(all.contains(&needle), "manifests do not mention {needle}");
    }
    demo::set_echo_endpoints(&dir.0, &[BACKENDS[0]])?;
    let mut slices = 0;
    for entry in std::fs::read_dir(&dir.0)? {
        let text = std::fs::read_to_string(entry?.path())?;
        slices += text.matches("kubernetes.io/service-name: echo").count();
    }
    assert_eq!(
        slices, 1,
        "exactly one EndpointSlice of demo/echo must remain"
    );
    let ours = std::fs::read_to_string(dir.0.join(demo::ECHO_ENDPOINTS_FILE))?;
    assert!(ours.contains("10.244.1.11") && !ours.contains("10.244.1.12"));
    let all_after: String = std::fs::read_dir(&dir.0)?
        .map(|e| std::fs::read_to_string(e?.path()).map_err(Into::into))
        .collect::<Result<Vec<_>>>()?
        .concat();
    assert!(
        all_after.contains("clusterIP: 10.96.0.10") && all_after.contains("clusterIP: 10.96.0.20")
    );
    Ok(())
}

/// Sums `name{labels}` over both agents' /metrics.
fn metric_sum(env: &Env, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
    let mut sum = 0.0;
    for node in demo::NODES {
        let scrape = Metrics::parse(&env.metrics(node)?)?;
        sum += scrape.get(name, labels)?;
    }
    Ok(sum)
}

#[test]
fn metrics_move_with_traffic_and_syncs() {
    with_cluster("metrics", |env| {
        let ipv4 = [("ip_family", "IPv4")];
        let new_flows = || {
            metric_sum(
                env,
                "vipr_datapath_packets_total",
                &[("verdict", "dnat_new")],
            )
        };
        let syncs = || metric_sum(env, "kubeproxy_sync_proxy_rules_duration_seconds", &ipv4);
        let slice_changes = || {
            metric_sum(
                env,
                "kubeproxy_sync_proxy_rules_endpoint_changes_total",
                &[],
            )
        };
        // Both agents answered /healthz 200 before the cluster counted as up.
        assert!(metric_sum(env, "kubeproxy_proxy_healthz_total", &[("code", "200")])? >= 2.0);
        assert!(
            metric_sum(
                env,
                "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                &ipv4
            )? > 0.0
        );
        assert!(
            metric_sum(env, "vipr_map_entries", &[("map", "VIPR_SERVICES")])? > 0.0,
            "the services map is not reported"
        );
        let (flows_before, syncs_before, changes_before) =
            (new_flows()?, syncs()?, slice_changes()?);
        const CONNECTIONS: usize = 20;
        tcp_counts(env, "client", CONNECTIONS)?;
        // The loop refreshes the datapath metrics once a second.
        let counted = demo::wait_until(Duration::from_secs(5), || {
            new_flows().is_ok_and(|n| n >= flows_before + CONNECTIONS as f64)
        });
        assert!(
            counted,
            "dnat_new did not grow by {CONNECTIONS}: {:?}",
            new_flows()
        );

        env.set_endpoints(&["echo-1", "echo-3"])?;
        let synced = demo::wait_until(APPLY_TIMEOUT, || {
            syncs().is_ok_and(|n| n > syncs_before)
                && slice_changes().is_ok_and(|n| n > changes_before)
        });
        assert!(
            synced,
            "an endpoint change moved no sync metric: syncs {syncs_before} → {:?}, changes {changes_before} → {:?}",
            syncs(),
            slice_changes()
        );
        assert_eq!(
            metric_sum(
                env,
                "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
                &[]
            )?,
            0.0,
            "changes still pending after their sync"
        );
        Ok(())
    });
}

/// `vipr ARGS -o json` on `node`'s agent, parsed.
fn cli_json(env: &Env, node: &str, args: &[&str]) -> Result<Vec<serde_json::Value>> {
    let args: Vec<&str> = args.iter().copied().chain(["-o", "json"]).collect();
    let text = env.vipr(node, &args)?;
    serde_json::from_str(&text).with_context(|| format!("vipr {args:?} printed {text}"))
}

/// The echo ClusterIP's row of `vipr service list` on node1.
fn echo_row(env: &Env) -> Result<Option<serde_json::Value>> {
    let rows = cli_json(env, "node1", &["service", "list"])?;
    Ok(rows.into_iter().find(|r| {
        r["ip"] == demo::CLUSTER_IP.to_string()
            && r["port"] == demo::HTTP_PORT
            && r["protocol"] == "tcp"
            && r["scope"] == "internal"
    }))
}

/// (address, active) of each endpoint in a service list row.
fn endpoints_of(row: &serde_json::Value) -> BTreeMap<String, bool> {
    row["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            let addr = format!("{}:{}", b["ip"].as_str().unwrap_or("?"), b["port"]);
            (addr, b["active"] == true)
        })
        .collect()
}

#[test]
fn cli_lists_services_flows_and_counters_as_the_model_has_them() {
    with_cluster("cli", |env| {
        let endpoint = |name: &str| {
            let b = demo::backend(name).expect("a demo backend");
            format!("{}:{}", b.ip, demo::HTTP_TARGET_PORT)
        };
        let all: BTreeMap<String, bool> =
            BACKENDS.iter().map(|b| (endpoint(b.name), true)).collect();
        // The name index follows the first sync within a couple of seconds.
        let named = demo::wait_until(APPLY_TIMEOUT, || {
            echo_row(env).is_ok_and(|r| r.is_some_and(|r| r["service"] == "demo/echo"))
        });
        assert!(
            named,
            "no named row for the echo ClusterIP: {:?}",
            echo_row(env)
        );
        let row = echo_row(env)?.context("echo row")?;
        assert_eq!(row["port_name"], "http", "{row:#}");
        assert_eq!(row["type"], "ClusterIP", "{row:#}");
        assert_eq!(row["traffic_policy"], "Cluster", "{row:#}");
        // Pods' frontends stay on random by default (`--lb-algorithm`).
        assert_eq!(row["lb_algorithm"], "random", "{row:#}");
        assert_eq!(endpoints_of(&row), all, "{row:#}");
        for b in row["backends"].as_array().context("backends")? {
            let ip = b["ip"].as_str().context("ip")?;
            let node = BACKENDS
                .iter()
                .find(|x| x.ip.to_string() == ip)
                .context("known")?
                .node;
            assert_eq!(b["local"], node == "node1", "{b}");
            assert_eq!(b["ready"], true, "{b}");
        }

        // A held connection is a flow of demo/echo, established.
        let mut session =
            TcpSession::connect(&env.netns("client"), demo::http_addr(), REQ_TIMEOUT)?;
        let serving = session.request()?;
        let flows = cli_json(
            env,
            "node1",
            &["conntrack", "list", "--service", "demo/echo"],
        )?;
        let client = session.local_addr().to_string();
        let flow = flows
            .iter()
            .find(|f| f["client"] == client)
            .with_context(|| format!("no flow from {client}: {flows:#?}"))?;
        assert_eq!(flow["frontend"], demo::http_addr().to_string(), "{flow}");
        assert_eq!(flow["backend"], endpoint(&serving), "{flow}");
        assert_eq!(flow["state"], "established", "{flow}");
        let elsewhere = cli_json(
            env,
            "node1",
            &["conntrack", "list", "--service", "demo/empty"],
        )?;
        assert!(
            elsewhere.iter().all(|f| f["client"] != client),
            "{elsewhere:#?}"
        );

        // An endpoint leaving the slice leaves the listing too.
        env.set_endpoints(&["echo-1", "echo-3"])?;
        let left = demo::wait_until(APPLY_TIMEOUT, || {
            echo_row(env).is_ok_and(|r| {
                r.is_some_and(|r| !endpoints_of(&r).contains_key(&endpoint("echo-2")))
            })
        });
        assert!(left, "echo-2 still listed: {:?}", echo_row(env));

        let counters = cli_json(env, "node1", &["stats", "--interval", "100ms"])?;
        let dnat_new = counters
            .iter()
            .find(|c| c["counter"] == "dnat_new")
            .context("dnat_new")?;
        assert!(dnat_new["total"].as_u64() >= Some(1), "{dnat_new}");
        assert_eq!(dnat_new["kind"], "verdict");
        Ok(())
    });
}
