//! The Kubernetes API as a source: kube-rs watchers on v1 Services and
//! discovery.k8s.io/v1 EndpointSlices, and a reflector (watcher + Store) on
//! this node's v1 Node.
//!
//! Services and EndpointSlices are converted as they arrive and only the
//! conversion is kept, by the model: no store holds the API objects, which
//! would be the agent's largest copy of the cluster. The watcher relists on
//! 410 Gone, re-watches from the last resourceVersion after a broken stream
//! and backs off while the API server is unreachable; meanwhile the model
//! keeps its last state, so nothing programmed changes. A relist can miss
//! Delete events, so it hands over the set of listed objects and the model
//! forgets the rest.

mod trim;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
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
use kube::{Api, Client, Config, Resource};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

use super::Update;
use crate::model::{
    Converted, Kind, LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME, ModelOptions, ObjectRef,
};

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

/// What arrived since the last poll.
#[derive(Debug, Default)]
struct Pending {
    /// The last event's conversion per object (`None`: deleted), in the
    /// order objects were first touched.
    objects: Vec<(ObjectRef, Option<Converted>)>,
    /// Position of each object in `objects`.
    positions: HashMap<ObjectRef, usize>,
    /// Kinds relisted, with every object listed or applied since.
    relisted: BTreeMap<Kind, HashSet<ObjectRef>>,
    node: bool,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.objects.is_empty() && self.relisted.is_empty() && !self.node
    }

    fn set(&mut self, object: ObjectRef, converted: Option<Converted>) {
        // An object applied after a relist but before this poll must
        // survive that relist's removal of what was not listed.
        if let Some(listed) = self.relisted.get_mut(&object.kind) {
            match converted {
                Some(_) => listed.insert(object.clone()),
                None => listed.remove(&object),
            };
        }
        match self.positions.get(&object) {
            Some(&at) => self.objects[at].1 = converted,
            None => {
                self.positions.insert(object.clone(), self.objects.len());
                self.objects.push((object, converted));
            }
        }
    }
}

/// Two watchers and a reflector running on the tokio runtime they were
/// started on; stopped when this is dropped.
pub struct KubeSource {
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
    /// Starts the watchers (needs a tokio runtime). Objects labelled
    /// headless, or for another proxy when `proxy_name` is unset, are left
    /// out by the API server as kube-proxy does; the model filters again.
    /// `ipv6`: IPv6 parts are converted (else skipped with their reasons).
    pub fn start(client: Client, node_name: &str, proxy_name: Option<&str>, ipv6: bool) -> Self {
        let mut selector = vec![format!("!{LABEL_HEADLESS}")];
        if proxy_name.is_none() {
            selector.push(format!("!{LABEL_SERVICE_PROXY_NAME}"));
        }
        let labels = selector.join(",");
        // Conversion reads only the proxy name and IPv6; the rest is the model's.
        let options = Arc::new(ModelOptions {
            proxy_name: proxy_name.map(str::to_owned),
            ipv6,
            ..ModelOptions::default()
        });
        let pending = Arc::new(Mutex::new(Pending::default()));
        let listed: [Arc<AtomicBool>; 3] = Default::default();
        let (nodes, w_nodes) = reflector::store();
        let tasks = vec![
            spawn_converting(
                Api::<Service>::all(client.clone()),
                watcher::Config::default().labels(&labels),
                Kind::Service,
                Converted::service,
                Converter {
                    options: options.clone(),
                    pending: pending.clone(),
                    listed: listed[0].clone(),
                },
            ),
            spawn_converting(
                Api::<EndpointSlice>::all(client.clone()),
                watcher::Config::default().labels(&labels),
                Kind::EndpointSlice,
                Converted::slice,
                Converter {
                    options,
                    pending: pending.clone(),
                    listed: listed[1].clone(),
                },
            ),
            spawn_node(
                Api::<Node>::all(client),
                watcher::Config::default().fields(&format!("metadata.name={node_name}")),
                w_nodes,
                pending.clone(),
                listed[2].clone(),
            ),
        ];
        Self {
            nodes,
            node_name: node_name.to_string(),
            pending,
            listed,
            tasks,
        }
    }

    /// Every kind has finished its initial list.
    pub fn ready(&self) -> bool {
        self.listed.iter().all(|l| l.load(Ordering::Acquire))
    }

