//! IPv6 end to end (`--ipv6 on`): both nodes and every pod dual-stack, a
//! pod reaching a dual-stack Service's IPv6 ClusterIP in TCP and UDP on
//! endpoints of both nodes, the same Service in IPv4 at once, an IPv6
//! Service with ClientIP affinity keeping the pod on one endpoint, and an
//! IPv6 Service without endpoints refusing at once.
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use proxy_common::Counter;
use vipr_tests::{demo::wait_until, echo, external::*};

const TIMEOUT: Duration = Duration::from_secs(2);
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
const CLUSTER_IP6: &str = "fd00:96::60";
const CLUSTER_IP4: &str = "10.96.0.60";
const EMPTY_IP6: &str = "fd00:96::61";
const STICKY_IP6: &str = "fd00:96::62";
/// New connections the affinity check makes.
const STICKY_REQUESTS: u64 = 20;
/// A client pod on node1, added after the agents started (the agent
/// attaches new pod interfaces as they appear).
const CLIENT_POD: (&str, &str) = ("c6", "10.244.1.50");

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
    let slice_of = |service: &str, name: &str, family: &str, list: &[(String, &str)]| {
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: ext, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: {family}\nports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: 5353, protocol: UDP}}]\nendpoints:\n{}",
            endpoints(list)
        )
    };
    let slice =
        |name: &str, family: &str, list: &[(String, &str)]| slice_of("dual", name, family, list);
    let sticky = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: sticky6, namespace: ext}}\nspec:\n  ipFamilies: [IPv6]\n  clusterIPs: ['{STICKY_IP6}']\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: 600}}}}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n{}",
        slice_of("sticky6", "sticky6-v6", "IPv6", endpoints6)
    );
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: dual, namespace: ext}}\nspec:\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  clusterIPs: [{CLUSTER_IP4}, '{CLUSTER_IP6}']\n  ports: [{{name: http, port: 80, targetPort: 8080}}, {{name: dns, port: 53, targetPort: 5353, protocol: UDP}}]\n{}{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: none6, namespace: ext}}\nspec:\n  ipFamilies: [IPv6]\n  clusterIPs: ['{EMPTY_IP6}']\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n",
        slice("dual-v4", "IPv4", &v4),
        slice("dual-v6", "IPv6", endpoints6),
    ) + &sticky
}

#[test]
fn a_pod_reaches_a_dual_stack_service_in_both_families() {
    let mut cluster = ExternalCluster::start_with_args(
        &vipr_tests::vipr_bin(),
        "off",
        &["--socket-lb", "host", "--ipv6", "on"],
    )
    .expect("cluster");
    let result = dual_stack(&mut cluster);
    if let Err(e) = result {
        eprintln!("{}", cluster.logs());
        panic!("{e:?}");
    }
}

fn dual_stack(cluster: &mut ExternalCluster) -> Result<()> {
    cluster
        .topology
        .add_pod("node1", CLIENT_POD.0, CLIENT_POD.1)?;
    cluster.topology.enable_ipv6()?;
    let client = cluster.topology.netns(CLIENT_POD.0)?;
    let client_ip6 = cluster.topology.pod_ip6(CLIENT_POD.0)?;
    let servers6 = cluster.start_ipv6_servers()?;
    let endpoints6 = PODS
        .iter()
        .map(|(pod, node, _)| Ok((cluster.topology.pod_ip6(pod)?.to_string(), *node)))
        .collect::<Result<Vec<(String, &str)>>>()?;
    cluster.write_manifest("dual.yaml", &manifest(&endpoints6))?;

    let cluster_ip6: Ipv6Addr = CLUSTER_IP6.parse()?;
    let http6 = SocketAddr::from((cluster_ip6, 80));
    let served = wait_until(APPLY_TIMEOUT, || {
        echo::tcp_request(&client, http6, TIMEOUT).is_ok()
    });
    ensure!(served, "no answer from {http6}");
    service_list_names_the_ipv6_frontend(cluster, &endpoints6)?;
    let dnat_before = cluster.counter("node1", Counter::DnatNew)?;

    // New connections spread over the endpoints of both nodes.
    let mut names = BTreeSet::new();
    for _ in 0..24 {
        names.insert(echo::tcp_request(&client, http6, TIMEOUT).context("TCP over IPv6")?);
    }
    ensure!(names.len() == 2, "IPv6 connections reached only {names:?}");
    ensure!(
        cluster.counter("node1", Counter::DnatNew)? >= dnat_before + 24,
        "the IPv6 connections were not translated by vipr"
    );
    // The endpoints see the pod's own address: no masquerade for pods.
    let peers: Vec<IpAddr> = servers6
        .iter()
        .flat_map(|s| s.peers())
        .map(|p| p.ip())
        .collect();
    ensure!(
        peers.iter().all(|ip| *ip == IpAddr::V6(client_ip6)),
        "endpoints saw {peers:?}, not {client_ip6}"
    );

    // ClientIP affinity: the pod's new connections all go to one endpoint.
    let sticky6 = SocketAddr::from((STICKY_IP6.parse::<Ipv6Addr>()?, 80));
    let followed_before = cluster.counter("node1", Counter::AffinityFollowed)?;
    let mut sticky_names = BTreeSet::new();
    for _ in 0..STICKY_REQUESTS {
        sticky_names.insert(echo::tcp_request(&client, sticky6, TIMEOUT).context("sticky6")?);
    }
    ensure!(sticky_names.len() == 1, "affinity lost: {sticky_names:?}");
    ensure!(
        cluster.counter("node1", Counter::AffinityFollowed)?
            >= followed_before + STICKY_REQUESTS - 1,
        "the IPv6 connections did not follow the client's affinity"
    );

    // A held IPv6 connection is listed as an established flow of ext/dual.
    let mut session = echo::TcpSession::connect(&client, http6, TIMEOUT)?;
    let serving = session.request()?;
    let local = session.local_addr().to_string();
    let flows = vipr_json(cluster, &["conntrack", "list", "--service", "ext/dual"])?;
    let flow = flows
        .iter()
        .find(|f| f["client"] == local.as_str())
        .with_context(|| format!("no flow from {local}: {flows:#?}"))?;
    ensure!(flow["frontend"] == http6.to_string(), "{flow}");
    ensure!(flow["state"] == "established", "{flow}");
    let backend = flow["backend"].as_str().context("backend")?;
    let serving_ip = cluster.topology.pod_ip6(&serving)?;
    ensure!(
        backend == SocketAddr::from((serving_ip, 8080)).to_string(),
        "{serving} serves, but the flow says {backend}"
    );
    drop(session);

    // UDP: the reply comes back from the ClusterIP.
    let dns6 = SocketAddr::from((cluster_ip6, 53));
    let (name, from) = echo::udp_request(&client, dns6, TIMEOUT).context("UDP over IPv6")?;
    ensure!(PODS.iter().any(|p| p.0 == name), "UDP answered by {name:?}");
    ensure!(from == dns6, "the UDP reply came from {from}, not {dns6}");

    // The same Service answers IPv4 at the same time.
    let http4 = SocketAddr::from((CLUSTER_IP4.parse::<std::net::Ipv4Addr>()?, 80));
    let name = echo::tcp_request(&client, http4, TIMEOUT).context("TCP over IPv4")?;
    ensure!(
        PODS.iter().any(|p| p.0 == name),
        "IPv4 answered by {name:?}"
    );

    // An IPv6 Service without endpoints refuses at once.
    let empty = SocketAddr::from((EMPTY_IP6.parse::<Ipv6Addr>()?, 80));
    match echo::tcp_request(&client, empty, TIMEOUT) {
        Err(e) if e.is_refused() => {}
        other => anyhow::bail!("{empty}: expected a refusal, got {other:?}"),
    }
    Ok(())
}

