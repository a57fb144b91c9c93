//! `/healthz` in the manner of kube-proxy's: 200 once the first full sync has
//! been applied and while syncs keep succeeding, 503 before the first one and
//! once the last successful sync is older than the staleness limit (the agent
//! uses 2 × `--sync-period`, kube-proxy's rule: a live agent syncs at least
//! once per period, so missing two means the loop or the map writes are stuck). The
//! body is kube-proxy's JSON shape plus the seconds since the last sync.
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::http::{Reply, Route};
use crate::metrics::Metrics;

/// Shared between the sync loop (writer) and the HTTP server (reader).
#[derive(Debug)]
pub struct Health {
    /// Unix seconds of the last successful sync; 0 = never.
    last_sync: AtomicU64,
    stale_after: Duration,
}

impl Default for Health {
    /// kube-proxy's default: 2 × its 30 s sync period.
    fn default() -> Self {
        Self::new(Duration::from_secs(60))
    }
}

impl Health {
    pub fn new(stale_after: Duration) -> Self {
        Self {
            last_sync: AtomicU64::new(0),
            stale_after,
        }
    }
    pub fn record_sync(&self) {
        self.last_sync.store(unix_now(), Ordering::Relaxed);
    }
    pub fn last_sync(&self) -> Option<u64> {
        Some(self.last_sync.load(Ordering::Relaxed)).filter(|&t| t != 0)
    }
    /// Synced at least once, and not longer ago than the limit.
    pub fn healthy(&self) -> bool {
        self.last_sync()
            .is_some_and(|last| unix_now().saturating_sub(last) <= self.stale_after.as_secs())
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Status line and body for the current state.
pub fn response(health: &Health) -> (u16, String) {
    let now = unix_now();
    let code = if health.healthy() { 200 } else { 503 };
    match health.last_sync() {
        Some(last) => (
            code,
            format!(
                r#"{{"lastUpdated": "{last}", "currentTime": "{now}", "sinceLastSyncSeconds": {}, "nodeEligible": true}}"#,
                now.saturating_sub(last)
            ),
        ),
        None => (
            code,
            format!(r#"{{"lastUpdated": "", "currentTime": "{now}", "nodeEligible": true}}"#),
        ),
    }
}

/// The health server's routes: `/healthz`, and `/livez` as kube-proxy
/// has it. kube-proxy's /livez differs from /healthz only in ignoring the
/// node's deletion, which vipr's /healthz does not report; both are
/// counted in the metrics by status.
pub fn route(health: Arc<Health>, metrics: Arc<Metrics>) -> Route {
    Arc::new(move |path: &str| {
        let count: fn(&Metrics, u16) = match path {
            "/healthz" => Metrics::count_healthz,
            "/livez" => Metrics::count_livez,
            _ => return Reply::not_found(),
        };
        let (status, body) = response(&health);
        count(&metrics, status);
        Reply {
            status,
            content_type: "application/json",
            body,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unhealthy_until_first_sync() {
        let health = Health::default();
        assert_eq!(response(&health).0, 503);
        health.record_sync();
        let (code, body) = response(&health);
        assert_eq!(code, 200);
        assert!(body.contains("lastUpdated"), "{body}");
    }

    #[test]
    fn unhealthy_when_syncs_stall() {
        let health = Health::new(Duration::from_secs(60));
        health.last_sync.store(unix_now() - 61, Ordering::Relaxed);
        let (code, body) = response(&health);
        assert_eq!(code, 503, "{body}");
        assert!(body.contains(r#""sinceLastSyncSeconds": 61"#), "{body}");
        health.record_sync();
        assert_eq!(response(&health).0, 200);
    }

    #[test]
    fn both_probes_answer_and_are_counted() {
        let health = Arc::new(Health::default());
        let metrics = Arc::new(Metrics::new());
        let route = route(health.clone(), metrics.clone());
        assert_eq!(route("/healthz").status, 503);
        health.record_sync();
        assert_eq!(route("/livez").status, 200);
        assert_eq!(route("/metrics").status, 404);
        let text = metrics.render().body;
        assert!(
            text.contains("kubeproxy_proxy_healthz_total{code=\"503\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kubeproxy_proxy_livez_total{code=\"200\"} 1"),
            "{text}"
        );
    }
}
