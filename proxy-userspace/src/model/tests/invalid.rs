//! Invalid objects: the error names the field, and the last good version stays.

use super::*;

#[test]
fn invalid_services_name_the_field() {
    let two_ports = |second: &str| {
        svc(&format!(
            "metadata: {{name: web, namespace: default}}
spec: {{clusterIP: 10.96.0.1, ports: [{{name: a, port: 80}}, {second}]}}"
        ))
    };
    let cases = [
        (
            two_ports("{name: b, port: 0}"),
            "Service default/web: spec.ports[1].port: 0 is not a valid port",
        ),
        (
            two_ports("{name: b, port: 65536}"),
            "Service default/web: spec.ports[1].port: 65536 is not a valid port",
        ),
        (
            two_ports("{name: b, port: 81, protocol: ICMP}"),
            "Service default/web: spec.ports[1].protocol: \"ICMP\" is not a valid protocol",
        ),
        (
            two_ports("{name: b, port: 81, protocol: tcp}"),
            "Service default/web: spec.ports[1].protocol: \"tcp\" is not a valid protocol",
        ),
        (
            two_ports("{name: a, port: 81}"),
            "Service default/web: spec.ports[1].name: duplicate port name \"a\" (also spec.ports[0])",
        ),
        (
            two_ports("{name: b, port: 80}"),
            "Service default/web: spec.ports[1]: duplicate of spec.ports[0] (80/TCP)",
        ),
        (
            two_ports("{name: b, port: 81, targetPort: 0}"),
            "Service default/web: spec.ports[1].targetPort: 0 is not a valid port",
        ),
        (
            svc("metadata: {name: web}\nspec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}"),
            "Service default/web: spec.clusterIP: \"10.96.0.300\" is not a valid IP address",
        ),
        (
            svc(
                "metadata: {name: web}\nspec: {clusterIPs: [10.96.0.1, bogus], ports: [{port: 80}]}",
            ),
            "Service default/web: spec.clusterIPs[1]: \"bogus\" is not a valid IP address",
        ),
        (
            svc("metadata: {name: web, namespace: x}\nspec: {type: Weird, clusterIP: 10.96.0.1}"),
            "Service x/web: spec.type: \"Weird\" is not a valid service type",
        ),
        (
            svc("metadata: {namespace: x}\nspec: {clusterIP: 10.96.0.1}"),
            "Service x/: metadata.name: missing",
        ),
        (
            svc("metadata: {name: web}"),
            "Service default/web: spec: missing",
        ),
    ];
    for (service, want) in cases {
        let (m, errors) = ModelBuilder::new(ModelOptions::default()).update(&[service], &[]);
        let got: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(got, [want]);
        assert!(m.frontends.is_empty(), "{want}");
    }
}

#[test]
fn invalid_slices_name_the_field() {
    let s = |ports: &str, endpoints: &str| {
        slice(&format!(
            "metadata: {{name: web-a, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: {ports}
endpoints: {endpoints}"
        ))
    };
    let ok_ports = "[{name: http, port: 8080}]";
    let ok_eps = "[{addresses: [10.0.0.1]}]";
    let cases = [
        (
            s(
                ok_ports,
                "[{addresses: [10.0.0.1]}, {addresses: [10.0.0.256]}]",
            ),
            "EndpointSlice default/web-a: endpoints[1].addresses[0]: \"10.0.0.256\" is not a valid IPv4 address",
        ),
        (
            s(ok_ports, "[{addresses: []}]"),
            "EndpointSlice default/web-a: endpoints[0].addresses: must contain at least one address",
        ),
        (
            s("[{name: http, port: 0}]", ok_eps),
            "EndpointSlice default/web-a: ports[0].port: 0 is not a valid port",
        ),
        (
            s("[{name: http, port: 80, protocol: IGMP}]", ok_eps),
            "EndpointSlice default/web-a: ports[0].protocol: \"IGMP\" is not a valid protocol",
        ),
        (
            slice(
                "metadata: {name: web-a, labels: {kubernetes.io/service-name: web}}\naddressType: IPv5\nendpoints: []",
            ),
            "EndpointSlice default/web-a: addressType: \"IPv5\" is not a valid address type",
        ),
    ];
    for (bad, want) in cases {
        let (_, errors) =
            ModelBuilder::new(ModelOptions::default()).update(&[web("10.96.0.10")], &[bad]);
        let got: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(got, [want]);
    }
}

