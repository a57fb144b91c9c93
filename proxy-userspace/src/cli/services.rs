//! `vipr service list`: every frontend in the pinned maps, with its
//! Service, type, policies and endpoints (`cilium service list`'s view).
use std::collections::BTreeSet;
use std::net::IpAddr;

use proxy_common::{
    BACKEND_FLAG_LOCAL, BACKEND_FLAG_NOT_SERVING, IPPROTO_TCP, IPPROTO_UDP, SCOPE_EXTERNAL,
    SVC_FLAG_DRAINING, SVC_FLAG_LOCAL_ONLY, SVC_FLAG_MASQUERADE, Service6Key, ServiceKey,
    ServiceValue,
};
use serde::Serialize;

use crate::model::Scope;
use crate::names::{FrontendNames, NameIndex, scope_name};
use crate::plan::MapContents;

#[derive(Clone, Debug, Serialize)]
pub struct ServiceRow {
    /// namespace/name, "" when the name index does not know the frontend.
    pub service: String,
    pub port_name: String,
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: String,
    pub scope: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub service_id: u32,
    /// "Local" or "Cluster", as the frontend's traffic policy.
    pub traffic_policy: String,
    pub masquerade: bool,
    /// "maglev" (the frontend's table picks) or "random" (its slots).
    pub lb_algorithm: String,
    pub source_ranges: Vec<String>,
    /// Deleted from the cluster; established flows finish.
    pub draining: bool,
    pub affinity_timeout: Option<u32>,
    pub backends: Vec<BackendRow>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BackendRow {
    pub ip: IpAddr,
    pub port: u16,
    /// In the frontend's slots: new connections may go to it.
    pub active: bool,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub local: bool,
    pub node: Option<String>,
}

pub fn protocol_name(proto: u8) -> String {
    match proto {
        IPPROTO_TCP => "tcp".into(),
        IPPROTO_UDP => "udp".into(),
        other => other.to_string(),
    }
}

/// A map key's scope byte, named as the name index names it.
fn scope_of(scope: u8) -> &'static str {
    scope_name(if scope == SCOPE_EXTERNAL {
        Scope::External
    } else {
        Scope::Internal
    })
}

/// A frontend's key, either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrontendAt {
    pub ip: IpAddr,
    pub port: u16,
    pub proto: u8,
    pub scope: u8,
}

impl From<&ServiceKey> for FrontendAt {
    fn from(key: &ServiceKey) -> Self {
        Self {
            ip: key.ip().into(),
            port: key.port(),
            proto: key.proto,
            scope: key.scope,
        }
    }
}

impl From<&Service6Key> for FrontendAt {
    fn from(key: &Service6Key) -> Self {
        Self {
            ip: key.ip().into(),
            port: key.port(),
            proto: key.proto,
            scope: key.scope,
        }
    }
}

/// One row per frontend in `maps`, either family, named from `names`
/// where it knows them.
pub fn rows(maps: &MapContents, names: Option<&NameIndex>) -> Vec<ServiceRow> {
    let v4 = maps.services.iter().map(|(k, v)| (FrontendAt::from(k), v));
    let v6 = maps.services6.iter().map(|(k, v)| (FrontendAt::from(k), v));
    v4.chain(v6)
        .map(|(at, value)| row(maps, names, at, value))
        .collect()
}

