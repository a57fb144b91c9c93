//! Packets as test data: build frames for BPF_PROG_TEST_RUN and run the real
//! compiled programs on them.
use std::{
    net::Ipv4Addr,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::{
    maps::{HashMap, MapData, PerCpuArray},
    programs::{TestRun, TestRunOptions},
};
use etherparse::{IpNumber, Ipv4Header, PacketBuilder, TcpHeader, UdpHeader};
use proxy_common::{BackendValue, Counter, CtKey, CtValue, ServiceKey, ServiceValue, SlotKey};
use vipr::datapath::{Datapath, KernelMaps, LoadOptions, ServiceMaps, cleanup_pins, read_counters};
use vipr::plan::MapOp;

/// MAC of node2 (next hop for 10.244.2.0/24) in a [`FibNamespace`].
pub const NEXT_HOP_NODE2: [u8; 6] = [0x02, 0, 0, 0, 0, 0x22];
/// MAC of the router (next hop for 198.51.100.0/24) in a [`FibNamespace`].
pub const NEXT_HOP_ROUTER: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const TTL: u8 = 64;

/// What a flow looks like on the wire.
#[derive(Clone, Copy, Debug)]
pub struct Tuple {
    pub src: (Ipv4Addr, u16),
    pub dst: (Ipv4Addr, u16),
}

fn builder(t: Tuple) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    PacketBuilder::ethernet2(CLIENT_MAC, HOST_MAC).ipv4(t.src.0.octets(), t.dst.0.octets(), TTL)
}

/// A TCP segment; `syn`/`ack` set those flags.
pub fn tcp(t: Tuple, seq: u32, syn: bool, ack: bool, payload: &[u8]) -> Vec<u8> {
    let mut b = builder(t).tcp(t.src.1, t.dst.1, seq, 64_240);
    if syn {
        b = b.syn();
    }
    if ack {
        b = b.ack(1);
    }
    let mut out = Vec::new();
    b.write(&mut out, payload).expect("build tcp");
    out
}

/// A TCP segment that closes: FIN+ACK, or RST with `rst`.
pub fn tcp_closing(t: Tuple, seq: u32, rst: bool) -> Vec<u8> {
    let b = builder(t).tcp(t.src.1, t.dst.1, seq, 64_240);
    let b = if rst { b.rst() } else { b.fin().ack(1) };
    let mut out = Vec::new();
    b.write(&mut out, b"").expect("build tcp");
    out
}

pub fn udp(t: Tuple, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    builder(t)
        .udp(t.src.1, t.dst.1)
        .write(&mut out, payload)
        .expect("build udp");
    out
}

/// Same as [`udp`] but with the optional UDP checksum left at 0.
pub fn udp_without_checksum(t: Tuple, payload: &[u8]) -> Vec<u8> {
    let mut frame = udp(t, payload);
    frame[14 + 20 + 6] = 0;
    frame[14 + 20 + 7] = 0;
    frame
}

/// A TCP SYN whose IPv4 header carries 4 bytes of options (a NOP list).
pub fn tcp_with_ip_options(t: Tuple, seq: u32) -> Vec<u8> {
    let tcp_header = {
        let mut h = TcpHeader::new(t.src.1, t.dst.1, seq, 64_240);
        h.syn = true;
        h
    };
    let mut ip = Ipv4Header::new(
        tcp_header.header_len() as u16,
        TTL,
        IpNumber::TCP,
        t.src.0.octets(),
        t.dst.0.octets(),
    )
    .expect("ip header");
    ip.options = [1u8, 1, 1, 1][..].try_into().expect("options");
    ip.set_payload_len(tcp_header.header_len())
        .expect("payload length");
    ip.header_checksum = ip.calc_header_checksum();
    let mut tcp_header = tcp_header;
    tcp_header.checksum = tcp_header
        .calc_checksum_ipv4(&ip, &[])
        .expect("tcp checksum");
    let mut out = ethernet(0x0800);
    ip.write(&mut out).expect("write ip");
    tcp_header.write(&mut out).expect("write tcp");
    out
}

/// A UDP datagram with the "more fragments" bit set (first fragment).
pub fn udp_first_fragment(t: Tuple) -> Vec<u8> {
    let mut frame = udp(t, b"part");
    frame[14 + 6] |= 0x20;
    fix_ip_checksum(&mut frame);
    frame
}

