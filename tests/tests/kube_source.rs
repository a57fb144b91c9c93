//! The Kubernetes API source against the in-process test API server: vipr's
//! real kube-rs reflectors, model, planner and sync loop, writing to the
//! in-memory maps (no BPF, no root) — except the last test, which runs the
//! real `vipr run --kubeconfig` agent binary.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use vipr::plan::MapOp;
use vipr_tests::apiserver::Resource;
use vipr_tests::apiserver::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_map_write_before_every_store_is_listed() -> Result<()> {
    let api = api_with(&[
        service("web", "10.96.0.10", &[80]),
        slice("web-a", "web", 8080, &["10.0.0.1", "10.0.0.2"]),
    ])
    .await?;
    // The Node list fails: the Service and EndpointSlice stores fill up, but
    // nothing may be written, not even the deletion of a stale entry.
    api.fail_lists(Resource::Nodes, true);
    let mut h = Harness::start(&api, restored_with_stale_entry()).await?;
    h.run_for(Duration::from_millis(1500)).await;
    assert!(!h.source.ready(), "the Node store cannot be listed yet");
    assert!(api.requests("list services") >= 1);
    assert!(
        h.writes().is_empty(),
        "wrote before every store was listed: {:?}",
        h.writes()
    );
    assert!(
        h.table().contains_key("10.96.0.99:80/tcp"),
        "stale entry flushed early"
    );

    api.fail_lists(Resource::Nodes, false);
    h.until("first sync", |h| {
        h.table().keys().cloned().collect::<Vec<_>>() == ["10.96.0.10:80/tcp"]
    })
    .await?;
    assert_eq!(
        h.backends("10.96.0.10:80/tcp"),
        ["10.0.0.1:8080", "10.0.0.2:8080"]
    );
    assert!(h.reports[0].full, "the first sync compares everything");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_up_and_down() -> Result<()> {
    let api = api_with(&[
        service("web", "10.96.0.10", &[80]),
        slice("web-a", "web", 8080, &["10.0.0.1"]),
    ])
    .await?;
    let mut h = Harness::start(&api, Default::default()).await?;
    h.until("initial", |h| h.backends("10.96.0.10:80/tcp").len() == 1)
        .await?;

    let five = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"];
    api.apply(&slice("web-a", "web", 8080, &five))?;
    h.until("scaled to 5", |h| {
        h.backends("10.96.0.10:80/tcp").len() == 5
    })
    .await?;
    let last = h.reports.last().cloned().unwrap_or_default();
    assert!(!last.full, "a scale-up is an incremental sync");
    assert_eq!((last.converted, last.services_recomputed), (1, 1));
    assert_eq!(last.endpoints.added, 4);

    api.apply(&slice("web-a", "web", 8080, &["10.0.0.4"]))?;
    h.until("scaled to 1", |h| {
        h.backends("10.96.0.10:80/tcp") == ["10.0.0.4:8080"]
    })
    .await?;
    h.assert_consistent();
    assert_eq!(
        h.maps().backends.len(),
        1,
        "removed endpoints leave the backends map"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slice_split_into_two_slices_never_drops_an_endpoint() -> Result<()> {
    let all = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"];
    let api = api_with(&[
        service("web", "10.96.0.10", &[80]),
        slice("web-a", "web", 8080, &all),
    ])
    .await?;
    let mut h = Harness::start(&api, Default::default()).await?;
    h.until("initial", |h| h.backends("10.96.0.10:80/tcp").len() == 4)
        .await?;
    let before = h.writes().len();

    // As the EndpointSlice controller does: the new slice first, then the old one shrinks.
    api.apply(&slice("web-b", "web", 8080, &all[2..]))?;
    h.run_for(Duration::from_millis(300)).await;
    api.apply(&slice("web-a", "web", 8080, &all[..2]))?;
    h.run_for(Duration::from_millis(500)).await;
    h.until("split", |h| {
        h.model().frontends.values().all(|f| f.backends.len() == 4)
    })
    .await?;
    assert_eq!(
        h.backends("10.96.0.10:80/tcp"),
        all.map(|ip| format!("{ip}:8080"))
    );
    let churn: Vec<&MapOp> = h.writes()[before..].iter().collect();
    assert!(
        churn.is_empty(),
        "moving endpoints between slices rewrote maps: {churn:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_port_change() -> Result<()> {
    let api = api_with(&[
        service("web", "10.96.0.10", &[80]),
        slice("web-a", "web", 8080, &["10.0.0.1"]),
    ])
    .await?;
    let mut h = Harness::start(&api, Default::default()).await?;
    h.until("initial", |h| h.table().contains_key("10.96.0.10:80/tcp"))
        .await?;

    api.apply(&service("web", "10.96.0.10", &[8000]))?;
    h.until("port moved", |h| {
        h.table().keys().cloned().collect::<Vec<_>>() == ["10.96.0.10:8000/tcp"]
    })
    .await?;
    assert_eq!(h.backends("10.96.0.10:8000/tcp"), ["10.0.0.1:8080"]);
    h.assert_consistent();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_deleted_and_recreated_with_another_cluster_ip() -> Result<()> {
    let api = api_with(&[
        service("web", "10.96.0.10", &[80]),
        slice("web-a", "web", 8080, &["10.0.0.1"]),
    ])
    .await?;
    let mut h = Harness::start(&api, Default::default()).await?;
    h.until("initial", |h| h.table().contains_key("10.96.0.10:80/tcp"))
        .await?;

    assert!(api.delete(Resource::Services, "default", "web"));
    h.until("deleted", |h| h.table().is_empty()).await?;
    assert!(h.maps().backends.is_empty() && h.maps().slots.is_empty());

    api.apply(&service("web", "10.96.0.20", &[80]))?;
    h.until("recreated", |h| {
        h.backends("10.96.0.20:80/tcp") == ["10.0.0.1:8080"]
    })
    .await?;
    assert_eq!(h.table().len(), 1);
    h.assert_consistent();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relists_after_410_gone_and_sees_deletions_it_missed() -> Result<()> {
    let api = api_with(&[
        service("web", "10.96.0.10", &[80]),
        slice("web-a", "web", 8080, &["10.0.0.1"]),
        service("db", "10.96.0.11", &[5432]),
        slice("db-a", "db", 5432, &["10.0.1.1"]),
    ])
    .await?;
    let mut h = Harness::start(&api, Default::default()).await?;
    h.until("initial", |h| h.table().len() == 2).await?;
    let lists = api.requests("list services");

    // Changes the agent cannot watch: the history is compacted before it
    // reconnects, so its resourceVersion is too old and it must relist.
    api.stop();
    assert!(api.delete(Resource::Services, "default", "db"));
    api.apply(&slice("web-a", "web", 8080, &["10.0.0.1", "10.0.0.2"]))?;
    api.compact();
    api.resume().await?;

    h.until("converged after relist", |h| {
        h.table().len() == 1 && h.backends("10.96.0.10:80/tcp").len() == 2
    })
    .await?;
    assert!(api.requests("list services") > lists, "no relist after 410");
    assert!(
        !h.writes()
            .iter()
            .any(|op| matches!(op, MapOp::DeleteService(k) if k.ip().to_string() == "10.96.0.10")),
        "the unchanged Service flapped"
    );
    h.assert_consistent();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_down_keeps_serving_then_converges() -> Result<()> {
    let api = api_with(&[
        service("web", "10.96.0.10", &[80]),
        slice("web-a", "web", 8080, &["10.0.0.1", "10.0.0.2"]),
        service("db", "10.96.0.11", &[5432]),
        slice("db-a", "db", 5432, &["10.0.1.1"]),
    ])
    .await?;
    let mut h = Harness::start(&api, Default::default()).await?;
    h.until("initial", |h| h.table().len() == 2).await?;
    let programmed = h.maps().clone();
    let writes = h.writes().len();

    api.stop();
    h.run_for(Duration::from_secs(2)).await;
    assert_eq!(
        h.maps(),
        &programmed,
        "maps changed while the API server was down"
    );
    assert_eq!(h.writes().len(), writes);
    assert!(h.source.ready(), "a lost connection is not a new start");

    // Back, with changes made meanwhile (history kept: the watch resumes).
    api.apply(&slice("web-a", "web", 8080, &["10.0.0.2", "10.0.0.3"]))?;
    api.apply(&service("cache", "10.96.0.12", &[6379]))?;
    api.resume().await?;
    h.until("converged after outage", |h| {
        h.table().len() == 3
            && h.backends("10.96.0.10:80/tcp") == ["10.0.0.2:8080", "10.0.0.3:8080"]
    })
    .await?;
    assert_eq!(h.backends("10.96.0.11:5432/tcp"), ["10.0.1.1:5432"]);
    assert!(
        !h.writes()[writes..]
            .iter()
            .any(|op| matches!(op, MapOp::DeleteService(_))),
        "a Service was removed and re-added"
    );
    assert!(h.health.healthy());
    Ok(())
}

/// A rolling restart of the API server: three outages in about half a
/// minute, each with a change made meanwhile. The watch backoff is capped
/// at 2 s, so each change reaches the maps within about that of the server
/// coming back (kube-rs's default backoff took 6 to 23 s here). The delays
/// are printed, not asserted: the machine is shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_the_maps_soon_after_each_api_server_restart() -> Result<()> {
    let api = api_with(&[
        service("web", "10.96.0.10", &[80]),
        slice("web-a", "web", 8080, &["10.0.0.1"]),
    ])
    .await?;
    let mut h = Harness::start(&api, Default::default()).await?;
    h.until("initial", |h| h.table().len() == 1).await?;
    let mut delays = Vec::new();
    for endpoint in ["10.0.0.2", "10.0.0.3", "10.0.0.4"] {
        api.stop();
        h.run_for(Duration::from_secs(8)).await;
        api.apply(&slice("web-a", "web", 8080, &[endpoint]))?;
        api.resume().await?;
        let back = Instant::now();
        let want = vec![format!("{endpoint}:8080")];
        h.until("the change after a restart", |h| {
            h.backends("10.96.0.10:80/tcp") == want
        })
        .await?;
        delays.push(back.elapsed());
    }
    eprintln!("change in the maps after each API server restart: {delays:?}");
    h.assert_consistent();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abrupt_watch_disconnects_resume_without_relisting() -> Result<()> {
    let api = api_with(&[
        service("web", "10.96.0.10", &[80]),
        slice("web-a", "web", 8080, &["10.0.0.1"]),
    ])
    .await?;
    let mut h = Harness::start(&api, Default::default()).await?;
    h.until("initial", |h| h.table().len() == 1).await?;
    let lists = api.requests("list endpointslices");
    for n in 2..=4 {
        api.disconnect_all();
        let ips: Vec<String> = (1..=n).map(|i| format!("10.0.0.{i}")).collect();
        let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
        api.apply(&slice("web-a", "web", 8080, &ips))?;
        h.until("change after disconnect", |h| {
            h.backends("10.96.0.10:80/tcp").len() == n
        })
        .await?;
    }
    assert_eq!(
        api.requests("list endpointslices"),
        lists,
        "a broken watch resumes from its resourceVersion"
    );
    assert!(api.requests("watch endpointslices") >= 4);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_services_created_in_one_burst() -> Result<()> {
    let api = api_with(&[]).await?;
    let mut h = Harness::start(&api, Default::default()).await?;
    h.until("empty initial sync", |h| !h.reports.is_empty())
        .await?;

    let mut burst = String::new();
    for i in 0..1000u32 {
        let ip = format!("10.97.{}.{}", i / 250, i % 250 + 1);
        let name = format!("svc-{i}");
        burst.push_str(&service(&name, &ip, &[80]));
        burst.push_str(&slice(
            &format!("{name}-a"),
            &name,
            8080,
            &[&format!("10.1.{}.{}", i / 250, i % 250 + 1)],
        ));
    }
    api.apply(&burst)?;
    // Services and their slices may land in different syncs: wait for both.
    h.until("all 1000 programmed", |h| {
        h.table().len() == 1000 && h.maps().backends.len() == 1000
    })
    .await?;
    h.assert_consistent();
    assert_eq!(h.maps().backends.len(), 1000);
    // Batched by --min-sync-period: a handful of syncs, not one per object.
    let syncs = h.reports.len();
    assert!(syncs <= 10, "{syncs} syncs for one burst");

    // A relist of 1,000 Services comes in pages (kube-rs asks for 500 at a
    // time) and changes nothing.
    let lists = api.requests("list services");
    let writes = h.writes().len();
    api.stop();
    api.compact();
    api.resume().await?;
    h.until("relisted in pages", |_| {
        api.requests("list services") >= lists + 2
    })
    .await?;
    h.run_for(Duration::from_millis(500)).await;
    assert_eq!(h.table().len(), 1000);
    assert_eq!(
        h.writes().len(),
        writes,
        "a relist of unchanged objects wrote maps"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_objects_and_node_are_recorded() -> Result<()> {
    let api = api_with(&[
        "apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, 'fd00::10']
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  ports: [{name: http, port: 80}]
---
"
        .to_string(),
        slice("web-a", "web", 8080, &["10.0.0.1"]),
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v6, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: 8080}]
endpoints: [{addresses: ['fd00::1']}]
---
"
        .to_string(),
    ])
    .await?;
    let mut h = Harness::start(&api, Default::default()).await?;
    h.until("initial", |h| h.table().len() == 1).await?;
    assert_eq!(h.backends("10.96.0.10:80/tcp"), ["10.0.0.1:8080"]);
    let skipped = h.sync.skip_counts().clone();
    assert_eq!(skipped.get("ipv6-cluster-ip"), Some(&1), "{skipped:?}");
    assert_eq!(skipped.get("ipv6-address-type"), Some(&1), "{skipped:?}");
    let node = h.model().node.clone().expect("the node is recorded");
    assert_eq!(node.zone.as_deref(), Some("zone-a"));
    assert_eq!(node.addresses.len(), 1);
    assert_eq!(node.addresses[0].ip.to_string(), "192.168.0.10");
    assert_eq!(node.ipv6_skipped, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_resync_repairs_drift() -> Result<()> {
    let api = api_with(&[
        service("web", "10.96.0.10", &[80]),
        slice("web-a", "web", 8080, &["10.0.0.1"]),
    ])
    .await?;
    let mut h = Harness::start_with(&api, Default::default(), Duration::from_millis(600)).await?;
    h.until("initial", |h| h.table().len() == 1).await?;
    // Someone deletes the entry behind the agent's back.
    h.sync.syncer_mut().maps.contents.services.clear();
    h.until("repaired", |h| h.table().len() == 1).await?;
    assert!(h.reports.iter().filter(|r| r.full).count() >= 2);
    Ok(())
}

/// The real agent (root, BPF): `vipr run --kubeconfig` against the test
/// API server, read back with `vipr dump`, and /healthz.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vipr_run_with_kubeconfig_programs_the_kernel_maps() -> Result<()> {
    let bin = std::env::var_os("VIPR_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/vipr"),
        PathBuf::from,
    );
    let api = api_with(&[
        service("web", "10.96.0.10", &[80]),
        slice("web-a", "web", 8080, &["10.0.0.1"]),
    ])
    .await?;
    let dir = std::env::temp_dir().join(format!("vipr-kube-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig())?;
    let pins = PathBuf::from(format!("/sys/fs/bpf/vipr-kube-test-{}", std::process::id()));
    let healthz = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut cmd = Command::new(&bin);
    cmd.arg("run")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--node-name", NODE, "--pod-interfaces", "vipr-kube-none*"])
        .arg("--bpffs")
        .arg(&pins)
        .arg("--state-dir")
        .arg(&dir)
        .args(["--healthz-bind-address", &healthz.to_string()])
        .args(["--min-sync-period", "100ms"]);
    let mut agent = vipr_tests::netns::ChildGuard::spawn(&mut cmd)?;
    let result = async {
        wait_for_dump(
            &bin,
            &pins,
            "svc 10.96.0.10:80/tcp id=1 count=1 has-endpoints",
        )
        .await?;
        let (code, body) = get_healthz(healthz)?;
        if code != 200 {
            bail!("/healthz {code}: {body}");
        }
        api.apply(&slice("web-a", "web", 8080, &["10.0.0.1", "10.0.0.2"]))?;
        wait_for_dump(
            &bin,
            &pins,
            "svc 10.96.0.10:80/tcp id=1 count=2 has-endpoints",
        )
        .await
    }
    .await;
    agent.terminate()?;
    let _ = std::fs::remove_dir_all(&pins);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn wait_for_dump(bin: &PathBuf, pins: &PathBuf, line: &str) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new(bin)
            .arg("dump")
            .arg("--bpffs")
            .arg(pins)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if text.lines().any(|l| l == line) {
            return Ok(());
        }
        if Instant::now() > end {
            bail!(
                "no {line:?} in vipr dump: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn get_healthz(addr: std::net::SocketAddr) -> Result<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(addr).context("connecting to /healthz")?;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    let code = reply
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status code")?;
    Ok((code, reply))
}

/// deploy/ parses as the Kubernetes objects it claims to be, with no field
/// the typed objects do not know (a typo would round-trip differently), and
/// grants exactly what the agent uses.
#[test]
fn deploy_manifests_are_valid_kubernetes_objects() -> Result<()> {
    use k8s_openapi::api::apps::v1::DaemonSet;
    use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    use serde_json::Value;

    fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value) -> Result<T> {
        let obj: T = serde_json::from_value(doc.clone())?;
        let back = serde_json::to_value(&obj)?;
        if &back != doc {
            bail!("fields lost in a round trip (unknown or misspelt):\n{doc:#}\nvs\n{back:#}");
        }
        Ok(obj)
    }

    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut kinds = Vec::new();
    let (mut daemonset, mut role, mut config) = (None, None, None);
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        // The Grafana dashboard (JSON) is not a Kubernetes object.
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let doc: Value = serde::Deserialize::deserialize(doc)
                .with_context(|| format!("{}", path.display()))?;
            let kind = doc["kind"].as_str().unwrap_or_default().to_string();
            let context = || format!("{} in {}", kind, path.display());
            match kind.as_str() {
                "DaemonSet" => daemonset = Some(typed::<DaemonSet>(&doc).with_context(context)?),
                "ClusterRole" => role = Some(typed::<ClusterRole>(&doc).with_context(context)?),
                "ConfigMap" => config = Some(typed::<ConfigMap>(&doc).with_context(context)?),
                "ServiceAccount" => drop(typed::<ServiceAccount>(&doc).with_context(context)?),
                "ClusterRoleBinding" => {
                    drop(typed::<ClusterRoleBinding>(&doc).with_context(context)?)
                }
                other => bail!("unexpected kind {other:?} in {}", path.display()),
            }
            kinds.push(kind);
        }
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet",
            "ServiceAccount"
        ]
    );

    let rules: Vec<(String, String, Vec<String>)> = role
        .and_then(|r| r.rules)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|r| {
            let groups = r.api_groups.unwrap_or_default();
            let verbs = r.verbs;
            r.resources
                .unwrap_or_default()
                .into_iter()
                .flat_map(move |res| groups.clone().into_iter().map(move |g| (g, res.clone())))
                .map(move |(g, res)| (g, res, verbs.clone()))
        })
        .collect();
    let want = |g: &str, r: &str, v: &[&str]| {
        (
            g.to_string(),
            r.to_string(),
            v.iter().map(|s| s.to_string()).collect(),
        )
    };
    assert_eq!(
        rules,
        [
            want("", "services", &["list", "watch"]),
            want("discovery.k8s.io", "endpointslices", &["list", "watch"]),
            want("", "nodes", &["get", "list", "watch"]),
        ]
    );

    let pod = daemonset
        .and_then(|d| d.spec)
        .and_then(|s| s.template.spec)
        .context("DaemonSet without a pod spec")?;
    assert_eq!(pod.host_network, Some(true));
    let container = &pod.containers[0];
    let security = container.security_context.clone().unwrap_or_default();
    assert_eq!(security.privileged, Some(false));
    let caps = security.capabilities.unwrap_or_default();
    assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
    assert_eq!(
        caps.add,
        Some(vec!["BPF".into(), "NET_ADMIN".into(), "SYS_ADMIN".into()])
    );
    // Every flag in the args is one `vipr run` knows.
    let bin = std::env::var_os("VIPR_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/vipr"),
        PathBuf::from,
    );
    let help = std::process::Command::new(&bin)
        .args(["run", "--help"])
        .output()?;
    let help = String::from_utf8_lossy(&help.stdout);
    for arg in container
        .args
        .iter()
        .flatten()
        .filter(|a| a.starts_with("--"))
    {
        let flag = arg.split('=').next().unwrap_or_default();
        assert!(
            help.contains(&format!("{flag} ")),
            "{flag}: not a `vipr run` flag"
        );
    }
    // Every $(VAR) in the args is defined by the ConfigMap or the env.
    let data = config.and_then(|c| c.data).unwrap_or_default();
    let env: Vec<String> = container
        .env
        .iter()
        .flatten()
        .map(|e| e.name.clone())
        .collect();
    for arg in container.args.iter().flatten() {
        if let Some((_, rest)) = arg.split_once("$(") {
            let var = rest.trim_end_matches(')');
            assert!(
                data.contains_key(var) || env.iter().any(|e| e == var),
                "{arg}: {var} undefined"
            );
        }
    }
    let mounts: Vec<&str> = container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.as_str())
        .collect();
    assert_eq!(mounts, ["/sys/fs/bpf", "/run/vipr/cgroupv2"]);
    // The socket hooks attach where the host's cgroup2 root is mounted.
    assert_eq!(
        data.get("CGROUP_ROOT").map(String::as_str),
        Some("/run/vipr/cgroupv2")
    );
    Ok(())
}
