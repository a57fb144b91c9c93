//! HTTP side of the test API server: routing, list pages, watch streams.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::Shared;
use super::state::{Change, Resource, Selector};

type Body = BoxBody<Bytes, io::Error>;

pub(super) async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut cut = shared.cut.subscribe();
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(req, &shared)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            // Dropping the connection closes the socket mid-stream: an abrupt cut.
            tokio::select! {
                _ = conn => {}
                _ = cut.changed() => {}
            }
        });
    }
}

struct Query(HashMap<String, String>);

impl Query {
    fn parse(raw: Option<&str>) -> Self {
        let pairs = raw.unwrap_or_default().split('&').filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (!k.is_empty()).then(|| (decode(k), decode(v)))
        });
        Self(pairs.collect())
    }
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn handle(req: Request<Incoming>, shared: &Arc<Shared>) -> Response<Body> {
    let path: Vec<&str> = req.uri().path().trim_matches('/').split('/').collect();
    let (resource, namespace) = match path.as_slice() {
        ["api", "v1", "services"] => (Resource::Services, None),
        ["api", "v1", "namespaces", ns, "services"] => (Resource::Services, Some(*ns)),
        ["apis", "discovery.k8s.io", "v1", "endpointslices"] => (Resource::EndpointSlices, None),
        [
            "apis",
            "discovery.k8s.io",
            "v1",
            "namespaces",
            ns,
            "endpointslices",
        ] => (Resource::EndpointSlices, Some(*ns)),
        ["api", "v1", "nodes"] => (Resource::Nodes, None),
        _ => return status(StatusCode::NOT_FOUND, "NotFound", "no such resource"),
    };
    let query = Query::parse(req.uri().query());
    let selector = Selector::parse(query.get("labelSelector"), query.get("fieldSelector"));
    let namespace = namespace.map(String::from);
    let watch = query.flag("watch");
    shared.count(format!(
        "{} {}",
        if watch { "watch" } else { "list" },
        resource.plural()
    ));
    let filter = Filter {
        resource,
        namespace,
        selector,
    };
    if watch {
        let from = query
            .get("resourceVersion")
            .and_then(|rv| rv.parse::<u64>().ok())
            .filter(|rv| *rv != 0);
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .map(Duration::from_secs);
        let bookmarks = query.flag("allowWatchBookmarks");
        watch_stream(shared.clone(), filter, from, bookmarks, timeout)
    } else if shared
        .failing_lists
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .contains(&resource)
    {
        status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "failing on purpose",
        )
    } else {
        let limit = query.get("limit").and_then(|l| l.parse::<usize>().ok());
        list(shared, &filter, limit, query.get("continue"))
    }
}

struct Filter {
    resource: Resource,
    namespace: Option<String>,
    selector: Selector,
}

impl Filter {
    fn matches(&self, obj: &Value) -> bool {
        let ns_ok = self
            .namespace
            .as_deref()
            .is_none_or(|ns| obj["metadata"]["namespace"].as_str() == Some(ns));
        ns_ok && self.selector.matches(obj)
    }
}

fn list(
    shared: &Shared,
    filter: &Filter,
    limit: Option<usize>,
    token: Option<&str>,
) -> Response<Body> {
    let mut state = shared.state();
    let (id, offset) = match token {
        Some(token) => {
            let parsed = token
                .split_once(':')
                .and_then(|(id, off)| Some((id.parse::<u64>().ok()?, off.parse::<usize>().ok()?)));
            match parsed {
                Some((id, off)) if state.lists.contains_key(&id) => (id, off),
                _ => {
                    return status(
                        StatusCode::GONE,
                        "Expired",
                        "the provided continue parameter is too old",
                    );
                }
            }
        }
        None => {
            let items = state
                .objects
                .iter()
                .filter(|((r, _, _), obj)| *r == filter.resource && filter.matches(obj))
                .map(|(_, obj)| obj.clone())
                .collect();
            (state.snapshot_list(items), 0)
        }
    };
    let Some((rv, items)) = state.lists.get(&id).cloned() else {
        return status(StatusCode::GONE, "Expired", "list snapshot expired");
    };
    let end = limit.map_or(items.len(), |l| (offset + l.max(1)).min(items.len()));
    let page: Vec<&Value> = items[offset.min(end)..end].iter().map(|v| &**v).collect();
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if end < items.len() {
        metadata["continue"] = json!(format!("{id}:{end}"));
    } else {
        state.lists.remove(&id);
    }
    let body = json!({
        "apiVersion": filter.resource.api_version(),
        "kind": format!("{}List", filter.resource.kind()),
        "metadata": metadata,
        "items": page,
    });
    json_response(StatusCode::OK, &body)
}

