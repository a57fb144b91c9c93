//! Packets for the fuzzer: new flows to the cluster's frontends, replies and
//! retransmissions of flows it translated, ICMP errors quoting them, other
//! protocols and junk, with random damage on top.
use std::collections::VecDeque;
use std::net::Ipv4Addr;

use fastrand::Rng;
use proxy_common::HAIRPIN_IPV4;

use super::frames::{self, ETH, Endpoint, ICMP, TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, UDP};
use super::state::{Endpoint3, NODE};
use super::verdicts::Program;

/// Pods on this node (one of them also an endpoint: hairpin flows).
const POD_CLIENTS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 244, 1, 100),
    Ipv4Addr::new(10, 244, 1, 101),
    Ipv4Addr::new(10, 244, 1, 11),
];
/// Outside clients: routed (inside the source range), and not.
const EXTERNAL_CLIENTS: [Ipv4Addr; 2] = [
    Ipv4Addr::new(198, 51, 100, 7),
    Ipv4Addr::new(203, 0, 113, 9),
];
const FLAGS: [u8; 8] = [
    TCP_SYN,
    TCP_ACK,
    TCP_ACK | 0x08,
    TCP_FIN | TCP_ACK,
    TCP_RST,
    TCP_RST | TCP_ACK,
    TCP_SYN | TCP_ACK,
    0,
];
const RECENT: usize = 64;

pub struct Traffic {
    pub rng: Rng,
    frontends: Vec<Endpoint3>,
    backends: Vec<Endpoint3>,
    /// Well-formed packets the programs translated, as they left.
    translated: VecDeque<Vec<u8>>,
    inputs: VecDeque<Vec<u8>>,
}

