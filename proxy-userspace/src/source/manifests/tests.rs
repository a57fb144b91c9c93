//! Parsing manifests and watching a directory of them.

use std::fs;
use std::path::{Path, PathBuf};

use super::*;
use crate::model::ServiceModel;

const SERVICE: &str = "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  clusterIP: 10.96.0.10
  ports:
  - name: http
    port: 80
";

const SLICE: &str = "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.244.1.11]
";

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("vipr-manifests-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    fn write(&self, name: &str, text: &str) {
        fs::write(self.0.join(name), text).expect("write manifest");
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn names(snapshot: &Snapshot) -> (Vec<String>, Vec<String>) {
    let names = |objects: &[(ObjectRef, Converted)]| {
        objects.iter().map(|(o, _)| o.name.to_string()).collect()
    };
    (names(&snapshot.services), names(&snapshot.endpoint_slices))
}

/// The Service a conversion made, if it was valid.
fn service_model(converted: &Converted) -> Option<&ServiceModel> {
    match converted {
        Converted::Service(Ok(svc)) => Some(svc),
        _ => None,
    }
}

#[test]
fn parses_multi_document_files_lists_and_ignores_other_kinds() {
    let text = format!(
        "---\n{SERVICE}---\n---\n{SLICE}---
apiVersion: v1
kind: ConfigMap
metadata: {{name: cm}}
---
apiVersion: discovery.k8s.io/v1beta1
kind: EndpointSlice
metadata: {{name: old}}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {{name: listed}}
  spec: {{clusterIP: 10.96.0.11, ports: [{{port: 53, protocol: UDP}}]}}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {{name: d}}
"
    );
    let parsed = parse_str(&text).expect("valid manifests");
    assert_eq!(parsed.services.len(), 2);
    assert_eq!(parsed.services[1].metadata.name.as_deref(), Some("listed"));
    assert_eq!(parsed.endpoint_slices.len(), 1);
    assert_eq!(
        parsed.endpoint_slices[0].endpoints[0].addresses,
        ["10.244.1.11"]
    );
}

#[test]
fn parse_errors_name_document_and_line() {
    let cases = [
        // A schema error in the second document, on line 19 of the file.
        (format!("{SERVICE}---\n{}", SLICE.replace("port: 8080", "port: eighty")), "document 2: ", "line 19 column 28"),
        (format!("{SERVICE}---\n- just\n- a list\n"), "document 2: not a Kubernetes object", ""),
        (format!("{SERVICE}---\nkind: Service\n  bad: indent\n"), "document 2: mapping values", "line 13 column 6"),
        (
            "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Service, spec: {ports: 3}}\n".to_string(),
            "document 1, items[0]: ",
            "",
        ),
    ];
    for (text, prefix, line) in cases {
        let err = parse_str(&text).expect_err("must fail").to_string();
        assert!(
            err.starts_with(prefix),
            "{err:?} should start with {prefix:?}"
        );
        assert!(err.contains(line), "{err:?} should contain {line:?}");
    }
}

#[test]
fn poll_reports_changes_only() {
    let dir = TempDir::new("changes");
    let mut manifests = ManifestDir::new(dir.path());
    assert_eq!(
        manifests.poll().expect("poll"),
        Some(Changes::default()),
        "first poll always answers"
    );
    assert_eq!(manifests.poll().expect("poll"), None);

    dir.write("a.yaml", SERVICE);
    dir.write("notes.txt", SERVICE);
    dir.write(".hidden.yaml", SERVICE);
    manifests.poll().expect("poll").expect("changed");
    let snapshot = manifests.snapshot();
    assert_eq!(names(&snapshot), (vec!["web".into()], vec![]));
    assert_eq!(manifests.poll().expect("poll"), None);

    // Same content rewritten: nothing new. Same length, new content: noticed.
    dir.write("a.yaml", SERVICE);
    assert_eq!(manifests.poll().expect("poll"), None);
    dir.write("a.yaml", &SERVICE.replace("port: 80", "port: 81"));
    manifests.poll().expect("poll").expect("changed");
    let snapshot = manifests.snapshot();
    let port = service_model(&snapshot.services[0].1).map(|s| s.ports[0].port);
    assert_eq!(port, Some(81));

    dir.write("b.yml", SLICE);
    manifests.poll().expect("poll").expect("changed");
    let snapshot = manifests.snapshot();
    assert_eq!(
        names(&snapshot),
        (vec!["web".into()], vec!["web-abc".into()])
    );

    fs::remove_file(dir.path().join("a.yaml")).expect("rm");
    manifests.poll().expect("poll").expect("changed");
    let snapshot = manifests.snapshot();
    assert_eq!(names(&snapshot), (vec![], vec!["web-abc".into()]));
}

#[test]
fn malformed_file_keeps_its_last_good_objects() {
    let dir = TempDir::new("malformed");
    dir.write("a.yaml", &format!("{SERVICE}---\n{SLICE}"));
    let mut manifests = ManifestDir::new(dir.path());
    manifests.poll().expect("poll").expect("first");
    let good = manifests.snapshot();
    assert!(manifests.errors().is_empty());

    dir.write(
        "a.yaml",
        &format!(
            "{SERVICE}---\n{}",
            SLICE.replace("addressType: IPv4", "addressType: [")
        ),
    );
    assert_eq!(manifests.poll().expect("poll"), None, "objects unchanged");
    let errors: Vec<String> = manifests.errors().iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("a.yaml: document"), "{errors:?}");
    assert!(errors[0].contains("line"), "{errors:?}");

    // A new file that never parsed contributes nothing but its error.
    dir.write(
        "b.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: oops}\n",
    );
    assert_eq!(manifests.poll().expect("poll"), None);
    assert_eq!(manifests.errors().len(), 2);

    // Fixing a file back to its last good content clears the error, objects unchanged.
    dir.write("a.yaml", &format!("{SERVICE}---\n{SLICE}"));
    assert_eq!(manifests.poll().expect("poll"), None);
    assert_eq!(manifests.errors().len(), 1);
    fs::remove_file(dir.path().join("b.yaml")).expect("rm");
    manifests.poll().expect("poll");
    assert!(manifests.errors().is_empty());
    assert_eq!(manifests.snapshot(), good);
}