    /// What arrived since the last call, with this node's Node.
    pub fn poll(&mut self) -> Update {
        let pending =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        if pending.is_empty() {
            return Update::None;
        }
        Update::Converted {
            objects: pending.objects,
            relisted: pending.relisted.into_iter().collect(),
            node: self.nodes.get(&reflector::ObjectRef::new(&self.node_name)),
        }
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

/// What a converting watcher shares with the source.
struct Converter {
    options: Arc<ModelOptions>,
    pending: Arc<Mutex<Pending>>,
    listed: Arc<AtomicBool>,
}

impl Converter {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One watcher (with backoff) whose objects are converted on arrival.
fn spawn_converting<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: Kind,
    convert: fn(&K, &ModelOptions) -> Converted,
    shared: Converter,
) -> JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    tokio::spawn(async move {
        let stream = watcher(api, config).backoff(WatchBackoff::new());
        let mut stream = std::pin::pin!(stream);
        let mut outage = Outage::new(kind);
        // Objects listed so far by a relist under way.
        let mut relisting: Option<HashSet<ObjectRef>> = None;
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(event) => event,
                Err(error) => {
                    outage.failed(&error);
                    continue;
                }
            };
            outage.recovered();
            match event {
                watcher::Event::Init => relisting = Some(HashSet::new()),
                watcher::Event::InitApply(obj) => {
                    let Some(object) = identity(kind, &obj) else {
                        continue;
                    };
                    relisting.get_or_insert_default().insert(object.clone());
                    let converted = convert(&obj, &shared.options);
                    shared.lock().set(object, Some(converted));
                }
                watcher::Event::InitDone => {
                    let listed = relisting.take().unwrap_or_default();
                    shared.lock().relisted.insert(kind, listed);
                    shared.listed.store(true, Ordering::Release);
                    tracing::info!(%kind, "listed");
                }
                watcher::Event::Apply(obj) => {
                    let Some(object) = identity(kind, &obj) else {
                        continue;
                    };
                    let converted = convert(&obj, &shared.options);
                    shared.lock().set(object, Some(converted));
                }
                watcher::Event::Delete(obj) => {
                    let Some(object) = identity(kind, &obj) else {
                        continue;
                    };
                    shared.lock().set(object, None);
                }
            }
        }
    })
}

/// The object's identity; an object without one (never from a real API
/// server) is logged and left out.
fn identity<K: Resource>(kind: Kind, obj: &K) -> Option<ObjectRef> {
    ObjectRef::of(kind, obj.meta())
        .inspect_err(|error| tracing::warn!(%error, "object without identity ignored"))
        .ok()
}

/// This node's Node: a reflector, as it is one small object.
fn spawn_node(
    api: Api<Node>,
    config: watcher::Config,
    writer: Writer<Node>,
    pending: Arc<Mutex<Pending>>,
    listed: Arc<AtomicBool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let stream = watcher(api, config)
            .backoff(WatchBackoff::new())
            .modify(trim::node)
            .reflect(writer);
        let mut stream = std::pin::pin!(stream);
        let mut outage = Outage::new("Node");
        while let Some(event) = stream.next().await {
            let lock = || pending.lock().unwrap_or_else(PoisonError::into_inner);
            match event {
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => lock().node = true,
                Ok(watcher::Event::InitDone) => {
                    lock().node = true;
                    listed.store(true, Ordering::Release);
                    tracing::info!(kind = "Node", "listed");
                }
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Err(error) => {
                    outage.failed(&error);
                    continue;
                }
            }
            outage.recovered();
        }
    })
}

/// Logs a watch outage once at warn, and its end; the backoff retries quietly.
struct Outage {
    kind: String,
    failing: bool,
}

impl Outage {
    fn new(kind: impl ToString) -> Self {
        Self {
            kind: kind.to_string(),
            failing: false,
        }
    }

    fn failed(&mut self, error: &watcher::Error) {
        let kind = &self.kind;
        if self.failing {
            tracing::debug!(%kind, %error, "watch still failing");
        } else {
            tracing::warn!(%kind, %error, "watch failed; serving the last known state, retrying with backoff");
        }
        self.failing = true;
    }

    fn recovered(&mut self) {
        if std::mem::take(&mut self.failing) {
            tracing::info!(kind = %self.kind, "watch recovered");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ConversionError;

    fn slice(name: &str) -> ObjectRef {
        ObjectRef {
            kind: Kind::EndpointSlice,
            namespace: "default".into(),
            name: name.into(),
        }
    }

    fn converted(object: &ObjectRef) -> Option<Converted> {
        Some(Converted::Slice(Err(ConversionError::new(
            object, "field", "test",
        ))))
    }

    /// A relist's "not listed, so gone" must spare what arrived after it
    /// and before the poll, and must not spare what was deleted since.
    #[test]
    fn objects_applied_after_a_relist_survive_it() {
        let (listed, late, deleted) = (slice("listed"), slice("late"), slice("deleted"));
        let mut pending = Pending::default();
        pending.set(listed.clone(), converted(&listed));
        pending.set(deleted.clone(), converted(&deleted));
        let relist: HashSet<ObjectRef> = [listed.clone(), deleted.clone()].into();
        pending.relisted.insert(Kind::EndpointSlice, relist);

        pending.set(late.clone(), converted(&late));
        pending.set(deleted.clone(), None);
        pending.set(listed.clone(), converted(&listed));

        let survivors = &pending.relisted[&Kind::EndpointSlice];
        assert_eq!(survivors, &HashSet::from([listed.clone(), late.clone()]));
        // One entry per object, in first-touched order, with its last event.
        let order: Vec<(&str, bool)> = pending
            .objects
            .iter()
            .map(|(o, c)| (&*o.name, c.is_some()))
            .collect();
        assert_eq!(
            order,
            [("listed", true), ("deleted", false), ("late", true)]
        );
    }
}
