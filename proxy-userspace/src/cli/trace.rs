//! `vipr trace SRC DST:PORT/PROTO`: a packet built here, run through the
//! agent's trace copy of its programs (BPF_PROG_TEST_RUN against the live
//! service maps, scratch state; see `datapath::trace_copy`), and each
//! decision the programs took, named with the agent's name index.
//!
//! Either family: SRC and DST are both IPv4 (`10.244.1.5:40000`) or both
//! IPv6, bracketed when a port follows (`[fd00::5]:40000`,
//! `[fd00:96::10]:80/tcp`), as in URLs and `SocketAddr`.
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use proxy_common::{
    Affinity6Key, AffinityKey, CT_FLAG_DSR, CT_FLAG_SNAT, CT_FORWARD, Counter, Ct6Key, CtKey,
    IPPROTO_TCP, IPPROTO_UDP, SCOPE_EXTERNAL, SCOPE_INTERNAL, Service6Key, ServiceKey,
    ServiceValue, TRACE_FRONTEND_IPV6, host_addr, host_addr6, programs, wire_addr, wire_addr6,
};
use serde::Serialize;

use super::services::{FrontendAt, ServiceRow, protocol_name, row};
use super::{AgentFiles, CliError, Output};
use crate::datapath::{TraceAffinity, TraceFlow, TraceInput, TraceRun, run_trace};
use crate::inspect::pinned_contents;

/// Where the traced packet comes from, which picks the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// A pod: the TC program on its host-side interface.
    Pod,
    /// Outside the node: the external interface's TC program (or `--xdp`).
    External,
    /// A process in the node's network namespace: the socket hooks' decision.
    Host,
}

