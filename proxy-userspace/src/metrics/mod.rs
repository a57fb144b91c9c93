//! Prometheus metrics, served on `--metrics-bind-address` (kube-proxy's
//! 127.0.0.1:10249). kube-proxy's own names, types, buckets and labels
//! wherever vipr does the same thing, so its dashboards and alerts keep
//! working; vipr's datapath under `vipr_` ([`datapath`]).
mod datapath;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets, linear_buckets};
use prometheus_client::registry::Registry;

pub use datapath::{DatapathMetrics, DatapathSnapshot, MapFill};

use crate::http::Reply;
use crate::model::{Model, Scope, Triggered, ip::Family as ModelFamily};

/// One label set: (name, value) pairs.
pub type Labels = Vec<(&'static str, String)>;

/// kube-proxy labels what one proxier (one address family) does. vipr's
/// one sync programs both families: the sync metrics keep "IPv4" (what a
/// single-stack dashboard selects); the per-Service ones carry the
/// frontend's own family, and programming latency its slice's.
pub const IPV4: &str = "IPv4";
pub const IPV6: &str = "IPv6";

/// The `ip_family` value of an address.
pub fn ip_family(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { IPV4 } else { IPV6 }
}

fn family(ip_family: &str) -> Labels {
    vec![("ip_family", ip_family.to_string())]
}

/// kube-proxy's sync histograms: ExponentialBuckets(0.001, 2, 15), 1 ms .. 16.4 s.
fn sync_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// kube-proxy's network programming buckets: 0.25 s steps to 0.5 s, 1 s
/// steps to 59 s, 5 s steps to 115 s, 30 s steps to 300 s.
fn programming_buckets() -> Histogram {
    Histogram::new(
        linear_buckets(0.25, 0.25, 2)
            .chain(linear_buckets(1.0, 1.0, 59))
            .chain(linear_buckets(60.0, 5.0, 12))
            .chain(linear_buckets(120.0, 30.0, 7)),
    )
}

type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// What a sync did, for the metrics.
#[derive(Clone, Copy, Debug)]
pub struct SyncObservation {
    pub duration: Duration,
    pub full: bool,
    pub succeeded: bool,
}

/// Every metric the agent serves. Shared (Arc) by the sync loop, which
/// writes, and the HTTP servers, which read and count probes.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    sync_duration: HistogramFamily,
    sync_full_duration: HistogramFamily,
    sync_partial_duration: HistogramFamily,
    last_sync: Family<Labels, Gauge<f64, AtomicU64>>,
    last_queued: Family<Labels, Gauge<f64, AtomicU64>>,
    programming: HistogramFamily,
    endpoint_changes: Counter,
    endpoint_changes_pending: Gauge,
    service_changes: Counter,
    service_changes_pending: Gauge,
    no_local_endpoints: Family<Labels, Gauge>,
    healthz: Family<Labels, Counter>,
    livez: Family<Labels, Counter>,
    pub datapath: DatapathMetrics,
    /// Changes made before the agent started are not its latency (as
    /// kube-proxy, which compares with its tracker's start).
    started: SystemTime,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut metrics = Self {
            registry: Registry::default(),
            sync_duration: Family::new_with_constructor(sync_buckets),
            sync_full_duration: Family::new_with_constructor(sync_buckets),
            sync_partial_duration: Family::new_with_constructor(sync_buckets),
            last_sync: Family::default(),
            last_queued: Family::default(),
            programming: Family::new_with_constructor(programming_buckets),
            endpoint_changes: Counter::default(),
            endpoint_changes_pending: Gauge::default(),
            service_changes: Counter::default(),
            service_changes_pending: Gauge::default(),
            no_local_endpoints: Family::default(),
            healthz: Family::default(),
            livez: Family::default(),
            datapath: DatapathMetrics::default(),
            started: SystemTime::now(),
        };
        metrics.register();
        metrics.precreate();
        metrics
    }

    /// Series exist from the start, at zero, as kube-proxy's do: a
    /// dashboard or alert then sees "no syncs yet", not "no data".
    fn precreate(&self) {
        let ipv4 = family(IPV4);
        for histogram in [
            &self.sync_duration,
            &self.sync_full_duration,
            &self.sync_partial_duration,
            &self.programming,
        ] {
            drop(histogram.get_or_create(&ipv4));
        }
        drop(self.last_sync.get_or_create(&ipv4));
        drop(self.last_queued.get_or_create(&ipv4));
        self.set_no_local_endpoints(NoLocalEndpoints::default());
    }

    fn register(&mut self) {
        let kube = self.registry.sub_registry_with_prefix("kubeproxy");
        kube.register(
            "sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            self.sync_duration.clone(),
        );
        kube.register(
            "sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            self.sync_full_duration.clone(),
        );
        kube.register(
            "sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            self.sync_partial_duration.clone(),
        );
        kube.register(
            "sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            self.last_sync.clone(),
        );
        kube.register(
            "sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            self.last_queued.clone(),
        );
        kube.register(
            "network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            self.programming.clone(),
        );
        // prometheus-client adds `_total` to a counter's name itself.
        kube.register(
            "sync_proxy_rules_endpoint_changes",
            "Cumulative proxy rules Endpoint changes",
            self.endpoint_changes.clone(),
        );
        kube.register(
            "sync_proxy_rules_endpoint_changes_pending",
            "Pending proxy rules Endpoint changes",
            self.endpoint_changes_pending.clone(),
        );
        kube.register(
            "sync_proxy_rules_service_changes",
            "Cumulative proxy rules Service changes",
            self.service_changes.clone(),
        );
        kube.register(
            "sync_proxy_rules_service_changes_pending",
            "Pending proxy rules Service changes",
            self.service_changes_pending.clone(),
        );
        // A gauge with kube-proxy's `_total` name: it counts Services now,
        // it does not accumulate.
        kube.register(
            "sync_proxy_rules_no_local_endpoints_total",
            "Number of services with a Local traffic policy and no endpoints",
            self.no_local_endpoints.clone(),
        );
        kube.register(
            "proxy_healthz",
            "Cumulative proxy healthz HTTP status",
            self.healthz.clone(),
        );
        kube.register(
            "proxy_livez",
            "Cumulative proxy livez HTTP status",
            self.livez.clone(),
        );
        self.datapath
            .register(self.registry.sub_registry_with_prefix("vipr"));
    }

    /// A sync ran: its duration, and the time of the last success.
    pub fn observe_sync(&self, sync: SyncObservation) {
        let labels = family(IPV4);
        let seconds = sync.duration.as_secs_f64();
        self.sync_duration.get_or_create(&labels).observe(seconds);
        let split = if sync.full {
            &self.sync_full_duration
        } else {
            &self.sync_partial_duration
        };
        split.get_or_create(&labels).observe(seconds);
        if sync.succeeded {
            self.last_sync
                .get_or_create(&labels)
                .set(unix_seconds(SystemTime::now()));
            self.endpoint_changes_pending.set(0);
            self.service_changes_pending.set(0);
        }
    }

    /// Changes arrived from the source and wait for the next sync.
    pub fn queued(&self, services: u64, endpoint_slices: u64) {
        self.last_queued
            .get_or_create(&family(IPV4))
            .set(unix_seconds(SystemTime::now()));
        self.service_changes.inc_by(services);
        self.endpoint_changes.inc_by(endpoint_slices);
        self.service_changes_pending
            .inc_by(i64::try_from(services).unwrap_or(i64::MAX));
        self.endpoint_changes_pending
            .inc_by(i64::try_from(endpoint_slices).unwrap_or(i64::MAX));
    }

    /// Endpoint changes made at `triggered` (their slices'
    /// `endpoints.kubernetes.io/last-change-trigger-time`) are now in the
    /// maps: observed under their slices' family.
    pub fn programmed(&self, triggered: impl IntoIterator<Item = Triggered>) {
        let now = SystemTime::now();
        for change in triggered.into_iter().filter(|t| t.at >= self.started) {
            // A trigger time ahead of this node's clock is skew, not latency.
            if let Ok(latency) = now.duration_since(change.at) {
                let ip_family = match change.family {
                    ModelFamily::Ipv4 => IPV4,
                    ModelFamily::Ipv6 => IPV6,
                };
                self.programming
                    .get_or_create(&family(ip_family))
                    .observe(latency.as_secs_f64());
            }
        }
    }

    /// Services (ports) with a Local policy and no local endpoint, per
    /// family and policy (`internal` or `external`).
    pub fn set_no_local_endpoints(&self, counts: NoLocalEndpoints) {
        let families = [(IPV4, Some(counts.ipv4)), (IPV6, counts.ipv6)];
        for (ip_family, counts) in families {
            let Some((internal, external)) = counts else {
                continue;
            };
            for (policy, count) in [("internal", internal), ("external", external)] {
                let mut labels = family(ip_family);
                labels.push(("traffic_policy", policy.to_string()));
                self.no_local_endpoints
                    .get_or_create(&labels)
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
            }
        }
    }

    pub fn count_healthz(&self, status: u16) {
        count_status(&self.healthz, status);
    }

    pub fn count_livez(&self, status: u16) {
        count_status(&self.livez, status);
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Reply {
        let mut body = String::new();
        match encode(&mut body, &self.registry) {
            Ok(()) => Reply {
                status: 200,
                content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body,
            },
            Err(error) => Reply {
                status: 500,
                content_type: "text/plain; charset=utf-8",
                body: format!("encoding the metrics failed: {error}\n"),
            },
        }
    }

    /// The /metrics server's routes.
    pub fn route(&self, path: &str) -> Reply {
        match path {
            "/metrics" => self.render(),
            _ => Reply::not_found(),
        }
    }
}

