//! Every frontend one Service port gives, each with the endpoint set and
//! policy kube-proxy would use for it. `Scope::Internal` frontends serve
//! what pods and the node itself send: cluster IPs (internalTrafficPolicy),
//! and NodePorts, LoadBalancer and external IPs, which kube-proxy
//! short-circuits to every endpoint for them. `Scope::External` frontends
//! serve what arrives from outside (externalTrafficPolicy).
//!
//! Families, as kube-proxy's one proxier per family: a Service is served in
//! the families of its cluster IPs; each frontend uses the endpoints and
//! source ranges of its own family, and NodePorts answer on the node
//! addresses of those families.
use std::net::{IpAddr, Ipv4Addr};

use super::ip::Family;
use super::{
    Backend, Frontend, FrontendKey, FrontendKind, ModelOptions, ObjectRef, Policy, Scope,
    ServiceModel, ServicePortModel, Topology,
};

pub(super) fn frontends_of(
    service: &ObjectRef,
    svc: &ServiceModel,
    port: &ServicePortModel,
    backends: &[Backend],
    topology: &Topology,
    opts: &ModelOptions,
) -> Vec<Frontend> {
    let backends: Vec<Backend> = backends
        .iter()
        .map(|b| Backend {
            local: opts.node_name.is_some() && b.node_name.as_deref() == opts.node_name.as_deref(),
            ..b.clone()
        })
        .collect();
    let ext = &svc.external;
    let families = &svc.families;
    let served = |ip: &&IpAddr| families.contains(&Family::of(**ip));
    let of_family = |ip: IpAddr| -> Vec<Backend> {
        backends
            .iter()
            .filter(|b| Family::of(b.ip) == Family::of(ip))
            .cloned()
            .collect()
    };
    let frontend = |kind, ip: IpAddr, port_number, scope, policy: Policy| Frontend {
        key: FrontendKey {
            ip,
            port: port_number,
            protocol: port.protocol,
            scope,
        },
        kind,
        service: service.clone(),
        port_name: port.name.clone(),
        backends: of_family(ip),
        // kube-proxy never applies hints to Local-policy endpoints.
        topology: if policy.local_only {
            Topology::Any
        } else {
            topology.clone()
        },
        // Affinity is per frontend: each keeps its own client table.
        policy: Policy {
            affinity_timeout: svc.affinity_timeout,
            lb_algorithm: svc.lb_algorithm,
            ..policy
        },
    };
    // From outside: only local endpoints (client IP kept), or any endpoint
    // with remote ones reached through the node's address.
    let external_policy = |source_ranges: &[(IpAddr, u8)]| Policy {
        local_only: ext.external_local,
        masquerade: !ext.external_local,
        source_ranges: source_ranges.to_vec(),
        health_check_node_port: ext.health_check_node_port.filter(|_| ext.external_local),
        affinity_timeout: None,
        lb_algorithm: None,
    };
    let mut out = Vec::new();
    for &ip in &svc.cluster_ips {
        let policy = Policy {
            local_only: ext.internal_local,
            // The health check answers whether or not this node has an
            // external frontend for the Service, as kube-proxy's does.
            health_check_node_port: ext.health_check_node_port.filter(|_| ext.external_local),
            ..Policy::default()
        };
        out.push(frontend(
            FrontendKind::ClusterIp,
            ip,
            port.port,
            Scope::Internal,
            policy,
        ));
    }
    if let Some(node_port) = port.node_port {
        for &ip in opts.nodeport_addresses.iter().filter(served) {
            let node_port_at =
                |scope, policy| frontend(FrontendKind::NodePort, ip, node_port, scope, policy);
            out.push(node_port_at(Scope::External, external_policy(&[])));
            out.push(node_port_at(Scope::Internal, Policy::default()));
        }
        // IPv4 only, as kube-proxy's route_localnet.
        if opts.nodeport_localhost && families.contains(&Family::Ipv4) {
            out.push(frontend(
                FrontendKind::NodePort,
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                node_port,
                Scope::Internal,
                Policy::default(),
            ));
        }
    }
    for &ip in ext.load_balancer_ips.iter().filter(served) {
        let source_ranges = source_ranges_of(ip, &ext.source_ranges, opts);
        out.push(frontend(
            FrontendKind::LoadBalancer,
            ip,
            port.port,
            Scope::External,
            external_policy(&source_ranges),
        ));
        // Pods and the node reaching a LoadBalancer IP go to every endpoint,
        // as with kube-proxy; its source ranges hold for them too.
        let internal = Policy {
            source_ranges,
            ..Policy::default()
        };
        out.push(frontend(
            FrontendKind::LoadBalancer,
            ip,
            port.port,
            Scope::Internal,
            internal,
        ));
    }
    for &ip in ext.external_ips.iter().filter(served) {
        let external_ip_at =
            |scope, policy| frontend(FrontendKind::ExternalIp, ip, port.port, scope, policy);
        out.push(external_ip_at(Scope::External, external_policy(&[])));
        out.push(external_ip_at(Scope::Internal, Policy::default()));
    }
    out
}

/// A LoadBalancer IP's allowed sources: the ranges of its family (none of
/// its family: open, as kube-proxy's per-family ranges). When they include a
/// node address, the LB IP itself is allowed too, as kube-proxy does: a node
/// reaching its load balancer may come back SNATted to the LB IP by the balancer.
fn source_ranges_of(
    lb_ip: IpAddr,
    ranges: &[(IpAddr, u8)],
    opts: &ModelOptions,
) -> Vec<(IpAddr, u8)> {
    let contains = |range: &(IpAddr, u8), ip| super::ip::cidr_contains(*range, ip);
    let ranges: Vec<(IpAddr, u8)> = ranges
        .iter()
        .copied()
        .filter(|(net, _)| Family::of(*net) == Family::of(lb_ip))
        .collect();
    let mut out = ranges.clone();
    let node_allowed = opts
        .nodeport_addresses
        .iter()
        .any(|&node| ranges.iter().any(|r| contains(r, node)));
    if node_allowed && !ranges.iter().any(|r| contains(r, lb_ip)) {
        out.push((lb_ip, Family::of(lb_ip).bits()));
    }
    out
}
