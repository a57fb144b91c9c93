//! `/healthz` in the manner of kube-proxy's: 200 once the first full sync has
//! been applied and while syncs keep succeeding, 503 before the first one and
//! once the last successful sync is older than the staleness limit (the agent
//! uses 2 × `--sync-period`, kube-proxy's rule: a live agent syncs at least
//! once per period, so missing two means the loop or the map writes are stuck). The
//! body is kube-proxy's JSON shape plus the seconds since the last sync.
//!
//! Hand-written minimal HTTP/1.1 responder: one fixed endpoint does not
//! justify an HTTP server stack (revisit when /metrics lands).
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

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

pub async fn serve(listener: TcpListener, health: Arc<Health>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let health = health.clone();
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let n = stream.read(&mut request).await.unwrap_or(0);
            let path_ok = request[..n].starts_with(b"GET /healthz");
            let (code, body) = if path_ok {
                response(&health)
            } else {
                (404, String::from("not found"))
            };
            let reason = match code {
                200 => "OK",
                503 => "Service Unavailable",
                _ => "Not Found",
            };
            let reply = format!(
                "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes()).await;
        });
    }
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
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
}