/// `vipr service list -o json` on node1 lists the IPv6 ClusterIP with its
/// Service and its IPv6 endpoints (the name index is written within a few
/// seconds of the change).
fn service_list_names_the_ipv6_frontend(
    cluster: &ExternalCluster,
    endpoints6: &[(String, &str)],
) -> Result<()> {
    let list = || -> Result<Vec<serde_json::Value>> {
        let out = std::process::Command::new(vipr_tests::vipr_bin())
            .args(["service", "list", "-o", "json", "--bpffs"])
            .arg(cluster.pins("node1"))
            .arg("--state-dir")
            .arg(cluster.state_dir())
            .output()?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let row = || -> Option<serde_json::Value> {
        list()
            .ok()?
            .into_iter()
            .find(|r| r["ip"] == CLUSTER_IP6 && r["port"] == 80 && r["service"] == "ext/dual")
    };
    ensure!(
        wait_until(APPLY_TIMEOUT, || row().is_some()),
        "no named row for [{CLUSTER_IP6}]:80 in {:?}",
        list()
    );
    let row = row().context("row")?;
    let listed: BTreeSet<String> = row["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["ip"].as_str().map(str::to_string))
        .collect();
    let want: BTreeSet<String> = endpoints6.iter().map(|(ip, _)| ip.clone()).collect();
    ensure!(listed == want, "listed {listed:?}, want {want:?}: {row:#}");
    Ok(())
}

/// `vipr ARGS -o json` on node1's pins and name index.
fn vipr_json(cluster: &ExternalCluster, args: &[&str]) -> Result<Vec<serde_json::Value>> {
    Ok(serde_json::from_value(cluster.vipr_json("node1", args)?)?)
}

/// The demo's dual-stack Service (`cargo xtask demo` shows it): one
/// ClusterIP per family, both answered by the same pods, each seen by the
/// client as the ClusterIP of its family.
#[test]
fn the_demos_dual_stack_service_answers_both_families() {
    let examples = std::env::temp_dir().join(format!("vipr-demo6-{}", std::process::id()));
    vipr_tests::demo::prepare_manifests(&examples, None).expect("manifests");
    let cluster =
        vipr_tests::demo::DemoCluster::start_dual_stack(&vipr_tests::vipr_bin(), &examples)
            .expect("dual-stack demo cluster");
    let result = (|| -> Result<()> {
        vipr_tests::demo6::add_dual_stack_service(&cluster)?;
        let backends: BTreeSet<&str> = vipr_tests::demo::BACKENDS.iter().map(|b| b.name).collect();
        for _ in 0..4 {
            for (frontend, name, peer) in vipr_tests::demo6::ask_both_families(&cluster)? {
                ensure!(
                    backends.contains(name.as_str()),
                    "{frontend} answered by {name}"
                );
                ensure!(peer == frontend, "{frontend}: the client saw {peer}");
            }
        }
        Ok(())
    })();
    let logs = cluster.logs();
    let shutdown = cluster.shutdown();
    let _ = std::fs::remove_dir_all(&examples);
    if let Err(e) = result {
        panic!("{e:?}\n{logs}");
    }
    shutdown.expect("teardown");
}
