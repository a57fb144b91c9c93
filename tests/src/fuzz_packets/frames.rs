//! Frames for the packet fuzzer: well-formed Ethernet/IPv4 frames built by
//! hand (so any field can be set, options and fragments included), the
//! mutations applied to them, and a from-scratch well-formedness check.
use std::net::Ipv4Addr;

use fastrand::Rng;

pub const ETH: usize = 14;
pub use proxy_common::{IPPROTO_TCP as TCP, IPPROTO_UDP as UDP};
pub const ICMP: u8 = 1;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;
const MACS: [u8; 12] = [2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];

pub type Endpoint = (Ipv4Addr, u16);

/// One's-complement sum of big-endian words (an odd last byte is padded).
pub fn sum(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn pseudo(src: &[u8], dst: &[u8], proto: u8, len: usize) -> u32 {
    sum(src) + sum(dst) + u32::from(proto) + len as u32
}

/// An IPv4 frame around `l4` (whose checksum, for TCP and UDP, is filled in).
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, options: &[u8], mut l4: Vec<u8>) -> Vec<u8> {
    let ihl = 20 + options.len();
    let csum_at = match proto {
        TCP if l4.len() >= 20 => Some(16),
        UDP if l4.len() >= 8 => Some(6),
        ICMP if l4.len() >= 4 => Some(2),
        _ => None,
    };
    if let Some(at) = csum_at {
        l4[at..at + 2].fill(0);
        let mut s = sum(&l4);
        if proto != ICMP {
            s += pseudo(&src.octets(), &dst.octets(), proto, l4.len());
        }
        let mut c = !fold(s);
        if proto == UDP && c == 0 {
            c = 0xffff;
        }
        l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    let mut f = MACS.to_vec();
    f.extend_from_slice(&[0x08, 0x00, 0x40 | (ihl / 4) as u8, 0]);
    f.extend_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(options);
    f.extend_from_slice(&l4);
    fix_ip_checksum(&mut f);
    f
}

pub fn tcp(src: Endpoint, dst: Endpoint, flags: u8, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut l4 = Vec::with_capacity(20 + payload.len());
    l4.extend_from_slice(&src.1.to_be_bytes());
    l4.extend_from_slice(&dst.1.to_be_bytes());
    l4.extend_from_slice(&seq.to_be_bytes());
    l4.extend_from_slice(&seq.wrapping_mul(7).to_be_bytes());
    l4.extend_from_slice(&[0x50, flags, 0xfa, 0xf0, 0, 0, 0, 0]);
    l4.extend_from_slice(payload);
    l4
}

pub fn udp(src: Endpoint, dst: Endpoint, payload: &[u8]) -> Vec<u8> {
    let mut l4 = Vec::with_capacity(8 + payload.len());
    l4.extend_from_slice(&src.1.to_be_bytes());
    l4.extend_from_slice(&dst.1.to_be_bytes());
    l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    l4.extend_from_slice(&[0, 0]);
    l4.extend_from_slice(payload);
    l4
}

/// An ICMP message of `kind`/`code` quoting the start of `quoted` (an IPv4
/// packet without its Ethernet header), as routers and hosts do.
pub fn icmp(kind: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let mut l4 = vec![kind, code, 0, 0, 0, 0, 0, 0];
    l4.extend_from_slice(quoted);
    l4
}

pub fn fix_ip_checksum(f: &mut [u8]) {
    let ihl = usize::from(f[ETH] & 0x0f) * 4;
    let end = (ETH + ihl.max(20)).min(f.len());
    f[ETH + 10..ETH + 12].fill(0);
    let c = !fold(sum(&f[ETH..end]));
    f[ETH + 10..ETH + 12].copy_from_slice(&c.to_be_bytes());
}

/// IP options of `len` bytes (a multiple of 4): NOPs, a record-route, an
/// end-of-list, or noise.
pub fn ip_options(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut o = match rng.u8(0..4) {
        0 => vec![1; len],
        1 if len >= 8 => {
            let mut o = vec![7, (len - 1) as u8, 4];
            o.resize(len, 0);
            o
        }
        2 => vec![0; len],
        _ => (0..len).map(|_| rng.u8(..)).collect(),
    };
    o.truncate(len);
    o
}

type Mutation = (u8, &'static str, fn(&mut Rng, &mut Vec<u8>, usize));

/// (percent of frames, name, what it does given the L4 offset).
const MUTATIONS: &[Mutation] = &[
    (6, "fragment", |r, f, _| {
        let frag: u16 = match r.u8(0..3) {
            0 => 0x2000,
            1 => r.u16(1..0x2000),
            _ => 0x2000 | r.u16(1..0x2000),
        };
        set(f, ETH + 6, &frag.to_be_bytes(), true);
    }),
    (5, "total-length", |r, f, _| {
        let len = f.len().saturating_sub(ETH) as u16;
        let bad = if r.bool() {
            r.u16(..)
        } else {
            len.wrapping_add(r.u16(0..8)).wrapping_sub(4)
        };
        set(f, ETH + 2, &bad.to_be_bytes(), r.bool());
    }),
    (3, "ihl", |r, f, _| {
        let b = f.get(ETH).map_or(0x45, |b| (b & 0xf0) | r.u8(0..16));
        set(f, ETH, &[b], true);
    }),
    (2, "version", |r, f, _| {
        let b = f.get(ETH).map_or(0x45, |b| (b & 0x0f) | (r.u8(0..16) << 4));
        set(f, ETH, &[b], true);
    }),
    (3, "ttl", |r, f, _| set(f, ETH + 8, &[r.u8(0..2)], true)),
    (3, "tcp-data-offset", |r, f, l4| {
        set(f, l4 + 12, &[r.u8(..)], false)
    }),
    (3, "udp-length", |r, f, l4| {
        set(f, l4 + 4, &r.u16(..).to_be_bytes(), false)
    }),
    (4, "l4-checksum", |r, f, l4| {
        let at = l4 + r.usize(0..20);
        flip(r, f, at);
    }),
    (3, "ip-checksum", |r, f, _| flip(r, f, ETH + 10)),
    (5, "bytes", |r, f, _| {
        for _ in 0..r.usize(1..5) {
            let at = r.usize(0..f.len().max(1));
            flip(r, f, at);
        }
    }),
    (5, "padding", |r, f, _| {
        f.extend((0..r.usize(1..32)).map(|_| r.u8(..)))
    }),
    (6, "truncated", |r, f, _| {
        f.truncate(r.usize(0..f.len().max(1)))
    }),
];

/// Damages `f` the ways broken stacks and attackers do; several may apply.
/// Returns the names of the mutations applied, for the report.
pub fn mutate(rng: &mut Rng, f: &mut Vec<u8>) -> Vec<&'static str> {
    let l4 = ETH + usize::from(f.get(ETH).map_or(5, |b| b & 0x0f)) * 4;
    let mut done = Vec::new();
    for (percent, name, mutation) in MUTATIONS {
        if rng.u8(0..100) < *percent {
            mutation(rng, f, l4);
            done.push(*name);
        }
    }
    done
}

/// Writes `bytes` at `at` if the frame is long enough, then (with
/// `fix_ip`) makes the IP header checksum right again.
fn set(f: &mut [u8], at: usize, bytes: &[u8], fix_ip: bool) {
    if let Some(dst) = f.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
        if fix_ip && f.len() >= ETH + 20 {
            fix_ip_checksum(f);
        }
    }
}

