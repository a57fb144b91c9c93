//! A small in-process Kubernetes API server for tests: v1 Services,
//! discovery.k8s.io/v1 EndpointSlices and v1 Nodes over plain HTTP, with the
//! real list/watch protocol — list with resourceVersion and limit/continue
//! pages, watch streams of ADDED/MODIFIED/DELETED/BOOKMARK events resumed
//! from a resourceVersion, 410 Gone (an ERROR event with a Status) when that
//! version is no longer in the history window, label and field selectors —
//! plus the faults tests need: abrupt disconnects and being down.
//!
//! Objects are written as the same YAML the manifests source reads.

pub mod harness;
mod http;
mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use state::Resource;
use state::State;

/// Shared between the handle and the connection tasks.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// The latest resourceVersion, to wake watch streams.
    rv: watch::Sender<u64>,
    /// Bumped to drop every open connection at once.
    cut: watch::Sender<u64>,
    /// Requests served, by "list services", "watch nodes", ...
    requests: Mutex<BTreeMap<String, usize>>,
    /// Resources whose list requests fail with 503 (a slow or broken start).
    failing_lists: Mutex<BTreeSet<Resource>>,
    bookmark_interval: Duration,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
    fn count(&self, what: String) {
        *self
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(what)
            .or_default() += 1;
    }
}

pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl ApiServer {
    /// Listens on 127.0.0.1 (a free port). Needs a tokio runtime.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        Self::serve(listener)
    }

    /// Listens on 127.0.0.1 inside `netns`, for an agent running there.
    pub async fn start_in(netns: &str) -> anyhow::Result<Self> {
        let listener = crate::netns::run_in(netns, || std::net::TcpListener::bind("127.0.0.1:0"))??;
        listener.set_nonblocking(true)?;
        Self::serve(tokio::net::TcpListener::from_std(listener)?)
    }

    fn serve(listener: tokio::net::TcpListener) -> anyhow::Result<Self> {
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            rv: watch::channel(0).0,
            cut: watch::channel(0).0,
            requests: Mutex::new(BTreeMap::new()),
            failing_lists: Mutex::new(BTreeSet::new()),
            bookmark_interval: Duration::from_millis(500),
        });
        let accept = tokio::spawn(http::accept(listener, shared.clone()));
        Ok(Self {
            addr,
            shared,
            accept: Mutex::new(Some(accept)),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig pointing at this server, for `vipr run --kubeconfig`.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1
kind: Config
clusters: [{{name: test, cluster: {{server: '{}'}}}}]
users: [{{name: test, user: {{}}}}]
contexts: [{{name: test, context: {{cluster: test, user: test}}}}]
current-context: test
",
            self.url()
        )
    }

    /// A kube-rs client for this server (plain HTTP, no credentials).
    pub fn client(&self) -> anyhow::Result<kube::Client> {
        let config = kube::Config::new(self.url().parse()?);
        Ok(kube::Client::try_from(config)?)
    }

    /// Creates or replaces every object of a multi-document YAML text
    /// (Services, EndpointSlices, Nodes); one resourceVersion each.
    pub fn apply(&self, yaml: &str) -> anyhow::Result<()> {
        let mut state = self.shared.state();
        for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
            let value: serde_json::Value =
                serde::Deserialize::deserialize(doc).context("parsing test YAML")?;
            if value.is_null() {
                continue;
            }
            let kind = value["kind"].as_str().unwrap_or_default().to_string();
            let Some(resource) = Resource::from_kind(&kind) else {
                bail!("test API server does not serve kind {kind:?}");
            };
            state.put(resource, value).map_err(anyhow::Error::msg)?;
        }
        self.shared.rv.send_replace(state.rv);
        Ok(())
    }

    /// Deletes an object; false if it did not exist.
    pub fn delete(&self, resource: Resource, namespace: &str, name: &str) -> bool {
        let mut state = self.shared.state();
        let deleted = state.delete(resource, namespace, name);
        self.shared.rv.send_replace(state.rv);
        deleted
    }

    /// Forgets the change history: resuming a watch from any earlier
    /// resourceVersion now gets 410 Gone.
    pub fn compact(&self) {
        self.shared.state().compact();
    }

    /// How many changes a watch can resume over (default 10,000).
    pub fn set_history_limit(&self, limit: usize) {
        self.shared.state().history_limit = limit;
    }

    /// Makes list requests for `resource` fail with 503 (or work again).
    pub fn fail_lists(&self, resource: Resource, fail: bool) {
        let mut failing = self
            .shared
            .failing_lists
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if fail {
            failing.insert(resource);
        } else {
            failing.remove(&resource);
        }
    }

    /// Drops every open connection mid-stream (no final chunk).
    pub fn disconnect_all(&self) {
        self.shared.cut.send_modify(|n| *n += 1);
    }

    /// Stops listening and drops every connection: clients get
    /// "connection refused" until [`ApiServer::resume`].
    pub fn stop(&self) {
        if let Some(task) = self
            .accept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
        self.disconnect_all();
    }

    /// Listens again on the same address.
    pub async fn resume(&self) -> anyhow::Result<()> {
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                // The aborted accept task may not have released the port yet.
                Err(_) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e).context("rebinding the test API server"),
            }
        };
        let task = tokio::spawn(http::accept(listener, self.shared.clone()));
        *self.accept.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
        Ok(())
    }

    /// Requests served so far for e.g. "list services" or "watch endpointslices".
    pub fn requests(&self, what: &str) -> usize {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(what)
            .copied()
            .unwrap_or(0)
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.state().rv
    }
}