#[test]
fn invalid_update_keeps_last_good_version_until_deleted() {
    let mut builder = ModelBuilder::new(ModelOptions::default());
    let good_slice = web_slice("web-a", 8080, "[{addresses: [10.0.0.1]}]");
    let (m, errors) = builder.update(&[web("10.96.0.10")], std::slice::from_ref(&good_slice));
    assert!(errors.is_empty());
    assert!(m.stale.is_empty());

    // Both objects turn invalid: the frontend and its backend stay as they were.
    let bad_service = web("10.96.0.999");
    let bad_slice = web_slice(
        "web-a",
        8080,
        "[{addresses: [10.0.0.1]}, {addresses: [nope]}]",
    );
    let (m, errors) = builder.update(
        std::slice::from_ref(&bad_service),
        std::slice::from_ref(&bad_slice),
    );
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(errors[0].field, "spec.clusterIP");
    assert_eq!(errors[1].field, "endpoints[1].addresses[0]");
    assert_eq!(
        backends(frontend(&m, "10.96.0.10", 80, Protocol::Tcp)).1,
        ["10.0.0.1:8080"]
    );
    let stale: Vec<String> = m.stale.iter().map(ToString::to_string).collect();
    assert_eq!(
        stale,
        ["Service default/web", "EndpointSlice default/web-a"]
    );

    // Still invalid on the next round: still the last good version.
    let (m, _) = builder.update(
        std::slice::from_ref(&bad_service),
        std::slice::from_ref(&bad_slice),
    );
    assert_eq!(m.frontends.len(), 1);

    // A valid new version replaces it.
    let (m, errors) = builder.update(&[web("10.96.0.11")], std::slice::from_ref(&bad_slice));
    assert_eq!(errors.len(), 1);
    assert!(m.frontend(ip("10.96.0.10"), 80, Protocol::Tcp).is_none());
    assert_eq!(
        backends(frontend(&m, "10.96.0.11", 80, Protocol::Tcp)).0,
        ["10.0.0.1:8080"]
    );

    // Gone from the input: forgotten, and not resurrected by a later invalid version.
    let (m, _) = builder.update(&[], &[]);
    assert!(m.frontends.is_empty());
    let (m, errors) = builder.update(&[bad_service], &[bad_slice]);
    assert_eq!(errors.len(), 2);
    assert!(m.frontends.is_empty() && m.stale.is_empty());
}

#[test]
fn the_lb_algorithm_annotation_reaches_every_frontend_and_a_bad_value_keeps_the_last() {
    let annotated = |value: &str| {
        svc(&format!(
            "metadata:
  name: web
  namespace: default
  annotations: {{vipr.io/lb-algorithm: {value}}}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  ports: [{{name: http, port: 80, targetPort: http, nodePort: 30080}}]"
        ))
    };
    let opts = ModelOptions {
        nodeport_addresses: vec![ip("172.30.0.1").into()],
        ..ModelOptions::default()
    };
    let mut builder = ModelBuilder::new(opts);
    let slices = [web_slice("web-a", 8080, "[{addresses: [10.0.0.1]}]")];
    let (m, errors) = builder.update(&[annotated("maglev")], &slices);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        m.frontends.len(),
        3,
        "cluster IP, NodePort inside and outside"
    );
    assert!(
        m.frontends
            .values()
            .all(|fe| fe.policy.lb_algorithm == Some(crate::model::LbAlgorithm::Maglev))
    );
    // An unknown value: the error names the annotation; Maglev stays.
    let (m, errors) = builder.update(&[annotated("round-robin")], &slices);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0].to_string(),
        "Service default/web: metadata.annotations[vipr.io/lb-algorithm]: \
         \"round-robin\" is neither maglev nor random"
    );
    assert!(
        m.frontends
            .values()
            .all(|fe| fe.policy.lb_algorithm == Some(crate::model::LbAlgorithm::Maglev))
    );
}
