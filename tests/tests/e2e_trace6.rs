//! `vipr trace` in IPv6 against running agents (`--ipv6 on`): a pod to an
//! IPv6 ClusterIP in TCP and UDP (frontend, endpoint, output packet), an
//! established flow's next segment following its live conntrack entry, the
//! node's own sockets, the external programs run on an IPv6 packet, the
//! argument errors; and the live IPv6 conntrack table and counters
//! untouched by all of them.
use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use proxy_common::{Counter, Ct6Key, Ct6Value};
use serde_json::Value;
use vipr_tests::{demo::wait_until, echo, external::*};

const TIMEOUT: Duration = Duration::from_secs(2);
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
const CLUSTER_IP6: &str = "fd00:96::70";
/// A second Service on the same endpoints, with ClientIP session affinity.
const STICKY_IP6: &str = "fd00:96::71";
/// A pod address that is not an endpoint (so no hairpin), as
/// `[CLIENT6]:CLIENT_PORT`.
const CLIENT6: &str = "fd00:244:1::99";
const CLIENT_PORT: u16 = 41_000;
/// A real client pod on node1, for the established flow.
const CLIENT_POD: (&str, &str) = ("c6", "10.244.1.50");

fn manifest(endpoints6: &[(String, &str)]) -> String {
    let endpoints: String = endpoints6
        .iter()
        .map(|(ip, node)| format!("- {{addresses: ['{ip}'], nodeName: {node}}}\n"))
        .collect();
    let web6 = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web6, namespace: ext}}\nspec:\n  ipFamilies: [IPv6]\n  clusterIPs: ['{CLUSTER_IP6}']\n  ports: [{{name: http, port: 80, targetPort: 8080}}, {{name: dns, port: 53, targetPort: 5353, protocol: UDP}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web6, namespace: ext, labels: {{kubernetes.io/service-name: web6}}}}\naddressType: IPv6\nports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: 5353, protocol: UDP}}]\nendpoints:\n{endpoints}"
    );
    let sticky6 = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: sticky6, namespace: ext}}\nspec:\n  ipFamilies: [IPv6]\n  clusterIPs: ['{STICKY_IP6}']\n  sessionAffinity: ClientIP\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: sticky6, namespace: ext, labels: {{kubernetes.io/service-name: sticky6}}}}\naddressType: IPv6\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n{endpoints}"
    );
    format!("{web6}\n---\n{sticky6}")
}

fn command(cluster: &ExternalCluster, args: &[&str]) -> Result<std::process::Output> {
    cluster.vipr_command("node1", &[&["trace"], args].concat())
}

/// `vipr trace ARGS` in node1's network namespace: its output, or its error.
fn run_trace(cluster: &ExternalCluster, args: &[&str]) -> Result<String> {
    cluster.vipr("node1", &[&["trace"], args].concat())
}

fn trace(cluster: &ExternalCluster, args: &[&str]) -> Result<Value> {
    cluster.vipr_json("node1", &[&["trace"], args].concat())
}

fn counted(report: &Value) -> BTreeSet<String> {
    report["counted"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_str().map(str::to_string))
        .collect()
}

fn chosen(report: &Value) -> Option<String> {
    let c = &report["chosen"];
    let ip: Ipv6Addr = c["ip"].as_str()?.parse().ok()?;
    Some(SocketAddr::from((ip, c["port"].as_u64()? as u16)).to_string())
}

/// What must not move: the live IPv6 conntrack table and the counters.
struct LiveState {
    conntrack: HashMap<Ct6Key, Ct6Value>,
    counters: Vec<(Counter, u64)>,
}

fn live_state(pins: &Path) -> Result<LiveState> {
    Ok(LiveState {
        conntrack: vipr::inspect::pinned_conntrack6(pins)?,
        counters: vipr::inspect::pinned_counters(pins)?,
    })
}

#[test]
fn ipv6_traces_name_each_decision_and_leave_live_state_alone() {
    let mut cluster = ExternalCluster::start_with_args(
        &vipr_tests::vipr_bin(),
        "off",
        &["--socket-lb", "host", "--ipv6", "on"],
    )
    .expect("cluster");
    let result = traces6(&mut cluster);
    if let Err(e) = result {
        eprintln!("{}", cluster.logs());
        panic!("{e:?}");
    }
}