impl Traffic {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: Rng::with_seed(seed),
            frontends: Vec::new(),
            backends: Vec::new(),
            translated: VecDeque::new(),
            inputs: VecDeque::new(),
        }
    }

    /// What to aim at: the cluster's frontends and backends (address, port, protocol).
    pub fn set_cluster(&mut self, (frontends, backends): (Vec<Endpoint3>, Vec<Endpoint3>)) {
        self.frontends = frontends;
        self.backends = backends;
    }

    /// Remembers a run, to answer or repeat it later.
    pub fn observe(&mut self, input: &[u8], output: &[u8], translated: bool) {
        let keep = |ring: &mut VecDeque<Vec<u8>>, f: &[u8]| {
            if ring.len() == RECENT {
                ring.pop_front();
            }
            ring.push_back(f.to_vec());
        };
        keep(&mut self.inputs, input);
        if translated && frames::problem(output).is_none() {
            keep(&mut self.translated, output);
        }
    }

    /// The next program, kind of packet and frame, and the damage done to it.
    pub fn next(&mut self) -> (Program, &'static str, Vec<u8>, Vec<&'static str>) {
        let mut program = Program::ALL[self.rng.usize(0..Program::ALL.len())];
        let (kind, mut frame) = match self.rng.u8(0..100) {
            0..45 => ("to a frontend", self.at_frontend(program)),
            45..70 => ("reply", self.reply()),
            70..80 => ("repeated", self.replay()),
            80..87 => ("ICMP error about a flow", self.icmp_error()),
            _ => ("other", self.junk()),
        };
        let damage = frames::mutate(&mut self.rng, &mut frame);
        // BPF_PROG_TEST_RUN takes nothing shorter (nor does a link deliver it).
        if frame.len() < ETH {
            frame.resize(ETH, 0);
        }
        // Nor, for TC, an IP ethertype without a whole IP header (Linux 6.18
        // answers EINVAL): such runts go to XDP, whose parser is the same.
        let ip_header = match frame[12..14] {
            [0x08, 0x00] => 20,
            [0x86, 0xdd] => 40,
            _ => 0,
        };
        if frame.len() < ETH + ip_header {
            program = Program::Xdp;
        }
        let kind = if damage.is_empty() { kind } else { "damaged" };
        (program, kind, frame, damage)
    }

    fn client(&mut self, program: Program) -> Ipv4Addr {
        match program {
            _ if self.rng.u8(0..20) == 0 => Ipv4Addr::from(self.rng.u32(..)),
            Program::FromPod | Program::ToPod => POD_CLIENTS[self.rng.usize(0..POD_CLIENTS.len())],
            _ => EXTERNAL_CLIENTS[self.rng.usize(0..EXTERNAL_CLIENTS.len())],
        }
    }

    /// Few ports, so flows repeat and collide; sometimes any.
    fn client_port(&mut self) -> u16 {
        if self.rng.bool() {
            40_000 + self.rng.u16(0..6)
        } else {
            self.rng.u16(..)
        }
    }

    fn flow(&mut self, src: Endpoint, dst: Endpoint, proto: u8) -> Vec<u8> {
        let options = match self.rng.u8(0..10) {
            0 => {
                let len = 4 * self.rng.usize(1..=10);
                frames::ip_options(&mut self.rng, len)
            }
            _ => Vec::new(),
        };
        let len = if self.rng.u8(0..20) == 0 {
            self.rng.usize(0..1400)
        } else {
            self.rng.usize(0..48)
        };
        let payload: Vec<u8> = (0..len).map(|_| self.rng.u8(..)).collect();
        let l4 = match proto {
            TCP => {
                let flags = if self.rng.u8(0..10) == 0 {
                    self.rng.u8(..)
                } else {
                    FLAGS[self.rng.usize(0..FLAGS.len())]
                };
                frames::tcp(src, dst, flags, self.rng.u32(..), &payload)
            }
            _ => frames::udp(src, dst, &payload),
        };
        let mut f = frames::ipv4(src.0, dst.0, proto, &options, l4);
        if proto == UDP && self.rng.u8(0..10) == 0 {
            // "No checksum", which must stay so.
            let at = ETH + 20 + options.len() + 6;
            f[at..at + 2].fill(0);
        }
        f
    }

    fn at_frontend(&mut self, program: Program) -> Vec<u8> {
        let Some(i) = self.index(self.frontends.len()) else {
            return self.junk();
        };
        let (addr, port, mut proto) = self.frontends[i];
        if self.rng.u8(0..10) == 0 {
            proto = if proto == TCP { UDP } else { TCP };
        }
        let src = (self.client(program), self.client_port());
        self.flow(src, (addr, port), proto)
    }

    /// The other direction of a translated packet: a backend answering a
    /// client, a node address or the hairpin address.
    fn reply(&mut self) -> Vec<u8> {
        let Some(i) = self.index(self.translated.len()) else {
            return self.junk();
        };
        let sent = self.translated[i].clone();
        let (src, dst, proto) = endpoints(&sent);
        self.flow(dst, src, proto)
    }

    fn replay(&mut self) -> Vec<u8> {
        match self.index(self.inputs.len()) {
            Some(i) => self.inputs[i].clone(),
            None => self.junk(),
        }
    }

    /// An ICMP error about a translated packet or a reply to it, from its
    /// destination or a router on the way.
    fn icmp_error(&mut self) -> Vec<u8> {
        let Some(i) = self.index(self.translated.len()) else {
            return self.junk();
        };
        let sent = self.translated[i].clone();
        let (src, dst, proto) = endpoints(&sent);
        let about = if self.rng.bool() {
            sent
        } else {
            self.flow(dst, src, proto)
        };
        let quote_len = if self.rng.bool() {
            28
        } else {
            about.len() - ETH
        };
        let quoted = &about[ETH..ETH + quote_len.min(about.len() - ETH)];
        let (kind, code) = [(3, 4), (3, 3), (3, 1), (11, 0), (12, 0)][self.rng.usize(0..5)];
        let from = if self.rng.bool() {
            dst.0
        } else {
            Ipv4Addr::new(172, 30, 0, 254)
        };
        frames::ipv4(from, src.0, ICMP, &[], frames::icmp(kind, code, quoted))
    }

    fn junk(&mut self) -> Vec<u8> {
        let addrs = [
            NODE,
            Ipv4Addr::from(HAIRPIN_IPV4),
            Ipv4Addr::from(self.rng.u32(..)),
        ];
        let src = addrs[self.rng.usize(0..3)];
        let dst = self
            .index(self.backends.len())
            .map_or(NODE, |i| self.backends[i].0);
        match self.rng.u8(0..6) {
            0 => frames::ipv4(src, dst, ICMP, &[], frames::icmp(8, 0, b"ping")),
            1 => frames::ipv4(
                src,
                dst,
                [47, 132, 50, 0][self.rng.usize(0..4)],
                &[],
                vec![0; 24],
            ),
            2 => {
                // IPv6, ARP, VLAN-tagged IPv4: not for the programs.
                let mut f = self.flow((src, 1), (dst, 2), TCP);
                f[12..14].copy_from_slice(
                    &[[0x86, 0xdd], [0x08, 0x06], [0x81, 0x00]][self.rng.usize(0..3)],
                );
                f
            }
            3 => (0..self.rng.usize(0..120))
                .map(|_| self.rng.u8(..))
                .collect(),
            _ => {
                let proto = if self.rng.bool() { TCP } else { UDP };
                let (sp, dp) = (self.rng.u16(..), self.rng.u16(..));
                self.flow((src, sp), (dst, dp), proto)
            }
        }
    }

    fn index(&mut self, len: usize) -> Option<usize> {
        (len > 0).then(|| self.rng.usize(0..len))
    }
}

/// Source, destination and protocol of a well-formed TCP or UDP frame.
fn endpoints(f: &[u8]) -> (Endpoint, Endpoint, u8) {
    let ip = &f[ETH..];
    let l4 = &ip[usize::from(ip[0] & 0x0f) * 4..];
    let addr = |at: usize| Ipv4Addr::new(ip[at], ip[at + 1], ip[at + 2], ip[at + 3]);
    let port = |at: usize| u16::from_be_bytes([l4[at], l4[at + 1]]);
    ((addr(12), port(0)), (addr(16), port(2)), ip[9])
}
