//! `/healthz` in the manner of kube-proxy's: 200 once the first full sync has
//! been applied, 503 before. The body is kube-proxy's JSON shape.
//!
//! Hand-written minimal HTTP/1.1 responder: one fixed endpoint does not
//! justify an HTTP server stack (revisit when /metrics lands).
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// Shared between the sync loop (writer) and the HTTP server (reader).
#[derive(Debug, Default)]
pub struct Health {
    /// Unix seconds of the last successful full sync; 0 = never.
    last_sync: AtomicU64,
}

impl Health {
    pub fn record_sync(&self) {
        self.last_sync.store(unix_now(), Ordering::Relaxed);
    }
    pub fn last_sync(&self) -> Option<u64> {
        Some(self.last_sync.load(Ordering::Relaxed)).filter(|&t| t != 0)
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
    match health.last_sync() {
        Some(last) => (
            200,
            format!(r#"{{"lastUpdated": "{last}", "currentTime": "{now}", "nodeEligible": true}}"#),
        ),
        None => (
            503,
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
}
