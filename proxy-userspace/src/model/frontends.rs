//! Every frontend one Service port gives, each with the endpoint set and
//! policy kube-proxy would use for it. `Scope::Internal` frontends serve
//! what pods and the node itself send: cluster IPs (internalTrafficPolicy),
//! and NodePorts, LoadBalancer and external IPs, which kube-proxy
//! short-circuits to every endpoint for them. `Scope::External` frontends
//! serve what arrives from outside (externalTrafficPolicy).
use super::{
    Backend, Frontend, FrontendKey, ModelOptions, ObjectRef, Policy, Scope, ServiceModel,
    ServicePortModel,
};

pub(super) fn frontends_of(
    service: &ObjectRef,
    svc: &ServiceModel,
    port: &ServicePortModel,
    backends: &[Backend],
    opts: &ModelOptions,
) -> Vec<Frontend> {
    let backends: Vec<Backend> = backends
        .iter()
        .map(|b| Backend {
            local: opts.node_name.is_some() && b.node_name == opts.node_name,
            ..b.clone()
        })
        .collect();
    let ext = &svc.external;
    let frontend = |ip, port_number, scope, policy| Frontend {
        key: FrontendKey {
            ip,
            port: port_number,
            protocol: port.protocol,
            scope,
        },
        service: service.clone(),
        port_name: port.name.clone(),
        backends: backends.clone(),
        policy,
    };
    // From outside: only local endpoints (client IP kept), or any endpoint
    // with remote ones reached through the node's address.
    let external_policy = |source_ranges: &[(std::net::Ipv4Addr, u8)]| Policy {
        local_only: ext.external_local,
        masquerade: !ext.external_local,
        source_ranges: source_ranges.to_vec(),
        health_check_node_port: ext.health_check_node_port.filter(|_| ext.external_local),
    };
    let mut out = Vec::new();
    for &ip in &svc.cluster_ips {
        let policy = Policy {
            local_only: ext.internal_local,
            ..Policy::default()
        };
        out.push(frontend(ip, port.port, Scope::Internal, policy));
    }
    if let Some(node_port) = port.node_port {
        for &ip in &opts.nodeport_addresses {
            out.push(frontend(
                ip,
                node_port,
                Scope::External,
                external_policy(&[]),
            ));
            out.push(frontend(ip, node_port, Scope::Internal, Policy::default()));
        }
        if opts.nodeport_localhost {
            let localhost = std::net::Ipv4Addr::LOCALHOST;
            out.push(frontend(
                localhost,
                node_port,
                Scope::Internal,
                Policy::default(),
            ));
        }
    }
    for &ip in &ext.load_balancer_ips {
        out.push(frontend(
            ip,
            port.port,
            Scope::External,
            external_policy(&ext.source_ranges),
        ));
        // Pods and the node reaching a LoadBalancer IP go to every endpoint,
        // as with kube-proxy; its source ranges hold for them too.
        let internal = Policy {
            source_ranges: ext.source_ranges.clone(),
            ..Policy::default()
        };
        out.push(frontend(ip, port.port, Scope::Internal, internal));
    }
    for &ip in &ext.external_ips {
        out.push(frontend(
            ip,
            port.port,
            Scope::External,
            external_policy(&[]),
        ));
        out.push(frontend(ip, port.port, Scope::Internal, Policy::default()));
    }
    out
}
