//! An upstream ECMP rehash under DSR and Maglev (`--lb-mode dsr`, Maglev
//! for external frontends by default): an outside client holds TCP
//! connections to a LoadBalancer IP (externalTrafficPolicy Cluster,
//! endpoints on both nodes) routed through node1; then the route to the IP
//! moves to node2. Every connection keeps its endpoint: node2's Maglev
//! table picks what node1's did, and what node2 learnt from node1's DSR
//! option (IPv6: header) lets it serve the flows it already answered. In
//! both families (a dual-stack Service), on TC and on native XDP.
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use proxy_common::Counter;
use vipr_tests::{demo::wait_until, echo, external::*};

const TIMEOUT: Duration = Duration::from_secs(2);
const LB_ECMP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 40);
const LB_ECMP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x40, 0, 0, 0, 0, 0, 0x40);
/// Enough that both endpoints hold some (all on one: 2 in 2^16).
const SESSIONS: usize = 16;

fn manifest(pods6: &[(&str, IpAddr)]) -> String {
    let line = |ip: &dyn std::fmt::Display, node: &str| {
        format!("- {{addresses: ['{ip}'], nodeName: {node}, conditions: {{ready: true}}}}\n")
    };
    let v4: String = PODS.iter().map(|(_, node, ip)| line(ip, node)).collect();
    let v6: String = pods6.iter().map(|(node, ip)| line(ip, node)).collect();
    let slice = |family: &str, endpoints: &str| {
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: ecmp-{family}, namespace: ext, labels: {{kubernetes.io/service-name: ecmp}}}}\naddressType: {family}\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n{endpoints}"
        )
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: ecmp, namespace: ext}}\nspec:\n  type: LoadBalancer\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  clusterIPs: [10.96.0.61, 'fd00:96::61']\n  ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]\nstatus: {{loadBalancer: {{ingress: [{{ip: {LB_ECMP}}}, {{ip: '{LB_ECMP6}'}}]}}}}\n{}{}",
        slice("IPv4", &v4),
        slice("IPv6", &v6)
    )
}

/// Routes the client's traffic to `lb` through `node` (an address of it
/// in `lb`'s family).
fn route_through(c: &ExternalCluster, lb: IpAddr, node: IpAddr) -> Result<()> {
    let (family, prefix) = if lb.is_ipv6() {
        ("-6", 128)
    } else {
        ("-4", 32)
    };
    let out = Command::new("ip")
        .args([
            family,
            "-n",
            &c.client,
            "route",
            "replace",
            &format!("{lb}/{prefix}"),
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
            ExternalCluster::start_dual_stack(&vipr_tests::vipr_bin(), xdp, &["--lb-mode", "dsr"])
                .expect("cluster");
        if let Err(e) = ecmp(&c) {
            eprintln!("{}", c.logs());
            panic!("--xdp {xdp}: {e:?}");
        }
    }
}

fn ecmp(c: &ExternalCluster) -> Result<()> {
    let _servers6 = c.start_ipv6_servers()?;
    let pods6 = PODS
        .iter()
        .map(|(pod, node, _)| Ok((*node, c.topology.pod_ip6(pod)?.into())))
        .collect::<Result<Vec<_>>>()?;
    c.write_manifest("ecmp.yaml", &manifest(&pods6))?;
    let nodes6 = [c.topology.node_ip6("node1")?, c.topology.node_ip6("node2")?];
    rehash(c, LB_ECMP.into(), NODE_IPS.map(IpAddr::from))?;
    rehash(c, LB_ECMP6.into(), nodes6.map(IpAddr::from))
}

/// Connections to `lb` through `nodes[0]`, then the route moves to `nodes[1]`.
fn rehash(c: &ExternalCluster, lb: IpAddr, nodes: [IpAddr; 2]) -> Result<()> {
    route_through(c, lb, nodes[0])?;
    let frontend = SocketAddr::new(lb, 80);
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
        "{frontend}: all {SESSIONS} connections on {serving:?}"
    );

    // The rehash: the client's next packets arrive at node2.
    let translated = |node: &str| -> Result<u64> {
        Ok(c.counter(node, Counter::DnatNew)? + c.counter(node, Counter::DnatEstablished)?)
    };
    let before = [translated("node1")?, translated("node2")?];
    route_through(c, lb, nodes[1])?;
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
        "{frontend}: the requests did not all go through node2: node1 {} → {}, node2 {} → {}",
        before[0],
        after[0],
        before[1],
        after[1]
    );
    // New connections go through node2 as well.
    echo::tcp_request(&c.client, frontend, TIMEOUT).context("a new connection through node2")?;
    eprintln!("{frontend}: {SESSIONS} connections kept their endpoints across the move");
    Ok(())
}