#[test]
fn single_file_and_missing_directory() {
    let dir = TempDir::new("single");
    dir.write("one.yaml", SERVICE);
    let mut one = ManifestDir::new(dir.path().join("one.yaml"));
    one.poll().expect("poll").expect("first");
    assert_eq!(names(&one.snapshot()).0, ["web"]);

    let mut missing = ManifestDir::new(dir.path().join("nope"));
    let err = missing.poll().expect_err("no directory").to_string();
    assert!(err.starts_with("reading ") && err.contains("nope"), "{err}");
}

fn service(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}\n"
    )
}

fn changed_names(changes: &Changes) -> Vec<(String, bool)> {
    let services = changes.services.iter().map(|(o, v)| (o, v.is_some()));
    let slices = changes.slices.iter().map(|(o, v)| (o, v.is_some()));
    services
        .chain(slices)
        .map(|(o, present)| (o.name.to_string(), present))
        .collect()
}

#[test]
fn only_objects_whose_content_changed_are_handed_over() {
    let dir = TempDir::new("incremental");
    let many: String = (0..50)
        .map(|i| service(&format!("svc-{i}"), &format!("10.96.1.{i}")))
        .collect::<Vec<_>>()
        .join("---\n");
    dir.write("bulk.yaml", &many);
    dir.write("one.yaml", &format!("{SERVICE}---\n{SLICE}"));
    let mut manifests = ManifestDir::new(dir.path());
    let first = manifests.poll().expect("poll").expect("first");
    assert_eq!((first.services.len(), first.slices.len()), (51, 1));

    // Rewriting a whole file in which one object differs hands over that one.
    dir.write("bulk.yaml", &many.replace("10.96.1.7,", "10.96.2.7,"));
    let changes = manifests.poll().expect("poll").expect("changed");
    assert_eq!(changed_names(&changes), [("svc-7".to_string(), true)]);
    let ip = changes.services[0]
        .1
        .as_deref()
        .and_then(service_model)
        .map(|s| s.cluster_ips[0].to_string());
    assert_eq!(ip.as_deref(), Some("10.96.2.7"));

    // Moving an object between files with the same content is no change.
    dir.write("one.yaml", SERVICE);
    dir.write("slice.yaml", SLICE);
    assert_eq!(manifests.poll().expect("poll"), None);

    // Deleting a file deletes what only it defined.
    fs::remove_file(dir.path().join("slice.yaml")).expect("rm");
    let changes = manifests.poll().expect("poll").expect("changed");
    assert_eq!(changed_names(&changes), [("web-abc".to_string(), false)]);
}

