//! IPv6 frames for BPF_PROG_TEST_RUN, and the IPv6 maps of a [`Harness`]
//! (programmed through their pins: `KernelMaps` writes IPv4 only so far).
use std::net::Ipv6Addr;

use aya::maps::{HashMap, Map, MapData};
use etherparse::{
    IpNumber, Ipv6Header, NetSlice, PacketBuilder, SlicedPacket, TcpHeader, TransportSlice,
};
use proxy_common::{
    Backend6Value, CT_FORWARD, Ct6Key, Ct6Value, Service6Key, ServiceValue, SlotKey, maps,
    wire_addr6,
};
use vipr::datapath::MAP_DIR;

use crate::packet::{CLIENT_MAC, HOST_MAC, Harness};

const HOP_LIMIT: u8 = 64;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const NEXTHDR_HOP_BY_HOP: u8 = 0;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_DEST_OPTIONS: u8 = 60;
const NEXTHDR_ICMPV6: u8 = 58;
/// A PadN option filling the 6 bytes after an 8-byte extension header's start.
const PADN_6: [u8; 6] = [1, 4, 0, 0, 0, 0];
const ETH_LEN: usize = 14;
const IPV6_LEN: usize = 40;

/// What an IPv6 flow looks like on the wire.
#[derive(Clone, Copy, Debug)]
pub struct Tuple6 {
    pub src: (Ipv6Addr, u16),
    pub dst: (Ipv6Addr, u16),
}

fn builder(t: Tuple6) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    PacketBuilder::ethernet2(CLIENT_MAC, HOST_MAC).ipv6(
        t.src.0.octets(),
        t.dst.0.octets(),
        HOP_LIMIT,
    )
}

