//! Addresses as objects may hold them. Before 1.30 the API server accepted
//! IPv4 with leading zeros ("10.180.00.001"), and kube-proxy reads them as
//! decimal (netutils.ParseIPSloppy): so does vipr. Rust's parser refuses
//! them, and no crate offers Go's legacy rule, hence these few lines.
//! Also: which addresses may never be a Service's frontend or endpoint.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address family. kube-proxy runs one proxier per family; a Service's
/// frontends of a family use only the endpoints of that family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }

    /// Bits in an address.
    pub fn bits(self) -> u8 {
        match self {
            Family::Ipv4 => 32,
            Family::Ipv6 => 128,
        }
    }

    /// The spelling of `ipFamilies` and EndpointSlice `addressType`.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        }
    }
}

/// An IPv4 or IPv6 address; IPv4 octets may have leading zeros.
pub(super) fn parse_ip(raw: &str) -> Option<IpAddr> {
    raw.parse().ok().or_else(|| parse_ipv4(raw).map(IpAddr::V4))
}

/// An IPv4 address; octets may have leading zeros.
pub(super) fn parse_ipv4(raw: &str) -> Option<Ipv4Addr> {
    if let Ok(ip) = raw.parse() {
        return Some(ip);
    }
    let mut octets = [0u8; 4];
    let mut parts = raw.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    parts.next().is_none().then_some(Ipv4Addr::from(octets))
}

/// The netmask of a `/len` IPv4 prefix (0 for `/0`).
pub fn prefix_mask(len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(len.min(32)))
        .unwrap_or(0)
}

/// The netmask of a `/len` IPv6 prefix (0 for `/0`).
fn prefix_mask6(len: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(len.min(128)))
        .unwrap_or(0)
}

/// A CIDR of either family, its address masked to the prefix; `None` if invalid.
pub fn parse_cidr(raw: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = raw.split_once('/')?;
    let len: u8 = len.parse().ok()?;
    let ip = parse_ip(addr)?;
    (len <= Family::of(ip).bits()).then(|| (masked(ip, len), len))
}

/// `ip` with the bits past a `/len` prefix cleared.
pub fn masked(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4) & prefix_mask(len))),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & prefix_mask6(len))),
    }
}

/// Whether `ip` lies in the prefix `net/len` (never across families).
pub fn cidr_contains((net, len): (IpAddr, u8), ip: IpAddr) -> bool {
    Family::of(net) == Family::of(ip) && masked(ip, len) == masked(net, len)
}

/// Addresses that belong to the node itself or to no single host. As a
/// frontend one would capture what the node sends there (its loopback
/// services, `connect(0.0.0.0)`, broadcast or multicast datagrams); as an
/// endpoint it would hand clients the node's host-only services or the
/// cloud metadata server (169.254.169.254), and 169.254.7.1 is vipr's own
/// hairpin source. The API server refuses the first three classes, and
/// 224.0.0.0/24 of multicast, in externalIPs and endpoint addresses
/// (ValidateNonSpecialIP); vipr refuses them wherever an address is
/// programmed, since manifests never meet the API server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SpecialIp {
    Unspecified,
    Loopback,
    LinkLocal,
    Multicast,
    Broadcast,
}

impl SpecialIp {
    /// The class of `ip`, if it has one.
    pub fn of(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V4(v4) => Self::of_v4(v4),
            IpAddr::V6(v6) => Self::of_v6(v6),
        }
    }

    fn of_v6(ip: Ipv6Addr) -> Option<Self> {
        // A v4-mapped address is the IPv4 one it carries.
        if let Some(v4) = ip.to_ipv4_mapped() {
            return Self::of_v4(v4);
        }
        if ip.is_unspecified() {
            Some(Self::Unspecified)
        } else if ip.is_loopback() {
            Some(Self::Loopback)
        } else if ip.is_unicast_link_local() {
            Some(Self::LinkLocal)
        } else if ip.is_multicast() {
            Some(Self::Multicast)
        } else {
            None
        }
    }

    fn of_v4(ip: Ipv4Addr) -> Option<Self> {
        if ip.is_unspecified() {
            Some(Self::Unspecified)
        } else if ip.is_loopback() {
            Some(Self::Loopback)
        } else if ip.is_link_local() {
            Some(Self::LinkLocal)
        } else if ip.is_multicast() {
            Some(Self::Multicast)
        } else if ip.is_broadcast() {
            Some(Self::Broadcast)
        } else {
            None
        }
    }

    /// A short stable name, for counters.
    pub fn label(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified-address",
            Self::Loopback => "loopback-address",
            Self::LinkLocal => "link-local-address",
            Self::Multicast => "multicast-address",
            Self::Broadcast => "broadcast-address",
        }
    }
}