pub fn row(
    maps: &MapContents,
    names: Option<&NameIndex>,
    at: FrontendAt,
    value: &ServiceValue,
) -> ServiceRow {
    let protocol = protocol_name(at.proto);
    let scope = scope_of(at.scope);
    let named: Option<&FrontendNames> =
        names.and_then(|n| n.frontend(at.ip, at.port, &protocol, scope));
    let active: Vec<(IpAddr, u16, u8)> = maps.slot_endpoints(value).flatten().collect();
    let is_active = |ip, port| active.iter().any(|&(i, p, _)| i == ip && p == port);
    let mut backends: Vec<BackendRow> = named
        .map(|n| {
            n.backends
                .iter()
                .map(|b| BackendRow {
                    ip: b.ip,
                    port: b.port,
                    active: is_active(b.ip, b.port),
                    ready: b.ready,
                    serving: b.serving,
                    terminating: b.terminating,
                    local: b.local,
                    node: b.node.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    // Endpoints the maps send to that the index does not list (it is
    // written after the maps): their conditions as the maps hold them.
    let listed: BTreeSet<(IpAddr, u16)> = backends.iter().map(|b| (b.ip, b.port)).collect();
    for &(ip, port, flags) in &active {
        if !listed.contains(&(ip, port)) {
            backends.push(BackendRow {
                ip,
                port,
                active: true,
                ready: true,
                serving: flags & BACKEND_FLAG_NOT_SERVING == 0,
                terminating: false,
                local: flags & BACKEND_FLAG_LOCAL != 0,
                node: None,
            });
        }
    }
    let source_ranges = maps
        .source_ranges
        .iter()
        .filter(|r| r.0 == value.service_id)
        .map(|(_, ip, len)| format!("{ip}/{len}"))
        .chain(
            maps.source_ranges6
                .iter()
                .filter(|r| r.0 == value.service_id)
                .map(|(_, ip, len)| format!("{ip}/{len}")),
        )
        .collect();
    let flag = |bit: u16| value.flags & bit != 0;
    ServiceRow {
        service: named.map(|n| n.service.clone()).unwrap_or_default(),
        port_name: named.map(|n| n.port_name.clone()).unwrap_or_default(),
        ip: at.ip,
        port: at.port,
        protocol,
        scope: scope.into(),
        kind: named.map_or_else(|| "-".into(), |n| n.kind.clone()),
        service_id: value.service_id,
        traffic_policy: if flag(SVC_FLAG_LOCAL_ONLY) {
            "Local"
        } else {
            "Cluster"
        }
        .into(),
        masquerade: flag(SVC_FLAG_MASQUERADE),
        lb_algorithm: if flag(proxy_common::SVC_FLAG_MAGLEV) {
            "maglev"
        } else {
            "random"
        }
        .into(),
        source_ranges,
        draining: flag(SVC_FLAG_DRAINING),
        affinity_timeout: named.and_then(|n| n.affinity_timeout),
        backends,
    }
}

/// The table's cells for one row.
pub fn cells(row: &ServiceRow) -> Vec<String> {
    let service = if row.service.is_empty() {
        "-".to_string()
    } else if row.port_name.is_empty() {
        row.service.clone()
    } else {
        format!("{}:{}", row.service, row.port_name)
    };
    let mut policy = vec![row.traffic_policy.clone()];
    if row.masquerade {
        policy.push("masquerade".into());
    }
    if row.lb_algorithm == "maglev" {
        policy.push("maglev".into());
    }
    if !row.source_ranges.is_empty() {
        policy.push(format!("from {}", row.source_ranges.join(",")));
    }
    if row.draining {
        policy.push("draining".into());
    }
    let backends: Vec<String> = row.backends.iter().map(backend_cell).collect();
    vec![
        service,
        format!("{}:{}/{}", row.ip, row.port, row.protocol),
        format!("{} ({})", row.kind, row.scope),
        policy.join(", "),
        row.affinity_timeout
            .map_or_else(|| "-".into(), |t| format!("ClientIP {t}s")),
        backends.join("\n"),
    ]
}

pub const HEADER: [&str; 6] = [
    "service", "frontend", "type", "policy", "affinity", "backends",
];

fn backend_cell(b: &BackendRow) -> String {
    let active = b.active.then_some("active");
    let state: Vec<&str> = active.into_iter().chain(conditions(b)).collect();
    format!("{}:{} ({})", b.ip, b.port, state.join(", "))
}

/// An endpoint's conditions as words (serving only when not also ready).
pub fn conditions(b: &BackendRow) -> Vec<&'static str> {
    [
        (b.ready, "ready"),
        (b.serving && !b.ready, "serving"),
        (b.terminating, "terminating"),
        (b.local, "local"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect()
}
