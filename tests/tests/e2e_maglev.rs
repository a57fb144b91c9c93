//! A scaling event under Maglev (the default for external frontends) and
//! DSR, in both families: an outside client holds TCP connections to a
//! dual-stack NodePort with four endpoints per family (two pods, two ports
//! each), then one endpoint of each family leaves.
//! - Every held connection on a remaining endpoint is still answered by
//!   the same endpoint, and no new connection reaches the departed one.
//! - New flows keep their choice: `vipr trace` of fresh client ports
//!   (through the real program, on copies of the live maps) before and
//!   after the removal. Maglev keeps nearly all flows whose endpoint
//!   remains; slots (`--lb-algorithm random`) would move about two thirds.
//! - node1's /metrics reports the pool in use.
//!
//! On TC and on native XDP.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
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
const FIRST_PORT: u16 = 8080;
/// Every pod serves a second endpoint on this port, under its own name.
const SECOND_PORT: u16 = 8081;
const SECOND_SUFFIX: &str = "b";
const SESSIONS: usize = 16;
/// Fresh client ports whose choice is traced before and after.
const TRACED_PORTS: std::ops::Range<u16> = 42_000..42_060;
/// Measured (IPv4): Maglev keeps 42 of 45 (93%), slots 17 of 42 (40%).
const MIN_KEPT: f64 = 0.8;
/// The endpoint that leaves: web-2's second one.
const LEAVING: &str = "web-2b";

/// One address family's view of the cluster.
struct Family {
    label: &'static str,
    address_type: &'static str,
    client: IpAddr,
    node1: IpAddr,
    /// web-1's and web-2's addresses.
    pods: [(&'static str, &'static str, IpAddr); 2],
}

impl Family {
    fn frontend(&self) -> SocketAddr {
        SocketAddr::new(self.node1, NODE_PORT)
    }

    /// The endpoint an echo server's name stands for.
    fn endpoint_of(&self, name: &str) -> Option<SocketAddr> {
        let (pod, port) = match name.strip_suffix(SECOND_SUFFIX) {
            Some(pod) => (pod, SECOND_PORT),
            None => (name, FIRST_PORT),
        };
        let ip = self.pods.iter().find(|p| p.0 == pod)?.2;
        Some(SocketAddr::new(ip, port))
    }

    fn slice(&self, suffix: &str, port: u16, pods: &[(&str, &str, IpAddr)]) -> String {
        let endpoints: String = pods
            .iter()
            .map(|(_, node, ip)| {
                format!(
                    "- {{addresses: ['{ip}'], nodeName: {node}, conditions: {{ready: true}}}}\n"
                )
            })
            .collect();
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: scale-{suffix}-{}, namespace: ext, labels: {{kubernetes.io/service-name: scale}}}}\naddressType: {}\nports: [{{name: http, port: {port}, protocol: TCP}}]\nendpoints:\n{endpoints}",
            self.label, self.address_type
        )
    }

    /// Both pods on `FIRST_PORT`, and on `SECOND_PORT` all of them or,
    /// once it left, web-1 only.
    fn slices(&self, left: bool) -> String {
        let second = if left {
            &self.pods[..1]
        } else {
            &self.pods[..]
        };
        self.slice("a", FIRST_PORT, &self.pods) + &self.slice("b", SECOND_PORT, second)
    }

    /// The endpoint a new flow from `client:port` to node1's NodePort gets.
    fn traced_choice(&self, c: &ExternalCluster, port: u16) -> Result<SocketAddr> {
        let r = c.vipr_json(
            "node1",
            &[
                "trace",
                &SocketAddr::new(self.client, port).to_string(),
                &format!("{}/tcp", self.frontend()),
                "--from",
                "external",
            ],
        )?;
        ensure!(r["chosen"]["by"] == "maglev", "not chosen by Maglev: {r:#}");
        let chosen = &r["chosen"];
        let ip: IpAddr = chosen["ip"].as_str().context("chosen ip")?.parse()?;
        let port = chosen["port"].as_u64().context("chosen port")?;
        Ok(SocketAddr::new(ip, u16::try_from(port)?))
    }

    fn traced_choices(&self, c: &ExternalCluster) -> Result<BTreeMap<u16, SocketAddr>> {
        TRACED_PORTS
            .map(|port| Ok((port, self.traced_choice(c, port)?)))
            .collect()
    }
}

