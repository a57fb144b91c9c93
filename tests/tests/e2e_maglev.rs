//! A scaling event under Maglev (the default for external frontends) and
//! DSR: an outside client holds TCP connections to a NodePort with four
//! endpoints (two pods, two ports each), then one endpoint leaves.
//! - Every held connection on a remaining endpoint is still answered by
//!   the same endpoint, and no new connection reaches the departed one.
//! - New flows keep their choice: `vipr trace` of fresh client ports
//!   (through the real program, on copies of the live maps) before and
//!   after the removal. Maglev keeps nearly all flows whose endpoint
//!   remains; slots (`--lb-algorithm random`) would move about two thirds.
//!
//! On TC and on native XDP.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use vipr_tests::{
    demo::wait_until,
    echo::{self, EchoServer, TcpSession},
    external::*,
    metrics::Metrics,
};

const TIMEOUT: Duration = Duration::from_secs(2);
const APPLY_TIMEOUT: Duration = Duration::from_secs(20);
/// The agent's default --metrics-bind-address port, in each node's netns.
const METRICS_PORT: u16 = 10_249;
const NODE_PORT: u16 = 30_090;
/// Every pod serves a second endpoint on this port, under its own name.
const SECOND_PORT: u16 = 8081;
const SECOND_SUFFIX: &str = "b";
const SESSIONS: usize = 24;
/// Fresh client ports whose choice is traced before and after.
const TRACED_PORTS: std::ops::Range<u16> = 42_000..42_060;
/// Measured: Maglev keeps 42 of 45 (93%), slots 17 of 42 (40%).
const MIN_KEPT: f64 = 0.8;
/// The endpoint that leaves: web-2's second one.
const LEAVING: &str = "web-2b";

fn slice(name: &str, port: u16, pods: &[(&str, &str, Ipv4Addr)]) -> String {
    let endpoints: String = pods
        .iter()
        .map(|(_, node, ip)| {
            format!("- {{addresses: [{ip}], nodeName: {node}, conditions: {{ready: true}}}}\n")
        })
        .collect();
    format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: ext, labels: {{kubernetes.io/service-name: scale}}}}\naddressType: IPv4\nports: [{{name: http, port: {port}, protocol: TCP}}]\nendpoints:\n{endpoints}"
    )
}

/// The Service with both pods on 8080 and `second` on `SECOND_PORT`.
fn manifest(second: &[(&str, &str, Ipv4Addr)]) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: scale, namespace: ext}}\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.62\n  ports: [{{name: http, port: 80, targetPort: http, nodePort: {NODE_PORT}, protocol: TCP}}]\n{}{}",
        slice("scale-a", 8080, &PODS),
        slice("scale-b", SECOND_PORT, second)
    )
}

/// The endpoint (`ip:port`) an echo server's name stands for.
fn endpoint_of(name: &str) -> Option<String> {
    let (pod, port) = match name.strip_suffix(SECOND_SUFFIX) {
        Some(pod) => (pod, SECOND_PORT),
        None => (name, 8080),
    };
    let ip = PODS.iter().find(|p| p.0 == pod)?.2;
    Some(format!("{ip}:{port}"))
}

#[test]
fn held_and_new_flows_keep_their_endpoint_when_another_one_leaves() {
    for xdp in ["off", "native"] {
        eprintln!("-- with --xdp {xdp}");
        let mut c =
            ExternalCluster::start_with_args(&vipr_tests::vipr_bin(), xdp, &["--lb-mode", "dsr"])
                .expect("cluster");
        if let Err(e) = scale_down(&mut c) {
            eprintln!("{}", c.logs());
            panic!("--xdp {xdp}: {e:?}");
        }
    }
}

/// node1's /metrics: the pool's positions in use (whole tables of the
/// default 1,021 positions), of 4,096 tables; no frontend on its slots.
fn pool_is_reported(c: &ExternalCluster) -> Result<()> {
    const TABLE: f64 = 1021.0;
    let pool = [("map", proxy_common::MAGLEV)];
    let ns = c.topology.netns("node1")?;
    let reported = || -> Result<Metrics> {
        let (status, text) = vipr_tests::demo::http_get(&ns, METRICS_PORT, "/metrics")?;
        ensure!(status == 200, "/metrics answered {status}");
        Metrics::parse(&text)
    };
    // The loop refreshes these once a second.
    ensure!(
        wait_until(APPLY_TIMEOUT, || reported().is_ok_and(|m| m
            .get("vipr_map_entries", &pool)
            .is_ok_and(|n| n > 0.0))),
        "the Maglev pool is never reported in use"
    );
    let m = reported()?;
    let used = m.get("vipr_map_entries", &pool)?;
    ensure!(used % TABLE == 0.0, "{used} positions: not whole tables");
    ensure!(m.get("vipr_map_capacity", &pool)? == 4096.0 * TABLE);
    ensure!(m.get("vipr_maglev_frontends_on_slots", &[])? == 0.0);
    eprintln!("Maglev pool in use: {} tables", used / TABLE);
    Ok(())
}

