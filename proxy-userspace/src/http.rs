//! The agent's small HTTP endpoints (/healthz and /livez, /metrics) on
//! hyper: each server is a function from a request path to a [`Reply`].
use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What one path answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    pub fn not_found() -> Self {
        Self {
            status: 404,
            content_type: "text/plain; charset=utf-8",
            body: "not found\n".into(),
        }
    }
}

pub type Route = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// How long a server whose address is taken waits before trying again.
const BIND_RETRY: Duration = Duration::from_secs(5);

/// Binds `addr` (retrying while it is taken), then serves `route`. For
/// servers the proxy must not stop for: a taken metrics port costs the
/// scrape, not the datapath (kube-proxy retries its metrics server too).
pub async fn serve_when_bound(addr: SocketAddr, what: &'static str, route: Route) {
    let mut warned = false;
    loop {
        match bind(addr).await {
            Ok(listener) => {
                if warned {
                    tracing::info!(%addr, what, "listening at last");
                }
                return serve(listener, route).await;
            }
            Err(error) => {
                if !std::mem::replace(&mut warned, true) {
                    tracing::warn!(%addr, what, %error, "cannot listen; retrying every 5 s");
                }
                tokio::time::sleep(BIND_RETRY).await;
            }
        }
    }
}

/// Serves `route` on every connection `listener` accepts, until the
/// runtime stops.
pub async fn serve(listener: TcpListener, route: Route) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let route = route.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let reply = route(request.uri().path());
                async move { Ok::<_, Infallible>(response(reply)) }
            });
            // A client that goes away mid-request is its own problem.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn response(reply: Reply) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() = hyper::StatusCode::from_u16(reply.status)
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(value) = hyper::header::HeaderValue::from_str(reply.content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}
