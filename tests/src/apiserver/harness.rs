//! Drives vipr's Kubernetes source, model, planner and sync loop against the
//! test API server, with the in-memory maps: what the tests and the sync
//! benchmark share.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use proxy_common::{BackendValue, ServiceKey, ServiceValue, SlotKey};
use vipr::datapath::FakeMaps;
use vipr::healthz::Health;
use vipr::model::{Model, ModelBuilder, ModelOptions};
use vipr::plan::{MapContents, MapOp, check_consistency};
use vipr::source::Source;
use vipr::source::kube::KubeSource;
use vipr::sync::{Periods, SyncLoop, SyncReport, Syncer};

use super::ApiServer;

/// The node the agent under test runs on.
pub const NODE: &str = "node-a";

/// A one-port Service (port name `http`), as a YAML document.
pub fn service(name: &str, cluster_ip: &str, ports: &[u16]) -> String {
    let ports: Vec<String> = ports
        .iter()
        .map(|p| format!("{{name: http, port: {p}}}"))
        .collect();
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec: {{clusterIP: {cluster_ip}, ports: [{}]}}
---
",
        ports.join(", ")
    )
}

/// An EndpointSlice of `service` with port `http` → `port`, ready endpoints.
pub fn slice(name: &str, service: &str, port: u16, ips: &[&str]) -> String {
    let endpoints: Vec<String> = ips
        .iter()
        .map(|ip| format!("{{addresses: [{ip}], nodeName: {NODE}, zone: zone-a}}"))
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}, namespace: default, labels: {{kubernetes.io/service-name: {service}}}}}
addressType: IPv4
ports: [{{name: http, port: {port}, protocol: TCP}}]
endpoints: [{}]
---
",
        endpoints.join(", ")
    )
}

/// This node's Node object, as a YAML document.
pub fn node() -> String {
    format!(
        "apiVersion: v1
kind: Node
metadata: {{name: {NODE}, labels: {{topology.kubernetes.io/zone: zone-a, kubernetes.io/hostname: {NODE}}}}}
status:
  addresses:
  - {{type: InternalIP, address: 192.168.0.10}}
  - {{type: InternalIP, address: 'fd00::a'}}
  - {{type: Hostname, address: {NODE}}}
"
    )
}

/// A started API server holding this node and `objects` (YAML documents).
pub async fn api_with(objects: &[String]) -> Result<ApiServer> {
    let api = ApiServer::start().await?;
    api.apply(&node())?;
    api.apply(&objects.concat())?;
    Ok(api)
}

/// Maps as an earlier agent left them, with a Service the API no longer has.
pub fn restored_with_stale_entry() -> MapContents {
    let mut maps = MapContents::default();
    maps.services.insert(
        ServiceKey::new(
            "10.96.0.99".parse().expect("ip"),
            80,
            proxy_common::IPPROTO_TCP,
        ),
        ServiceValue {
            service_id: 7,
            backend_count: 1,
            flags: 0,
        },
    );
    maps.slots.insert(
        SlotKey {
            service_id: 7,
            slot: 0,
        },
        3,
    );
    maps.backends.insert(
        3,
        BackendValue::new(
            "10.9.9.9".parse().expect("ip"),
            80,
            proxy_common::IPPROTO_TCP,
        ),
    );
    maps
}

pub struct Harness {
    pub source: Source,
    pub sync: SyncLoop<FakeMaps>,
    pub health: Health,
    pub reports: Vec<SyncReport>,
}

impl Harness {
    /// Source + model + sync loop on maps holding `restored`; batches
    /// changes for 100 ms, syncs and resyncs fully every minute.
    pub async fn start(api: &ApiServer, restored: MapContents) -> Result<Self> {
        Self::start_with(api, restored, Duration::from_secs(60)).await
    }

    pub async fn start_with(
        api: &ApiServer,
        restored: MapContents,
        full_sync: Duration,
    ) -> Result<Self> {
        let mut maps = FakeMaps::default();
        maps.contents = restored;
        let periods = Periods {
            min_sync: Duration::from_millis(100),
            sync: full_sync,
            full_resync: full_sync,
        };
        Ok(Self {
            source: Source::Kube(KubeSource::start(api.client()?, NODE, None, false)),
            sync: SyncLoop::new(
                ModelBuilder::new(ModelOptions::default()),
                Syncer::restore(maps)?,
                periods,
            ),
            health: Health::new(2 * full_sync),
            reports: Vec::new(),
        })
    }

    fn step(&mut self) {
        if let Some(report) = self
            .sync
            .step(&mut self.source, Instant::now(), &self.health)
        {
            self.reports.push(report);
        }
    }

    /// Steps the sync loop for a while.
    pub async fn run_for(&mut self, duration: Duration) {
        let end = Instant::now() + duration;
        while Instant::now() < end {
            self.step();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Steps the sync loop until `done` holds (at most 20 s).
    pub async fn until(&mut self, what: &str, done: impl Fn(&Self) -> bool) -> Result<()> {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            self.step();
            if done(self) {
                return Ok(());
            }
            if Instant::now() > end {
                bail!("timed out waiting for {what}; maps: {:#?}", self.table());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn maps(&self) -> &MapContents {
        &self.sync.syncer().maps.contents
    }

    /// Every map write so far, in order.
    pub fn writes(&self) -> &[MapOp] {
        &self.sync.syncer().maps.log
    }

    pub fn model(&self) -> &Model {
        self.sync.model()
    }

    /// Frontend (`ip:port/proto`) → its active backends in slot order, read
    /// back from the maps as the datapath sees them. Frontends of deleted
    /// Services that still drain their established flows are left out.
    pub fn table(&self) -> BTreeMap<String, Vec<String>> {
        let maps = self.maps();
        let mut out = BTreeMap::new();
        let serving = maps
            .services
            .iter()
            .filter(|(_, v)| v.flags & proxy_common::SVC_FLAG_DRAINING == 0);
        for (key, value) in serving {
            let proto = if key.proto == proxy_common::IPPROTO_UDP {
                "udp"
            } else {
                "tcp"
            };
            let backends = maps
                .slot_backends(value)
                .map(|b| b.map_or_else(|| "missing".into(), |b| format!("{}:{}", b.ip(), b.port())))
                .collect();
            out.insert(format!("{}:{}/{proto}", key.ip(), key.port()), backends);
        }
        out
    }

    pub fn backends(&self, frontend: &str) -> Vec<String> {
        self.table().remove(frontend).unwrap_or_default()
    }

    pub fn assert_consistent(&self) {
        let problems = check_consistency(self.maps());
        assert!(problems.is_empty(), "inconsistent maps: {problems:?}");
    }
}