impl Origin {
    pub fn name(self) -> &'static str {
        match self {
            Origin::Pod => "pod",
            Origin::External => "external",
            Origin::Host => "host",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TcpFlags {
    /// A new connection.
    Syn,
    /// A segment of an established connection.
    Ack,
    Fin,
    Rst,
}

#[derive(Clone, Debug, clap::Args)]
pub struct TraceArgs {
    /// The client: ADDR or ADDR:PORT (port 40000 if left out); in IPv6
    /// ADDR or [ADDR]:PORT.
    pub source: Option<String>,
    /// ADDR:PORT/PROTO, PROTO tcp (default) or udp; in IPv6 [ADDR]:PORT/PROTO.
    /// The same family as SRC.
    pub destination: Option<String>,
    #[arg(long, value_enum, default_value = "pod")]
    pub from: Origin,
    /// The interface the packet arrives on.
    #[arg(long)]
    pub iface: Option<String>,
    /// With `--from external`: the XDP program instead of TC.
    #[arg(long)]
    pub xdp: bool,
    #[arg(long, value_enum, default_value = "syn")]
    pub tcp_flags: TcpFlags,
    #[command(flatten)]
    pub files: super::commands::ListArgs,
}

const DEFAULT_CLIENT_PORT: u16 = 40_000;
/// IPv4's TTL, IPv6's hop limit.
const TTL: u8 = 64;
const TCP_WINDOW: u16 = 64_240;
const SEQUENCE: u32 = 1;
/// Locally administered MACs: the programs do not read them.
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// A packet's tuple as the trace shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PacketView {
    pub src: String,
    pub dst: String,
    pub protocol: String,
    /// TCP flags, or "" for UDP.
    pub flags: String,
}

/// How the endpoint was chosen.
#[derive(Clone, Debug, Serialize)]
pub struct Choice {
    pub ip: IpAddr,
    pub port: u16,
    /// "conntrack", "affinity" or "slot".
    pub by: &'static str,
    /// With "slot": the slot `hash % candidates` picked.
    pub slot: Option<u32>,
    pub hash: Option<u32>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TraceReport {
    pub from: Origin,
    pub program: &'static str,
    pub packet: PacketView,
    /// The frontend the program looked up, and whether it exists.
    pub frontend_looked_up: Option<String>,
    /// The matched frontend as `vipr service list` shows it.
    pub service: Option<ServiceRow>,
    /// Live conntrack entries of this flow the run started from.
    pub conntrack_entries: usize,
    pub chosen: Option<Choice>,
    /// The node address and port a new masqueraded flow leaves with. The
    /// port is the one free in the trace's scratch table: the live one may differ.
    pub masquerade: Option<String>,
    /// The flow goes by direct server return (`--lb-mode dsr|hybrid`): it
    /// keeps the client's address and the endpoint answers the client directly.
    pub dsr: bool,
    /// Counters the packet moved (in the trace copy's own counters).
    pub counted: Vec<&'static str>,
    /// pass, drop, redirect, tx, ...
    pub verdict: String,
    pub output: Option<PacketView>,
    pub notes: Vec<String>,
}

pub fn trace(args: &TraceArgs) -> Result<String, CliError> {
    let (source, destination) = match (&args.source, &args.destination) {
        (Some(s), Some(d)) => (s.as_str(), d.as_str()),
        _ => {
            return Err(usage(
                "give SRC and DST:PORT/PROTO, or --explain-drop COUNTER",
            ));
        }
    };
    let client = parse_source(source)?;
    let (dst, protocol) = parse_destination(destination)?;
    let frame = build_frame(client, dst, protocol, args.tcp_flags)?;
    let program = program_for(args.from, args.xdp)?;
    let scope = if args.from == Origin::External {
        SCOPE_EXTERNAL
    } else {
        SCOPE_INTERNAL
    };
    let maps = pinned_contents(&args.files.bpffs)?;
    let (flow, affinity) = match (client.ip(), dst.ip()) {
        (IpAddr::V4(client_ip), IpAddr::V4(dst_ip)) => {
            let frontend = ServiceKey::scoped(dst_ip, dst.port(), protocol, scope);
            let affinity = maps.services.get(&frontend).map(|s| {
                TraceAffinity::V4(AffinityKey {
                    service_id: s.service_id,
                    client_addr: wire_addr(client_ip),
                })
            });
            let flow = CtKey {
                src_addr: wire_addr(client_ip),
                dst_addr: wire_addr(dst_ip),
                src_port: client.port().to_be(),
                dst_port: dst.port().to_be(),
                proto: protocol,
                direction: CT_FORWARD,
                _pad: [0; 2],
            };
            (TraceFlow::V4(flow), affinity)
        }
        (IpAddr::V6(client_ip), IpAddr::V6(dst_ip)) => {
            let frontend = Service6Key::scoped(dst_ip, dst.port(), protocol, scope);
            let affinity = maps.services6.get(&frontend).map(|s| {
                TraceAffinity::V6(Affinity6Key {
                    service_id: s.service_id,
                    client_addr: wire_addr6(client_ip),
                })
            });
            let flow = Ct6Key {
                src_addr: wire_addr6(client_ip),
                dst_addr: wire_addr6(dst_ip),
                src_port: client.port().to_be(),
                dst_port: dst.port().to_be(),
                proto: protocol,
                direction: CT_FORWARD,
                _pad: [0; 2],
            };
            (TraceFlow::V6(flow), affinity)
        }
        _ => return Err(mixed_families(client, dst)),
    };
    let ifindex = match &args.iface {
        Some(name) => Some(interface_index(name)?),
        None => None,
    };
    let input = TraceInput {
        program,
        frame: &frame,
        flow,
        affinity,
        ifindex,
    };
    let run = run_trace(&args.files.bpffs, &input)?;
    let files = AgentFiles {
        pin_dir: &args.files.bpffs,
        state_dir: &args.files.state_dir,
    };
    let names = files.names().ok();
    let report = report(args.from, program, &frame, &run, &maps, names.as_ref());
    match args.files.output {
        Output::Json => Ok(serde_json::to_string_pretty(&report)? + "\n"),
        Output::Table => Ok(super::trace_text::render(&report)),
    }
}

fn usage(message: &str) -> CliError {
    CliError::Usage(message.to_string())
}

fn program_for(from: Origin, xdp: bool) -> Result<&'static str, CliError> {
    match (from, xdp) {
        (Origin::Pod, false) => Ok(programs::FROM_POD),
        (Origin::External, false) => Ok(programs::FROM_EXTERNAL),
        (Origin::External, true) => Ok(programs::XDP_EXTERNAL),
        (Origin::Host, false) => Ok(programs::TRACE_HOST),
        (_, true) => Err(usage("--xdp traces only --from external")),
    }
}

fn interface_index(name: &str) -> Result<u32, CliError> {
    nix::net::if_::if_nametoindex(name).map_err(|e| usage(&format!("interface {name}: {e}")))
}

/// SRC: ADDR or ADDR:PORT; an IPv6 ADDR bare or bracketed, bracketed
/// with a port.
fn parse_source(text: &str) -> Result<SocketAddr, CliError> {
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_CLIENT_PORT));
    }
    text.parse().map_err(|_| {
        usage(&format!(
            "SRC {text:?}: expected ADDR or ADDR:PORT (IPv6: ADDR or [ADDR]:PORT)"
        ))
    })
}

