use std::time::{Duration, SystemTime};

use super::*;

fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find(|l| l.starts_with(prefix))
}

/// The value of `name`'s bucket `le` (labels in any order).
fn bucket(text: &str, name: &str, le: &str) -> Option<String> {
    let le = format!("le=\"{le}\"");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket{{")))
        .find(|l| l.contains(&le) && l.contains("ip_family=\"IPv4\""))
        .and_then(|l| l.rsplit(' ').next())
        .map(str::to_owned)
}

#[test]
fn kube_proxy_names_types_and_buckets() {
    let metrics = Metrics::new();
    metrics.observe_sync(SyncObservation {
        duration: Duration::from_millis(3),
        full: true,
        succeeded: true,
    });
    let text = metrics.render().body;
    for (name, kind) in [
        ("kubeproxy_sync_proxy_rules_duration_seconds", "histogram"),
        (
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "histogram",
        ),
        ("kubeproxy_sync_proxy_rules_last_timestamp_seconds", "gauge"),
        ("kubeproxy_sync_proxy_rules_endpoint_changes", "counter"),
        (
            "kubeproxy_sync_proxy_rules_service_changes_pending",
            "gauge",
        ),
        (
            "kubeproxy_network_programming_duration_seconds",
            "histogram",
        ),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}")),
            "{name} {kind} missing:\n{text}"
        );
    }
    // 3 ms falls in the 4 ms bucket (1, 2, 4 ms ...), not the 2 ms one.
    let sync = "kubeproxy_sync_proxy_rules_duration_seconds";
    assert_eq!(bucket(&text, sync, "0.002").as_deref(), Some("0"), "{text}");
    assert_eq!(bucket(&text, sync, "0.004").as_deref(), Some("1"), "{text}");
    assert_eq!(
        bucket(&text, sync, "16.384").as_deref(),
        Some("1"),
        "{text}"
    );
    assert_eq!(
        line(
            &text,
            "kubeproxy_sync_partial_proxy_rules_duration_seconds_count"
        ),
        Some("kubeproxy_sync_partial_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"} 0"),
        "a full sync is not a partial one:\n{text}"
    );
}

#[test]
fn pending_changes_clear_on_a_successful_sync_only() {
    let metrics = Metrics::new();
    metrics.queued(2, 5);
    let text = metrics.render().body;
    assert!(
        text.contains("kubeproxy_sync_proxy_rules_endpoint_changes_pending 5"),
        "{text}"
    );
    assert!(
        text.contains("kubeproxy_sync_proxy_rules_service_changes_total 2"),
        "{text}"
    );
    let failed = SyncObservation {
        duration: Duration::from_millis(1),
        full: false,
        succeeded: false,
    };
    metrics.observe_sync(failed);
    assert!(metrics.render().body.contains("endpoint_changes_pending 5"));
    metrics.observe_sync(SyncObservation {
        succeeded: true,
        ..failed
    });
    let text = metrics.render().body;
    assert!(
        text.contains("kubeproxy_sync_proxy_rules_endpoint_changes_pending 0"),
        "{text}"
    );
    assert!(
        text.contains("kubeproxy_sync_proxy_rules_endpoint_changes_total 5"),
        "{text}"
    );
}

#[test]
fn programming_latency_uses_kube_proxy_buckets_and_ignores_skew() {
    let mut metrics = Metrics::new();
    let now = SystemTime::now();
    let count = "kubeproxy_network_programming_duration_seconds_count{ip_family=\"IPv4\"}";
    metrics.programmed([ipv4(now - Duration::from_secs(3600))]);
    assert!(
        metrics.render().body.contains(&format!("{count} 0")),
        "a change from before the agent started is not its latency"
    );
    metrics.started = now - Duration::from_secs(60);
    metrics.programmed([
        ipv4(now - Duration::from_millis(300)),
        ipv4(now + Duration::from_secs(60)),
        Triggered {
            at: now - Duration::from_millis(100),
            family: crate::model::ip::Family::Ipv6,
        },
    ]);
    let text = metrics.render().body;
    let programming = "kubeproxy_network_programming_duration_seconds";
    assert_eq!(
        bucket(&text, programming, "0.25").as_deref(),
        Some("0"),
        "{text}"
    );
    assert_eq!(
        bucket(&text, programming, "0.5").as_deref(),
        Some("1"),
        "{text}"
    );
    assert_eq!(
        bucket(&text, programming, "300.0").as_deref(),
        Some("1"),
        "{text}"
    );
    assert!(text.contains(&format!("{count} 1")), "{text}");
    // An IPv6 slice's change is the IPv6 proxier's, as kube-proxy labels it.
    let count6 = "kubeproxy_network_programming_duration_seconds_count{ip_family=\"IPv6\"}";
    assert!(text.contains(&format!("{count6} 1")), "{text}");
}

fn ipv4(at: SystemTime) -> Triggered {
    Triggered {
        at,
        family: crate::model::ip::Family::Ipv4,
    }
}