/// Streams events after `from` (or every current object as ADDED when
/// absent), then live ones, bookmarks in between if asked.
fn watch_stream(
    shared: Arc<Shared>,
    filter: Filter,
    from: Option<u64>,
    bookmarks: bool,
    timeout: Option<Duration>,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    tokio::spawn(async move {
        let mut rv_changed = shared.rv.subscribe();
        let deadline = tokio::time::Instant::now() + timeout.unwrap_or(Duration::from_secs(3600));
        let (mut cursor, initial) = {
            let state = shared.state();
            match from {
                None => {
                    let current: Vec<Bytes> = state
                        .objects
                        .iter()
                        .filter(|((r, _, _), obj)| *r == filter.resource && filter.matches(obj))
                        .map(|(_, obj)| event("ADDED", obj))
                        .collect();
                    (state.rv, current)
                }
                Some(rv) if rv < state.oldest_watchable => {
                    (rv, vec![gone(rv, state.oldest_watchable)])
                }
                Some(rv) => (rv, Vec::new()),
            }
        };
        let expired = from.is_some() && !initial.is_empty();
        for line in initial {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        if expired {
            return;
        }
        loop {
            let batch: Result<Vec<Arc<Change>>, u64> = {
                let state = shared.state();
                if cursor < state.oldest_watchable {
                    Err(state.oldest_watchable)
                } else {
                    let start = state.history.partition_point(|c| c.rv <= cursor);
                    Ok(state.history.range(start..).cloned().collect())
                }
            };
            let batch = match batch {
                Ok(batch) => batch,
                Err(oldest) => {
                    let _ = tx.send(gone(cursor, oldest)).await;
                    return;
                }
            };
            for change in batch {
                cursor = change.rv;
                if change.resource != filter.resource {
                    continue;
                }
                let visible = |o: &Option<Arc<Value>>| o.clone().filter(|v| filter.matches(v));
                let line = match (visible(&change.old), visible(&change.new)) {
                    (None, Some(new)) => event("ADDED", &new),
                    (Some(_), Some(new)) => event("MODIFIED", &new),
                    // Gone, or no longer selected: the client must drop it.
                    (Some(old), None) => event("DELETED", change.new.as_ref().unwrap_or(&old)),
                    (None, None) => continue,
                };
                if tx.send(line).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                _ = rv_changed.changed() => {}
                _ = tokio::time::sleep(shared.bookmark_interval), if bookmarks => {
                    let bookmark = json!({
                        "kind": filter.resource.kind(),
                        "apiVersion": filter.resource.api_version(),
                        "metadata": {"resourceVersion": cursor.to_string()},
                    });
                    if tx.send(line("BOOKMARK", &bookmark)).await.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, io::Error>(Frame::data(bytes)), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(StreamBody::new(stream).boxed())
        .unwrap_or_else(|_| Response::new(empty()))
}

fn event(kind: &str, obj: &Value) -> Bytes {
    line(kind, obj)
}

fn line(kind: &str, obj: &Value) -> Bytes {
    let mut text = json!({"type": kind, "object": obj}).to_string();
    text.push('\n');
    Bytes::from(text)
}

/// What the API server sends when a watch asks for a compacted version.
fn gone(rv: u64, oldest: u64) -> Bytes {
    let status = status_object(
        StatusCode::GONE,
        "Expired",
        &format!("too old resource version: {rv} ({oldest})"),
    );
    line("ERROR", &status)
}

fn status_object(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    })
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(code, &status_object(code, reason, message))
}

fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from(body.to_string()))
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap_or_else(|_| Response::new(empty()))
}

fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}
