//! `vipr conntrack list`: the flows the datapath tracks, one row per flow
//! (its forward entry, with what its reply entry says), with the NAT it
//! does and how long the flow has been idle.
use std::collections::HashMap;
use std::net::SocketAddr;

use proxy_common::{CT_FLAG_DSR, CT_FORWARD};
use serde::Serialize;

use super::services::protocol_name;
use crate::conntrack::{FlowState, Tracked};
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
    /// Forwarded by direct server return: the ingress node's entry (the
    /// endpoint answers the client directly) or the entry the endpoint's
    /// node learnt from the DSR option.
    pub dsr: bool,
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

/// The Service a frontend belongs to, from the name index.
fn service_of(names: Option<&NameIndex>, at: SocketAddr, protocol: &str) -> String {
    names
        .into_iter()
        .flat_map(|n| &n.frontends)
        .find(|f| f.ip == at.ip() && f.port == at.port() && f.protocol == protocol)
        .map(|f| f.service.clone())
        .unwrap_or_default()
}

impl FlowFilter {
    fn admits(&self, row: &FlowRow, backend: SocketAddr) -> bool {
        let service = self.service.as_ref().is_none_or(|s| &row.service == s);
        // An address alone matches every port; `[v6]:port` and `v4:port` a port.
        let endpoint = self.backend.as_deref().is_none_or(|wanted| {
            wanted.parse::<SocketAddr>().ok() == Some(backend)
                || wanted.parse::<std::net::IpAddr>().ok() == Some(backend.ip())
        });
        service && endpoint
    }
}

/// One row per flow in `entries` (either family) that passes `filter`.
pub fn rows<K: Tracked>(
    entries: &HashMap<K, K::Value>,
    names: Option<&NameIndex>,
    now: u32,
    filter: &FlowFilter,
) -> Vec<FlowRow> {
    entries
        .iter()
        .filter(|(key, _)| key.direction() == CT_FORWARD)
        .filter_map(|(key, value)| {
            let reverse = entries.get(&key.partner(value));
            let protocol = protocol_name(key.proto());
            let last_seen = reverse.map_or(K::last_seen(value), |r| {
                K::last_seen(r).max(K::last_seen(value))
            });
            let ends = key.ends(value);
            let row = FlowRow {
                service: service_of(names, ends.frontend, &protocol),
                client: ends.client.to_string(),
                frontend: ends.frontend.to_string(),
                backend: ends.backend.to_string(),
                snat: ends.snat.map(|s| s.to_string()),
                state: FlowState::of(key, value, reverse).name().into(),
                dsr: K::flags(value) & CT_FLAG_DSR != 0,
                idle_seconds: now.saturating_sub(last_seen),
                protocol,
            };
            filter.admits(&row, ends.backend).then_some(row)
        })
        .collect()
}

/// Rows most recently active first, then by frontend and client.
pub fn sort(rows: &mut [FlowRow]) {
    rows.sort_by(|a, b| {
        (a.idle_seconds, &a.frontend, &a.client).cmp(&(b.idle_seconds, &b.frontend, &b.client))
    });
}

pub const HEADER: [&str; 7] = [
    "proto",
    "client",
    "frontend",
    "service",
    "backend",
    "snat / dsr",
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
        match (&row.snat, row.dsr) {
            (Some(snat), _) => snat.clone(),
            (None, true) => "dsr".into(),
            (None, false) => "-".into(),
        },
        format!("{} / {}s", row.state, row.idle_seconds),
    ]
}