/// DST: ADDR:PORT/PROTO, an IPv6 ADDR bracketed (its colons would swallow
/// the port otherwise).
fn parse_destination(text: &str) -> Result<(SocketAddr, u8), CliError> {
    let (addr, protocol) = match text.rsplit_once('/') {
        Some((addr, protocol)) => (addr, protocol),
        None => (text, "tcp"),
    };
    let protocol = match protocol.to_ascii_lowercase().as_str() {
        "tcp" => IPPROTO_TCP,
        "udp" => IPPROTO_UDP,
        other => return Err(usage(&format!("protocol {other:?}: tcp or udp"))),
    };
    match addr.parse::<SocketAddr>() {
        Ok(addr) => Ok((addr, protocol)),
        Err(_) if addr.parse::<Ipv6Addr>().is_ok() => Err(usage(&format!(
            "DST {text:?}: an IPv6 destination is written [ADDR]:PORT/PROTO, \
             e.g. [fd00:96::10]:80/tcp"
        ))),
        Err(_) => Err(usage(&format!(
            "DST {text:?}: expected ADDR:PORT/PROTO (IPv6: [ADDR]:PORT/PROTO)"
        ))),
    }
}

fn family_name(addr: SocketAddr) -> &'static str {
    if addr.is_ipv4() { "IPv4" } else { "IPv6" }
}

fn mixed_families(src: SocketAddr, dst: SocketAddr) -> CliError {
    usage(&format!(
        "SRC {} is {} but DST {} is {}: a packet has one address family, \
         give both in IPv4 or both in IPv6",
        src.ip(),
        family_name(src),
        dst.ip(),
        family_name(dst),
    ))
}

fn build_frame(
    src: SocketAddr,
    dst: SocketAddr,
    protocol: u8,
    flags: TcpFlags,
) -> Result<Vec<u8>, CliError> {
    let ethernet = PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC);
    let ip = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ethernet.ipv4(s.octets(), d.octets(), TTL),
        (IpAddr::V6(s), IpAddr::V6(d)) => ethernet.ipv6(s.octets(), d.octets(), TTL),
        _ => return Err(mixed_families(src, dst)),
    };
    let mut frame = Vec::new();
    let written = if protocol == IPPROTO_UDP {
        ip.udp(src.port(), dst.port()).write(&mut frame, b"trace")
    } else {
        let tcp = ip.tcp(src.port(), dst.port(), SEQUENCE, TCP_WINDOW);
        let tcp = match flags {
            TcpFlags::Syn => tcp.syn(),
            TcpFlags::Ack => tcp.ack(SEQUENCE),
            TcpFlags::Fin => tcp.fin().ack(SEQUENCE),
            TcpFlags::Rst => tcp.rst(),
        };
        tcp.write(&mut frame, b"")
    };
    written.map_err(|e| usage(&format!("building the packet: {e}")))?;
    Ok(frame)
}

/// The tuple of an Ethernet frame, if it is TCP, UDP or ICMP over IPv4 or
/// IPv6 (IPv6 addresses bracketed before a port).
pub fn view(frame: &[u8]) -> Option<PacketView> {
    let packet = SlicedPacket::from_ethernet(frame).ok()?;
    let (src_ip, dst_ip): (IpAddr, IpAddr) = match packet.net? {
        NetSlice::Ipv4(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        NetSlice::Ipv6(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        _ => return None,
    };
    let (protocol, src_port, dst_port, flags) = match packet.transport? {
        TransportSlice::Tcp(tcp) => {
            let names = [
                (tcp.syn(), "SYN"),
                (tcp.ack(), "ACK"),
                (tcp.fin(), "FIN"),
                (tcp.rst(), "RST"),
            ];
            let set: Vec<&str> = names
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, n)| *n)
                .collect();
            (
                IPPROTO_TCP,
                tcp.source_port(),
                tcp.destination_port(),
                set.join(","),
            )
        }
        TransportSlice::Udp(udp) => (
            IPPROTO_UDP,
            udp.source_port(),
            udp.destination_port(),
            String::new(),
        ),
        TransportSlice::Icmpv4(_) => return Some(icmp_view(src_ip, dst_ip, "icmp")),
        TransportSlice::Icmpv6(_) => return Some(icmp_view(src_ip, dst_ip, "icmpv6")),
        _ => return None,
    };
    Some(PacketView {
        src: SocketAddr::new(src_ip, src_port).to_string(),
        dst: SocketAddr::new(dst_ip, dst_port).to_string(),
        protocol: protocol_name(protocol),
        flags,
    })
}

