//! `vipr trace` against running agents: the main packet classes (a pod to a
//! ClusterIP in TCP and UDP, the outside to a NodePort on TC and XDP, an
//! established flow, a source range, a Service without endpoints, a
//! non-service packet, the node itself through the socket hooks), each
//! checked against what the manifests say; and the live conntrack table
//! and counters untouched by all of them.
use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use proxy_common::{Counter, CtKey, CtValue};
use serde_json::Value;
use vipr_tests::{demo::wait_until, echo::TcpSession, external::*};

const TIMEOUT: Duration = Duration::from_secs(2);
const APPLY_TIMEOUT: Duration = Duration::from_secs(5);
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);
const EMPTY_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 59);
/// A pod address that is not an endpoint (so no hairpin).
const POD_CLIENT: &str = "10.244.1.99:41000";

/// `vipr trace ARGS -o json` inside `node`'s network namespace, as an
/// operator on the node runs it.
fn trace(cluster: &ExternalCluster, node: &str, args: &[&str]) -> Result<Value> {
    cluster.vipr_json(node, &[&["trace"], args].concat())
}

fn run_trace(cluster: &ExternalCluster, node: &str, args: &[&str]) -> Result<String> {
    cluster.vipr(node, &[&["trace"], args].concat())
}

fn counted(report: &Value) -> BTreeSet<String> {
    report["counted"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_str().map(str::to_string))
        .collect()
}

fn web_endpoints(port: u16) -> BTreeSet<String> {
    PODS.iter()
        .map(|(_, _, ip)| format!("{ip}:{port}"))
        .collect()
}

fn chosen(report: &Value) -> Option<String> {
    let c = &report["chosen"];
    Some(format!("{}:{}", c["ip"].as_str()?, c["port"].as_u64()?))
}

/// What must not move: the live conntrack table and counters.
struct LiveState {
    conntrack: HashMap<CtKey, CtValue>,
    counters: Vec<(Counter, u64)>,
}

fn live_state(pins: &Path) -> Result<LiveState> {
    Ok(LiveState {
        conntrack: vipr::inspect::pinned_conntrack(pins)?,
        counters: vipr::inspect::pinned_counters(pins)?,
    })
}

#[test]
fn traces_name_each_decision_and_leave_live_state_alone() {
    let mut cluster =
        ExternalCluster::start(&vipr_tests::vipr_bin(), "off").expect("external cluster");
    let result = traces(&mut cluster);
    if let Err(e) = result {
        eprintln!("{}", cluster.logs());
        panic!("{e:?}");
    }
}

