//! The demo manifests in `examples/` describe exactly the topology the demo
//! and the e2e harness are built around; this pins it down.

use std::net::Ipv4Addr;
use std::path::Path;

use vipr::model::{ModelBuilder, ModelOptions, Protocol};
use vipr::plan::{Planner, dump_text};
use vipr::source::manifests::ManifestDir;

#[test]
fn examples_give_the_demo_topology() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut manifests = ManifestDir::new(&dir);
    manifests
        .poll()
        .expect("examples/ readable")
        .expect("first poll");
    let snapshot = manifests.snapshot();
    assert!(manifests.errors().is_empty(), "{:?}", manifests.errors());
    assert_eq!(snapshot.services.len(), 2);
    assert_eq!(snapshot.endpoint_slices.len(), 2);

    let mut builder = ModelBuilder::new(ModelOptions::default());
    let errors: Vec<_> = snapshot
        .services
        .iter()
        .chain(&snapshot.endpoint_slices)
        .filter_map(|(object, converted)| builder.apply_converted(object, Some(converted.clone())))
        .collect();
    builder.commit();
    let model = builder.model().clone();
    assert!(errors.is_empty(), "{errors:?}");
    assert!(model.skipped.is_empty(), "{:?}", model.skipped);
    let echo = Ipv4Addr::new(10, 96, 0, 10);
    let cases = [
        (echo, 80, Protocol::Tcp, "http", 8080),
        (echo, 53, Protocol::Udp, "dns", 5353),
        (Ipv4Addr::new(10, 96, 0, 20), 80, Protocol::Tcp, "http", 0),
    ];
    assert_eq!(model.frontends.len(), cases.len());
    for (ip, port, protocol, port_name, target) in cases {
        let fe = model.frontend(ip, port, protocol).expect("frontend");
        assert_eq!(fe.port_name, port_name);
        assert_eq!(fe.service.namespace, "demo");
        let got: Vec<(String, u16, Option<&str>)> = fe
            .active_backends()
            .iter()
            .map(|b| (b.ip.to_string(), b.port, b.node_name.as_deref()))
            .collect();
        let want: Vec<(String, u16, Option<&str>)> = if target == 0 {
            vec![]
        } else {
            vec![
                ("10.244.1.11".into(), target, Some("node1")),
                ("10.244.1.12".into(), target, Some("node1")),
                ("10.244.2.11".into(), target, Some("node2")),
            ]
        };
        assert_eq!(got, want, "{ip}:{port}/{protocol}");
    }
    let pods: Vec<Option<&str>> = model
        .frontend(echo, 80, Protocol::Tcp)
        .expect("echo")
        .backends
        .iter()
        .map(|b| b.target.as_deref())
        .collect();
    assert_eq!(
        pods,
        [
            Some("Pod/demo/echo-1"),
            Some("Pod/demo/echo-2"),
            Some("Pod/demo/echo-3")
        ]
    );

    let maps = Planner::new().desired(&model);
    assert_eq!(
        dump_text(&maps),
        "\
svc 10.96.0.10:53/udp id=1 count=3 has-endpoints
svc 10.96.0.10:80/tcp id=2 count=3 has-endpoints
svc 10.96.0.20:80/tcp id=3 count=0
slot 1/0 -> 1
slot 1/1 -> 2
slot 1/2 -> 3
slot 2/0 -> 4
slot 2/1 -> 5
slot 2/2 -> 6
backend 1 10.244.1.11:5353/udp
backend 2 10.244.1.12:5353/udp
backend 3 10.244.2.11:5353/udp
backend 4 10.244.1.11:8080/tcp
backend 5 10.244.1.12:8080/tcp
backend 6 10.244.2.11:8080/tcp
"
    );
}