/// A TCP segment; `syn`/`ack` set those flags.
pub fn tcp6(t: Tuple6, seq: u32, syn: bool, ack: bool, payload: &[u8]) -> Vec<u8> {
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

pub fn udp6(t: Tuple6, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    builder(t)
        .udp(t.src.1, t.dst.1)
        .write(&mut out, payload)
        .expect("build udp");
    out
}

/// An 8-byte extension header (hop-by-hop or destination options) leading to `next`.
fn options_header(next: u8) -> Vec<u8> {
    let mut h = vec![next, 0];
    h.extend_from_slice(&PADN_6);
    h
}

/// Ethernet + IPv6 with `first` as the next header and `rest` after it.
fn ipv6_frame(t: Tuple6, first: u8, rest: &[u8]) -> Vec<u8> {
    let ip = Ipv6Header {
        traffic_class: 0,
        flow_label: Default::default(),
        payload_length: rest.len() as u16,
        next_header: IpNumber(first),
        hop_limit: HOP_LIMIT,
        source: t.src.0.octets(),
        destination: t.dst.0.octets(),
    };
    let mut out = Vec::new();
    out.extend_from_slice(&HOST_MAC);
    out.extend_from_slice(&CLIENT_MAC);
    out.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
    ip.write(&mut out).expect("write ipv6");
    out.extend_from_slice(rest);
    out
}

/// A TCP SYN (no payload) as bytes, its checksum over `t`'s addresses.
fn tcp_syn_bytes(t: Tuple6, seq: u32) -> Vec<u8> {
    let mut tcp = TcpHeader::new(t.src.1, t.dst.1, seq, 64_240);
    tcp.syn = true;
    tcp.checksum = tcp
        .calc_checksum_ipv6_raw(t.src.0.octets(), t.dst.0.octets(), &[])
        .expect("tcp checksum");
    tcp.to_bytes().to_vec()
}

/// A TCP SYN behind a hop-by-hop and a destination options header.
pub fn tcp6_with_options(t: Tuple6, seq: u32) -> Vec<u8> {
    let mut rest = options_header(NEXTHDR_DEST_OPTIONS);
    rest.extend(options_header(IpNumber::TCP.0));
    rest.extend(tcp_syn_bytes(t, seq));
    ipv6_frame(t, NEXTHDR_HOP_BY_HOP, &rest)
}

/// A TCP SYN behind `count` destination options headers.
pub fn tcp6_behind_headers(t: Tuple6, seq: u32, count: usize) -> Vec<u8> {
    let mut rest = Vec::new();
    for i in 0..count {
        let next = if i + 1 == count {
            IpNumber::TCP.0
        } else {
            NEXTHDR_DEST_OPTIONS
        };
        rest.extend(options_header(next));
    }
    rest.extend(tcp_syn_bytes(t, seq));
    ipv6_frame(t, NEXTHDR_DEST_OPTIONS, &rest)
}

/// The first fragment of a UDP datagram (more-fragments set).
pub fn udp6_first_fragment(t: Tuple6) -> Vec<u8> {
    let more_fragments = 1u16;
    let mut rest = vec![IpNumber::UDP.0, 0];
    rest.extend_from_slice(&more_fragments.to_be_bytes());
    rest.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    rest.extend_from_slice(&t.src.1.to_be_bytes());
    rest.extend_from_slice(&t.dst.1.to_be_bytes());
    rest.extend_from_slice(&[0, 16, 0, 0]);
    rest.extend_from_slice(b"partpart");
    ipv6_frame(t, NEXTHDR_FRAGMENT, &rest)
}

/// A hop-by-hop header that says it is 16 bytes long, in a packet that
/// ends 8 bytes into it.
pub fn truncated_hop_by_hop(t: Tuple6) -> Vec<u8> {
    let mut rest = vec![IpNumber::TCP.0, 1];
    rest.extend_from_slice(&PADN_6);
    ipv6_frame(t, NEXTHDR_HOP_BY_HOP, &rest)
}

/// A neighbour solicitation (ICMPv6 type 135) for `target`.
pub fn neighbour_solicitation(src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    const NEIGHBOUR_SOLICITATION: u8 = 135;
    let octets = target.octets();
    let group = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | octets[13] as u16,
        u16::from_be_bytes([octets[14], octets[15]]),
    );
    let t = Tuple6 {
        src: (src, 0),
        dst: (group, 0),
    };
    let mut message = vec![NEIGHBOUR_SOLICITATION, 0, 0, 0, 0, 0, 0, 0];
    message.extend_from_slice(&octets);
    let csum = icmp6_checksum(&src.octets(), &group.octets(), &message);
    message[2..4].copy_from_slice(&csum.to_be_bytes());
    ipv6_frame(t, NEXTHDR_ICMPV6, &message)
}

fn ones_sum(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|w| u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]) as u32)
        .sum()
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The checksum an ICMPv6 message (its checksum field 0) must carry.
pub fn icmp6_checksum(src: &[u8; 16], dst: &[u8; 16], message: &[u8]) -> u16 {
    let pseudo = ones_sum(src) + ones_sum(dst) + message.len() as u32 + NEXTHDR_ICMPV6 as u32;
    !fold(pseudo + ones_sum(message))
}

/// Checks the L4 checksum of an Ethernet/IPv6/{TCP,UDP,ICMPv6} frame from
/// scratch (extension headers skipped); returns what is wrong. A UDP
/// checksum of 0 is wrong in IPv6.
pub fn checksum_errors6(frame: &[u8]) -> Vec<String> {
    let Ok(packet) = SlicedPacket::from_ethernet(frame) else {
        return vec!["unparsable frame".into()];
    };
    let Some(NetSlice::Ipv6(ip)) = &packet.net else {
        return vec!["no IPv6 header".into()];
    };
    let (src, dst) = (ip.header().source(), ip.header().destination());
    let mut errors = Vec::new();
    match &packet.transport {
        Some(TransportSlice::Tcp(tcp)) => {
            let expected = tcp
                .to_header()
                .calc_checksum_ipv6_raw(src, dst, tcp.payload())
                .expect("tcp checksum");
            if expected != tcp.checksum() {
                errors.push("tcp checksum".into());
            }
        }
        Some(TransportSlice::Udp(udp)) => {
            let expected = udp
                .to_header()
                .calc_checksum_ipv6_raw(src, dst, udp.payload())
                .expect("udp checksum");
            if udp.checksum() == 0 {
                errors.push("udp checksum 0".into());
            } else if expected != udp.checksum() {
                errors.push("udp checksum".into());
            }
        }
        Some(TransportSlice::Icmpv6(icmp)) => {
            let message = icmp.slice();
            if fold(
                ones_sum(&src)
                    + ones_sum(&dst)
                    + message.len() as u32
                    + NEXTHDR_ICMPV6 as u32
                    + ones_sum(message),
            ) != 0xffff
            {
                errors.push("icmpv6 checksum".into());
            }
        }
        _ => errors.push("no transport header".into()),
    }
    errors
}

