//! `vipr run`: the node agent's main loop over the manifests source.
//!
//! Each tick: attach to pod interfaces that appeared, forget the ones that
//! went, and if the manifests changed, sync the maps to them.
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
    datapath::{Attacher, Datapath, DatapathError, InterfaceSelector, KernelMaps, LoadOptions},
    healthz::Health,
    model::{ModelBuilder, ModelOptions},
    source::manifests::ManifestDir,
    sync::Syncer,
};

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub manifests: PathBuf,
    pub node_name: String,
    pub pod_interfaces: String,
    pub pin_dir: PathBuf,
    pub healthz: SocketAddr,
    pub proxy_name: Option<String>,
    /// How often the manifests and interfaces are looked at.
    pub poll_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("manifests directory {0}: {1}")]
    Manifests(PathBuf, String),
}

/// Runs until `stop` is set. Loads (or re-uses the pinned) datapath first;
/// a failure there is fatal, anything later is logged and retried.
pub fn run(config: &AgentConfig, health: &Health, stop: &AtomicBool) -> Result<(), AgentError> {
    let selector = InterfaceSelector::new(&config.pod_interfaces)?;
    let mut datapath = Datapath::load(&LoadOptions::new(&config.pin_dir))?;
    let mut syncer = Syncer::restore(KernelMaps::take(&mut datapath)?)?;
    info!(
        node = %config.node_name,
        pins = %config.pin_dir.display(),
        restored_services = syncer.applied().services.len(),
        "datapath loaded"
    );
    let mut attacher = Attacher::new(&config.pin_dir);
    let mut manifests = ManifestDir::new(&config.manifests);
    let mut builder = ModelBuilder::new(ModelOptions {
        proxy_name: config.proxy_name.clone(),
    });
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

        match manifests.poll() {
            Ok(Some(snapshot)) => {
                let (model, errors) = builder.update(&snapshot.services, &snapshot.endpoint_slices);
                for error in &errors {
                    warn!(%error, "invalid object; keeping its last valid version");
                }
                for skipped in &model.skipped {
                    tracing::debug!(%skipped, "skipped");
                }
                match syncer.sync(&model) {
                    Ok(report) => {
                        info!(
                            frontends = report.frontends,
                            map_writes = report.ops,
                            failed = report.failed_ops,
                            elapsed_us = report.elapsed.as_micros() as u64,
                            "synced"
                        );
                        if report.failed_ops == 0 {
                            health.record_sync();
                        }
                    }
                    Err(error) => warn!(%error, "sync failed; will retry"),
                }
            }
            Ok(None) => {}
            Err(error) => warn!(%error, "reading manifests failed; serving what is programmed"),
        }

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
