//! TestNodePorts of both proxiers: --nodeport-addresses, and in iptables
//! mode --localhost-nodeports, in IPv4 and IPv6. kube-proxy runs one
//! proxier per family with the same rows, each family's addresses picked
//! by the subtest's family; here a subtest's family picks them as well.
use std::net::{IpAddr, SocketAddr};

use vipr_tests::flow_table::{
    Expect, Fixture, Masq, NODE_EXTERNAL_IP, NODE_IP, NODE_IP_ALT, NODE_IP6, NODE_IP6_ALT,
    NODE_NAME, Report, Row, UNTOUCHED, ep, row, slice, subtest, to, to_each,
};

use super::LOCAL_KEEPS_CLIENT;

/// The Service's port and NodePort, the same in every subtest.
const PORT: u16 = 80;
const NODE_PORT: u16 = 3001;

/// One family's addresses of the test.
struct Addresses {
    service: &'static str,
    /// The endpoint without a node, and the one on this node.
    endpoints: [&'static str; 2],
    node: &'static str,
    alt_node: &'static str,
    pod: &'static str,
    external_client: &'static str,
    localhost: &'static str,
}

const IPV4: Addresses = Addresses {
    service: "172.30.0.41",
    endpoints: ["10.180.0.1", "10.180.2.1"],
    node: "192.168.0.2",
    alt_node: "192.168.1.2",
    pod: "10.0.0.2",
    external_client: "203.0.113.2",
    localhost: "127.0.0.1",
};

const IPV6: Addresses = Addresses {
    service: "fd00:172:30::41",
    endpoints: ["fd00:10:180::1", "fd00:10:180::2:1"],
    node: "2001:db8::1",
    alt_node: "2001:db8:1::2",
    pod: "fd00:10::2",
    external_client: "2600:5200::1",
    localhost: "::1",
};

impl Addresses {
    fn manifests(&self) -> String {
        let service = format!(
            r#"
apiVersion: v1
kind: Service
metadata: {{name: svc1, namespace: ns1}}
spec:
  type: NodePort
  clusterIP: "{}"
  ports:
  - {{name: p80, port: {PORT}, protocol: TCP, nodePort: {NODE_PORT}}}
"#,
            self.service
        );
        let [remote, local] = self.endpoints;
        service
            + &slice(
                "ns1",
                "svc1",
                1,
                &[("p80", PORT, "TCP")],
                &[ep(remote, None), ep(local, Some(NODE_NAME))],
            )
    }

    /// The endpoints as kube-proxy prints them (net.JoinHostPort).
    fn endpoint_addrs(&self) -> Vec<String> {
        self.endpoints
            .iter()
            .map(|ip| {
                let ip: IpAddr = ip.parse().expect("an endpoint address");
                SocketAddr::new(ip, PORT).to_string()
            })
            .collect()
    }

    /// kube-proxy's `output`: both endpoints.
    fn output(&self, masq: bool) -> Expect {
        let eps = self.endpoint_addrs();
        let eps: Vec<&str> = eps.iter().map(String::as_str).collect();
        to(&eps, masq)
    }

    /// What vipr does from outside: the remote endpoint through the node's
    /// address, the local one with the client's.
    fn external_vipr(&self) -> Expect {
        let eps = self.endpoint_addrs();
        to_each(&[(eps[0].as_str(), Masq::Node), (eps[1].as_str(), Masq::No)])
    }

    /// The rows every subtest has.
    fn common(&self) -> Vec<Row> {
        vec![
            row(
                "pod to cluster IP",
                self.pod,
                self.service,
                PORT,
                self.output(false),
            ),
            row(
                "external to nodePort",
                self.external_client,
                self.node,
                NODE_PORT,
                self.output(true),
            )
            .differs(self.external_vipr(), LOCAL_KEEPS_CLIENT),
            row(
                "node to nodePort",
                self.node,
                self.node,
                NODE_PORT,
                self.output(true),
            ),
        ]
    }

    fn alt_allowed(&self) -> Row {
        row(
            "external to nodePort on secondary IP",
            self.external_client,
            self.alt_node,
            NODE_PORT,
            self.output(true),
        )
        .differs(self.external_vipr(), LOCAL_KEEPS_CLIENT)
    }

    fn alt_ignored(&self) -> Row {
        row(
            "secondary nodeIP ignores NodePorts",
            self.external_client,
            self.alt_node,
            NODE_PORT,
            UNTOUCHED,
        )
    }

    fn localhost_masq(&self) -> Row {
        row(
            "localhost to nodePort gets masqueraded",
            self.localhost,
            self.localhost,
            NODE_PORT,
            self.output(true),
        )
    }

