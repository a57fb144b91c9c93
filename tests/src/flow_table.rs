//! kube-proxy's packet-flow tables run through vipr: Services and
//! EndpointSlices as YAML go through vipr's real model and planner into the
//! real kernel maps, and every row's flows go through the real programs.
//!
//! - pod sources (10.0.0.0/8): `vipr_from_pod`, through BPF_PROG_TEST_RUN;
//! - external sources (anything else that is not the node): `vipr_from_external`;
//! - node sources (the fixture's node addresses and loopback): real sockets
//!   made in a network namespace of the test's own, by a process inside a
//!   cgroup of the test's own that carries the cgroup socket hooks; the
//!   decision is read from the hooks' counters and the kernel's own view of
//!   the socket (`/proc/thread-self/net/{tcp,udp}`, which the hooks do not
//!   rewrite).
//!
//! A row's expected outcome is the set of endpoints new connections may reach
//! (with whether their source was masqueraded), or DROP, REJECT, or untouched.
//! Each row sends [`FLOWS`] distinct flows (or opens as many sockets) and
//! compares the set of outcomes with the expected set.
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, anyhow, bail, ensure};
use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrIn, connect, getsockname, socket,
};
use proxy_common::{
    HAIRPIN_IPV4,
    programs::{FROM_EXTERNAL, FROM_POD},
};
use vipr::datapath::{ServiceMaps, attach_socket_lb, load_socket_programs};
use vipr::model::{Model, ModelBuilder, ModelOptions};
use vipr::plan::{MapContents, Planner, diff};
use vipr::source::manifests::parse_str;

use crate::cgroup::Cgroup;
use crate::netns::{cmd, run_in};
use crate::packet::{
    Harness, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, Tuple, checksum_errors, tcp, udp,
};

/// The fake proxier's node name.
pub const NODE_NAME: &str = "test-node";
/// The fake proxier's node IP: the masquerade address, and the address
/// NodePorts answer on by default (nftables fixture).
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 2);
/// The fixture's other IPv4 node addresses (testNodeIPAlt, testExternalIP).
pub const NODE_IP_ALT: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
pub const NODE_EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 99, 11);
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
    To(Vec<(SocketAddrV4, Masq)>),
    Drop,
    Reject,
    /// kube-proxy's "": not translated, not dropped.
    Untouched,
}

pub const DROP: Expect = Expect::Drop;
pub const REJECT: Expect = Expect::Reject;
pub const UNTOUCHED: Expect = Expect::Untouched;

