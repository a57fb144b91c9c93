//! The external-traffic parts of a Service: LoadBalancer and external IPs,
//! traffic policies, health-check node port and source ranges.
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Service, ServiceSpec};

use super::ip::parse_cidr;
use super::{ConversionError, ExternalModel, ObjectRef, SkipReason, service::valid_port};

/// Validates and extracts the external fields. IPv6 addresses and ranges are
/// left out unless `ipv6`; so are special addresses (see `SpecialIp`), each
/// with a reason in `skipped`.
pub(super) fn convert(
    svc: &Service,
    spec: &ServiceSpec,
    object: &ObjectRef,
    ipv6: bool,
    skipped: &mut Vec<SkipReason>,
) -> Result<ExternalModel, ConversionError> {
    let served = |ip: &IpAddr| ip.is_ipv4() || ipv6;
    let err = |field: String, message: String| ConversionError::new(object, field, message);
    let mut model = ExternalModel::default();
    for (i, raw) in spec.external_ips.iter().flatten().enumerate() {
        let field = || format!("spec.externalIPs[{i}]");
        match super::ip::parse_ip(raw) {
            // The API server refuses these (ValidateNonSpecialIP); one bad
            // entry costs only itself, as the other IPs are still good.
            Some(ip) if served(&ip) => match SkipReason::special_address(ip, field) {
                Some(reason) => skipped.push(reason),
                None => model.external_ips.push(ip),
            },
            Some(_) => {}
            None => {
                return Err(err(field(), format!("{raw:?} is not a valid IP address")));
            }
        }
    }
    if spec.type_.as_deref() == Some("LoadBalancer") {
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        for (i, entry) in ingress.into_iter().flatten().enumerate() {
            let Some(raw) = entry.ip.as_deref() else {
                continue; // hostname-only ingress: nothing to program
            };
            // The balancer proxies to the nodes itself: traffic to this IP
            // must reach it, not be captured on the node (kube-proxy: the
            // LoadBalancerIPMode feature).
            if entry.ip_mode.as_deref() == Some("Proxy") {
                continue;
            }
            let field = || format!("status.loadBalancer.ingress[{i}].ip");
            match super::ip::parse_ip(raw) {
                // Stricter than the API server, which takes any IP here:
                // no load balancer has such an address, and a status
                // written into a manifest must not capture the node's own.
                Some(ip) if served(&ip) => match SkipReason::special_address(ip, field) {
                    Some(reason) => skipped.push(reason),
                    None => model.load_balancer_ips.push(ip),
                },
                Some(_) => {}
                None => {
                    return Err(err(field(), format!("{raw:?} is not a valid IP address")));
                }
            }
        }
    }
    model.external_local = policy(
        spec.external_traffic_policy.as_deref(),
        "spec.externalTrafficPolicy",
        object,
    )?;
    model.internal_local = policy(
        spec.internal_traffic_policy.as_deref(),
        "spec.internalTrafficPolicy",
        object,
    )?;
    if let Some(port) = spec.health_check_node_port {
        model.health_check_node_port = Some(valid_port(port).ok_or_else(|| {
            err(
                "spec.healthCheckNodePort".into(),
                format!("{port} is not a valid port"),
            )
        })?);
    }
    for (i, raw) in spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .enumerate()
    {
        let field = format!("spec.loadBalancerSourceRanges[{i}]");
        match parse_cidr(raw.trim()) {
            Some(cidr) if served(&cidr.0) => model.source_ranges.push(cidr),
            Some(_) => {}
            None => return Err(err(field, format!("{raw:?} is not a valid CIDR"))),
        }
    }
    Ok(model)
}

/// `true` for `Local`; `Cluster` or unset is `false`.
fn policy(raw: Option<&str>, field: &str, object: &ObjectRef) -> Result<bool, ConversionError> {
    match raw {
        None | Some("Cluster") => Ok(false),
        Some("Local") => Ok(true),
        Some(other) => Err(ConversionError::new(
            object,
            field,
            format!("{other:?} is not a valid traffic policy (Cluster or Local)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::super::ip::parse_cidr;
    use std::net::IpAddr;

    #[test]
    fn cidrs_are_parsed_and_masked() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("test IP");
        assert_eq!(parse_cidr("10.1.2.3/8"), Some((ip("10.0.0.0"), 8)));
        assert_eq!(parse_cidr("0.0.0.0/0"), Some((ip("0.0.0.0"), 0)));
        assert_eq!(parse_cidr("2001:db8:1::7/32"), Some((ip("2001:db8::"), 32)));
        assert_eq!(parse_cidr("2001:db8::/129"), None);
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
        assert_eq!(parse_cidr("10.0.0.0"), None);
        assert_eq!(parse_cidr("banana/8"), None);
    }
}