pub fn ethernet(ether_type: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&HOST_MAC);
    out.extend_from_slice(&CLIENT_MAC);
    out.extend_from_slice(&ether_type.to_be_bytes());
    out
}

/// An ARP request frame: not IPv4.
pub fn arp() -> Vec<u8> {
    let mut out = ethernet(0x0806);
    out.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    out.extend_from_slice(&[0u8; 20]);
    out
}

pub fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, HOST_MAC)
        .ipv4(src.octets(), dst.octets(), TTL)
        .icmpv4_echo_request(1, 1)
        .write(&mut out, b"ping")
        .expect("build icmp");
    out
}

/// `frame` (IPv4 without options) as the DSR ingress node sends it on: the
/// DSR option carrying `frontend` after the IPv4 header, the header length,
/// total length and header checksum to match. Built by hand, so it checks
/// the kernel's incremental updates.
pub fn with_dsr_option(frame: &[u8], frontend: (Ipv4Addr, u16)) -> Vec<u8> {
    assert_eq!(frame[14], 0x45, "an IPv4 header without options");
    let mut out = frame[..34].to_vec();
    out.extend_from_slice(&[proxy_common::DSR_OPTION_TYPE, proxy_common::DSR_OPTION_LEN]);
    out.extend_from_slice(&frontend.1.to_be_bytes());
    out.extend_from_slice(&frontend.0.octets());
    out.extend_from_slice(&frame[34..]);
    out[14] = 0x47;
    let total = u16::from_be_bytes([out[16], out[17]]) + u16::from(proxy_common::DSR_OPTION_LEN);
    out[16..18].copy_from_slice(&total.to_be_bytes());
    fix_ip_checksum(&mut out);
    out
}

/// Recomputes the IPv4 header checksum after a test mangled the header
/// (by hand: the header may be one no parser accepts, such as ihl < 5).
pub fn fix_ip_checksum(frame: &mut [u8]) {
    let ihl = (((frame[14] & 0x0f) as usize) * 4).max(20);
    frame[24] = 0;
    frame[25] = 0;
    let mut sum: u32 = frame[14..14 + ihl]
        .chunks(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    frame[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

/// Checks every checksum of an Ethernet/IPv4/{TCP,UDP,ICMP} frame from
/// scratch; returns what is wrong.
pub fn checksum_errors(frame: &[u8]) -> Vec<String> {
    let mut errors = Vec::new();
    let Ok((ip, rest)) = Ipv4Header::from_slice(&frame[14..]) else {
        return vec!["no IPv4 header".into()];
    };
    if ip.calc_header_checksum() != ip.header_checksum {
        errors.push("ip header checksum".into());
    }
    let payload_len = (ip.total_len as usize).saturating_sub(ip.header_len());
    let l4 = &rest[..payload_len.min(rest.len())];
    match ip.protocol {
        IpNumber::TCP => {
            let (tcp, data) = TcpHeader::from_slice(l4).expect("tcp header");
            if tcp.calc_checksum_ipv4(&ip, data).ok() != Some(tcp.checksum) {
                errors.push("tcp checksum".into());
            }
        }
        IpNumber::UDP => {
            let (udp, data) = UdpHeader::from_slice(l4).expect("udp header");
            if udp.checksum != 0 && udp.calc_checksum_ipv4(&ip, data).ok() != Some(udp.checksum) {
                errors.push("udp checksum".into());
            }
        }
        IpNumber::ICMP => {
            let mut sum = 0u32;
            for pair in l4.chunks(2) {
                sum += u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]) as u32;
            }
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            if sum != 0xffff {
                errors.push("icmp checksum".into());
            }
        }
        _ => {}
    }
    errors
}

/// For forwarding tests: a namespace with one external interface `ext0`, a route to node2's pods
/// and one to the clients, with permanent neighbours, and one to node3's pods through a neighbour
/// not resolved yet. Deleted on drop.
pub struct FibNamespace(String);

impl FibNamespace {
    pub fn name(&self) -> &str {
        &self.0
    }

    pub fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("vxdp{}x{n}", std::process::id());
        let ns = Self(name.clone());
        let script = [
            // A veth pair: dummy interfaces are not built into every kernel.
            "ip link add ext0 type veth peer name ext1",
            "ip link set ext1 up",
            "ip link set ext0 address 02:00:00:00:00:01",
            "ip link set ext0 up",
            "ip link set lo up",
            "ip addr add 172.30.0.1/24 dev ext0",
            "ip neigh add 172.30.0.2 lladdr 02:00:00:00:00:22 dev ext0 nud permanent",
            "ip neigh add 172.30.0.254 lladdr 02:00:00:00:00:fe dev ext0 nud permanent",
            "ip route add 10.244.2.0/24 via 172.30.0.2",
            "ip route add 198.51.100.0/24 via 172.30.0.254",
            // A next hop nobody has resolved yet.
            "ip route add 10.244.3.0/24 via 172.30.0.3",
            "sysctl -qw net.ipv4.ip_forward=1",
            "sysctl -qw net.ipv4.conf.lo.forwarding=1",
            // The same in IPv6 (addresses of `packets_xdp6.rs`).
            "sysctl -qw net.ipv6.conf.all.forwarding=1",
            "ip addr add fd00:30::1/64 dev ext0 nodad",
            "ip neigh add fd00:30::2 lladdr 02:00:00:00:00:22 dev ext0 nud permanent",
            "ip neigh add fd00:30::fe lladdr 02:00:00:00:00:fe dev ext0 nud permanent",
            "ip route add fd00:244:2::/64 via fd00:30::2",
            "ip route add 2001:db8:64::/64 via fd00:30::fe",
        ];
        assert!(
            std::process::Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .unwrap()
                .success()
        );
        for line in script {
            let ok = std::process::Command::new("ip")
                .args(["netns", "exec", &name, "sh", "-c", line])
                .status()
                .unwrap()
                .success();
            assert!(ok, "{line}");
        }
        ns
    }
}

