//! kube-proxy's packet-flow tables run through vipr: Services and
//! EndpointSlices as YAML go through vipr's real model and planner into the
//! real kernel maps, and every row's flows go through the real programs.
//! Rows are IPv4 or IPv6, as kube-proxy's per-family proxiers.
//!
//! - pod sources (the fixture's pod CIDR of their family): `vipr_from_pod`,
//!   through BPF_PROG_TEST_RUN;
//! - external sources (anything else that is not the node): `vipr_from_external`;
//! - node sources (the fixture's node addresses and loopback): real sockets
//!   made in a network namespace of the test's own, by a process inside a
//!   cgroup of the test's own that carries the cgroup socket hooks; the
//!   decision is read from the hooks' counters and the kernel's own view of
//!   the socket (`/proc/thread-self/net/{tcp,udp}{,6}`, which the hooks do
//!   not rewrite).
//!
//! A row's expected outcome is the set of endpoints new connections may reach
//! (with whether their source was masqueraded), or DROP, REJECT, or untouched.
//! Each row sends [`FLOWS`] distinct flows (or opens as many sockets) and
//! compares the set of outcomes with the expected set.
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use vipr::model::{Model, ModelBuilder, ModelOptions};
use vipr::source::manifests::parse_str;

mod node;
pub use node::{NodeNamespace, Proxier, subtest};

/// The fake proxier's node name.
pub const NODE_NAME: &str = "test-node";
/// The fake proxier's node IP: the masquerade address, and the address
/// NodePorts answer on by default (nftables fixture).
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 2);
/// The fixture's other IPv4 node addresses (testNodeIPAlt, testExternalIP).
pub const NODE_IP_ALT: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
pub const NODE_EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 99, 11);
/// The fixture's IPv6 node IP (testNodeIPv6): the IPv6 proxier's
/// masquerade address and default NodePort address.
pub const NODE_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// The fixture's other IPv6 node address (testNodeIPv6Alt).
pub const NODE_IP6_ALT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
/// The fake proxier's pod CIDRs (10.0.0.0/8, fd00:10::/64): "from a pod"
/// means a source inside them.
const POD_CIDRS: [(IpAddr, u8); 2] = [
    (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), 8),
    (
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 0)),
        64,
    ),
];
/// Every address of the fixture's eth0 (kube-proxy's testNodeIPs).
const NODE_IPS: [IpAddr; 5] = [
    IpAddr::V4(NODE_IP),
    IpAddr::V4(NODE_IP_ALT),
    IpAddr::V4(NODE_EXTERNAL_IP),
    IpAddr::V6(NODE_IP6),
    IpAddr::V6(NODE_IP6_ALT),
];
/// Flows (or sockets) per row: with three endpoints, the chance that a
/// uniform choice misses one is 3·(2/3)^48, below 10⁻⁷.
pub const FLOWS: u16 = 48;

/// What happened to the source of a translated flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Masq {
    /// The client's address was kept.
    No,
    /// The source is the node address (kube-proxy's masquerade).
    Node,
    /// The source is vipr's link-local hairpin address.
    Hairpin,
}

/// The outcome a row expects for new connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// DNAT to exactly these endpoints (each reachable), with this source.
    To(Vec<(SocketAddr, Masq)>),
    Drop,
    Reject,
    /// kube-proxy's "": not translated, not dropped.
    Untouched,
}

pub const DROP: Expect = Expect::Drop;
pub const REJECT: Expect = Expect::Reject;
pub const UNTOUCHED: Expect = Expect::Untouched;

/// `ip:port`, or `[ip]:port` in IPv6 (kube-proxy's net.JoinHostPort).
fn endpoint(raw: &str) -> SocketAddr {
    raw.parse()
        .unwrap_or_else(|_| panic!("bad endpoint {raw:?} in a table"))
}

/// kube-proxy's notation: the endpoints, and whether the flow is masqueraded.
pub fn to(endpoints: &[&str], masq: bool) -> Expect {
    let masq = if masq { Masq::Node } else { Masq::No };
    Expect::To(endpoints.iter().map(|e| (endpoint(e), masq)).collect())
}

/// Endpoints with a source treatment each (vipr's expectation where it differs).
pub fn to_each(endpoints: &[(&str, Masq)]) -> Expect {
    Expect::To(endpoints.iter().map(|(e, m)| (endpoint(e), *m)).collect())
}

