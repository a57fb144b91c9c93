//! The fake node a flow table runs on: its network namespace and cgroup,
//! vipr loaded there, and the runs of one row's flows through the TC
//! programs or through real sockets.
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, anyhow, bail, ensure};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrIn6, SockaddrLike, SockaddrStorage,
    connect, getsockname, socket,
};
use proxy_common::{
    HAIRPIN_IPV4,
    programs::{FROM_EXTERNAL, FROM_POD},
};
use vipr::datapath::{ServiceMaps, attach_socket_lb, load_socket_programs};
use vipr::model::ModelBuilder;
use vipr::plan::{MapContents, Planner, diff};
use vipr::source::manifests::parse_str;

use super::{
    FLOWS, Fixture, Masq, NODE_EXTERNAL_IP, NODE_IP, NODE_IP_ALT, NODE_IP6, NODE_IP6_ALT,
    NODE_NAME, Outcome, Proto, Row, RowResult, Source, node_ip_for, source_of,
};
use crate::cgroup::Cgroup;
use crate::netns::{cmd, run_in};
use crate::packet::{
    Harness, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, Tuple, checksum_errors, tcp, udp,
};
use crate::packet6::{Tuple6, checksum_errors6, tcp6, udp6};

/// The fixture's eth0 prefix lengths (192.168.0.2/24, 2001:db8::1/64).
const PREFIX_LEN: u8 = 24;
const PREFIX_LEN6: u8 = 64;
/// Next hops of the default routes: nothing answers there, connect() only
/// needs a route to some backend.
const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xff);
/// Source ports of TC flows, one per flow, wrapping round.
const FIRST_PORT: u16 = 20_000;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace standing in for the node: one interface holding the
/// fixture's node addresses of both families, a default route of each
/// through it (so connect() to any backend finds a route), loopback up.
/// Deleted on drop.
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
        let setup = [
            "link add n0 type veth peer name n1".to_string(),
            format!("addr add {NODE_IP}/{PREFIX_LEN} dev n0"),
            format!("addr add {NODE_IP_ALT}/{PREFIX_LEN} dev n0"),
            format!("addr add {NODE_EXTERNAL_IP}/{PREFIX_LEN} dev n0"),
            "link set n1 up".into(),
            "link set n0 up".into(),
            "link set lo up".into(),
            format!("route add default via {GATEWAY} dev n0"),
            // Without duplicate address detection: usable at once.
            format!("-6 addr add {NODE_IP6}/{PREFIX_LEN6} dev n0 nodad"),
            format!("-6 addr add {NODE_IP6_ALT}/{PREFIX_LEN6} dev n0 nodad"),
            // The node IP as source, as the IPv4 primary address is: both
            // IPv6 addresses match a backend's prefix equally badly.
            format!("-6 route add default via {GATEWAY6} dev n0 src {NODE_IP6}"),
        ];
        for line in &setup {
            let mut full = vec!["-n", ns.0.as_str()];
            full.extend(line.split_whitespace());
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
        let mut harness = Harness::with_options(|o| {
            o.node_ipv4 = Some(NODE_IP);
            o.node_ipv6 = Some(NODE_IP6);
        })
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
            next_port: FIRST_PORT,
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
        self.next_port = self.next_port.checked_add(1).unwrap_or(FIRST_PORT);
        port
    }

    /// One new flow of `row` through a TC program.
    fn through_tc(&mut self, program: &'static str, row: &Row) -> Result<(Outcome, String)> {
        let sport = self.port();
        let input = match (row.src, row.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let t = Tuple {
                    src: (src, sport),
                    dst: (dst, row.dport),
                };
                match row.proto {
                    Proto::Tcp => tcp(t, 1, true, false, b""),
                    Proto::Udp => udp(t, b"flow"),
                }
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let t = Tuple6 {
                    src: (src, sport),
                    dst: (dst, row.dport),
                };
                match row.proto {
                    Proto::Tcp => tcp6(t, 1, true, false, b""),
                    Proto::Udp => udp6(t, b"flow"),
                }
            }
            _ => bail!("{}: source and destination of different families", row.name),
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
                && out.is_some_and(|(src, dst)| src.ip() == row.dst && dst.ip() == row.src);
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
        let Some((src, ep)) = addresses(&run.output) else {
            return Ok((Outcome::Other("unparsable output".into()), detail));
        };
        let errors = match ep {
            SocketAddr::V4(_) => checksum_errors(&run.output),
            SocketAddr::V6(_) => checksum_errors6(&run.output),
        };
        if !errors.is_empty() {
            return Ok((Outcome::Other(format!("checksums: {errors:?}")), detail));
        }
        let outcome = match src.ip() {
            s if s == row.src => Outcome::Dnat(ep, Masq::No),
            s if s == node_ip_for(s) => Outcome::Dnat(ep, Masq::Node),
            s if s == IpAddr::from(HAIRPIN_IPV4) => Outcome::Dnat(ep, Masq::Hairpin),
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
        let family = match row.dst {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        let before = self.harness.counters()?;
        let fd = socket(
            family,
            kind,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        let result = match SocketAddr::new(row.dst, row.dport) {
            SocketAddr::V4(to) => connect(fd.as_raw_fd(), &SockaddrIn::from(to)),
            SocketAddr::V6(to) => connect(fd.as_raw_fd(), &SockaddrIn6::from(to)),
        };
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
            let local: SockaddrStorage = getsockname(fd.as_raw_fd())?;
            let (local_ip, remote) = kernel_view(row.proto, family, local_port(&local)?)?;
            let outcome = if local_ip == node_ip_for(local_ip) {
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

/// The port of a socket's IPv4 or IPv6 address.
fn local_port(addr: &SockaddrStorage) -> Result<u16> {
    addr.as_sockaddr_in()
        .map(SockaddrIn::port)
        .or_else(|| addr.as_sockaddr_in6().map(SockaddrIn6::port))
        .with_context(|| format!("not an IP socket address: {:?}", addr.family()))
}

/// Source and destination of an Ethernet/IP frame, with the ports of its
/// TCP or UDP header (0 for other transports: a refusal's ICMP).
fn addresses(frame: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    let packet = SlicedPacket::from_ethernet(frame).ok()?;
    let (src, dst): (IpAddr, IpAddr) = match packet.net.as_ref()? {
        NetSlice::Ipv4(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        NetSlice::Ipv6(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        NetSlice::Arp(_) => return None,
    };
    let (sport, dport) = match &packet.transport {
        Some(TransportSlice::Tcp(t)) => (t.source_port(), t.destination_port()),
        Some(TransportSlice::Udp(u)) => (u.source_port(), u.destination_port()),
        _ => (0, 0),
    };
    Some((SocketAddr::new(src, sport), SocketAddr::new(dst, dport)))
}

/// An address as `/proc/net/{tcp,udp}{,6}` print it: the in-memory
/// (network order) 32-bit words, each as a hex `u32`.
fn proc_addr(hex: &str) -> Option<IpAddr> {
    const WORD_DIGITS: usize = 8;
    let words = hex
        .as_bytes()
        .chunks(WORD_DIGITS)
        .map(|w| {
            let w = std::str::from_utf8(w).ok()?;
            u32::from_str_radix(w, 16).ok().map(u32::to_ne_bytes)
        })
        .collect::<Option<Vec<[u8; 4]>>>()?;
    match words.as_slice() {
        [ip] => Some(Ipv4Addr::from(*ip).into()),
        [_, _, _, _] => {
            let octets: [u8; 16] = words.concat().try_into().ok()?;
            Some(Ipv6Addr::from(octets).into())
        }
        _ => None,
    }
}

/// The kernel's local address and peer of this thread's namespace's socket
/// of `family` bound to `local_port` (`/proc/thread-self/net`:
/// `/proc/self/net` would show the main thread's namespace).
fn kernel_view(
    proto: Proto,
    family: AddressFamily,
    local_port: u16,
) -> Result<(IpAddr, SocketAddr)> {
    let table = match proto {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    };
    let suffix = if family == AddressFamily::Inet6 {
        "6"
    } else {
        ""
    };
    let file = format!("/proc/thread-self/net/{table}{suffix}");
    let text = std::fs::read_to_string(&file)?;
    let parse = |field: &str| -> Option<SocketAddr> {
        let (ip, port) = field.split_once(':')?;
        let port = u16::from_str_radix(port, 16).ok()?;
        Some(SocketAddr::new(proc_addr(ip)?, port))
    };
    for line in text.lines().skip(1) {
        let mut fields = line.split_whitespace().skip(1);
        let (Some(local), Some(remote)) =
            (fields.next().and_then(parse), fields.next().and_then(parse))
        else {
            continue;
        };
        if local.port() == local_port {
            return Ok((local.ip(), remote));
        }
    }
    bail!("no socket with local port {local_port} in {file}")
}