impl Drop for FibNamespace {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

impl Default for FibNamespace {
    fn default() -> Self {
        Self::new()
    }
}

static NEXT_PIN: AtomicU32 = AtomicU32::new(0);

/// The real object loaded with maps pinned in a private bpffs directory
/// (removed on drop), and handles on every map.
pub struct Harness {
    pub datapath: Datapath,
    pub maps: KernelMaps,
    pub conntrack: HashMap<MapData, CtKey, CtValue>,
    counters: PerCpuArray<MapData, u64>,
    pin_dir: PathBuf,
}

/// Outcome of one program run.
#[derive(Debug)]
pub struct Run {
    pub verdict: i32,
    pub output: Vec<u8>,
    /// Counters that changed during this run: (name, delta).
    pub counted: Vec<(&'static str, u64)>,
}

pub const TC_ACT_OK: i32 = 0;
pub const TC_ACT_SHOT: i32 = 2;
pub const TC_ACT_REDIRECT: i32 = 7;
pub const XDP_DROP: i32 = 1;
pub const XDP_PASS: i32 = 2;
pub const XDP_TX: i32 = 3;
pub const XDP_REDIRECT: i32 = 4;

impl Harness {
    pub fn new() -> anyhow::Result<Self> {
        Self::with_options(|_| {})
    }

    pub fn with_options(adjust: impl FnOnce(&mut LoadOptions)) -> anyhow::Result<Self> {
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/vipr-test-{}-{}",
            std::process::id(),
            NEXT_PIN.fetch_add(1, Ordering::Relaxed)
        ));
        let mut options = LoadOptions::new(&pin_dir);
        options.hash_seed = 0x5eed;
        adjust(&mut options);
        // Pins of a half-built harness must go too: `Drop` only covers a built one.
        let built = (|| -> anyhow::Result<_> {
            let mut datapath = Datapath::load(&options)?;
            let maps = KernelMaps::take(&mut datapath)?;
            Ok((datapath, maps))
        })();
        let (mut datapath, maps) = match built {
            Ok(parts) => parts,
            Err(e) => {
                let _ = cleanup_pins(&pin_dir);
                return Err(e);
            }
        };
        let conntrack = HashMap::try_from(
            datapath
                .ebpf
                .take_map(proxy_common::maps::CONNTRACK)
                .ok_or_else(|| anyhow::anyhow!("no conntrack map"))?,
        )?;
        let counters = PerCpuArray::try_from(
            datapath
                .ebpf
                .take_map(proxy_common::maps::COUNTERS)
                .ok_or_else(|| anyhow::anyhow!("no counters map"))?,
        )?;
        Ok(Self {
            datapath,
            maps,
            conntrack,
            counters,
            pin_dir,
        })
    }