fn icmp_view(src: IpAddr, dst: IpAddr, protocol: &str) -> PacketView {
    PacketView {
        src: src.to_string(),
        dst: dst.to_string(),
        protocol: protocol.into(),
        flags: String::new(),
    }
}

/// The frontend the record names, in its family, and its entry if the
/// live services map has one.
fn recorded_frontend<'a>(
    record: &proxy_common::TraceRecord,
    maps: &'a crate::plan::MapContents,
) -> (FrontendAt, Option<&'a ServiceValue>) {
    if record.steps & TRACE_FRONTEND_IPV6 != 0 {
        let key: &Service6Key = &record.frontend6;
        (key.into(), maps.services6.get(key))
    } else {
        (
            FrontendAt::from(&record.frontend),
            maps.services.get(&record.frontend),
        )
    }
}

/// A backend id's endpoint, in whichever family has it (ids never overlap).
fn endpoint(maps: &crate::plan::MapContents, backend_id: u32) -> Option<(IpAddr, u16)> {
    let v4 = maps
        .backends
        .get(&backend_id)
        .map(|b| (b.ip().into(), b.port()));
    v4.or_else(|| {
        let b = maps.backends6.get(&backend_id)?;
        Some((b.ip().into(), b.port()))
    })
}

fn report(
    from: Origin,
    program: &'static str,
    frame: &[u8],
    run: &TraceRun,
    maps: &crate::plan::MapContents,
    names: Option<&crate::names::NameIndex>,
) -> TraceReport {
    use proxy_common::{
        TRACE_AFFINITY_FOLLOWED, TRACE_CONNTRACK_FOLLOWED, TRACE_FRONTEND_FOUND,
        TRACE_FRONTEND_LOOKED_UP, TRACE_SLOT_PICKED,
    };
    let record = &run.record;
    let steps = |bit: u32| record.steps & bit != 0;
    let (frontend, service_value) = recorded_frontend(record, maps);
    let frontend_looked_up = steps(TRACE_FRONTEND_LOOKED_UP).then(|| {
        let found = if steps(TRACE_FRONTEND_FOUND) {
            ""
        } else {
            " (no such frontend)"
        };
        format!(
            "{}/{} {}{found}",
            SocketAddr::new(frontend.ip, frontend.port),
            protocol_name(frontend.proto),
            if frontend.scope == SCOPE_EXTERNAL {
                "external"
            } else {
                "internal"
            },
        )
    });
    let service = steps(TRACE_FRONTEND_FOUND)
        .then(|| service_value.map(|v| row(maps, names, frontend, v)))
        .flatten();
    let by = [
        (TRACE_CONNTRACK_FOLLOWED, "conntrack"),
        (TRACE_AFFINITY_FOLLOWED, "affinity"),
        (TRACE_SLOT_PICKED, "slot"),
    ]
    .into_iter()
    .find(|(bit, _)| steps(*bit))
    .map(|(_, by)| by)
    // A Maglev frontend's pick is a position of its table, not a slot.
    .map(|by| match service_value {
        Some(v) if by == "slot" && v.flags & proxy_common::SVC_FLAG_MAGLEV != 0 => "maglev",
        _ => by,
    });
    let chosen = by.and_then(|by| {
        // A flow follows the endpoint its entry names, even one whose id
        // has since gone (TCP outlives its endpoint) or been reused.
        let followed = (by == "conntrack")
            .then(|| followed_endpoint(run, record.backend_id))
            .flatten();
        let (ip, port) = followed.or_else(|| endpoint(maps, record.backend_id))?;
        let slot = by == "slot" || by == "maglev";
        Some(Choice {
            ip,
            port,
            by,
            slot: slot.then_some(record.slot),
            hash: slot.then_some(record.hash),
        })
    });
    let masquerade = masquerade_source(run).map(|at| at.to_string());
    let mut notes = Vec::new();
    if masquerade.is_some() {
        notes.push(
            "the masquerade port is the first free one in the trace's own table; the live \
             table may give another, or find none free"
                .to_string(),
        );
    }
    if program == programs::XDP_EXTERNAL && run.return_value == XDP_PASS && run.counted.is_empty() {
        notes.push(
            "XDP handed the packet to the stack untouched: the external TC program decides \
             (trace it without --xdp)"
                .to_string(),
        );
    }
    if from == Origin::Host {
        notes.push(
            "the socket hooks choose per socket: this shows one socket's choice, \
             another client port stands for another socket"
                .to_string(),
        );
    }
    TraceReport {
        from,
        program,
        packet: view(frame).unwrap_or(PacketView {
            src: String::new(),
            dst: String::new(),
            protocol: String::new(),
            flags: String::new(),
        }),
        frontend_looked_up,
        service,
        conntrack_entries: run.conntrack_before.len() + run.conntrack6_before.len(),
        chosen,
        masquerade,
        dsr: goes_by_dsr(run),
        counted: run.counted.iter().map(|(c, _)| c.name()).collect(),
        verdict: verdict_label(from, program, run),
        output: view(&run.frame_out),
        notes,
    }
}