fn endpoint(raw: &str) -> SocketAddrV4 {
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
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub dport: u16,
    pub proto: Proto,
    /// kube-proxy's expectation, as in its table.
    pub kube: Expect,
    /// A deliberate difference: what vipr does instead, and why.
    pub vipr: Option<(Expect, &'static str)>,
}

/// A TCP row: name, source, destination, destination port, kube-proxy's output.
pub fn row(name: &'static str, src: &str, dst: &str, dport: u16, kube: Expect) -> Row {
    let ip = |raw: &str| -> Ipv4Addr {
        raw.parse()
            .unwrap_or_else(|_| panic!("{name}: bad address {raw:?}"))
    };
    Row {
        name,
        src: ip(src),
        dst: ip(dst),
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

pub fn source_of(ip: Ipv4Addr) -> Source {
    if ip.octets()[0] == 10 {
        Source::Pod
    } else if ip.is_loopback() || [NODE_IP, NODE_IP_ALT, NODE_EXTERNAL_IP].contains(&ip) {
        Source::Node
    } else {
        Source::External
    }
}

/// What one flow (or socket) met.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Dnat(SocketAddrV4, Masq),
    /// Translated with some other source address.
    DnatFrom(SocketAddrV4, Ipv4Addr),
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
    pub nodeport_addresses: Vec<Ipv4Addr>,
    /// NodePorts on 127.0.0.1 for the node (iptables' localhostNodePorts).
    pub nodeport_localhost: bool,
}

impl Default for Fixture {
    /// The nftables fixture: NodePorts on 192.168.0.2 only, no localhost.
    fn default() -> Self {
        Self {
            nodeport_addresses: vec![NODE_IP],
            nodeport_localhost: false,
        }
    }
}

impl Fixture {
    pub fn model_options(&self) -> ModelOptions {
        ModelOptions {
            node_name: Some(NODE_NAME.into()),
            nodeport_addresses: self
                .nodeport_addresses
                .iter()
                .map(|&ip| ip.into())
                .collect(),
            nodeport_localhost: self.nodeport_localhost,
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

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace standing in for the node: one interface holding the
/// fixture's node addresses, a default route through it (so connect() to
/// any backend finds a route), loopback up. Deleted on drop.
pub struct NodeNamespace(String);

impl NodeNamespace {
    pub fn new() -> Result<Self> {
        let name = format!(
            "vkpf{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        cmd("ip", &["netns", "add", &name])?;
        let ns = Self(name);
        // Veth pair, both ends inside: dummy interfaces are not in every kernel.
        let setup: [&[&str]; 8] = [
            &["link", "add", "n0", "type", "veth", "peer", "name", "n1"],
            &["addr", "add", "192.168.0.2/24", "dev", "n0"],
            &["addr", "add", "192.168.1.2/24", "dev", "n0"],
            &["addr", "add", "192.168.99.11/24", "dev", "n0"],
            &["link", "set", "n1", "up"],
            &["link", "set", "n0", "up"],
            &["link", "set", "lo", "up"],
            &["route", "add", "default", "via", "192.168.0.1", "dev", "n0"],
        ];
        for args in setup {
            let mut full = vec!["-n", ns.0.as_str()];
            full.extend_from_slice(args);
            cmd("ip", &full)?;
        }
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.0
    }
}

impl Drop for NodeNamespace {
    fn drop(&mut self) {
        let _ = cmd("ip", &["netns", "del", &self.0]);
    }
}

/// vipr on one fake node: the real object loaded (inside the node's
/// namespace, so the socket hooks' host scope is that namespace) with the
/// socket hooks on a cgroup of its own, and the model and planner that
/// program its maps.
pub struct Proxier {
    pub harness: Harness,
    builder: ModelBuilder,
    planner: Planner,
    applied: MapContents,
    cgroup: Option<Cgroup>,
    next_port: u16,
    pub subtest: String,
    pub results: Vec<RowResult>,
}

/// Runs `body` with a fresh [`Proxier`] on a fresh node namespace and cgroup,
/// removed afterwards whatever happens; returns the rows it checked.
pub fn subtest(
    name: &str,
    fixture: &Fixture,
    body: impl FnOnce(&mut Proxier) -> Result<()> + Send,
) -> Vec<RowResult> {
    let run = || -> Result<Vec<RowResult>> {
        let ns = NodeNamespace::new()?;
        let cgroup = Cgroup::create(&format!("{}-cg", ns.name()))?;
        let results = run_in(ns.name(), || -> Result<Vec<RowResult>> {
            let mut proxier = Proxier::new(name, fixture, cgroup)?;
            // Sockets made from here on belong to the test cgroup.
            let inside = proxier.cgroup.as_ref().map(Cgroup::enter).transpose()?;
            let outcome = body(&mut proxier);
            drop(inside);
            outcome?;
            Ok(std::mem::take(&mut proxier.results))
        })??;
        Ok(results)
    };
    run().unwrap_or_else(|e| panic!("subtest {name}: {e:#}"))
}

impl Proxier {
    fn new(subtest: &str, fixture: &Fixture, cgroup: Cgroup) -> Result<Self> {
        let mut harness = Harness::with_options(|o| o.node_ipv4 = Some(NODE_IP))
            .context("load the programs (needs root)")?;
        let refused = load_socket_programs(&mut harness.datapath);
        ensure!(refused.is_empty(), "socket programs refused: {refused:?}");
        attach_socket_lb(&mut harness.datapath, cgroup.path())?;
        Ok(Self {
            harness,
            builder: ModelBuilder::new(fixture.model_options()),
            planner: Planner::new(),
            applied: MapContents::default(),
            cgroup: Some(cgroup),
            next_port: 20_000,
            subtest: subtest.into(),
            results: Vec::new(),
        })
    }

    /// Programs the maps for `manifests` (the complete set of objects, as a
    /// resync): model, planner, diff against what is applied, map writes.
    /// Returns the conversion errors.
    pub fn sync(&mut self, manifests: &str) -> Result<Vec<String>> {
        let parsed = parse_str(manifests).map_err(|e| anyhow!("manifests: {e}"))?;
        // This node's Node, if the manifests hold it (its zone steers hints).
        self.builder.set_node(
            parsed
                .nodes
                .iter()
                .find(|n| n.metadata.name.as_deref() == Some(NODE_NAME)),
        );
        let (model, errors) = self
            .builder
            .update(&parsed.services, &parsed.endpoint_slices);
        let desired = self.planner.desired(&model);
        for op in diff(&self.applied, &desired) {
            self.harness.maps.apply(&op)?;
        }
        self.applied = desired;
        Ok(errors.iter().map(ToString::to_string).collect())
    }

    /// [`Proxier::sync`] for manifests that must be valid.
    pub fn sync_valid(&mut self, manifests: &str) -> Result<()> {
        let errors = self.sync(manifests)?;
        ensure!(errors.is_empty(), "invalid manifests: {errors:?}");
        Ok(())
    }

    /// Runs every row and records the comparison.
    pub fn check(&mut self, rows: &[Row]) -> Result<()> {
        for row in rows {
            let mut details = BTreeSet::new();
            let mut got = BTreeSet::new();
            for _ in 0..FLOWS {
                let (outcome, detail) = match source_of(row.src) {
                    Source::Pod => self.through_tc(FROM_POD, row)?,
                    Source::External => self.through_tc(FROM_EXTERNAL, row)?,
                    Source::Node => self.through_socket(row)?,
                };
                got.insert(outcome.to_string());
                if !detail.is_empty() {
                    details.insert(detail);
                }
            }
            let got: Vec<String> = got.into_iter().collect();
            let expected = row.expected().render();
            self.results.push(RowResult {
                subtest: self.subtest.clone(),
                name: row.name.into(),
                expected,
                got,
                known: row.vipr.as_ref().map(|(_, why)| *why),
                kube: row.vipr.as_ref().map(|_| row.kube.render()),
                detail: details.into_iter().collect::<Vec<_>>().join("; "),
            });
        }
        Ok(())
    }

    fn port(&mut self) -> u16 {
        let port = self.next_port;
        self.next_port = self.next_port.checked_add(1).unwrap_or(20_000);
        port
    }

    /// One new flow of `row` through a TC program.
    fn through_tc(&mut self, program: &'static str, row: &Row) -> Result<(Outcome, String)> {
        let t = Tuple {
            src: (row.src, self.port()),
            dst: (row.dst, row.dport),
        };
        let input = match row.proto {
            Proto::Tcp => tcp(t, 1, true, false, b""),
            Proto::Udp => udp(t, b"flow"),
        };
        let run = self.harness.run(program, &input)?;
        let counted: Vec<&str> = run.counted.iter().map(|(n, _)| *n).collect();
        let detail = format!("{program}: verdict {} {counted:?}", run.verdict);
        let refused = counted
            .iter()
            .any(|c| *c == "reject_tcp_rst" || *c == "reject_icmp_unreachable");
        if refused {
            let out = addresses(&run.output);
            // A refusal goes back to the client, from the address it asked for.
            let proper = run.verdict == TC_ACT_REDIRECT
                && out.is_some_and(|o| o.src.0 == row.dst && o.dst.0 == row.src);
            return Ok(if proper {
                (Outcome::Reject, String::new())
            } else {
                (Outcome::Other("malformed refusal".into()), detail)
            });
        }
        if run.verdict == TC_ACT_SHOT {
            let drop: Vec<&str> = counted
                .iter()
                .copied()
                .filter(|c| c.starts_with("drop_"))
                .collect();
            return Ok((Outcome::Drop, format!("dropped: {}", drop.join(","))));
        }
        if run.verdict == TC_ACT_OK && run.output == input {
            return Ok((Outcome::Untouched, String::new()));
        }
        if run.verdict != TC_ACT_OK && run.verdict != TC_ACT_REDIRECT {
            return Ok((Outcome::Other(detail.clone()), detail));
        }
        let Some(out) = addresses(&run.output) else {
            return Ok((Outcome::Other("unparsable output".into()), detail));
        };
        let errors = checksum_errors(&run.output);
        if !errors.is_empty() {
            return Ok((Outcome::Other(format!("checksums: {errors:?}")), detail));
        }
        let ep = SocketAddrV4::new(out.dst.0, out.dst.1);
        let outcome = match out.src.0 {
            s if s == row.src => Outcome::Dnat(ep, Masq::No),
            s if s == NODE_IP => Outcome::Dnat(ep, Masq::Node),
            s if s == Ipv4Addr::from(HAIRPIN_IPV4) => Outcome::Dnat(ep, Masq::Hairpin),
            s => Outcome::DnatFrom(ep, s),
        };
        Ok((outcome, String::new()))
    }

    /// One socket of `row`, made by the node: connect() through the hooks.
    fn through_socket(&mut self, row: &Row) -> Result<(Outcome, String)> {
        let kind = match row.proto {
            Proto::Tcp => SockType::Stream,
            Proto::Udp => SockType::Datagram,
        };
        let before = self.harness.counters()?;
        let fd = socket(
            AddressFamily::Inet,
            kind,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        let result = connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrIn::from(SocketAddrV4::new(row.dst, row.dport)),
        );
        let after = self.harness.counters()?;
        let counted: Vec<&str> = before
            .iter()
            .zip(&after)
            .filter(|((_, b), (_, a))| a != b)
            .map(|((c, _), _)| c.name())
            .collect();
        let detail = format!("connect: {result:?} {counted:?}");
        let has = |name: &str| counted.contains(&name);
        if has("sock_translated") {
            if !matches!(result, Ok(()) | Err(Errno::EINPROGRESS)) {
                return Ok((Outcome::Other(detail.clone()), detail));
            }
            let local: SockaddrIn = getsockname(std::os::fd::AsRawFd::as_raw_fd(&fd))?;
            let (local_ip, remote) = kernel_view(row.proto, local.port())?;
            let outcome = if local_ip == NODE_IP {
                Outcome::Dnat(remote, Masq::Node)
            } else {
                Outcome::DnatFrom(remote, local_ip)
            };
            return Ok((outcome, String::new()));
        }
        if has("sock_refused") {
            return Ok(if result == Err(Errno::ECONNREFUSED) {
                (Outcome::Reject, String::new())
            } else {
                (Outcome::Other(detail.clone()), detail)
            });
        }
        if counted.iter().any(|c| c.starts_with("drop_")) {
            return Ok(if result == Err(Errno::EHOSTUNREACH) {
                (
                    Outcome::Drop,
                    format!("refused with EHOSTUNREACH: {counted:?}"),
                )
            } else {
                (Outcome::Other(detail.clone()), detail)
            });
        }
        if has("sock_pass_not_service") {
            return Ok((Outcome::Untouched, String::new()));
        }
        bail!("the socket hooks did not run ({detail})")
    }
}

/// Source and destination of an Ethernet/IPv4/{TCP,UDP} frame.
fn addresses(frame: &[u8]) -> Option<Tuple> {
    let ip = frame.get(14..)?;
    let ihl = usize::from(*ip.first()? & 0x0f) * 4;
    let l4 = ip.get(ihl..ihl + 4)?;
    let addr = |at: usize| Some(Ipv4Addr::new(ip[at], ip[at + 1], ip[at + 2], ip[at + 3]));
    ip.get(..20)?;
    Some(Tuple {
        src: (addr(12)?, u16::from_be_bytes([l4[0], l4[1]])),
        dst: (addr(16)?, u16::from_be_bytes([l4[2], l4[3]])),
    })
}

/// The kernel's local address and peer of this thread's namespace's socket
/// bound to `local_port` (`/proc/thread-self/net`: `/proc/self/net` would
/// show the main thread's namespace).
fn kernel_view(proto: Proto, local_port: u16) -> Result<(Ipv4Addr, SocketAddrV4)> {
    let file = match proto {
        Proto::Tcp => "/proc/thread-self/net/tcp",
        Proto::Udp => "/proc/thread-self/net/udp",
    };
    let text = std::fs::read_to_string(file)?;
    let parse = |field: &str| -> Option<SocketAddrV4> {
        let (ip, port) = field.split_once(':')?;
        let ip = u32::from_str_radix(ip, 16).ok()?;
        let port = u16::from_str_radix(port, 16).ok()?;
        // The address is printed as the in-memory (network order) u32.
        Some(SocketAddrV4::new(Ipv4Addr::from(ip.to_ne_bytes()), port))
    };
    for line in text.lines().skip(1) {
        let mut fields = line.split_whitespace().skip(1);
        let (Some(local), Some(remote)) =
            (fields.next().and_then(parse), fields.next().and_then(parse))
        else {
            continue;
        };
        if local.port() == local_port {
            return Ok((*local.ip(), remote));
        }
    }
    bail!("no socket with local port {local_port} in {file}")
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

/// EndpointSlice `<service>-<n>` in `ns` as YAML; `ports` are (name, port, protocol).
pub fn slice(ns: &str, service: &str, n: u32, ports: &[(&str, u16, &str)], eps: &[Ep]) -> String {
    let mut y = format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-{n}\n  namespace: {ns}\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\nports:\n"
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
