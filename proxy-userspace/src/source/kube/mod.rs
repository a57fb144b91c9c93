//! The Kubernetes API as a source: kube-rs reflectors (watcher + Store) on
//! v1 Services, discovery.k8s.io/v1 EndpointSlices and this node's v1 Node.
//!
//! The watcher relists on 410 Gone, re-watches from the last
//! resourceVersion after a broken stream and backs off while the API server
//! is unreachable; meanwhile the stores keep their last state, so nothing
//! programmed changes. Events only mark which objects to look at again: the
//! objects themselves are always read from the stores (a relist can drop
//! Delete events, so a relist marks everything).

mod trim;

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::hash::Hash;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backon::BackoffBuilder as _;
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Config, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

use super::Update;
use super::manifests::Snapshot;
use crate::model::{Kind, LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME, ObjectRef};

#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error("finding the API server (service account or KUBECONFIG): {0}")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("creating the API client: {0}")]
    Client(#[from] kube::Error),
}

/// A client like any in-cluster agent's: `kubeconfig` if given, else kube's
/// inference (KUBECONFIG, ~/.kube/config, then the service account).
pub async fn connect(kubeconfig: Option<&Path>) -> Result<Client, KubeSourceError> {
    let config = match kubeconfig {
        Some(path) => {
            let err = |source| KubeSourceError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let kc = kube::config::Kubeconfig::read_from(path).map_err(err)?;
            Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(err)?
        }
        None => Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

/// Which objects were touched since the last poll.
#[derive(Debug, Default)]
struct Pending {
    /// A store was (re)listed: look at everything.
    full: bool,
    services: BTreeSet<(String, String)>,
    slices: BTreeSet<(String, String)>,
    node: bool,
}

impl Pending {
    fn is_empty(&self) -> bool {
        !self.full && self.services.is_empty() && self.slices.is_empty() && !self.node
    }
}

/// Three reflectors running on the tokio runtime they were started on;
/// stopped when this is dropped.
pub struct KubeSource {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    node_name: String,
    pending: Arc<Mutex<Pending>>,
    listed: [Arc<AtomicBool>; 3],
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl KubeSource {
    /// Starts the reflectors (needs a tokio runtime). Objects labelled
    /// headless, or for another proxy when `proxy_name` is unset, are left
    /// out by the API server as kube-proxy does; the model filters again.
    pub fn start(client: Client, node_name: &str, proxy_name: Option<&str>) -> Self {
        let mut selector = vec![format!("!{LABEL_HEADLESS}")];
        if proxy_name.is_none() {
            selector.push(format!("!{LABEL_SERVICE_PROXY_NAME}"));
        }
        let labels = selector.join(",");
        let pending = Arc::new(Mutex::new(Pending::default()));
        let listed: [Arc<AtomicBool>; 3] = Default::default();
        let (services, w_services) = reflector::store();
        let (slices, w_slices) = reflector::store();
        let (nodes, w_nodes) = reflector::store();
        let tasks = vec![
            spawn(
                Api::<Service>::all(client.clone()),
                watcher::Config::default().labels(&labels),
                w_services,
                trim::service,
                |p, o| p.services.insert(key(o)),
                pending.clone(),
                listed[0].clone(),
            ),
            spawn(
                Api::<EndpointSlice>::all(client.clone()),
                watcher::Config::default().labels(&labels),
                w_slices,
                trim::endpoint_slice,
                |p, o| p.slices.insert(key(o)),
                pending.clone(),
                listed[1].clone(),
            ),
            spawn(
                Api::<Node>::all(client),
                watcher::Config::default().fields(&format!("metadata.name={node_name}")),
                w_nodes,
                trim::node,
                |p, _| {
                    p.node = true;
                    true
                },
                pending.clone(),
                listed[2].clone(),
            ),
        ];
        Self {
            services,
            slices,
            nodes,
            node_name: node_name.to_string(),
            pending,
            listed,
            tasks,
        }
    }

    /// Every store has finished its initial list.
    pub fn ready(&self) -> bool {
        self.listed.iter().all(|l| l.load(Ordering::Acquire))
    }

    /// The objects touched since the last call, read from the stores; with
    /// `full` (or after a relist) every object.
    pub fn poll(&mut self, full: bool) -> Update {
        let pending =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        let node = self.nodes.get(&reflector::ObjectRef::new(&self.node_name));
        if full || pending.full {
            return Update::Full {
                services: self.services.state(),
                slices: self.slices.state(),
                node,
                trust_resource_version: true,
            };
        }
        if pending.is_empty() {
            return Update::None;
        }
        let services = pending
            .services
            .into_iter()
            .map(|(ns, name)| {
                let obj = self
                    .services
                    .get(&reflector::ObjectRef::new(&name).within(&ns));
                (object(Kind::Service, ns, name), obj)
            })
            .collect();
        let slices = pending
            .slices
            .into_iter()
            .map(|(ns, name)| {
                let obj = self
                    .slices
                    .get(&reflector::ObjectRef::new(&name).within(&ns));
                (object(Kind::EndpointSlice, ns, name), obj)
            })
            .collect();
        Update::Changed {
            services,
            slices,
            node,
        }
    }

    /// Copies of every stored object, in the manifests source's shape.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            services: self
                .services
                .state()
                .iter()
                .map(|s| (**s).clone())
                .collect(),
            endpoint_slices: self.slices.state().iter().map(|s| (**s).clone()).collect(),
            nodes: self.nodes.state().iter().map(|n| (**n).clone()).collect(),
        }
    }

    /// Number of stored Services and EndpointSlices.
    pub fn len(&self) -> (usize, usize) {
        (self.services.len(), self.slices.len())
    }
}

fn key<K: ResourceExt>(obj: &K) -> (String, String) {
    (obj.namespace().unwrap_or_default(), obj.name_any())
}

fn object(kind: Kind, namespace: String, name: String) -> ObjectRef {
    ObjectRef {
        kind,
        namespace,
        name,
    }
}

/// Retry delays of a failing watch: exponential from 200 ms, capped at 2 s,
/// and back to 200 ms with any event. kube-rs's default (800 ms doubling to
/// 30 s, reset only after 2 quiet minutes) left a change waiting 6 to 23 s
/// after an API server came back; a cap of 2 s bounds that wait while still
/// easing off a server that refuses connections.
struct WatchBackoff {
    builder: backon::ExponentialBuilder,
    delays: backon::ExponentialBackoff,
}

impl WatchBackoff {
    const FIRST: Duration = Duration::from_millis(200);
    const CAP: Duration = Duration::from_secs(2);

    fn new() -> Self {
        let builder = backon::ExponentialBuilder::default()
            .with_min_delay(Self::FIRST)
            .with_max_delay(Self::CAP)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Self {
            delays: builder.build(),
            builder,
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        self.delays.next()
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

/// One reflector: watcher (with backoff) → trim → store, marking what each
/// event touched.
fn spawn<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
    trim: fn(&mut K),
    mark: fn(&mut Pending, &K) -> bool,
    pending: Arc<Mutex<Pending>>,
    listed: Arc<AtomicBool>,
) -> JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let kind = K::kind(&K::DynamicType::default()).to_string();
    tokio::spawn(async move {
        let stream = watcher(api, config)
            .backoff(WatchBackoff::new())
            .modify(trim)
            .reflect(writer);
        let mut stream = std::pin::pin!(stream);
        let mut failing = false;
        while let Some(event) = stream.next().await {
            let lock = || pending.lock().unwrap_or_else(PoisonError::into_inner);
            match event {
                Ok(watcher::Event::Apply(obj) | watcher::Event::Delete(obj)) => {
                    mark(&mut lock(), &obj);
                }
                Ok(watcher::Event::InitDone) => {
                    lock().full = true;
                    listed.store(true, Ordering::Release);
                    tracing::info!(%kind, "listed");
                }
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Err(error) => {
                    // Once per outage at warn; the backoff retries quietly.
                    if failing {
                        tracing::debug!(%kind, %error, "watch still failing");
                    } else {
                        tracing::warn!(%kind, %error, "watch failed; serving the last known state, retrying with backoff");
                    }
                    failing = true;
                    continue;
                }
            }
            if std::mem::take(&mut failing) {
                tracing::info!(%kind, "watch recovered");
            }
        }
    })
}