    /// Programs a frontend with `backends` (ids assigned from `first_backend_id`).
    pub fn add_service(
        &mut self,
        service_id: u32,
        frontend: (Ipv4Addr, u16),
        proto: u8,
        backends: &[(u32, Ipv4Addr, u16)],
    ) -> anyhow::Result<()> {
        let backends: Vec<(u32, BackendValue)> = backends
            .iter()
            .map(|&(id, ip, port)| (id, BackendValue::new(ip, port, proto)))
            .collect();
        let key = ServiceKey::new(frontend.0, frontend.1, proto);
        self.add_frontend(service_id, key, 0, &backends)
    }

    /// Programs any frontend: its key (with scope), flags, and backends as
    /// (id, value) in slot order.
    pub fn add_frontend(
        &mut self,
        service_id: u32,
        key: ServiceKey,
        flags: u16,
        backends: &[(u32, BackendValue)],
    ) -> anyhow::Result<()> {
        for (slot, (id, backend)) in backends.iter().enumerate() {
            self.maps.apply(&MapOp::UpsertBackend(*id, *backend))?;
            self.maps.apply(&MapOp::UpsertSlot(
                SlotKey {
                    service_id,
                    slot: slot as u32,
                },
                *id,
            ))?;
        }
        self.maps.apply(&MapOp::UpsertService(
            key,
            ServiceValue {
                service_id,
                backend_count: backends.len() as u16,
                flags,
            },
        ))?;
        Ok(())
    }

    /// Allows `cidr` (address, prefix length) for `service_id`.
    pub fn allow_source(&mut self, service_id: u32, cidr: (Ipv4Addr, u8)) -> anyhow::Result<()> {
        self.maps
            .apply(&MapOp::UpsertSourceRange((service_id, cidr.0, cidr.1)))?;
        Ok(())
    }

    pub fn counters(&self) -> anyhow::Result<Vec<(Counter, u64)>> {
        Ok(read_counters(&self.counters)?)
    }

    pub fn run(&mut self, program: &'static str, input: &[u8]) -> anyhow::Result<Run> {
        self.run_repeat(program, input, 1).map(|(run, _)| run)
    }

    /// Runs the XDP program once on `input`, as received on `ext0` of a
    /// [`FibNamespace`] (the calling thread must be inside one).
    pub fn run_xdp(&mut self, input: &[u8]) -> anyhow::Result<Run> {
        self.run_xdp_repeat(input, 1).map(|(run, _)| run)
    }

    /// Runs the XDP program `repeat` times; returns the run and ns per run.
    pub fn run_xdp_repeat(&mut self, input: &[u8], repeat: u32) -> anyhow::Result<(Run, f64)> {
        let before = self.counters()?;
        let mut output = vec![0u8; 512];
        // xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
        let ingress = nix::net::if_::if_nametoindex("ext0")?;
        let ctx: Vec<u8> = [0u32, input.len() as u32, 0, ingress, 0, 0]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        let result = {
            let program = self.datapath.xdp()?;
            let mut options = TestRunOptions::new();
            options.data_in = Some(input);
            options.data_out = Some(&mut output);
            options.ctx_in = Some(&ctx);
            options.repeat = repeat;
            program.test_run(options)?
        };
        self.finish(&before, &result, output)
    }

    /// Runs `repeat` times on the same skb; returns the run and ns per run.
    pub fn run_repeat(
        &mut self,
        program: &'static str,
        input: &[u8],
        repeat: u32,
    ) -> anyhow::Result<(Run, f64)> {
        self.run_tc(program, input, repeat, None)
    }

    /// Runs a TC program once on `input` as if it arrived on `ext0` of a
    /// [`FibNamespace`] (the calling thread must be inside one).
    pub fn run_on_ext0(&mut self, program: &'static str, input: &[u8]) -> anyhow::Result<Run> {
        // __sk_buff up to `ifindex` (the 11th u32); the kernel takes the
        // device from it and requires the fields before it to be zero.
        let mut ctx = [0u32; 11];
        ctx[10] = nix::net::if_::if_nametoindex("ext0")?;
        let ctx: Vec<u8> = ctx.iter().flat_map(|v| v.to_ne_bytes()).collect();
        self.run_tc(program, input, 1, Some(&ctx))
            .map(|(run, _)| run)
    }