impl SpecialIp {
    /// What `ip`, of this class, is (with the range of its family).
    pub fn describe(self, ip: IpAddr) -> &'static str {
        let v4 = Family::of(ip) == Family::Ipv4;
        match self {
            Self::Unspecified => "unspecified",
            Self::Loopback if v4 => "in the loopback range (127.0.0.0/8)",
            Self::Loopback => "the loopback address",
            Self::LinkLocal if v4 => "in the link-local range (169.254.0.0/16)",
            Self::LinkLocal => "in the link-local range (fe80::/10)",
            Self::Multicast if v4 => "multicast (224.0.0.0/4)",
            Self::Multicast => "multicast (ff00::/8)",
            Self::Broadcast => "the broadcast address",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_zeros_are_decimal_and_nothing_else_is_loosened() {
        let v4 = |a, b, c, d| Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d)));
        assert_eq!(parse_ip("172.30.0.041"), v4(172, 30, 0, 41));
        assert_eq!(parse_ip("192.168.099.022"), v4(192, 168, 99, 22));
        assert_eq!(parse_ip("10.180.00.001"), v4(10, 180, 0, 1));
        assert_eq!(parse_ip("010.0.0.8"), v4(10, 0, 0, 8), "decimal, not octal");
        assert!(parse_ip("fd00::1").is_some_and(|ip| ip.is_ipv6()));
        for bad in [
            "1.2.3",
            "1.2.3.4.5",
            "1.2.3.256",
            "1.2.3.0004",
            "1.2.3.x",
            "1..2.3",
            "",
        ] {
            assert_eq!(parse_ip(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn prefixes_contain_their_addresses_only() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("test IP");
        let net = (ip("10.1.0.0"), 16);
        assert!(cidr_contains(net, ip("10.1.255.7")));
        assert!(!cidr_contains(net, ip("10.2.0.1")));
        assert!(cidr_contains((ip("0.0.0.0"), 0), ip("8.8.8.8")));
        assert!(!cidr_contains((ip("1.2.3.4"), 32), ip("1.2.3.5")));
        let net6 = (ip("2001:db8::"), 32);
        assert!(cidr_contains(net6, ip("2001:db8:ffff::1")));
        assert!(!cidr_contains(net6, ip("2001:db9::1")));
        // /0 of one family does not contain the other family.
        assert!(!cidr_contains((ip("::"), 0), ip("8.8.8.8")));
        assert!(!cidr_contains((ip("0.0.0.0"), 0), ip("fd00::1")));
        assert_eq!(masked(ip("fd00::1:2"), 112), ip("fd00::1:0"));
        assert_eq!(prefix_mask(0), 0);
        assert_eq!(prefix_mask(24), 0xffff_ff00);
    }

    #[test]
    fn special_classes_and_their_edges() {
        let class = |s: &str| SpecialIp::of(s.parse::<IpAddr>().expect("test IP"));
        for (addr, want) in [
            ("0.0.0.0", Some(SpecialIp::Unspecified)),
            ("127.0.0.1", Some(SpecialIp::Loopback)),
            ("127.255.255.254", Some(SpecialIp::Loopback)),
            ("169.254.169.254", Some(SpecialIp::LinkLocal)),
            ("169.254.0.0", Some(SpecialIp::LinkLocal)),
            ("224.0.0.251", Some(SpecialIp::Multicast)),
            ("239.255.255.250", Some(SpecialIp::Multicast)),
            ("255.255.255.255", Some(SpecialIp::Broadcast)),
            // Neighbours of those ranges are ordinary addresses.
            ("0.0.0.1", None),
            ("126.255.255.255", None),
            ("128.0.0.0", None),
            ("169.253.255.255", None),
            ("169.255.0.0", None),
            ("223.255.255.255", None),
            ("240.0.0.1", None),
            ("255.255.255.254", None),
            ("10.0.0.0", None),
            ("::", Some(SpecialIp::Unspecified)),
            ("::1", Some(SpecialIp::Loopback)),
            ("fe80::1", Some(SpecialIp::LinkLocal)),
            ("ff02::1", Some(SpecialIp::Multicast)),
            ("::ffff:127.0.0.1", Some(SpecialIp::Loopback)),
            ("fd00::1", None),
            ("2001:db8::1", None),
        ] {
            assert_eq!(class(addr), want, "{addr}");
        }
        // Endpoints can never be the address vipr masquerades hairpin flows behind.
        assert_eq!(
            SpecialIp::of(IpAddr::from(proxy_common::HAIRPIN_IPV4)),
            Some(SpecialIp::LinkLocal)
        );
    }
}
