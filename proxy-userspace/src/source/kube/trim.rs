//! Objects cut down to the fields vipr reads, before they enter the stores:
//! managed fields, annotations, selectors and statuses are most of an
//! object's size and would be held for every Service in the cluster. The
//! tests below check that trimming never changes what the model makes of
//! an object.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus, Node, NodeStatus, ObjectReference, Service,
    ServiceSpec, ServiceStatus,
};
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
    // Only LoadBalancer ingress IPs and modes: the rest of the status is never read.
    let ingress = svc
        .status
        .take()
        .and_then(|s| s.load_balancer?.ingress)
        .map(|ingress| {
            ingress
                .into_iter()
                .map(|i| LoadBalancerIngress {
                    ip: i.ip,
                    ip_mode: i.ip_mode,
                    ..LoadBalancerIngress::default()
                })
                .collect()
        });
    svc.status = ingress.map(|ingress| ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(ingress),
        }),
        ..ServiceStatus::default()
    });
    svc.spec = svc.spec.take().map(|spec| ServiceSpec {
        type_: spec.type_,
        cluster_ip: spec.cluster_ip,
        cluster_ips: spec.cluster_ips,
        ports: spec.ports.map(|ports| {
            ports
                .into_iter()
                .map(|mut p| {
                    p.app_protocol = None;
                    p
                })
                .collect()
        }),
        external_ips: spec.external_ips,
        external_traffic_policy: spec.external_traffic_policy,
        internal_traffic_policy: spec.internal_traffic_policy,
        health_check_node_port: spec.health_check_node_port,
        load_balancer_source_ranges: spec.load_balancer_source_ranges,
        session_affinity: spec.session_affinity,
        session_affinity_config: spec.session_affinity_config,
        traffic_distribution: spec.traffic_distribution,
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
            hints: ep.hints.take(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelOptions, convert_node, convert_service, convert_slice};

    const SERVICE: &str = "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
  annotations: {note: dropped}
  labels: {app: web}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080, appProtocol: http}]
  externalIPs: [192.168.99.11]
  externalTrafficPolicy: Local
  internalTrafficPolicy: Local
  healthCheckNodePort: 31000
  loadBalancerSourceRanges: [203.0.113.0/25]
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  trafficDistribution: PreferClose
status:
  loadBalancer:
    ingress: [{ip: 1.2.3.4, ipMode: VIP}, {hostname: lb.example.com}]
";

    const SLICE: &str = "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [10.244.1.11]
  conditions: {ready: false, serving: true, terminating: true}
  nodeName: node1
  zone: zone-a
  hints: {forZones: [{name: zone-a}], forNodes: [{name: node1}]}
  targetRef: {kind: Pod, name: web-1, uid: dropped}
";

    const NODE: &str = "apiVersion: v1
kind: Node
metadata: {name: node1, labels: {topology.kubernetes.io/zone: zone-a, other: dropped}}
status: {addresses: [{type: InternalIP, address: 192.168.0.2}]}
";

    #[test]
    fn trimming_keeps_everything_the_model_reads() {
        let opts = ModelOptions::default();
        let svc: Service = serde_yaml_ng::from_str(SERVICE).expect("Service");
        let mut trimmed = svc.clone();
        service(&mut trimmed);
        assert_ne!(trimmed, svc, "something was dropped");
        let want = convert_service(&svc, &opts).expect("valid Service");
        assert_eq!(convert_service(&trimmed, &opts), Ok(want));

        let slice: EndpointSlice = serde_yaml_ng::from_str(SLICE).expect("EndpointSlice");
        let mut trimmed = slice.clone();
        endpoint_slice(&mut trimmed);
        let want = convert_slice(&slice, &opts).expect("valid EndpointSlice");
        assert_eq!(convert_slice(&trimmed, &opts), Ok(want));

        let full: Node = serde_yaml_ng::from_str(NODE).expect("Node");
        let mut trimmed = full.clone();
        node(&mut trimmed);
        assert_eq!(convert_node(&trimmed), convert_node(&full));
    }
}
