//! Addresses as objects may hold them. Before 1.30 the API server accepted
//! IPv4 with leading zeros ("10.180.00.001"), and kube-proxy reads them as
//! decimal (netutils.ParseIPSloppy): so does vipr. Rust's parser refuses
//! them, and no crate offers Go's legacy rule, hence these few lines.
use std::net::{IpAddr, Ipv4Addr};

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

/// Whether `ip` lies in the prefix `net/len`.
pub fn cidr_contains((net, len): (Ipv4Addr, u8), ip: Ipv4Addr) -> bool {
    let mask = prefix_mask(len);
    u32::from(ip) & mask == u32::from(net) & mask
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
        let net = (Ipv4Addr::new(10, 1, 0, 0), 16);
        assert!(cidr_contains(net, Ipv4Addr::new(10, 1, 255, 7)));
        assert!(!cidr_contains(net, Ipv4Addr::new(10, 2, 0, 1)));
        assert!(cidr_contains(
            (Ipv4Addr::UNSPECIFIED, 0),
            Ipv4Addr::new(8, 8, 8, 8)
        ));
        assert!(!cidr_contains(
            (Ipv4Addr::new(1, 2, 3, 4), 32),
            Ipv4Addr::new(1, 2, 3, 5)
        ));
        assert_eq!(prefix_mask(0), 0);
        assert_eq!(prefix_mask(24), 0xffff_ff00);
    }
}