#[test]
fn the_first_definition_in_file_name_order_counts() {
    let dir = TempDir::new("duplicates");
    dir.write("b.yaml", &service("dup", "10.96.0.2"));
    let mut manifests = ManifestDir::new(dir.path());
    manifests.poll().expect("poll").expect("first");

    // An earlier file takes over; a later duplicate is shadowed.
    dir.write("a.yaml", &service("dup", "10.96.0.1"));
    let changes = manifests.poll().expect("poll").expect("a wins");
    assert_eq!(changed_names(&changes), [("dup".to_string(), true)]);
    dir.write("b.yaml", &service("dup", "10.96.0.3"));
    assert_eq!(manifests.poll().expect("poll"), None, "b is shadowed");

    // Within one file, the first document counts.
    dir.write(
        "a.yaml",
        &format!(
            "{}---\n{}",
            service("dup", "10.96.0.1"),
            service("dup", "10.96.0.9")
        ),
    );
    assert_eq!(manifests.poll().expect("poll"), None);

    // With a.yaml gone, b's current definition comes into force.
    fs::remove_file(dir.path().join("a.yaml")).expect("rm");
    let changes = manifests.poll().expect("poll").expect("b in force");
    let ip = changes.services[0]
        .1
        .as_deref()
        .and_then(service_model)
        .map(|s| s.cluster_ips[0].to_string());
    assert_eq!(ip.as_deref(), Some("10.96.0.3"));

    // Objects without a name are left out, the rest of the file applies.
    dir.write(
        "c.yaml",
        &format!(
            "{}---\n{SERVICE}",
            service("", "10.96.0.4").replace("name: ", "labels: {}, x: ")
        ),
    );
    let changes = manifests.poll().expect("poll").expect("web added");
    assert_eq!(changed_names(&changes), [("web".to_string(), true)]);
}

fn node(name: &str, zone: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}, labels: {{topology.kubernetes.io/zone: {zone}}}}}\n"
    )
}

fn zone(node: Option<Arc<k8s_openapi::api::core::v1::Node>>) -> Option<String> {
    node?
        .metadata
        .labels
        .as_ref()?
        .get(crate::model::node::LABEL_ZONE)
        .cloned()
}

#[test]
fn only_this_nodes_node_manifest_counts() {
    let dir = TempDir::new("nodes");
    let both = |zone1: &str| format!("{}---\n{}", node("node2", "zone-b"), node("node1", zone1));
    dir.write("nodes.yaml", &both("zone-a"));
    let mut manifests = ManifestDir::new(dir.path()).with_node_name("node1");
    let first = manifests.poll().expect("poll").expect("first");
    assert_eq!(first.nodes.len(), 2);
    assert_eq!(manifests.snapshot().nodes.len(), 2);
    assert_eq!(zone(manifests.node()).as_deref(), Some("zone-a"));

    // A Node alone changing is a change: its zone steers topology hints.
    dir.write("nodes.yaml", &both("zone-c"));
    let changes = manifests.poll().expect("poll").expect("zone moved");
    let names: Vec<&str> = changes.nodes.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["node1"]);
    assert_eq!(zone(manifests.node()).as_deref(), Some("zone-c"));

    // Without a node name, only a lone Node manifest is handed over.
    let mut unnamed = ManifestDir::new(dir.path());
    unnamed.poll().expect("poll");
    assert_eq!(unnamed.node(), None, "two Nodes, no name");

    // The source hands the current Node over with every change.
    let mut source = crate::source::Source::Manifests(ManifestDir::new(dir.path()));
    dir.write("nodes.yaml", &node("node1", "zone-d"));
    match source.poll() {
        crate::source::Update::Converted { node, .. } => {
            assert_eq!(zone(node).as_deref(), Some("zone-d"));
        }
        other => panic!("expected changes, got {other:?}"),
    }

    fs::remove_file(dir.path().join("nodes.yaml")).expect("rm");
    let changes = manifests.poll().expect("poll").expect("gone");
    assert!(changes.nodes.iter().all(|(_, n)| n.is_none()));
    assert_eq!(manifests.node(), None);
}