impl Expect {
    fn render(&self) -> Vec<String> {
        let mut out: Vec<String> = match self {
            Expect::To(eps) => eps
                .iter()
                .map(|(ep, masq)| Outcome::Dnat(*ep, *masq).to_string())
                .collect(),
            Expect::Drop => vec![Outcome::Drop.to_string()],
            Expect::Reject => vec![Outcome::Reject.to_string()],
            Expect::Untouched => vec![Outcome::Untouched.to_string()],
        };
        out.sort();
        out.dedup();
        out
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// One row of a kube-proxy flow table.
#[derive(Clone, Debug)]
pub struct Row {
    pub name: &'static str,
    /// Both of one family.
    pub src: IpAddr,
    pub dst: IpAddr,
    pub dport: u16,
    pub proto: Proto,
    /// kube-proxy's expectation, as in its table.
    pub kube: Expect,
    /// A deliberate difference: what vipr does instead, and why.
    pub vipr: Option<(Expect, &'static str)>,
}

/// A TCP row: name, source, destination, destination port, kube-proxy's output.
pub fn row(name: &'static str, src: &str, dst: &str, dport: u16, kube: Expect) -> Row {
    let ip = |raw: &str| -> IpAddr {
        raw.parse()
            .unwrap_or_else(|_| panic!("{name}: bad address {raw:?}"))
    };
    let (src, dst) = (ip(src), ip(dst));
    assert_eq!(
        src.is_ipv4(),
        dst.is_ipv4(),
        "{name}: source and destination of different families"
    );
    Row {
        name,
        src,
        dst,
        dport,
        proto: Proto::Tcp,
        kube,
        vipr: None,
    }
}

impl Row {
    pub fn udp(mut self) -> Self {
        self.proto = Proto::Udp;
        self
    }

    /// Marks a known, deliberate difference: vipr is held to `vipr` instead.
    pub fn differs(mut self, vipr: Expect, why: &'static str) -> Self {
        self.vipr = Some((vipr, why));
        self
    }

    fn expected(&self) -> &Expect {
        self.vipr.as_ref().map_or(&self.kube, |(e, _)| e)
    }
}

/// Where a source address sends its packets in vipr (kube-proxy's tracer
/// classes: pod CIDR, local addresses, anything else).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Pod,
    Node,
    External,
}

pub fn source_of(ip: IpAddr) -> Source {
    if POD_CIDRS.iter().any(|&cidr| in_cidr(ip, cidr)) {
        Source::Pod
    } else if ip.is_loopback() || NODE_IPS.contains(&ip) {
        Source::Node
    } else {
        Source::External
    }
}

/// Whether `ip` is in `net`/`len` (false across families).
fn in_cidr(ip: IpAddr, (net, len): (IpAddr, u8)) -> bool {
    let (ip, net, bits) = match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            (ip.to_bits().into(), net.to_bits().into(), Ipv4Addr::BITS)
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => (ip.to_bits(), net.to_bits(), Ipv6Addr::BITS),
        _ => return false,
    };
    let host_bits = bits - u32::from(len);
    let prefix = |a: u128| a.checked_shr(host_bits).unwrap_or(0);
    prefix(ip) == prefix(net)
}

/// The node address masquerade uses in `ip`'s family.
pub fn node_ip_for(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => NODE_IP.into(),
        IpAddr::V6(_) => NODE_IP6.into(),
    }
}

/// What one flow (or socket) met.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Dnat(SocketAddr, Masq),
    /// Translated with some other source address.
    DnatFrom(SocketAddr, IpAddr),
    Drop,
    Reject,
    Untouched,
    Other(String),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Dnat(ep, Masq::No) => write!(f, "{ep}"),
            Outcome::Dnat(ep, Masq::Node) => write!(f, "{ep} masq"),
            Outcome::Dnat(ep, Masq::Hairpin) => write!(f, "{ep} masq(hairpin)"),
            Outcome::DnatFrom(ep, src) => write!(f, "{ep} from {src}"),
            Outcome::Drop => f.write_str("DROP"),
            Outcome::Reject => f.write_str("REJECT"),
            Outcome::Untouched => f.write_str("untouched"),
            Outcome::Other(what) => write!(f, "other: {what}"),
        }
    }
}

/// Options of the fake proxier that vipr has too.
#[derive(Clone, Debug)]
pub struct Fixture {
    /// Node addresses NodePorts answer on (kube-proxy's nodePortAddresses,
    /// resolved to the fixture's interface addresses as vipr's agent does).
    pub nodeport_addresses: Vec<IpAddr>,
    /// NodePorts on 127.0.0.1 for the node (iptables' localhostNodePorts).
    pub nodeport_localhost: bool,
    /// vipr serves IPv6 (`--ipv6 on`), for kube-proxy's IPv6 proxier.
    pub ipv6: bool,
}

impl Default for Fixture {
    /// The nftables fixture: NodePorts on 192.168.0.2 only, no localhost.
    fn default() -> Self {
        Self {
            nodeport_addresses: vec![NODE_IP.into()],
            nodeport_localhost: false,
            ipv6: false,
        }
    }
}

impl Fixture {
    pub fn model_options(&self) -> ModelOptions {
        ModelOptions {
            node_name: Some(NODE_NAME.into()),
            nodeport_addresses: self.nodeport_addresses.clone(),
            nodeport_localhost: self.nodeport_localhost,
            ipv6: self.ipv6,
            ..ModelOptions::default()
        }
    }
}

/// The model vipr builds from `manifests` (and its conversion errors).
pub fn model_of(fixture: &Fixture, manifests: &str) -> (Model, Vec<String>) {
    let parsed = parse_str(manifests).unwrap_or_else(|e| panic!("manifests: {e}"));
    let (model, errors) = ModelBuilder::new(fixture.model_options())
        .update(&parsed.services, &parsed.endpoint_slices);
    (model, errors.iter().map(ToString::to_string).collect())
}

