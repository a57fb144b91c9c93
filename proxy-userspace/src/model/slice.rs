//! Validation and normalisation of one discovery/v1 `EndpointSlice`.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::ip::Family;
use super::service::{label_skip, object_ref, parse_protocol, valid_port};
use super::{
    Conditions, ConversionError, Hints, Kind, LABEL_SERVICE_NAME, ModelOptions, Name, ObjectRef,
    Protocol, SkipReason, Unique, name::name,
};

/// A valid EndpointSlice reduced to what the proxy needs. A skipped slice has
/// no service, ports or endpoints, and says why in `skipped`; so does a
/// used slice about each endpoint it leaves out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceModel {
    pub object: ObjectRef,
    /// Value of the `kubernetes.io/service-name` label (same namespace).
    pub service: Option<Unique>,
    /// TCP and UDP ports with a port number; others cannot match a Service port.
    pub ports: Vec<SlicePortModel>,
    /// Shared with the backends the model makes of them.
    pub endpoints: Vec<Arc<EndpointModel>>,
    pub skipped: Vec<SkipReason>,
    /// When the change this version carries was made (the endpoints
    /// controller's `endpoints.kubernetes.io/last-change-trigger-time`):
    /// the start of kube-proxy's network programming latency.
    pub trigger_time: Option<Triggered>,
}

/// An endpoint change's trigger time, and the family of the slice it
/// changed (kube-proxy measures programming latency per family).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Triggered {
    pub at: SystemTime,
    pub family: Family,
}

/// Set by the endpoints controller on the slices it manages.
const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The annotation's time; one that does not parse is left out (it only
/// feeds a metric, and a slice is served whatever it says).
fn trigger_time(slice: &EndpointSlice) -> Option<SystemTime> {
    let value = slice
        .metadata
        .annotations
        .as_ref()?
        .get(TRIGGER_TIME_ANNOTATION)?;
    value.parse::<jiff::Timestamp>().ok().map(SystemTime::from)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePortModel {
    /// "" when unnamed; equals the Service port's name it serves.
    pub name: Name,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointModel {
    /// `addresses[0]`: the API says addresses are fungible and kube-proxy uses
    /// the first. Never a special address (`SpecialIp`). Of the slice's
    /// `addressType`.
    pub ip: IpAddr,
    pub conditions: Conditions,
    pub node_name: Option<Name>,
    pub zone: Option<Name>,
    pub hints: Hints,
    pub target: Option<Unique>,
}

/// Validates `slice` and reduces it to a [`SliceModel`]. Pure.
pub fn convert_slice(
    slice: &EndpointSlice,
    opts: &ModelOptions,
) -> Result<SliceModel, ConversionError> {
    let object = object_ref(Kind::EndpointSlice, &slice.metadata)?;
    let skipped = |reason| SliceModel {
        object: object.clone(),
        service: None,
        ports: Vec::new(),
        endpoints: Vec::new(),
        skipped: vec![reason],
        trigger_time: None,
    };
    if let Some(reason) = label_skip(&slice.metadata, opts) {
        return Ok(skipped(reason));
    }
    let err = |field: String, message: String| ConversionError::new(&object, field, message);
    let family = match slice.address_type.as_str() {
        "IPv4" => Family::Ipv4,
        "IPv6" if opts.ipv6 => Family::Ipv6,
        "IPv6" | "FQDN" => return Ok(skipped(SkipReason::AddressType(slice.address_type.clone()))),
        other => {
            return Err(err(
                "addressType".into(),
                format!("{other:?} is not a valid address type"),
            ));
        }
    };
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_SERVICE_NAME));
    let Some(service) = service.filter(|s| !s.is_empty()) else {
        return Ok(skipped(SkipReason::NoServiceNameLabel));
    };

    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let protocol = match parse_protocol(p.protocol.as_deref().unwrap_or("TCP")) {
            Ok(Some(protocol)) => protocol,
            Ok(None) => continue,
            Err(message) => return Err(err(format!("ports[{i}].protocol"), message)),
        };
        // A nil port means "all ports"; kube-proxy cannot use it either.
        let Some(raw) = p.port else { continue };
        let port = valid_port(raw).ok_or_else(|| {
            err(
                format!("ports[{i}].port"),
                format!("{raw} is not a valid port"),
            )
        })?;
        ports.push(SlicePortModel {
            name: name(p.name.as_deref().unwrap_or_default()),
            port,
            protocol,
        });
    }

    let mut endpoints = Vec::with_capacity(slice.endpoints.len());
    let mut skipped = Vec::new();
    for (i, ep) in slice.endpoints.iter().enumerate() {
        let Some(raw) = ep.addresses.first() else {
            return Err(err(
                format!("endpoints[{i}].addresses"),
                "must contain at least one address".into(),
            ));
        };
        let ip = match family {
            Family::Ipv4 => super::ip::parse_ipv4(raw).map(IpAddr::V4),
            Family::Ipv6 => raw.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        }
        .ok_or_else(|| {
            err(
                format!("endpoints[{i}].addresses[0]"),
                format!("{raw:?} is not a valid {} address", family.as_str()),
            )
        })?;
        // The API server refuses these (ValidateNonSpecialIP): they would
        // lead clients to the node's host-only services or the cloud
        // metadata server. Only this endpoint goes, as kube-proxy drops an
        // endpoint without addresses and keeps the rest.
        if let Some(reason) =
            SkipReason::special_address(ip, || format!("endpoints[{i}].addresses[0]"))
        {
            skipped.push(reason);
            continue;
        }
        let c = ep.conditions.as_ref();
        endpoints.push(Arc::new(EndpointModel {
            ip,
            conditions: Conditions::from_api(
                c.and_then(|c| c.ready),
                c.and_then(|c| c.serving),
                c.and_then(|c| c.terminating),
            ),
            node_name: ep.node_name.as_deref().map(name),
            zone: ep.zone.as_deref().map(name),
            hints: Hints::from_api(ep.hints.as_ref()),
            target: ep.target_ref.as_ref().map(|t| {
                let kind = t.kind.as_deref().unwrap_or("");
                let ns = t.namespace.as_deref().unwrap_or(&*object.namespace);
                let name = t.name.as_deref().unwrap_or("");
                Unique::from(format!("{kind}/{ns}/{name}"))
            }),
        }));
    }
    Ok(SliceModel {
        object: object.clone(),
        service: Some(Unique::from(service.as_str())),
        ports,
        endpoints,
        skipped,
        trigger_time: trigger_time(slice).map(|at| Triggered { at, family }),
    })
}
