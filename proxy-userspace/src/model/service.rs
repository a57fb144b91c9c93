//! Validation and normalisation of one `Service`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::ip::Family;
use super::{
    ConversionError, Kind, LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME, ModelOptions, Name, ObjectRef,
    Protocol, SkipReason, TrafficDistribution, Unique,
};

/// A valid Service reduced to what the proxy needs. An ignored Service has no
/// cluster IPs and no ports, and says why in `skipped`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceModel {
    pub object: ObjectRef,
    /// Cluster IPs in spec order, at most one per family (IPv6 ones only
    /// with `ModelOptions::ipv6`), special addresses left out.
    pub cluster_ips: Vec<IpAddr>,
    /// The families of its cluster IPs as written, special ones included:
    /// the Service is served in these (NodePorts, LoadBalancer and external
    /// IPs of a family too), as by kube-proxy's proxier of each family.
    pub families: Vec<Family>,
    /// TCP and UDP ports in spec order.
    pub ports: Vec<ServicePortModel>,
    /// The whole Service, or parts (IPv6 IPs, SCTP ports, special
    /// addresses), left out.
    pub skipped: Vec<SkipReason>,
    pub external: ExternalModel,
    /// `spec.trafficDistribution`; the endpoints' hints decide (see `topology`).
    pub traffic_distribution: Option<TrafficDistribution>,
    /// `sessionAffinity: ClientIP`: its timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// `vipr.io/lb-algorithm`, if set.
    pub lb_algorithm: Option<super::LbAlgorithm>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortModel {
    /// "" when unnamed; matched against EndpointSlice port names.
    pub name: Name,
    pub port: u16,
    pub protocol: Protocol,
    /// Set for NodePort and LoadBalancer Services.
    pub node_port: Option<u16>,
}