/// One pod interface pair, one XDP interface, the services map 3/65536 full.
fn snapshot(new_flows: u64, truncated: u64) -> DatapathSnapshot {
    DatapathSnapshot {
        counters: vec![
            (proxy_common::Counter::DnatNew, new_flows),
            (proxy_common::Counter::DropTruncated, truncated),
        ],
        maps: vec![MapFill {
            map: "services",
            entries: 3,
            capacity: 65536,
        }],
        interfaces: vec![("pod", 2)],
        xdp: vec![("eth1".into(), "native")],
        maglev_frontends_on_slots: 4,
    }
}

#[test]
fn datapath_counters_mirror_the_kernel_and_xdp_follows_interfaces() {
    let metrics = Metrics::new();
    let mut snapshot = snapshot(7, 2);
    metrics.datapath.update(&snapshot);
    let text = metrics.render().body;
    for expected in [
        "vipr_datapath_packets_total{verdict=\"dnat_new\"} 7",
        "vipr_datapath_drops_total{reason=\"drop_truncated\"} 2",
        "vipr_map_entries{map=\"services\"} 3",
        "vipr_map_capacity{map=\"services\"} 65536",
        "vipr_attached_interfaces{role=\"pod\"} 2",
        "vipr_xdp_attached{interface=\"eth1\",mode=\"native\"} 1",
        "vipr_maglev_frontends_on_slots 4",
    ] {
        assert!(text.contains(expected), "{expected} missing:\n{text}");
    }
    snapshot.counters[0].1 = 9;
    snapshot.xdp.clear();
    metrics.datapath.update(&snapshot);
    let text = metrics.render().body;
    assert!(
        text.contains("vipr_datapath_packets_total{verdict=\"dnat_new\"} 9"),
        "{text}"
    );
    assert!(!text.contains("vipr_xdp_attached{"), "{text}");
    assert_eq!(metrics.route("/other").status, 404);
}

/// Every metric the Grafana dashboard in deploy/ queries is one /metrics serves.
#[test]
fn the_dashboard_queries_only_served_metrics() {
    let dashboard = include_str!("../../../deploy/grafana-dashboard.json");
    let metrics = Metrics::new();
    metrics.queued(1, 1);
    metrics.datapath.update(&snapshot(1, 1));
    metrics.count_healthz(200);
    metrics.count_livez(200);
    let served = metrics.render().body;
    let mut queried = 0;
    for word in dashboard.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("kubeproxy_") || word.starts_with("vipr_") {
            queried += 1;
            assert!(
                served.lines().any(|l| l.starts_with(word)),
                "the dashboard queries {word}, which /metrics does not serve"
            );
        }
    }
    assert!(
        queried > 10,
        "found only {queried} metric names in the dashboard"
    );
}

fn service(yaml: &str) -> k8s_openapi::api::core::v1::Service {
    serde_yaml_ng::from_str(&format!("apiVersion: v1\nkind: Service\n{yaml}"))
        .expect("test Service")
}

/// kube-proxy's per-family proxiers each count their own Services: a
/// dual-stack Service without local endpoints counts once per family, an
/// IPv4-only one in IPv4 only; without `--ipv6` there is no IPv6 series.
#[test]
fn no_local_endpoints_are_counted_in_each_frontends_family() {
    let local = |name: &str, families: &str, ips: &str| {
        service(&format!(
            "metadata: {{name: {name}, namespace: default}}
spec:
  internalTrafficPolicy: Local
  ipFamilyPolicy: PreferDualStack
  ipFamilies: {families}
  clusterIPs: {ips}
  ports: [{{name: http, port: 80}}]"
        ))
    };
    let services = [
        local("dual", "[IPv4, IPv6]", "[10.96.0.10, 'fd00:96::10']"),
        local("v4", "[IPv4]", "[10.96.0.11]"),
        local("v6", "[IPv6]", "['fd00:96::12']"),
        local("v6b", "[IPv6]", "['fd00:96::13']"),
    ];
    let options = crate::model::ModelOptions {
        ipv6: true,
        ..Default::default()
    };
    let (model, errors) = crate::model::ModelBuilder::new(options).update(&services, &[]);
    assert!(errors.is_empty(), "{errors:?}");

    let counts = no_local_endpoints(&model, true);
    assert_eq!(counts.ipv4, (2, 0));
    assert_eq!(counts.ipv6, Some((3, 0)));
    let metrics = Metrics::new();
    metrics.set_no_local_endpoints(counts);
    let text = metrics.render().body;
    let name = "kubeproxy_sync_proxy_rules_no_local_endpoints_total";
    let value = |family: &str| {
        text.lines()
            .filter(|l| l.starts_with(name))
            .find(|l| {
                l.contains(&format!("ip_family=\"{family}\""))
                    && l.contains("traffic_policy=\"internal\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_owned)
    };
    assert_eq!(value(IPV4).as_deref(), Some("2"), "{text}");
    assert_eq!(value(IPV6).as_deref(), Some("3"), "{text}");

    let single_stack = no_local_endpoints(&model, false);
    assert_eq!(single_stack.ipv6, None);
    let metrics = Metrics::new();
    metrics.set_no_local_endpoints(single_stack);
    assert!(
        !metrics.render().body.contains("ip_family=\"IPv6\""),
        "an IPv6 series without --ipv6"
    );
}
