//! DSR end to end in IPv6 (`--lb-mode dsr`, dual stack): an outside IPv6
//! client reaches node1's NodePort, whose only endpoint runs on node2. The
//! request crosses node1 with the client's address (web-2 sees the client),
//! the opening ones carrying the frontend in a destination options header;
//! the reply leaves node2 straight for the client from node1's address and
//! NodePort, and never crosses node1: shown by both nodes' counters and by
//! packet captures on both nodes. On TC and on native XDP.
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use proxy_common::{Counter, DSR6_OPTION_LEN, DSR6_OPTION_TYPE, IPPROTO_TCP, IPPROTO_UDP};
use vipr_tests::{
    capture::{Capture, Frame},
    demo::wait_until,
    echo::{tcp_request_full, udp_request},
    external::*,
};

const TIMEOUT: Duration = Duration::from_secs(2);
const APPLY_TIMEOUT: Duration = Duration::from_secs(20);
const DSR_TCP: u16 = 30_090;
const DSR_UDP: u16 = 30_091;
const FLOWS: usize = 10;
/// The agents' mode: `snat` here must make the test fail.
const LB_MODE: &str = "dsr";

/// An IPv6 NodePort Service whose one endpoint is web-2, on node2.
fn manifest(web2: Ipv6Addr) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: dsr6, namespace: ext}}\nspec:\n  type: NodePort\n  ipFamilies: [IPv6]\n  clusterIPs: ['fd00:96::60']\n  ports:\n  - {{name: http, port: 80, targetPort: 8080, nodePort: {DSR_TCP}, protocol: TCP}}\n  - {{name: dns, port: 53, targetPort: 5353, nodePort: {DSR_UDP}, protocol: UDP}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: dsr6-x, namespace: ext, labels: {{kubernetes.io/service-name: dsr6}}}}\naddressType: IPv6\nports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: 5353, protocol: UDP}}]\nendpoints:\n- {{addresses: ['{web2}'], nodeName: node2, conditions: {{ready: true}}}}\n"
    )
}

const COUNTERS: [Counter; 5] = [
    Counter::DsrOptionAdded,
    Counter::DsrFrontendLearnt,
    Counter::RevNat,
    Counter::RevSnat,
    Counter::DropDsrOptionFailed,
];

fn counters(c: &ExternalCluster, node: &str) -> Result<[u64; 5]> {
    let mut out = [0; 5];
    for (slot, counter) in out.iter_mut().zip(COUNTERS) {
        *slot = c.counter(node, counter)?;
    }
    Ok(out)
}

/// Frames of the client's flows `ports` (client side) coming back to it.
fn replies<'a>(frames: &'a [Frame], proto: u8, ports: &BTreeSet<u16>) -> Vec<&'a Frame> {
    frames
        .iter()
        .filter(|f| f.dst6() == CLIENT_IP6 && f.proto6() == proto)
        .filter(|f| f.ports6().is_some_and(|(_, dst)| ports.contains(&dst)))
        .collect()
}

#[test]
fn ipv6_dsr_replies_leave_the_endpoints_node_straight_for_the_client_on_tc() {
    run("off");
}

#[test]
fn ipv6_dsr_replies_leave_the_endpoints_node_straight_for_the_client_on_xdp() {
    run("native");
}

fn run(xdp: &str) {
    let mut cluster =
        ExternalCluster::start_dual_stack(&vipr_tests::vipr_bin(), xdp, &["--lb-mode", LB_MODE])
            .expect("cluster");
    if let Err(e) = dsr6(&mut cluster) {
        eprintln!("{}", cluster.logs());
        panic!("--xdp {xdp}: {e:?}");
    }
}

