//! This node's Node cut down to the fields vipr reads before it enters its
//! store: managed fields, images and conditions are most of a Node's size.
//! The test below checks that trimming never changes what the model makes
//! of it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::node::{LABEL_HOSTNAME, LABEL_REGION, LABEL_ZONE};

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
    use crate::model::convert_node;

    const NODE: &str = "apiVersion: v1
kind: Node
metadata: {name: node1, labels: {topology.kubernetes.io/zone: zone-a, other: dropped}}
status: {addresses: [{type: InternalIP, address: 192.168.0.2}]}
";

    #[test]
    fn trimming_keeps_everything_the_model_reads() {
        let full: Node = serde_yaml_ng::from_str(NODE).expect("Node");
        let mut trimmed = full.clone();
        node(&mut trimmed);
        assert_eq!(convert_node(&trimmed), convert_node(&full));
    }
}