/// The endpoint the live conntrack entry of the traced flow names.
fn followed_endpoint(run: &TraceRun, backend_id: u32) -> Option<(IpAddr, u16)> {
    let v4 = run
        .conntrack_before
        .iter()
        .find(|(_, v)| v.backend_id == backend_id)
        .map(|(_, v)| (host_addr(v.nat_addr).into(), u16::from_be(v.nat_port)));
    v4.or_else(|| {
        let (_, v) = run
            .conntrack6_before
            .iter()
            .find(|(_, v)| v.backend_id == backend_id)?;
        Some((host_addr6(v.nat_addr).into(), u16::from_be(v.nat_port)))
    })
}

/// Whether the traced flow's forward entry, new or live, is a DSR one.
fn goes_by_dsr(run: &TraceRun) -> bool {
    let forward_dsr =
        |direction: u8, flags: u8| direction == CT_FORWARD && flags & CT_FLAG_DSR != 0;
    run.conntrack_after
        .iter()
        .any(|(k, v)| forward_dsr(k.direction, v.flags))
        || run
            .conntrack6_after
            .iter()
            .any(|(k, v)| forward_dsr(k.direction, v.flags))
}

/// The node address and port a new masqueraded flow leaves with: its new
/// forward entry holds them (the reverse one holds the client's).
fn masquerade_source(run: &TraceRun) -> Option<SocketAddr> {
    let v4 = run
        .conntrack_after
        .iter()
        .find(|(key, value)| {
            key.direction == CT_FORWARD
                && value.flags & CT_FLAG_SNAT != 0
                && !run.conntrack_before.contains(&(*key, *value))
        })
        .map(|(_, v)| SocketAddr::new(host_addr(v.snat_addr).into(), u16::from_be(v.snat_port)));
    v4.or_else(|| {
        let (_, v) = run.conntrack6_after.iter().find(|(key, value)| {
            key.direction == CT_FORWARD
                && value.flags & CT_FLAG_SNAT != 0
                && !run.conntrack6_before.contains(&(*key, *value))
        })?;
        Some(SocketAddr::new(
            host_addr6(v.snat_addr).into(),
            u16::from_be(v.snat_port),
        ))
    })
}

/// The kernel's verdict values (`enum xdp_action`; `TC_ACT_*` in
/// pkt_cls.h), which aya's generated bindings do not carry.
const XDP_VERDICTS: [&str; 5] = ["aborted", "drop", "pass", "tx", "redirect"];
const XDP_PASS: u32 = 2;
const TC_ACT_UNSPEC: i32 = -1;
const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;
const TC_ACT_REDIRECT: i32 = 7;

/// The verdict, named for what it means where the program's value alone
/// would mislead: a refusal is sent back with a redirect, and the socket
/// path's "drop" is a failed connect().
fn verdict_label(from: Origin, program: &str, run: &TraceRun) -> String {
    let refused = run.counted.iter().find_map(|(c, _)| match c {
        Counter::RejectTcpRst => Some("refused: a TCP RST goes back"),
        Counter::RejectIcmpUnreachable => Some("refused: an ICMP port unreachable goes back"),
        Counter::SockRefused => Some("refused: connect() fails with ECONNREFUSED"),
        _ => None,
    });
    let raw = verdict_name(program, run.return_value);
    match refused {
        Some(label) => format!("{label}, {raw}"),
        None if from == Origin::Host && run.return_value as i32 == TC_ACT_SHOT => {
            format!("connect() fails with EHOSTUNREACH, {raw}")
        }
        None => raw,
    }
}

fn verdict_name(program: &str, value: u32) -> String {
    let name = if program == programs::XDP_EXTERNAL {
        XDP_VERDICTS
            .get(value as usize)
            .copied()
            .unwrap_or("unknown")
    } else {
        match value as i32 {
            TC_ACT_UNSPEC | TC_ACT_OK => "pass",
            TC_ACT_SHOT => "drop",
            TC_ACT_REDIRECT => "redirect",
            _ => "unknown",
        }
    };
    format!("{name} ({value})")
}