fn traces6(cluster: &mut ExternalCluster) -> Result<()> {
    cluster
        .topology
        .add_pod("node1", CLIENT_POD.0, CLIENT_POD.1)?;
    cluster.topology.enable_ipv6()?;
    let client_netns = cluster.topology.netns(CLIENT_POD.0)?;
    let _servers6 = cluster.start_ipv6_servers()?;
    let endpoints6 = PODS
        .iter()
        .map(|(pod, node, _)| Ok((cluster.topology.pod_ip6(pod)?.to_string(), *node)))
        .collect::<Result<Vec<(String, &str)>>>()?;
    cluster.write_manifest("web6.yaml", &manifest(&endpoints6))?;
    let endpoints_on = |port: u16| -> BTreeSet<String> {
        endpoints6
            .iter()
            .map(|(ip, _)| format!("[{ip}]:{port}"))
            .collect()
    };

    let http6 = SocketAddr::from((CLUSTER_IP6.parse::<Ipv6Addr>()?, 80));
    let frontend = format!("{http6}/tcp");
    let client = format!("[{CLIENT6}]:{CLIENT_PORT}");
    let named = wait_until(APPLY_TIMEOUT, || {
        echo::tcp_request(&client_netns, http6, TIMEOUT).is_ok()
            && trace(cluster, &[&client, &frontend])
                .is_ok_and(|r| r["service"]["service"] == "ext/web6")
    });
    ensure!(named, "{http6} never served, or never named by a trace");
    // An established flow, held open.
    let mut session = echo::TcpSession::connect(&client_netns, http6, TIMEOUT)?;
    let serving = session.request()?;
    let serving_ip = cluster.topology.pod_ip6(&serving)?;
    // The client's session affinity with the sticky Service, made live.
    let sticky = SocketAddr::from((STICKY_IP6.parse::<Ipv6Addr>()?, 80));
    let bound = echo::tcp_request(&client_netns, sticky, TIMEOUT)
        .with_context(|| format!("{sticky} from {}", CLIENT_POD.0))?;
    let bound_ip = cluster.topology.pod_ip6(&bound)?;
    let client_ip6 = cluster.topology.pod_ip6(CLIENT_POD.0)?;
    let pins = cluster.pins("node1");
    let before = live_state(&pins)?;

    // A pod to the IPv6 ClusterIP: a new flow, translated to one endpoint.
    let r = trace(cluster, &[&client, &frontend])?;
    ensure!(
        r["frontend_looked_up"] == format!("{http6}/tcp internal"),
        "{r:#}"
    );
    ensure!(r["service"]["port_name"] == "http", "{r:#}");
    ensure!(r["program"] == "vipr_from_pod", "{r:#}");
    ensure!(r["chosen"]["by"] == "slot", "{r:#}");
    let to = chosen(&r).context("chosen")?;
    ensure!(endpoints_on(8080).contains(&to), "{to} {r:#}");
    ensure!(r["packet"]["src"] == client.as_str(), "{r:#}");
    ensure!(r["output"]["dst"] == to.as_str(), "{r:#}");
    ensure!(counted(&r) == BTreeSet::from(["dnat_new".into()]), "{r:#}");
    ensure!(
        r["verdict"].as_str().is_some_and(|v| v.starts_with("pass")),
        "{r:#}"
    );
    // The same as text.
    let text = run_trace(cluster, &[&client, &frontend])?;
    eprintln!("{text}");
    for expected in [
        format!("frontend    {http6}/tcp internal"),
        "service     ext/web6 port http, ClusterIP".to_string(),
        format!("chosen      {to} (slot "),
        format!("output      {client} -> {to} tcp [SYN]"),
    ] {
        ensure!(text.contains(&expected), "no {expected:?} in\n{text}");
    }

    // UDP, to the DNS port's endpoints; a bare IPv6 SRC takes port 40000.
    let r = trace(cluster, &[CLIENT6, &format!("[{CLUSTER_IP6}]:53/udp")])?;
    let to = chosen(&r).context("chosen")?;
    ensure!(endpoints_on(5353).contains(&to), "{to} {r:#}");
    ensure!(r["service"]["port_name"] == "dns", "{r:#}");
    ensure!(r["packet"]["src"] == format!("[{CLIENT6}]:40000"), "{r:#}");
    ensure!(r["output"]["dst"] == to.as_str(), "{r:#}");

    // The held connection's next segment follows its live entry.
    let local = session.local_addr().to_string();
    let r = trace(cluster, &[&local, &frontend, "--tcp-flags", "ack"])?;
    ensure!(r["chosen"]["by"] == "conntrack", "{r:#}");
    ensure!(r["chosen"]["ip"] == serving_ip.to_string(), "{r:#}");
    ensure!(r["conntrack_entries"].as_u64() >= Some(1), "{r:#}");
    ensure!(counted(&r).contains("dnat_established"), "{r:#}");

    // A sticky IPv6 client: its live affinity is copied in, so a new
    // connection from another port traces to the endpoint it is bound to.
    let r = trace(
        cluster,
        &[
            &format!("[{client_ip6}]:{CLIENT_PORT}"),
            &format!("{sticky}/tcp"),
        ],
    )?;
    ensure!(r["chosen"]["by"] == "affinity", "{r:#}");
    ensure!(r["chosen"]["ip"] == bound_ip.to_string(), "{r:#}");
    ensure!(counted(&r).contains("affinity_followed"), "{r:#}");

    // The node's own IPv6 sockets: the socket hooks' choice.
    let node6 = cluster.topology.node_ip6("node1")?.to_string();
    let r = trace(cluster, &[&node6, &frontend, "--from", "host"])?;
    ensure!(r["program"] == "vipr_trace_host", "{r:#}");
    ensure!(
        counted(&r) == BTreeSet::from(["sock_translated".into()]),
        "{r:#}"
    );
    let to = chosen(&r).context("chosen")?;
    ensure!(endpoints_on(8080).contains(&to), "{to} {r:#}");

    // The external programs run the packet and say what they did: web6 has
    // no NodePort, so the TC program passes it as no Service's, and XDP
    // hands it on uncounted (e2e_external6 traces IPv6 NodePorts).
    let node_port = format!("[{node6}]:{NODE_PORT_TCP}/tcp");
    for xdp in [&[][..], &["--xdp"]] {
        let args = [&[&client, &node_port, "--from", "external"], xdp].concat();
        let r = trace(cluster, &args)?;
        let program = if xdp.is_empty() {
            "vipr_from_external"
        } else {
            "vipr_xdp_external"
        };
        ensure!(r["program"] == program, "{r:#}");
        let notes = r["notes"].to_string();
        ensure!(r["output"] == r["packet"], "{r:#}");
        if xdp.is_empty() {
            let passed = BTreeSet::from(["pass_not_service".to_string()]);
            ensure!(counted(&r) == passed, "{r:#}");
        } else {
            // XDP counts nothing it hands on: the trace says who decides then.
            ensure!(
                counted(&r).is_empty() && notes.contains("TC program"),
                "{r:#}"
            );
        }
    }

    // Arguments of two families, or an unbracketed IPv6 destination.
    for (args, message) in [
        (["10.244.1.99", &frontend], "one address family"),
        ([&client, "10.96.0.10:80/tcp"], "one address family"),
        ([&client, &format!("{CLUSTER_IP6}:80/tcp")], "[ADDR]:PORT"),
    ] {
        let out = command(cluster, &args)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "{args:?} was accepted");
        ensure!(stderr.contains(message), "{args:?}: {stderr}");
    }

    // Nothing live moved.
    let after = live_state(&pins)?;
    for (key, value) in &after.conntrack {
        ensure!(
            before.conntrack.get(key) == Some(value),
            "a trace changed live IPv6 conntrack: {key:?} {value:?}"
        );
    }
    for counter in [
        Counter::DnatNew,
        Counter::DnatEstablished,
        Counter::SockTranslated,
    ] {
        let value = |state: &LiveState| {
            state
                .counters
                .iter()
                .find(|(c, _)| *c == counter)
                .map(|(_, n)| *n)
        };
        ensure!(
            value(&before) == value(&after),
            "a trace moved the live {counter:?}: {:?} → {:?}",
            value(&before),
            value(&after)
        );
    }
    drop(session);
    Ok(())
}