fn families(c: &ExternalCluster) -> Result<[Family; 2]> {
    let pod6 = |i: usize| -> Result<(&'static str, &'static str, IpAddr)> {
        let (pod, node, _) = PODS[i];
        Ok((pod, node, c.topology.pod_ip6(pod)?.into()))
    };
    Ok([
        Family {
            label: "v4",
            address_type: "IPv4",
            client: CLIENT_IP.into(),
            node1: NODE_IPS[0].into(),
            pods: PODS.map(|(pod, node, ip)| (pod, node, ip.into())),
        },
        Family {
            label: "v6",
            address_type: "IPv6",
            client: CLIENT_IP6.into(),
            node1: c.topology.node_ip6("node1")?.into(),
            pods: [pod6(0)?, pod6(1)?],
        },
    ])
}

fn manifest(families: &[Family; 2], left: bool) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: scale, namespace: ext}}\nspec:\n  type: NodePort\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  clusterIPs: [10.96.0.62, 'fd00:96::62']\n  ports: [{{name: http, port: 80, targetPort: http, nodePort: {NODE_PORT}, protocol: TCP}}]\n{}{}",
        families[0].slices(left),
        families[1].slices(left)
    )
}

#[test]
fn held_and_new_flows_keep_their_endpoint_when_another_one_leaves() {
    for xdp in ["off", "native"] {
        eprintln!("-- with --xdp {xdp}");
        let mut c =
            ExternalCluster::start_dual_stack(&vipr_tests::vipr_bin(), xdp, &["--lb-mode", "dsr"])
                .expect("cluster");
        if let Err(e) = scale_down(&mut c) {
            eprintln!("{}", c.logs());
            panic!("--xdp {xdp}: {e:?}");
        }
    }
}

/// Echo servers for the second endpoints, in both families (the first
/// ones: the cluster's own on 0.0.0.0, and `start_ipv6_servers`).
fn second_servers(c: &ExternalCluster) -> Result<Vec<EchoServer>> {
    let mut servers = c.start_ipv6_servers()?;
    for (pod, _, _) in PODS {
        let ns = c.topology.netns(pod)?;
        let name = format!("{pod}{SECOND_SUFFIX}");
        servers.push(EchoServer::start(&ns, &name, Some(SECOND_PORT), None)?);
        let ip6 = c.topology.pod_ip6(pod)?;
        servers.push(EchoServer::start_on(
            &ns,
            &name,
            ip6.into(),
            Some(SECOND_PORT),
            None,
        )?);
    }
    Ok(servers)
}

fn scale_down(c: &mut ExternalCluster) -> Result<()> {
    let _servers = second_servers(c)?;
    let families = families(c)?;
    c.write_manifest("scale.yaml", &manifest(&families, false))?;
    let mut held = Vec::new();
    let mut before = Vec::new();
    for family in &families {
        let frontend = family.frontend();
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
            "{}: {SESSIONS} connections on only {serving:?}",
            family.label
        );
        held.push(sessions);
        before.push(family.traced_choices(c)?);
    }
    pool_is_reported(c)?;

    // web-2's second endpoint leaves both slices (its servers stay up).
    c.write_manifest("scale.yaml", &manifest(&families, true))?;
    for ((family, sessions), before) in families.iter().zip(&mut held).zip(&before) {
        let leaving = family.endpoint_of(LEAVING).context("leaving endpoint")?;
        ensure!(
            wait_until(APPLY_TIMEOUT, || {
                family
                    .traced_choices(c)
                    .is_ok_and(|after| after.values().all(|e| *e != leaving))
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
            let reply = echo::tcp_request(&c.client, family.frontend(), TIMEOUT)?;
            ensure!(reply != LEAVING, "a new connection reached {LEAVING}");
        }
        let after = family.traced_choices(c)?;
        kept_enough(family.label, before, &after, leaving)?;
    }
    Ok(())
}

/// Of the traced flows whose endpoint remained, the share that kept it.
fn kept_enough(
    label: &str,
    before: &BTreeMap<u16, SocketAddr>,
    after: &BTreeMap<u16, SocketAddr>,
    leaving: SocketAddr,
) -> Result<()> {
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
        "{label}: new flows whose endpoint remained and kept it: {kept}/{} ({:.1}%)",
        remaining.len(),
        fraction * 100.0
    );
    ensure!(
        fraction >= MIN_KEPT,
        "{label}: only {kept} of {} new flows kept their remaining endpoint",
        remaining.len()
    );
    Ok(())
}

/// node1's /metrics: the pool's positions in use (tables of the default
/// 1,021 positions), of 4,096 tables; no frontend on its slots.
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
    // At least this Service's two tables (one per family; other Services
    // of the cluster may hold more).
    ensure!(used >= 2.0 * TABLE, "{used} positions in use");
    ensure!(m.get("vipr_map_capacity", &pool)? == 4096.0 * TABLE);
    ensure!(m.get("vipr_maglev_frontends_on_slots", &[])? == 0.0);
    eprintln!("Maglev pool in use: {} tables", used / TABLE);
    Ok(())
}