fn flip(r: &mut Rng, f: &mut [u8], at: usize) {
    if let Some(b) = f.get_mut(at) {
        *b ^= r.u8(1..=255);
    }
}

/// Why `f` is not a well-formed Ethernet/IPv4 frame with right checksums
/// (TCP, UDP, ICMP checked end to end; a fragment's L4 is not looked at).
pub fn problem(f: &[u8]) -> Option<&'static str> {
    if f.len() < ETH + 20 || f[12..14] != [0x08, 0x00] {
        return Some("not IPv4");
    }
    let ip = &f[ETH..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ip[0] >> 4 != 4 || ihl < 20 || total < ihl || total > ip.len() {
        return Some("bad IPv4 lengths");
    }
    if fold(sum(&ip[..ihl])) != 0xffff {
        return Some("IP header checksum");
    }
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        return None;
    }
    let (l4, proto) = (&ip[ihl..total], ip[9]);
    let with_pseudo = |len: usize| sum(&l4[..len]) + pseudo(&ip[12..16], &ip[16..20], proto, len);
    match proto {
        TCP if l4.len() < 20
            || usize::from(l4[12] >> 4) * 4 < 20
            || usize::from(l4[12] >> 4) * 4 > l4.len() =>
        {
            Some("bad TCP lengths")
        }
        TCP if fold(with_pseudo(l4.len())) != 0xffff => Some("TCP checksum"),
        UDP if l4.len() < 8 || usize::from(u16::from_be_bytes([l4[4], l4[5]])) != l4.len() => {
            Some("bad UDP length")
        }
        UDP if l4[6..8] != [0, 0] && fold(with_pseudo(l4.len())) != 0xffff => Some("UDP checksum"),
        ICMP if l4.len() < 8 || fold(sum(l4)) != 0xffff => Some("ICMP"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Endpoint = (Ipv4Addr::new(10, 0, 0, 1), 40_000);
    const B: Endpoint = (Ipv4Addr::new(10, 0, 0, 2), 80);

    #[test]
    fn built_frames_are_well_formed_and_damage_shows() {
        let options = [1, 1, 1, 1];
        let tcp_frame = ipv4(A.0, B.0, TCP, &options, tcp(A, B, TCP_SYN, 7, b"hello"));
        let udp_frame = ipv4(A.0, B.0, UDP, &[], udp(A, B, b"q"));
        let icmp_frame = ipv4(B.0, A.0, ICMP, &[], icmp(3, 3, &udp_frame[ETH..]));
        for f in [&tcp_frame, &udp_frame, &icmp_frame] {
            assert_eq!(problem(f), None, "{f:02x?}");
        }
        let mut bad = tcp_frame.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(problem(&bad), Some("TCP checksum"));
        let mut no_checksum = udp_frame.clone();
        no_checksum[ETH + 20 + 6..ETH + 20 + 8].fill(0);
        assert_eq!(problem(&no_checksum), None, "UDP checksum 0 means none");
        assert_eq!(
            problem(&udp_frame[..udp_frame.len() - 1]),
            Some("bad IPv4 lengths")
        );
        let mut header = udp_frame.clone();
        header[ETH + 8] -= 1;
        assert_eq!(problem(&header), Some("IP header checksum"));
        let mut fragment = bad;
        set(&mut fragment, ETH + 6, &[0x20, 0], true);
        assert_eq!(problem(&fragment), None, "a fragment's L4 is not judged");
    }
}