/// Service ports with a Local traffic policy and no endpoint on this node
/// for new connections, (internal, external) per family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoLocalEndpoints {
    pub ipv4: (usize, usize),
    /// `None` when the agent does not serve IPv6: no IPv6 series then, as
    /// a single-stack kube-proxy has none.
    pub ipv6: Option<(usize, usize)>,
}

/// Counted as kube-proxy's per-family proxiers count them: one per Service
/// port, policy and family, however many addresses it has in the family.
pub fn no_local_endpoints(model: &Model, ipv6: bool) -> NoLocalEndpoints {
    let mut seen = BTreeSet::new();
    for fe in model.frontends.values() {
        if fe.policy.local_only && fe.active_backends().is_empty() {
            let family = ip_family(&fe.key.ip);
            seen.insert((
                family,
                fe.key.scope,
                &fe.service,
                &*fe.port_name,
                fe.key.protocol,
            ));
        }
    }
    let count = |family: &str| {
        let of_family = seen.iter().filter(|s| s.0 == family);
        let internal = of_family.clone().filter(|s| s.1 == Scope::Internal).count();
        (internal, of_family.count() - internal)
    };
    NoLocalEndpoints {
        ipv4: count(IPV4),
        ipv6: ipv6.then(|| count(IPV6)),
    }
}

fn count_status(family: &Family<Labels, Counter>, status: u16) {
    family
        .get_or_create(&vec![("code", status.to_string())])
        .inc();
}

fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests;
