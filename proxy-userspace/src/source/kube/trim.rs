//! Objects cut down to the fields vipr reads, before they enter the stores:
//! managed fields, annotations, selectors and statuses are most of an
//! object's size and would be held for every Service in the cluster.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeStatus, ObjectReference, Service, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::{
    LABEL_HEADLESS, LABEL_SERVICE_NAME, LABEL_SERVICE_PROXY_NAME, node::LABEL_HOSTNAME,
    node::LABEL_REGION, node::LABEL_ZONE,
};

/// Identity, version and the listed labels only.
fn meta(meta: &mut ObjectMeta, keep_labels: &[&str]) {
    let labels = meta.labels.take().map(|labels| {
        labels
            .into_iter()
            .filter(|(k, _)| keep_labels.contains(&k.as_str()))
            .collect::<BTreeMap<_, _>>()
    });
    *meta = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        resource_version: meta.resource_version.take(),
        labels: labels.filter(|l| !l.is_empty()),
        ..ObjectMeta::default()
    };
}

pub fn service(svc: &mut Service) {
    meta(
        &mut svc.metadata,
        &[LABEL_SERVICE_PROXY_NAME, LABEL_HEADLESS],
    );
    svc.status = None;
    svc.spec = svc.spec.take().map(|spec| ServiceSpec {
        type_: spec.type_,
        cluster_ip: spec.cluster_ip,
        cluster_ips: spec.cluster_ips,
        ports: spec.ports.map(|ports| {
            ports
                .into_iter()
                .map(|mut p| {
                    p.app_protocol = None;
                    p.node_port = None;
                    p
                })
                .collect()
        }),
        ..ServiceSpec::default()
    });
}

pub fn endpoint_slice(slice: &mut EndpointSlice) {
    meta(
        &mut slice.metadata,
        &[LABEL_SERVICE_NAME, LABEL_SERVICE_PROXY_NAME, LABEL_HEADLESS],
    );
    for ep in &mut slice.endpoints {
        let target_ref = ep.target_ref.take().map(|t| ObjectReference {
            kind: t.kind,
            namespace: t.namespace,
            name: t.name,
            ..ObjectReference::default()
        });
        *ep = Endpoint {
            addresses: std::mem::take(&mut ep.addresses),
            conditions: ep.conditions.take(),
            node_name: ep.node_name.take(),
            zone: ep.zone.take(),
            target_ref,
            ..Endpoint::default()
        };
    }
}

pub fn node(node: &mut Node) {
    meta(
        &mut node.metadata,
        &[LABEL_ZONE, LABEL_REGION, LABEL_HOSTNAME],
    );
    node.spec = None;
    node.status = node.status.take().map(|s| NodeStatus {
        addresses: s.addresses,
        ..NodeStatus::default()
    });
}
