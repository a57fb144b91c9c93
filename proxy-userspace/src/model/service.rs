//! Validation and normalisation of one `Service`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    ConversionError, Kind, LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME, ModelOptions, Name, ObjectRef,
    Protocol, SkipReason, TrafficDistribution, Unique,
};

/// A valid Service reduced to what the proxy needs. An ignored Service has no
/// cluster IPs and no ports, and says why in `skipped`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceModel {
    pub object: ObjectRef,
    /// IPv4 cluster IPs in spec order, special addresses left out.
    pub cluster_ips: Vec<Ipv4Addr>,
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
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// `spec.externalIPs`, special addresses left out; the node's own
    /// addresses are kept, as kube-proxy keeps them.
    pub external_ips: Vec<Ipv4Addr>,
    /// externalTrafficPolicy: Local.
    pub external_local: bool,
    /// internalTrafficPolicy: Local.
    pub internal_local: bool,
    pub health_check_node_port: Option<u16>,
    /// loadBalancerSourceRanges.
    pub source_ranges: Vec<(Ipv4Addr, u8)>,
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
        ports: Vec::new(),
        skipped: vec![reason],
        external: ExternalModel::default(),
        traffic_distribution: None,
        affinity_timeout: None,
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
        ports: Vec::new(),
        skipped: Vec::new(),
        external: super::external::convert(svc, spec, &object, &mut external_skipped)?,
        traffic_distribution: None,
        affinity_timeout: super::affinity::timeout_of(spec, &object)?,
    };
    match super::topology::traffic_distribution(spec.traffic_distribution.as_deref()) {
        Ok(value) => model.traffic_distribution = value,
        Err(reason) => model.skipped.push(reason),
    }
    let exposes_node_ports = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
    for (i, raw) in ips.iter().enumerate() {
        let field = if field == "spec.clusterIP" {
            field.to_string()
        } else {
            format!("{field}[{i}]")
        };
        match super::ip::parse_ip(raw) {
            Some(IpAddr::V4(ip)) if model.cluster_ips.contains(&ip) => {
                return Err(err(field, format!("duplicate cluster IP {ip}")));
            }
            // The API server's allocator gives service-CIDR addresses only,
            // which no working cluster puts in these ranges; manifests
            // bypass it, so vipr checks.
            Some(IpAddr::V4(ip)) => match SkipReason::special_address(ip, || field.clone()) {
                Some(reason) => model.skipped.push(reason),
                None => model.cluster_ips.push(ip),
            },
            Some(IpAddr::V6(ip)) => model
                .skipped
                .push(SkipReason::Ipv6ClusterIp(ip.to_string())),
            None => return Err(err(field, format!("{raw:?} is not a valid IP address"))),
        }
    }

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
