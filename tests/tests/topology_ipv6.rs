//! The emulated cluster in IPv6 (no vipr): a pod reaches a pod and the
//! node across the underlay, so IPv6 end-to-end tests fail only for what
//! vipr does.
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use vipr_tests::netns::{Topology, run_in};

const PORT: u16 = 7_777;

/// Whether a TCP connection from `netns` to `to` is accepted by `listener`.
fn connects(netns: &str, to: Ipv6Addr, listener: &TcpListener) -> bool {
    let at = SocketAddr::from((to, PORT));
    let connected = run_in(netns, || {
        TcpStream::connect_timeout(&at, Duration::from_secs(2))
    })
    .is_ok_and(|r| r.is_ok());
    connected && listener.accept().is_ok()
}

#[test]
fn a_pod_reaches_a_pod_and_a_node_on_another_node_in_ipv6() {
    let mut topo = Topology::new().expect("topology");
    topo.add_node("node1").unwrap().add_node("node2").unwrap();
    topo.add_pod("node1", "a", "10.244.1.11").unwrap();
    topo.add_pod("node2", "b", "10.244.2.11").unwrap();
    topo.enable_ipv6().expect("IPv6 addresses and routes");
    let a = topo.netns("a").unwrap();
    for (target, ip) in [
        ("b", topo.pod_ip6("b").unwrap()),
        ("node2", topo.node_ip6("node2").unwrap()),
    ] {
        let listener = run_in(&topo.netns(target).unwrap(), || {
            TcpListener::bind(SocketAddr::from((ip, PORT)))
        })
        .unwrap()
        .expect("listen");
        assert!(
            connects(&a, ip, &listener),
            "a cannot reach {target} at {ip}"
        );
    }
    assert_eq!(topo.pod_ip6("b").unwrap().to_string(), "fd00:244:2::11");
}
