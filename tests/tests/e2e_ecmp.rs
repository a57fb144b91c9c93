//! An upstream ECMP rehash under DSR and Maglev (`--lb-mode dsr`, Maglev
//! for external frontends by default): an outside client holds TCP
//! connections to a LoadBalancer IP (externalTrafficPolicy Cluster,
//! endpoints on both nodes) routed through node1; then the route to the IP
//! moves to node2. Every connection keeps its endpoint: node2's Maglev
//! table picks what node1's did, and what node2 learnt from node1's DSR
//! option lets it serve the flows it already answered. On TC and on
//! native XDP.
use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use proxy_common::Counter;
use vipr_tests::{demo::wait_until, echo, external::*};

const TIMEOUT: Duration = Duration::from_secs(2);
const LB_ECMP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 40);
/// Enough that both endpoints hold some (all on one: 2 in 2^16).
const SESSIONS: usize = 16;

fn manifest() -> String {
    let endpoints: String = PODS
        .iter()
        .map(|(_, node, ip)| {
            format!("- {{addresses: [{ip}], nodeName: {node}, conditions: {{ready: true}}}}\n")
        })
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: ecmp, namespace: ext}}\nspec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.61\n  ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]\nstatus: {{loadBalancer: {{ingress: [{{ip: {LB_ECMP}}}]}}}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: ecmp-x, namespace: ext, labels: {{kubernetes.io/service-name: ecmp}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n{endpoints}"
    )
}

/// Routes the client's traffic to the LoadBalancer IP through `node`.
fn route_through(c: &ExternalCluster, node: Ipv4Addr) -> Result<()> {
    let out = Command::new("ip")
        .args([
            "-n",
            &c.client,
            "route",
            "replace",
            &format!("{LB_ECMP}/32"),
        ])
        .args(["via", &node.to_string(), "dev", "eth0"])
        .output()?;
    ensure!(
        out.status.success(),
        "ip route: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn connections_keep_their_endpoint_when_the_route_moves_to_the_other_node() {
    for xdp in ["off", "native"] {
        eprintln!("-- with --xdp {xdp}");
        let c =
            ExternalCluster::start_with_args(&vipr_tests::vipr_bin(), xdp, &["--lb-mode", "dsr"])
                .expect("cluster");
        if let Err(e) = ecmp(&c) {
            eprintln!("{}", c.logs());
            panic!("--xdp {xdp}: {e:?}");
        }
    }
}

fn ecmp(c: &ExternalCluster) -> Result<()> {
    route_through(c, NODE_IPS[0])?;
    c.write_manifest("ecmp.yaml", &manifest())?;
    let frontend = SocketAddr::from((LB_ECMP, 80));
    ensure!(
        wait_until(Duration::from_secs(20), || {
            echo::tcp_request(&c.client, frontend, TIMEOUT).is_ok()
        }),
        "{frontend} never answered through node1"
    );
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        let mut session = echo::TcpSession::connect(&c.client, frontend, TIMEOUT)?;
        let serving = session.request()?;
        sessions.push((session, serving));
    }
    let serving: BTreeSet<&str> = sessions.iter().map(|(_, s)| s.as_str()).collect();
    ensure!(
        serving.len() == 2,
        "all {SESSIONS} connections on {serving:?}"
    );

    // The rehash: the client's next packets arrive at node2.
    let translated = |node: &str| -> Result<u64> {
        Ok(c.counter(node, Counter::DnatNew)? + c.counter(node, Counter::DnatEstablished)?)
    };
    let before = [translated("node1")?, translated("node2")?];
    route_through(c, NODE_IPS[1])?;
    for (session, serving) in &mut sessions {
        let local = session.local_addr();
        let now = session
            .request()
            .with_context(|| format!("{local} (was on {serving}) after the move"))?;
        ensure!(
            now == *serving,
            "{local} moved from {serving} to {now} with the route"
        );
    }
    let after = [translated("node1")?, translated("node2")?];
    ensure!(
        after[0] == before[0] && after[1] >= before[1] + SESSIONS as u64,
        "the requests did not all go through node2: node1 {} → {}, node2 {} → {}",
        before[0],
        after[0],
        before[1],
        after[1]
    );
    // New connections go through node2 as well.
    echo::tcp_request(&c.client, frontend, TIMEOUT).context("a new connection through node2")?;
    Ok(())
}
