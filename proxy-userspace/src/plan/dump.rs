//! Stable text form of map contents, for golden tests and the CLI.

use std::fmt::Write;
use std::net::SocketAddr;

use proxy_common::{
    BACKEND_FLAG_LOCAL, BACKEND_FLAG_NOT_SERVING, IPPROTO_TCP, IPPROTO_UDP, SCOPE_EXTERNAL,
    SVC_FLAG_AFFINITY, SVC_FLAG_DRAINING, SVC_FLAG_HAS_ENDPOINTS, SVC_FLAG_LOCAL_ONLY,
    SVC_FLAG_MASQUERADE, SVC_FLAG_SOURCE_RANGES, ServiceValue,
};

/// Service flags as the dump names them.
const FLAG_NAMES: [(u16, &str); 7] = [
    (SVC_FLAG_LOCAL_ONLY, "local-only"),
    (SVC_FLAG_HAS_ENDPOINTS, "has-endpoints"),
    (SVC_FLAG_MASQUERADE, "masquerade"),
    (SVC_FLAG_SOURCE_RANGES, "source-ranges"),
    (SVC_FLAG_AFFINITY, "affinity"),
    (SVC_FLAG_DRAINING, "draining"),
    (proxy_common::SVC_FLAG_MAGLEV, "maglev"),
];

use super::maps::MapContents;

/// One line per entry: services sorted by ip:port/proto (host order), then
/// slots by (id, slot), then backends by id. For example:
/// ```text
/// svc 10.96.0.10:80/tcp id=1 count=2
/// slot 1/0 -> 3
/// backend 3 10.244.1.11:8080/tcp
/// ```
pub fn dump_text(maps: &MapContents) -> String {
    let mut out = String::new();
    // The maps' own order is by wire-order words, which is not numeric on
    // little-endian; IPv4 frontends first, then IPv6, each by address.
    let mut services: Vec<(SocketAddr, u8, u8, &ServiceValue)> = maps
        .services
        .iter()
        .map(|(k, v)| (SocketAddr::from((k.ip(), k.port())), k.proto, k.scope, v))
        .chain(
            maps.services6
                .iter()
                .map(|(k, v)| (SocketAddr::from((k.ip(), k.port())), k.proto, k.scope, v)),
        )
        .collect();
    services.sort_by_key(|&(at, proto, scope, _)| (at.is_ipv6(), at, proto, scope));
    for (at, proto, scope, value) in services {
        let _ = write!(
            out,
            "svc {at}/{}{} id={} count={}",
            proto_name(proto),
            if scope == SCOPE_EXTERNAL { " ext" } else { "" },
            value.service_id,
            value.backend_count
        );
        for (bit, name) in FLAG_NAMES {
            if value.flags & bit != 0 {
                let _ = write!(out, " {name}");
            }
        }
        out.push('\n');
    }
    for (key, id) in &maps.slots {
        let _ = writeln!(out, "slot {}/{} -> {id}", key.service_id, key.slot);
    }
    let backends = maps
        .backends
        .iter()
        .map(|(id, v)| (*id, SocketAddr::from((v.ip(), v.port())), v.proto, v.flags))
        .chain(
            maps.backends6
                .iter()
                .map(|(id, v)| (*id, SocketAddr::from((v.ip(), v.port())), v.proto, v.flags)),
        );
    for (id, at, proto, flags) in backends {
        let _ = writeln!(
            out,
            "backend {id} {at}/{}{}{}",
            proto_name(proto),
            if flags & BACKEND_FLAG_LOCAL != 0 {
                " local"
            } else {
                ""
            },
            if flags & BACKEND_FLAG_NOT_SERVING != 0 {
                " not-serving"
            } else {
                ""
            }
        );
    }
    for (id, ip, len) in &maps.source_ranges {
        let _ = writeln!(out, "source-range {id} {ip}/{len}");
    }
    for (id, ip, len) in &maps.source_ranges6 {
        let _ = writeln!(out, "source-range {id} {ip}/{len}");
    }
    for (member, timeout) in &maps.affinity {
        let _ = writeln!(
            out,
            "affinity {}/{} timeout={timeout}s",
            member.service_id, member.backend_id
        );
    }
    for (id, r) in &maps.maglev {
        let _ = writeln!(
            out,
            "maglev {id} -> table {}+{} digest={:016x}",
            r.first, r.size, r.digest
        );
    }
    out
}

fn proto_name(proto: u8) -> String {
    match proto {
        IPPROTO_TCP => "tcp".into(),
        IPPROTO_UDP => "udp".into(),
        other => format!("proto{other}"),
    }
}