fn dsr6(c: &mut ExternalCluster) -> Result<()> {
    let servers6 = c.start_ipv6_servers()?;
    let web2 = c.topology.pod_ip6("web-2")?;
    let node1 = c.topology.node_ip6("node1")?;
    c.write_manifest("dsr6.yaml", &manifest(web2))?;
    let tcp_frontend = SocketAddr::from((node1, DSR_TCP));
    let udp_frontend = SocketAddr::from((node1, DSR_UDP));
    ensure!(
        wait_until(APPLY_TIMEOUT, || {
            tcp_request_full(&c.client, tcp_frontend, TIMEOUT).is_ok()
        }),
        "the IPv6 DSR NodePort never answered"
    );
    let before = [counters(c, "node1")?, counters(c, "node2")?];
    let xdp_sent_before = c.counter("node1", Counter::XdpTransmitted)?;
    let capture1 = Capture::start_ipv6(&c.topology.netns("node1")?)?;
    let capture2 = Capture::start_ipv6(&c.topology.netns("node2")?)?;
    let web2_seen_before = servers6[1].peers().len();

    let mut tcp_ports = BTreeSet::new();
    for _ in 0..FLOWS {
        let reply = tcp_request_full(&c.client, tcp_frontend, TIMEOUT).context("tcp request")?;
        ensure!(reply.name == "web-2", "answered by {}", reply.name);
        ensure!(
            reply.peer == tcp_frontend,
            "the reply came from {}",
            reply.peer
        );
        tcp_ports.insert(reply.local.port());
    }
    for _ in 0..FLOWS {
        let (name, from) = udp_request(&c.client, udp_frontend, TIMEOUT).context("udp request")?;
        ensure!(name == "web-2", "answered by {name}");
        ensure!(from == udp_frontend, "the UDP reply came from {from}");
    }
    // Settle: the last frames reach the captures.
    std::thread::sleep(Duration::from_millis(300));
    let seen1 = capture1.stop()?;
    let seen2 = capture2.stop()?;
    let after = [counters(c, "node1")?, counters(c, "node2")?];
    let delta = |node: usize, i: usize| after[node][i] - before[node][i];
    eprintln!(
        "--xdp {}: node1 [dsr_option_added, dsr_frontend_learnt, rev_nat, rev_snat, drop_dsr_option_failed] +{:?}, node2 +{:?}",
        c.xdp,
        (0..5).map(|i| delta(0, i)).collect::<Vec<_>>(),
        (0..5).map(|i| delta(1, i)).collect::<Vec<_>>()
    );

    // web-2 saw the client itself, not node1.
    let peers: BTreeSet<IpAddr> = servers6[1].peers()[web2_seen_before..]
        .iter()
        .map(|p| p.ip())
        .collect();
    ensure!(
        peers == [IpAddr::V6(CLIENT_IP6)].into(),
        "web-2 saw {peers:?}"
    );

    // Counters: node1 added the header to every SYN and datagram, node2
    // learnt each and restored the frontend on the replies; nothing was
    // masqueraded, and node1 restored no reply.
    let flows = (2 * FLOWS) as u64;
    ensure!(delta(0, 0) >= flows, "node1 dsr_option_added");
    ensure!(delta(1, 1) >= flows, "node2 dsr_frontend_learnt");
    ensure!(delta(1, 2) >= flows, "node2 rev_nat");
    ensure!(delta(0, 2) == 0, "node1 rev_nat");
    ensure!(delta(0, 3) == 0, "node1 rev_snat");
    ensure!(delta(0, 4) == 0, "node1 drop_dsr_option_failed");

    // Captures: no reply of these flows went through node1...
    let udp_ports: BTreeSet<u16> = seen2
        .iter()
        .filter(|f| f.src6() == CLIENT_IP6 && f.proto6() == IPPROTO_UDP && !f.outgoing)
        .filter_map(|f| f.ports6().map(|(src, _)| src))
        .collect();
    ensure!(
        udp_ports.len() == FLOWS,
        "{} UDP flows reached node2",
        udp_ports.len()
    );
    for (proto, ports, frontend_port) in [
        (IPPROTO_TCP, &tcp_ports, DSR_TCP),
        (IPPROTO_UDP, &udp_ports, DSR_UDP),
    ] {
        let through_node1 = replies(&seen1, proto, ports);
        ensure!(
            through_node1.is_empty(),
            "replies crossed node1: {through_node1:?}"
        );
        // ...they left node2, from the frontend, for every flow.
        let from_node2: Vec<&Frame> = replies(&seen2, proto, ports)
            .into_iter()
            .filter(|f| f.outgoing && f.src6() != web2)
            .collect();
        let mut answered = BTreeSet::new();
        for f in &from_node2 {
            let (src, dst) = f.ports6().context("ports")?;
            ensure!(
                (f.src6(), src) == (node1, frontend_port),
                "a reply left node2 from [{}]:{src}",
                f.src6()
            );
            answered.insert(dst);
        }
        ensure!(
            &answered == ports,
            "proto {proto}: node2 answered {answered:?} of {ports:?}"
        );
    }
    // The requests reached node2 with the client's address, the opening
    // ones carrying the frontend in the header. (node1's capture sees
    // what TC forwards, not what XDP_TX sends.)
    let arrived: Vec<&Frame> = seen2
        .iter()
        .filter(|f| !f.outgoing && f.src6() == CLIENT_IP6 && f.dst6() == web2)
        .collect();
    let header = |proto: u8, port: u16| {
        let mut h = vec![proto, 2, DSR6_OPTION_TYPE, DSR6_OPTION_LEN];
        h.extend_from_slice(&node1.octets());
        h.extend_from_slice(&port.to_be_bytes());
        h.extend_from_slice(&[0, 0]);
        h
    };
    for (proto, port) in [(IPPROTO_TCP, DSR_TCP), (IPPROTO_UDP, DSR_UDP)] {
        let expected = header(proto, port);
        let with_header = arrived
            .iter()
            .filter(|f| f.proto6() == proto && f.dest_options6() == Some(expected.as_slice()))
            .count();
        ensure!(
            with_header >= FLOWS,
            "proto {proto}: {with_header} arrived with the header"
        );
    }
    let forwarded_by_tc = seen1
        .iter()
        .filter(|f| f.outgoing && f.src6() == CLIENT_IP6 && f.dst6() == web2)
        .count();
    let xdp_sent = c.counter("node1", Counter::XdpTransmitted)? - xdp_sent_before;
    match c.xdp.as_str() {
        "off" => ensure!(forwarded_by_tc >= 2 * FLOWS, "{forwarded_by_tc} by TC"),
        _ => ensure!(xdp_sent >= flows, "xdp_transmitted {xdp_sent}"),
    }
    eprintln!(
        "captured: node1 {} IPv6 frames ({forwarded_by_tc} forwarded by TC, xdp_transmitted {xdp_sent}, 0 replies), node2 {} ({} requests arrived from the client)",
        seen1.len(),
        seen2.len(),
        arrived.len()
    );
    c.tools_show_dsr(tcp_frontend, CLIENT_IP6.into(), "web-2")
}