fn traces(cluster: &mut ExternalCluster) -> Result<()> {
    cluster.write_manifest(
        "none.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: none, namespace: ext}}\nspec:\n  clusterIP: {EMPTY_IP}\n  ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]\n"
        ),
    )?;
    let node_port = format!("{}:{NODE_PORT_TCP}/tcp", NODE_IPS[0]);
    let client = CLIENT_IP.to_string();
    // An established flow through the NodePort, held open.
    let mut session = TcpSession::connect(
        &cluster.client,
        SocketAddr::from((NODE_IPS[0], NODE_PORT_TCP)),
        TIMEOUT,
    )?;
    let serving = session.request()?;
    let serving_ip = PODS.iter().find(|p| p.0 == serving).context("pod")?.2;
    let refused_ready = wait_until(APPLY_TIMEOUT, || {
        trace(
            cluster,
            "node1",
            &[POD_CLIENT, &format!("{EMPTY_IP}:80/tcp")],
        )
        .is_ok_and(|r| {
            counted(&r).contains("reject_tcp_rst") && r["service"]["service"] == "ext/none"
        })
    });
    ensure!(
        refused_ready,
        "the Service without endpoints never refused, or was never named"
    );
    let pins = cluster.pins("node1");
    let before = live_state(&pins)?;

    // A pod to the ClusterIP: a new flow, translated to one endpoint.
    let r = trace(
        cluster,
        "node1",
        &[POD_CLIENT, &format!("{CLUSTER_IP}:80/tcp")],
    )?;
    ensure!(r["service"]["service"] == "ext/web", "{r:#}");
    ensure!(r["service"]["port_name"] == "http", "{r:#}");
    ensure!(r["program"] == "vipr_from_pod", "{r:#}");
    ensure!(r["chosen"]["by"] == "slot", "{r:#}");
    let to = chosen(&r).context("chosen")?;
    ensure!(web_endpoints(8080).contains(&to), "{to} {r:#}");
    ensure!(r["output"]["dst"] == to.as_str(), "{r:#}");
    ensure!(counted(&r) == BTreeSet::from(["dnat_new".into()]), "{r:#}");
    ensure!(
        r["verdict"].as_str().is_some_and(|v| v.starts_with("pass")),
        "{r:#}"
    );
    ensure!(r["masquerade"].is_null(), "{r:#}");
    // The same as text: one line per decision.
    let text = run_trace(
        cluster,
        "node1",
        &[POD_CLIENT, &format!("{CLUSTER_IP}:80/tcp")],
    )?;
    eprintln!("{text}");
    for expected in [
        "service     ext/web port http, ClusterIP".to_string(),
        format!("chosen      {to} (slot "),
        "counted     dnat_new".to_string(),
        format!("output      10.244.1.99:41000 -> {to} tcp [SYN]"),
    ] {
        ensure!(text.contains(&expected), "no {expected:?} in\n{text}");
    }

    // The same in UDP, to the DNS port's endpoints.
    let r = trace(
        cluster,
        "node1",
        &[POD_CLIENT, &format!("{CLUSTER_IP}:53/udp")],
    )?;
    let to = chosen(&r).context("chosen")?;
    ensure!(web_endpoints(5353).contains(&to), "{to} {r:#}");
    ensure!(r["service"]["port_name"] == "dns", "{r:#}");

    // The outside to a NodePort: masqueraded exactly when the endpoint is
    // on the other node (externalTrafficPolicy Cluster).
    for port in 41_000..41_008 {
        let r = trace(
            cluster,
            "node1",
            &[
                &format!("{client}:{port}"),
                &node_port,
                "--from",
                "external",
            ],
        )?;
        ensure!(r["service"]["type"] == "NodePort", "{r:#}");
        // External frontends use Maglev by default (`--lb-algorithm`).
        ensure!(r["chosen"]["by"] == "maglev", "{r:#}");
        let to = chosen(&r).context("chosen")?;
        let remote = to.starts_with(&PODS[1].2.to_string());
        ensure!(r["masquerade"].is_string() == remote, "{r:#}");
        if let Some(masquerade) = r["masquerade"].as_str() {
            ensure!(
                masquerade.starts_with(&format!("{}:", NODE_IPS[0])),
                "{r:#}"
            );
        }
        if remote {
            let from_node = r["output"]["src"].as_str().context("output")?;
            ensure!(from_node.starts_with(&format!("{}:", NODE_IPS[0])), "{r:#}");
        }
    }

    // The same packet through the XDP program chooses the same endpoint,
    // also as arriving on the node's uplink.
    let args = [
        &format!("{client}:41000") as &str,
        &node_port,
        "--from",
        "external",
    ];
    let tc = trace(cluster, "node1", &args)?;
    let on_uplink = ["--iface", "eth0"];
    for extra in [&["--xdp"][..], &["--xdp", "--iface", "eth0"], &on_uplink] {
        let other = trace(cluster, "node1", &[&args[..], extra].concat())?;
        ensure!(chosen(&other) == chosen(&tc), "{extra:?}: {other:#} {tc:#}");
        if extra.contains(&"--xdp") {
            ensure!(other["program"] == "vipr_xdp_external", "{other:#}");
        }
    }

    // The held connection's next segment follows its conntrack entry.
    let local = session.local_addr().to_string();
    let r = trace(
        cluster,
        "node1",
        &[
            &local,
            &node_port,
            "--from",
            "external",
            "--tcp-flags",
            "ack",
        ],
    )?;
    ensure!(r["chosen"]["by"] == "conntrack", "{r:#}");
    ensure!(r["chosen"]["ip"] == serving_ip.to_string(), "{r:#}");
    ensure!(r["conntrack_entries"].as_u64() >= Some(1), "{r:#}");
    ensure!(counted(&r).contains("dnat_established"), "{r:#}");

    // loadBalancerSourceRanges keep this client out.
    let r = trace(
        cluster,
        "node1",
        &[
            &client,
            &format!("{LB_BLOCKED}:80/tcp"),
            "--from",
            "external",
        ],
    )?;
    ensure!(
        counted(&r) == BTreeSet::from(["drop_source_range".into()]),
        "{r:#}"
    );
    ensure!(
        r["verdict"].as_str().is_some_and(|v| v.starts_with("drop")),
        "{r:#}"
    );

    // No endpoints at all: a RST from the frontend.
    let r = trace(
        cluster,
        "node1",
        &[POD_CLIENT, &format!("{EMPTY_IP}:80/tcp")],
    )?;
    ensure!(r["service"]["service"] == "ext/none", "{r:#}");
    ensure!(r["output"]["src"] == format!("{EMPTY_IP}:80"), "{r:#}");
    ensure!(
        r["output"]["flags"]
            .as_str()
            .is_some_and(|f| f.contains("RST")),
        "{r:#}"
    );

    // Not a frontend at all.
    let r = trace(
        cluster,
        "node1",
        &[
            &client,
            &format!("{}:22/tcp", NODE_IPS[0]),
            "--from",
            "external",
        ],
    )?;
    ensure!(r["service"].is_null(), "{r:#}");
    ensure!(
        counted(&r) == BTreeSet::from(["pass_not_service".into()]),
        "{r:#}"
    );
    ensure!(r["output"]["dst"] == format!("{}:22", NODE_IPS[0]), "{r:#}");

    // The node itself: the socket hooks' choice.
    let r = trace(
        cluster,
        "node1",
        &[
            &NODE_IPS[0].to_string(),
            &format!("{CLUSTER_IP}:80/tcp"),
            "--from",
            "host",
        ],
    )?;
    ensure!(r["program"] == "vipr_trace_host", "{r:#}");
    ensure!(
        counted(&r) == BTreeSet::from(["sock_translated".into()]),
        "{r:#}"
    );
    let to = chosen(&r).context("chosen")?;
    ensure!(web_endpoints(8080).contains(&to), "{to} {r:#}");
    ensure!(r["output"]["dst"] == to.as_str(), "{r:#}");

    // Nothing live moved: no flow was added or changed (the sweeper may
    // only have removed some), and no counter a trace moved moved here.
    let after = live_state(&pins)?;
    for (key, value) in &after.conntrack {
        ensure!(
            before.conntrack.get(key) == Some(value),
            "a trace changed live conntrack: {key:?} {value:?}"
        );
    }
    let traced = [
        Counter::DnatNew,
        Counter::DnatEstablished,
        Counter::DropSourceRange,
        Counter::RejectTcpRst,
        Counter::SockTranslated,
        Counter::XdpTransmitted,
        Counter::XdpToStack,
        Counter::TcRedirected,
    ];
    for counter in traced {
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