    fn localhost_ignored(&self) -> Row {
        row(
            "localhost to nodePort is ignored",
            self.localhost,
            self.localhost,
            NODE_PORT,
            UNTOUCHED,
        )
    }
}

/// One subtest: its name, family, vipr's options as resolved from
/// kube-proxy's, and its rows.
struct Subtest {
    name: &'static str,
    family: &'static Addresses,
    fixture: Fixture,
    rows: Vec<Row>,
}

fn v4(name: &'static str, nodeports: &[IpAddr], localhost: bool, rows: Vec<Row>) -> Subtest {
    Subtest {
        name,
        family: &IPV4,
        fixture: Fixture {
            nodeport_addresses: nodeports.to_vec(),
            nodeport_localhost: localhost,
            ipv6: false,
        },
        rows,
    }
}

/// An IPv6 subtest: vipr with `--ipv6 on`.
fn v6(name: &'static str, nodeports: &[IpAddr], localhost: bool, rows: Vec<Row>) -> Subtest {
    Subtest {
        name,
        family: &IPV6,
        fixture: Fixture {
            nodeport_addresses: nodeports.to_vec(),
            nodeport_localhost: localhost,
            ipv6: true,
        },
        rows,
    }
}

#[test]
fn test_node_ports() {
    let (a4, a6) = (&IPV4, &IPV6);
    // nodePortAddresses resolved to the fixture's eth0 addresses of the
    // subtest's family the way vipr's agent resolves --nodeport-addresses
    // (never loopback); nil in iptables mode means every local address.
    // The Service is of that family only, so the other family's entries
    // would change nothing.
    let (node, alt, external) = (NODE_IP.into(), NODE_IP_ALT.into(), NODE_EXTERNAL_IP.into());
    let (node6, alt6) = (NODE_IP6.into(), NODE_IP6_ALT.into());
    let every_ip = [node, alt, external];
    let every_ip6 = [node6, alt6];
    let with = |family: &Addresses, extra: Vec<Row>| [family.common(), extra].concat();
    let subtests = [
        v4("ipv4", &[node], false, with(a4, vec![a4.alt_ignored()])),
        v4(
            "ipv4, multiple nodeport-addresses",
            &[node, alt],
            false,
            with(a4, vec![a4.alt_allowed()]),
        ),
        // nil: the fixture's default, 2001:db8::1/128 in IPv6.
        v6("ipv6", &[node6], false, with(a6, vec![a6.alt_ignored()])),
        // 2001:db8::/64 holds 2001:db8::1 only; 2001:db8:1::2/128 the other.
        v6(
            "ipv6, multiple nodeport-addresses",
            &[node6, alt6],
            false,
            with(a6, vec![a6.alt_allowed()]),
        ),
        v4(
            "iptables: ipv4, localhost-nodeports enabled",
            &every_ip,
            true,
            with(a4, vec![a4.localhost_masq(), a4.alt_allowed()]),
        ),
        v4(
            "iptables: ipv4, localhost-nodeports disabled",
            &every_ip,
            false,
            with(a4, vec![a4.localhost_ignored(), a4.alt_allowed()]),
        ),
        v4(
            "iptables: ipv4, localhost-nodeports disabled, localhost in nodeport-addresses",
            &[node],
            false,
            with(a4, vec![a4.localhost_ignored(), a4.alt_ignored()]),
        ),
        // [sic] named "enabled" in kube-proxy, with localhostNodePorts false.
        v4(
            "iptables: ipv4, localhost-nodeports enabled, multiple nodeport-addresses",
            &[node, alt],
            false,
            with(a4, vec![a4.localhost_ignored(), a4.alt_allowed()]),
        ),
        // localhostNodePorts asked for, but there are none in IPv6.
        v6(
            "iptables: ipv6, localhost-nodeports enabled",
            &every_ip6,
            true,
            with(a6, vec![a6.localhost_ignored(), a6.alt_allowed()]),
        ),
        v6(
            "iptables: ipv6, localhost-nodeports disabled",
            &every_ip6,
            false,
            with(a6, vec![a6.localhost_ignored(), a6.alt_allowed()]),
        ),
        // 2001:db8::/64 holds 2001:db8::1 only.
        v6(
            "iptables: ipv6, localhost-nodeports disabled, multiple nodeport-addresses",
            &[node6],
            false,
            with(a6, vec![a6.localhost_ignored(), a6.alt_ignored()]),
        ),
    ];
    let mut report = Report::default();
    for t in subtests {
        let manifests = t.family.manifests();
        report.results.extend(subtest(t.name, &t.fixture, |p| {
            p.sync_valid(&manifests)?;
            p.check(&t.rows)
        }));
    }
    report.finish("TestNodePorts");
}