/// What a Service offers outside the pod network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExternalModel {
    /// `status.loadBalancer.ingress[].ip` (LoadBalancer Services only),
    /// special addresses (`SpecialIp`) left out.
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.externalIPs`, special addresses left out; the node's own
    /// addresses are kept, as kube-proxy keeps them.
    pub external_ips: Vec<IpAddr>,
    /// externalTrafficPolicy: Local.
    pub external_local: bool,
    /// internalTrafficPolicy: Local.
    pub internal_local: bool,
    pub health_check_node_port: Option<u16>,
    /// loadBalancerSourceRanges (address masked to its prefix), either family.
    pub source_ranges: Vec<(IpAddr, u8)>,
}

/// Validates `svc` and reduces it to a [`ServiceModel`]. Pure.
pub fn convert_service(
    svc: &Service,
    opts: &ModelOptions,
) -> Result<ServiceModel, ConversionError> {
    let object = object_ref(Kind::Service, &svc.metadata)?;
    let ignored = |reason| ServiceModel {
        object: object.clone(),
        cluster_ips: Vec::new(),
        families: Vec::new(),
        ports: Vec::new(),
        skipped: vec![reason],
        external: ExternalModel::default(),
        traffic_distribution: None,
        affinity_timeout: None,
        lb_algorithm: None,
    };
    // Label filters come first: kube-proxy never even sees these objects.
    if let Some(reason) = label_skip(&svc.metadata, opts) {
        return Ok(ignored(reason));
    }
    let err = |field: String, message: String| ConversionError::new(&object, field, message);
    let Some(spec) = &svc.spec else {
        return Err(err("spec".into(), "missing".into()));
    };
    match spec.type_.as_deref() {
        None | Some("ClusterIP" | "NodePort" | "LoadBalancer") => {}
        Some("ExternalName") => return Ok(ignored(SkipReason::ExternalName)),
        Some(other) => {
            return Err(err(
                "spec.type".into(),
                format!("{other:?} is not a valid service type"),
            ));
        }
    }

    // spec.clusterIPs wins over the legacy spec.clusterIP when both are set.
    let (ips, field): (Vec<&str>, &str) = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => {
            (ips.iter().map(String::as_str).collect(), "spec.clusterIPs")
        }
        (_, Some(ip)) if !ip.is_empty() => (vec![ip.as_str()], "spec.clusterIP"),
        _ => return Ok(ignored(SkipReason::NoClusterIp)),
    };
    if ips.first() == Some(&"None") {
        return Ok(ignored(SkipReason::Headless));
    }
    // Reported after the Service's other reasons, in spec order.
    let mut external_skipped = Vec::new();
    let mut model = ServiceModel {
        object: object.clone(),
        cluster_ips: Vec::new(),
        families: Vec::new(),
        ports: Vec::new(),
        skipped: Vec::new(),
        external: super::external::convert(svc, spec, &object, opts.ipv6, &mut external_skipped)?,
        traffic_distribution: None,
        affinity_timeout: super::affinity::timeout_of(spec, &object)?,
        lb_algorithm: super::lb_algorithm::of(&svc.metadata, &object)?,
    };
    match super::topology::traffic_distribution(spec.traffic_distribution.as_deref()) {
        Ok(value) => model.traffic_distribution = value,
        Err(reason) => model.skipped.push(reason),
    }
    let exposes_node_ports = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
    let mut families: Vec<Family> = Vec::new();
    for (i, raw) in ips.iter().enumerate() {
        let field = if field == "spec.clusterIP" {
            field.to_string()
        } else {
            format!("{field}[{i}]")
        };
        let Some(ip) = super::ip::parse_ip(raw) else {
            return Err(err(field, format!("{raw:?} is not a valid IP address")));
        };
        let family = Family::of(ip);
        // Dual-stack: one cluster IP per family, as the API server allows.
        if families.contains(&family) {
            return Err(err(
                field,
                format!("a second {} cluster IP ({ip})", family.as_str()),
            ));
        }
        families.push(family);
        if family == Family::Ipv6 && !opts.ipv6 {
            model
                .skipped
                .push(SkipReason::Ipv6ClusterIp(ip.to_string()));
            continue;
        }
        model.families.push(family);
        // The API server's allocator gives service-CIDR addresses only,
        // which no working cluster puts in these ranges; manifests
        // bypass it, so vipr checks.
        match SkipReason::special_address(ip, || field.clone()) {
            Some(reason) => model.skipped.push(reason),
            None => model.cluster_ips.push(ip),
        }
    }
    check_families(spec, &families, &object)?;

    // Names identify ports to EndpointSlices, so they must be unique (also "").
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut seen: BTreeMap<(u16, &str), usize> = BTreeMap::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let name = p.name.as_deref().unwrap_or("");
        if let Some(j) = names.insert(name, i) {
            return Err(err(
                format!("spec.ports[{i}].name"),
                format!("duplicate port name {name:?} (also spec.ports[{j}])"),
            ));
        }
        let port = valid_port(p.port).ok_or_else(|| {
            err(
                format!("spec.ports[{i}].port"),
                format!("{} is not a valid port", p.port),
            )
        })?;
        if let Some(IntOrString::Int(t)) = p.target_port
            && valid_port(t).is_none()
        {
            return Err(err(
                format!("spec.ports[{i}].targetPort"),
                format!("{t} is not a valid port"),
            ));
        }
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        if let Some(j) = seen.insert((port, proto), i) {
            return Err(err(
                format!("spec.ports[{i}]"),
                format!("duplicate of spec.ports[{j}] ({port}/{proto})"),
            ));
        }
        match parse_protocol(proto) {
            Ok(Some(protocol)) => model.ports.push(ServicePortModel {
                name: super::name::name(name),
                port,
                protocol,
                node_port: match p.node_port {
                    Some(n) if exposes_node_ports => Some(valid_port(n).ok_or_else(|| {
                        err(
                            format!("spec.ports[{i}].nodePort"),
                            format!("{n} is not a valid port"),
                        )
                    })?),
                    _ => None,
                },
            }),
            Ok(None) => model.skipped.push(SkipReason::Sctp { port_index: i }),
            Err(message) => return Err(err(format!("spec.ports[{i}].protocol"), message)),
        }
    }
    model.skipped.extend(external_skipped);
    Ok(model)
}

/// Kind + namespace/name; the namespace defaults to "default" as with kubectl.
pub(crate) fn object_ref(kind: Kind, meta: &ObjectMeta) -> Result<ObjectRef, ConversionError> {
    let namespace = match meta.namespace.as_deref() {
        None | Some("") => "default",
        Some(ns) => ns,
    };
    let object = ObjectRef {
        kind,
        namespace: super::name::name(namespace),
        name: Unique::from(meta.name.as_deref().unwrap_or_default()),
    };
    if object.name.is_empty() {
        return Err(ConversionError::new(&object, "metadata.name", "missing"));
    }
    Ok(object)
}

/// kube-proxy's informer label selector, applied to Services and EndpointSlices alike.
pub(crate) fn label_skip(meta: &ObjectMeta, opts: &ModelOptions) -> Option<SkipReason> {
    let labels = meta.labels.as_ref()?;
    if let Some(proxy) = labels.get(LABEL_SERVICE_PROXY_NAME)
        && opts.proxy_name.as_deref() != Some(proxy.as_str())
    {
        return Some(SkipReason::OtherProxy(proxy.clone()));
    }
    if labels.contains_key(LABEL_HEADLESS) {
        return Some(SkipReason::HeadlessLabel);
    }
    None
}

pub(crate) fn valid_port(port: i32) -> Option<u16> {
    u16::try_from(port).ok().filter(|p| *p != 0)
}

/// `Ok(None)` for SCTP, which is valid but not load-balanced.
pub(crate) fn parse_protocol(raw: &str) -> Result<Option<Protocol>, String> {
    match raw {
        "TCP" => Ok(Some(Protocol::Tcp)),
        "UDP" => Ok(Some(Protocol::Udp)),
        "SCTP" => Ok(None),
        other => Err(format!("{other:?} is not a valid protocol")),
    }
}

/// `spec.ipFamilyPolicy` and `spec.ipFamilies` as the API server checks
/// them: known values, and families in the order of the cluster IPs they
/// describe. (The cluster IPs alone decide what is served, as in
/// kube-proxy; a manifest that contradicts itself is refused.)
fn check_families(
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    cluster_ip_families: &[Family],
    object: &ObjectRef,
) -> Result<(), ConversionError> {
    let err = |field: String, message: String| ConversionError::new(object, field, message);
    match spec.ip_family_policy.as_deref() {
        None | Some("SingleStack" | "PreferDualStack" | "RequireDualStack") => {}
        Some(other) => {
            return Err(err(
                "spec.ipFamilyPolicy".into(),
                format!(
                    "{other:?} is not a valid policy (SingleStack, PreferDualStack or RequireDualStack)"
                ),
            ));
        }
    }
    let declared = spec.ip_families.as_deref().unwrap_or_default();
    for (i, raw) in declared.iter().enumerate() {
        let family = match raw.as_str() {
            "IPv4" => Family::Ipv4,
            "IPv6" => Family::Ipv6,
            other => {
                return Err(err(
                    format!("spec.ipFamilies[{i}]"),
                    format!("{other:?} is not a valid family (IPv4 or IPv6)"),
                ));
            }
        };
        if cluster_ip_families.get(i).is_some_and(|&f| f != family) {
            return Err(err(
                format!("spec.ipFamilies[{i}]"),
                format!("{raw} does not match spec.clusterIPs[{i}]"),
            ));
        }
    }
    if spec.ip_family_policy.as_deref() == Some("SingleStack") && cluster_ip_families.len() > 1 {
        return Err(err(
            "spec.clusterIPs".into(),
            "two cluster IPs with ipFamilyPolicy SingleStack".into(),
        ));
    }
    Ok(())
}