/// One compared row.
#[derive(Clone, Debug)]
pub struct RowResult {
    pub subtest: String,
    pub name: String,
    pub expected: Vec<String>,
    pub got: Vec<String>,
    /// Set for a known difference (the expectation is vipr's).
    pub known: Option<&'static str>,
    /// kube-proxy's own expectation, when `expected` is vipr's.
    pub kube: Option<Vec<String>>,
    pub detail: String,
}

impl RowResult {
    pub fn passed(&self) -> bool {
        self.expected == self.got
    }

    /// A row checked outside the flow machinery (model-level checks).
    pub fn new(subtest: &str, name: &str, expected: Vec<String>, got: Vec<String>) -> Self {
        Self {
            subtest: subtest.into(),
            name: name.into(),
            expected,
            got,
            known: None,
            kube: None,
            detail: String::new(),
        }
    }
}

/// The rows of one kube-proxy test.
#[derive(Debug, Default)]
pub struct Report {
    pub results: Vec<RowResult>,
    /// Rows of kube-proxy's table not transcribed, with why.
    pub skipped: Vec<(usize, &'static str)>,
}

impl Report {
    pub fn skip(&mut self, rows: usize, why: &'static str) {
        self.skipped.push((rows, why));
    }

    /// Prints every row and fails listing the rows that did not pass.
    pub fn finish(self, test: &str) {
        let mut text = String::new();
        let failed: Vec<&RowResult> = self.results.iter().filter(|r| !r.passed()).collect();
        let known = self.results.iter().filter(|r| r.known.is_some()).count();
        let _ = writeln!(
            text,
            "{test}: {} rows, {} pass ({known} of them as known differences), {} fail",
            self.results.len(),
            self.results.len() - failed.len(),
            failed.len()
        );
        for (n, why) in &self.skipped {
            let _ = writeln!(text, "  skipped {n} rows: {why}");
        }
        for r in &self.results {
            let status = match (r.passed(), r.known.is_some()) {
                (true, false) => "PASS ",
                (true, true) => "KNOWN",
                (false, _) => "FAIL ",
            };
            let _ = write!(
                text,
                "  {status} [{}] {}: got [{}]",
                r.subtest,
                r.name,
                r.got.join(", ")
            );
            if let (Some(kube), Some(why)) = (&r.kube, r.known) {
                let _ = write!(text, " (kube-proxy: [{}]; {why})", kube.join(", "));
            }
            text.push('\n');
        }
        println!("{text}");
        if failed.is_empty() {
            return;
        }
        let mut message = format!("{test}: {} rows fail\n", failed.len());
        for r in failed {
            let _ = writeln!(
                message,
                "- [{}] {}: expected [{}], vipr gave [{}]{}{}",
                r.subtest,
                r.name,
                r.expected.join(", "),
                r.got.join(", "),
                if r.detail.is_empty() { "" } else { " — " },
                r.detail
            );
        }
        panic!("{message}");
    }
}

/// One endpoint of an EndpointSlice.
#[derive(Clone, Copy, Debug)]
pub struct Ep<'a> {
    pub ip: &'a str,
    pub node: Option<&'a str>,
    /// ready, serving, terminating; `None`: conditions left unset.
    pub conditions: Option<(bool, bool, bool)>,
}

/// An endpoint with conditions unset (ready), on `node` if given.
pub fn ep<'a>(ip: &'a str, node: Option<&'a str>) -> Ep<'a> {
    Ep {
        ip,
        node,
        conditions: None,
    }
}

/// An endpoint with {ready, serving, terminating} set.
pub fn ep_cond<'a>(ip: &'a str, node: Option<&'a str>, rst: (bool, bool, bool)) -> Ep<'a> {
    Ep {
        ip,
        node,
        conditions: Some(rst),
    }
}

/// EndpointSlice `<service>-<n>` in `ns` as YAML; `ports` are (name, port,
/// protocol). Its address type is its endpoints' family (IPv4 when empty).
pub fn slice(ns: &str, service: &str, n: u32, ports: &[(&str, u16, &str)], eps: &[Ep]) -> String {
    let ipv6 = eps.iter().any(|e| e.ip.parse::<Ipv6Addr>().is_ok());
    let address_type = if ipv6 { "IPv6" } else { "IPv4" };
    let mut y = format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-{n}\n  namespace: {ns}\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: {address_type}\nports:\n"
    );
    for (name, port, proto) in ports {
        let _ = writeln!(y, "- name: \"{name}\"\n  port: {port}\n  protocol: {proto}");
    }
    if eps.is_empty() {
        y.push_str("endpoints: []\n");
        return y;
    }
    y.push_str("endpoints:\n");
    for e in eps {
        let _ = writeln!(y, "- addresses: [\"{}\"]", e.ip);
        if let Some(node) = e.node {
            let _ = writeln!(y, "  nodeName: {node}");
        }
        if let Some((ready, serving, terminating)) = e.conditions {
            let _ = writeln!(
                y,
                "  conditions: {{ready: {ready}, serving: {serving}, terminating: {terminating}}}"
            );
        }
    }
    y
}