    fn run_tc(
        &mut self,
        program: &'static str,
        input: &[u8],
        repeat: u32,
        ctx: Option<&[u8]>,
    ) -> anyhow::Result<(Run, f64)> {
        let before = self.counters()?;
        let mut output = vec![0u8; 512];
        let result = {
            let program = self.datapath.program(program)?;
            let mut options = TestRunOptions::new();
            options.data_in = Some(input);
            options.data_out = Some(&mut output);
            options.ctx_in = ctx;
            options.repeat = repeat;
            program.test_run(options)?
        };
        self.finish(&before, &result, output)
    }

    /// The run's verdict, output and counter deltas, and ns per repetition.
    fn finish(
        &self,
        before: &[(Counter, u64)],
        result: &aya::programs::TestRunResult,
        mut output: Vec<u8>,
    ) -> anyhow::Result<(Run, f64)> {
        output.truncate(result.data_size_out as usize);
        let after = self.counters()?;
        let counted = before
            .iter()
            .zip(&after)
            .filter(|((_, b), (_, a))| a != b)
            .map(|((c, b), (_, a))| (c.name(), a - b))
            .collect();
        Ok((
            Run {
                verdict: result.return_value as i32,
                output,
                counted,
            },
            result.duration.as_nanos() as f64,
        ))
    }
}

/// A node's NodePort under externalTrafficPolicy Cluster (masqueraded)
/// whose one endpoint runs on another node: where the XDP, DSR and
/// forward-cost tests start.
#[derive(Clone, Copy, Debug)]
pub struct RemoteNodePort {
    /// The node's address: the NodePort's frontend.
    pub node: Ipv4Addr,
    pub node_port: u16,
    /// The endpoint on the other node.
    pub endpoint: (Ipv4Addr, u16),
}

impl RemoteNodePort {
    /// Programs loaded with `node_ipv4` set to the node and `adjust` applied,
    /// and one frontend per protocol of `protos` (service and backend ids
    /// 1, 2, … in that order).
    pub fn harness(
        &self,
        protos: &[u8],
        adjust: impl FnOnce(&mut LoadOptions),
    ) -> anyhow::Result<Harness> {
        let mut h = Harness::with_options(|o| {
            o.node_ipv4 = Some(self.node);
            adjust(o);
        })?;
        for (id, proto) in (1..).zip(protos) {
            let key = proxy_common::ServiceKey::scoped(
                self.node,
                self.node_port,
                *proto,
                proxy_common::SCOPE_EXTERNAL,
            );
            let (ip, port) = self.endpoint;
            let backend = (id, BackendValue::new(ip, port, *proto));
            h.add_frontend(
                id,
                key,
                proxy_common::SVC_FLAG_MASQUERADE | proxy_common::SVC_FLAG_HAS_ENDPOINTS,
                &[backend],
            )?;
        }
        Ok(h)
    }
}

/// What a frame sent by XDP and by TC should count: XDP's, then TC's
/// (`None`: TC's not checked).
pub struct SentBy<'a> {
    pub xdp: &'a [(&'static str, u64)],
    pub tc: Option<&'a [(&'static str, u64)]>,
}

impl Harness {
    /// `frame` through XDP, then again through TC on `ext0` (in a
    /// namespace whose FIB routes it): XDP must transmit and TC redirect
    /// exactly `expected`, each counting what `counted` says.
    pub fn sent_alike(&mut self, frame: &[u8], expected: &[u8], counted: SentBy) {
        let xdp = self.run_xdp(frame).expect("XDP run");
        assert_eq!(xdp.verdict, XDP_TX, "XDP: {:?}", xdp.counted);
        assert_eq!(xdp.counted, counted.xdp, "XDP");
        assert_eq!(xdp.output, expected, "XDP's frame");
        let tc = self
            .run_on_ext0(proxy_common::programs::FROM_EXTERNAL, frame)
            .expect("TC run");
        assert_eq!(tc.verdict, TC_ACT_REDIRECT, "TC: {:?}", tc.counted);
        if let Some(tc_counted) = counted.tc {
            assert_eq!(tc.counted, tc_counted, "TC");
        }
        assert_eq!(tc.output, expected, "TC's frame");
    }
}

impl Harness {
    /// The bpffs directory the programs and maps are pinned under.
    pub fn pin_dir(&self) -> &std::path::Path {
        &self.pin_dir
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = cleanup_pins(&self.pin_dir);
    }
}
