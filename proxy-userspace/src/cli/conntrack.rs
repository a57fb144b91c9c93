//! `vipr conntrack list`: the flows the datapath tracks, one row per flow
//! (its forward entry, with what its reply entry says), with the NAT it
//! does and how long the flow has been idle.
use std::collections::HashMap;
use std::net::Ipv4Addr;

use proxy_common::{
    CT_FLAG_FIN, CT_FLAG_REPLIED, CT_FLAG_RST, CT_FLAG_SNAT, CT_FORWARD, CtKey, CtValue,
    IPPROTO_TCP, host_addr,
};
use serde::Serialize;

use super::services::protocol_name;
use crate::names::NameIndex;

#[derive(Clone, Debug, Serialize)]
pub struct FlowRow {
    pub protocol: String,
    pub client: String,
    pub frontend: String,
    /// namespace/name of the frontend's Service, "" when unknown.
    pub service: String,
    pub backend: String,
    /// The node address:port the client was masqueraded to, if it was.
    pub snat: Option<String>,
    /// TCP: opening, established, closing or closed; UDP: unreplied or replied.
    pub state: String,
    /// Seconds since a packet last used the flow (either direction).
    pub idle_seconds: u32,
}

/// Which flows to list.
#[derive(Clone, Debug, Default)]
pub struct FlowFilter {
    /// namespace/name of a Service.
    pub service: Option<String>,
    /// An endpoint's address, with or without `:port`.
    pub backend: Option<String>,
}

fn endpoint(addr: u32, port: u16) -> String {
    format!("{}:{}", host_addr(addr), u16::from_be(port))
}

fn state(key: &CtKey, forward: &CtValue, reverse: Option<&CtValue>) -> &'static str {
    let reverse_flags = reverse.map_or(0, |r| r.flags);
    let replied = reverse_flags & CT_FLAG_REPLIED != 0;
    if key.proto != IPPROTO_TCP {
        return if replied { "replied" } else { "unreplied" };
    }
    let both = forward.flags | reverse_flags;
    let fins = [forward.flags, reverse_flags]
        .iter()
        .filter(|f| *f & CT_FLAG_FIN != 0)
        .count();
    match () {
        _ if both & CT_FLAG_RST != 0 || fins == 2 => "closed",
        _ if fins == 1 => "closing",
        _ if replied => "established",
        _ => "opening",
    }
}

/// The Service a frontend belongs to, from the name index.
fn service_of(names: Option<&NameIndex>, ip: Ipv4Addr, port: u16, protocol: &str) -> String {
    names
        .into_iter()
        .flat_map(|n| &n.frontends)
        .find(|f| f.ip == ip && f.port == port && f.protocol == protocol)
        .map(|f| f.service.clone())
        .unwrap_or_default()
}

/// One row per flow in `entries` that passes `filter`, oldest activity last.
pub fn rows(
    entries: &HashMap<CtKey, CtValue>,
    names: Option<&NameIndex>,
    now: u32,
    filter: &FlowFilter,
) -> Vec<FlowRow> {
    let mut rows: Vec<FlowRow> = entries
        .iter()
        .filter(|(key, _)| key.direction == CT_FORWARD)
        .map(|(key, value)| {
            let reverse = entries.get(&key.partner(value));
            let protocol = protocol_name(key.proto);
            let last_seen = reverse.map_or(value.last_seen, |r| r.last_seen.max(value.last_seen));
            let frontend_port = u16::from_be(key.dst_port);
            FlowRow {
                service: service_of(names, host_addr(key.dst_addr), frontend_port, &protocol),
                client: endpoint(key.src_addr, key.src_port),
                frontend: endpoint(key.dst_addr, key.dst_port),
                backend: endpoint(value.nat_addr, value.nat_port),
                snat: (value.flags & CT_FLAG_SNAT != 0)
                    .then(|| endpoint(value.snat_addr, value.snat_port)),
                state: state(key, value, reverse).into(),
                idle_seconds: now.saturating_sub(last_seen),
                protocol,
            }
        })
        .filter(|row| {
            filter.service.as_ref().is_none_or(|s| &row.service == s)
                && filter.backend.as_ref().is_none_or(|b| {
                    row.backend == *b || row.backend.split(':').next() == Some(b.as_str())
                })
        })
        .collect();
    rows.sort_by(|a, b| {
        (a.idle_seconds, &a.frontend, &a.client).cmp(&(b.idle_seconds, &b.frontend, &b.client))
    });
    rows
}

pub const HEADER: [&str; 7] = [
    "proto",
    "client",
    "frontend",
    "service",
    "backend",
    "snat",
    "state / idle",
];

pub fn cells(row: &FlowRow) -> Vec<String> {
    vec![
        row.protocol.clone(),
        row.client.clone(),
        row.frontend.clone(),
        if row.service.is_empty() {
            "-".into()
        } else {
            row.service.clone()
        },
        row.backend.clone(),
        row.snat.clone().unwrap_or_else(|| "-".into()),
        format!("{} / {}s", row.state, row.idle_seconds),
    ]
}