/// The (source, destination) of an IPv6 frame and its (source, destination) ports.
pub fn endpoints6(frame: &[u8]) -> ((Ipv6Addr, u16), (Ipv6Addr, u16)) {
    let packet = SlicedPacket::from_ethernet(frame).expect("parse");
    let Some(NetSlice::Ipv6(ip)) = &packet.net else {
        panic!("not ipv6")
    };
    let (sport, dport) = match &packet.transport {
        Some(TransportSlice::Tcp(t)) => (t.source_port(), t.destination_port()),
        Some(TransportSlice::Udp(u)) => (u.source_port(), u.destination_port()),
        _ => (0, 0),
    };
    (
        (ip.header().source_addr(), sport),
        (ip.header().destination_addr(), dport),
    )
}

/// Offset of the L4 header in a frame without extension headers.
pub const L4_OFF: usize = ETH_LEN + IPV6_LEN;

/// The IPv6 maps of a harness, opened through their pins.
pub struct Maps6 {
    pub services: HashMap<MapData, Service6Key, ServiceValue>,
    pub backends: HashMap<MapData, u32, Backend6Value>,
    pub slots: HashMap<MapData, SlotKey, u32>,
    pub conntrack: HashMap<MapData, Ct6Key, Ct6Value>,
}

impl Maps6 {
    pub fn open(h: &Harness) -> anyhow::Result<Self> {
        let open = |name: &str| -> anyhow::Result<Map> {
            Ok(Map::HashMap(MapData::from_pin(
                h.pin_dir().join(MAP_DIR).join(name),
            )?))
        };
        Ok(Self {
            services: HashMap::try_from(open(maps::SERVICES6)?)?,
            backends: HashMap::try_from(open(maps::BACKENDS6)?)?,
            slots: HashMap::try_from(open(maps::SLOTS)?)?,
            conntrack: HashMap::try_from(open(maps::CONNTRACK6)?)?,
        })
    }

    /// Programs an IPv6 frontend with `backends` as (id, value) in slot
    /// order (backend ids share the IPv4 id space).
    pub fn add_frontend(
        &mut self,
        service_id: u32,
        key: Service6Key,
        flags: u16,
        backends: &[(u32, Backend6Value)],
    ) -> anyhow::Result<()> {
        for (slot, (id, backend)) in backends.iter().enumerate() {
            self.backends.insert(id, backend, 0)?;
            let slot = SlotKey {
                service_id,
                slot: slot as u32,
            };
            self.slots.insert(slot, id, 0)?;
        }
        let value = ServiceValue {
            service_id,
            backend_count: backends.len() as u16,
            flags,
        };
        self.services.insert(key, value, 0)?;
        Ok(())
    }

    /// The forward conntrack entry of a flow.
    pub fn forward(&self, t: Tuple6, proto: u8) -> Option<Ct6Value> {
        let key = Ct6Key {
            src_addr: wire_addr6(t.src.0),
            dst_addr: wire_addr6(t.dst.0),
            src_port: t.src.1.to_be(),
            dst_port: t.dst.1.to_be(),
            proto,
            direction: CT_FORWARD,
            _pad: [0; 2],
        };
        self.conntrack.get(&key, 0).ok()
    }
}
