//! `vipr run`: the node agent's main loop over one source (manifests or the API).
//!
//! Each tick: attach to pod interfaces that appeared, forget the ones that
//! went, and let the sync loop take the source's changes to the maps.
use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tracing::{info, warn};

use crate::{
    datapath::{Attacher, DatapathError, InterfaceSelector, KernelMaps, LoadOptions, load_probed},
    healthz::Health,
    model::{ModelBuilder, ModelOptions},
    source::{
        Source,
        kube::{KubeSource, KubeSourceError},
        manifests::ManifestDir,
    },
    sync::{Periods, SyncLoop, Syncer},
};

/// Where Services and EndpointSlices come from: exactly one source.
#[derive(Clone, Debug)]
pub enum SourceConfig {
    Manifests(PathBuf),
    /// The Kubernetes API; `None` infers the config like any in-cluster agent.
    Kube {
        kubeconfig: Option<PathBuf>,
    },
}

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub source: SourceConfig,
    pub node_name: String,
    pub pod_interfaces: String,
    pub pin_dir: PathBuf,
    pub healthz: SocketAddr,
    pub proxy_name: Option<String>,
    /// How often the source and interfaces are looked at.
    pub poll_interval: Duration,
    pub periods: Periods,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("manifests directory {0}: {1}")]
    Manifests(PathBuf, String),
    #[error(transparent)]
    Kube(#[from] KubeSourceError),
}

/// Opens the configured source. The Kubernetes one starts its reflectors on
/// the current tokio runtime.
pub async fn open_source(config: &AgentConfig) -> Result<Source, AgentError> {
    Ok(match &config.source {
        SourceConfig::Manifests(dir) => Source::Manifests(ManifestDir::new(dir)),
        SourceConfig::Kube { kubeconfig } => {
            let client = crate::source::kube::connect(kubeconfig.as_deref()).await?;
            Source::Kube(KubeSource::start(
                client,
                &config.node_name,
                config.proxy_name.as_deref(),
            ))
        }
    })
}

/// Runs until `stop` is set. Loads (or re-uses the pinned) datapath first;
/// a failure there is fatal, anything later is logged and retried.
pub fn run(
    config: &AgentConfig,
    mut source: Source,
    health: &Health,
    stop: &AtomicBool,
) -> Result<(), AgentError> {
    let selector = InterfaceSelector::new(&config.pod_interfaces)?;
    // Logs the kernel's features and the chosen fallbacks; fails naming a missing essential.
    let (mut datapath, features) = load_probed(&LoadOptions::new(&config.pin_dir))?;
    let syncer = Syncer::restore(KernelMaps::take(&mut datapath)?)?;
    info!(
        node = %config.node_name,
        pins = %config.pin_dir.display(),
        restored_services = syncer.applied().services.len(),
        "datapath loaded"
    );
    let mut attacher = Attacher::new(&config.pin_dir).with_mode(features.tc_attach);
    let builder = ModelBuilder::new(ModelOptions {
        proxy_name: config.proxy_name.clone(),
    });
    let mut sync = SyncLoop::new(builder, syncer, config.periods);
    let mut missing_reported = false;

    while !stop.load(Ordering::Relaxed) {
        let tick = Instant::now();
        match selector.present() {
            Ok(present) => {
                for error in attacher.reconcile(&mut datapath, &present) {
                    warn!(%error, "attach failed; will retry");
                }
                let missing: Vec<&str> = selector
                    .exact_names()
                    .filter(|n| !present.contains_key(*n))
                    .collect();
                if !missing.is_empty() && !missing_reported {
                    warn!(interfaces = ?missing, "pod interfaces not found (yet)");
                }
                missing_reported = !missing.is_empty();
            }
            Err(error) => warn!(%error, "listing interfaces failed"),
        }

        sync.step(&mut source, tick, health);

        std::thread::sleep(config.poll_interval.saturating_sub(tick.elapsed()));
    }
    info!("stopping; programs and maps stay pinned for the next agent (vipr cleanup removes them)");
    Ok(())
}

/// Sets `stop` when the process gets SIGTERM or SIGINT.
pub fn stop_on_signals() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        flag.store(true, Ordering::Relaxed);
    });
    stop
}
