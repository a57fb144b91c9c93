//! Stable text form of map contents, for golden tests and the CLI.

use std::fmt::Write;

use proxy_common::{IPPROTO_TCP, IPPROTO_UDP};

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
    let mut services: Vec<_> = maps.services.iter().collect();
    // The map's own order is by wire-order u32, which is not numeric on little-endian.
    services.sort_by_key(|(k, _)| (k.ip(), k.port(), k.proto));
    for (key, value) in services {
        let _ = write!(
            out,
            "svc {}:{}/{} id={} count={}",
            key.ip(),
            key.port(),
            proto_name(key.proto),
            value.service_id,
            value.backend_count
        );
        if value.flags != 0 {
            let _ = write!(out, " flags={:#x}", value.flags);
        }
        out.push('\n');
    }
    for (key, id) in &maps.slots {
        let _ = writeln!(out, "slot {}/{} -> {id}", key.service_id, key.slot);
    }
    for (id, value) in &maps.backends {
        let _ = writeln!(
            out,
            "backend {id} {}:{}/{}",
            value.ip(),
            value.port(),
            proto_name(value.proto)
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