/// The endpoint a new flow from `CLIENT_IP:port` to node1's NodePort gets.
fn traced_choice(c: &ExternalCluster, port: u16) -> Result<String> {
    let r = c.vipr_json(
        "node1",
        &[
            "trace",
            &format!("{CLIENT_IP}:{port}"),
            &format!("{}:{NODE_PORT}/tcp", NODE_IPS[0]),
            "--from",
            "external",
        ],
    )?;
    ensure!(r["chosen"]["by"] == "maglev", "not chosen by Maglev: {r:#}");
    let chosen = &r["chosen"];
    Ok(format!(
        "{}:{}",
        chosen["ip"].as_str().context("chosen ip")?,
        chosen["port"].as_u64().context("chosen port")?
    ))
}

fn traced_choices(c: &ExternalCluster) -> Result<BTreeMap<u16, String>> {
    TRACED_PORTS
        .map(|port| Ok((port, traced_choice(c, port)?)))
        .collect()
}

fn scale_down(c: &mut ExternalCluster) -> Result<()> {
    for (pod, _, _) in PODS {
        let ns = c.topology.netns(pod)?;
        let name = format!("{pod}{SECOND_SUFFIX}");
        c.servers
            .push(EchoServer::start(&ns, &name, Some(SECOND_PORT), None)?);
    }
    c.write_manifest("scale.yaml", &manifest(&PODS))?;
    let frontend = SocketAddr::from((NODE_IPS[0], NODE_PORT));
    ensure!(
        wait_until(APPLY_TIMEOUT, || echo::tcp_request(
            &c.client, frontend, TIMEOUT
        )
        .is_ok()),
        "{frontend} never answered"
    );
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        let mut session = TcpSession::connect(&c.client, frontend, TIMEOUT)?;
        let serving = session.request()?;
        sessions.push((session, serving));
    }
    let serving: BTreeSet<&str> = sessions.iter().map(|(_, s)| s.as_str()).collect();
    ensure!(
        serving.len() >= 3,
        "{SESSIONS} connections on only {serving:?}"
    );
    let before = traced_choices(c)?;
    pool_is_reported(c)?;

    // web-2's second endpoint leaves the slice (its server stays up).
    c.write_manifest("scale.yaml", &manifest(&PODS[..1]))?;
    let leaving = endpoint_of(LEAVING).context("leaving endpoint")?;
    ensure!(
        wait_until(APPLY_TIMEOUT, || {
            traced_choices(c).is_ok_and(|after| after.values().all(|e| *e != leaving))
        }),
        "new flows still reach {leaving}"
    );

    for (session, serving) in sessions.iter_mut().filter(|(_, s)| s != LEAVING) {
        let local = session.local_addr();
        let now = session
            .request()
            .with_context(|| format!("{local} (on {serving}) after {LEAVING} left"))?;
        ensure!(now == *serving, "{local} moved from {serving} to {now}");
    }
    for _ in 0..SESSIONS {
        let reply = echo::tcp_request(&c.client, frontend, TIMEOUT)?;
        ensure!(reply != LEAVING, "a new connection reached {LEAVING}");
    }

    let after = traced_choices(c)?;
    let remaining: Vec<u16> = before
        .iter()
        .filter(|(_, e)| **e != leaving)
        .map(|(p, _)| *p)
        .collect();
    let kept = remaining
        .iter()
        .filter(|p| before.get(p) == after.get(p))
        .count();
    let fraction = kept as f64 / remaining.len().max(1) as f64;
    eprintln!(
        "new flows whose endpoint remained and kept it: {kept}/{} ({:.1}%)",
        remaining.len(),
        fraction * 100.0
    );
    ensure!(
        fraction >= MIN_KEPT,
        "only {kept} of {} new flows kept their remaining endpoint",
        remaining.len()
    );
    Ok(())
}
