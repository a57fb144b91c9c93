//! `vipr run`: the node agent's main loop over one source (manifests or the API).
//!
//! Each tick: attach to pod interfaces that appeared, forget the ones that
//! went, and let the sync loop take the source's changes to the maps.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use proxy_common::maps;
use tracing::{info, warn};

use crate::conntrack::{CtTimeouts, Sweeper};
use crate::healthcheck::HealthChecks;
pub use crate::socket_lb::SocketLbConfig;
use crate::{
    datapath::{
        AttachMode, Attacher, ConntrackTable, DatapathError, InterfaceSelector, KernelMaps, LbMode,
        LoadOptions, MapSizes, SocketLbScope, XdpMode, attach_xdp, detach_xdp, load_probed,
    },
    healthz::Health,
    metrics::{DatapathSnapshot, MapFill, Metrics, no_local_endpoints},
    model::{ModelBuilder, ModelOptions},
    names::{ModelNames, index_path},
    plan::MapContents,
    socket_lb,
    source::{
        Source,
        kube::{KubeSource, KubeSourceError},
        manifests::ManifestDir,
    },
    sync::{Periods, SyncLoop, Syncer},
};

/// Objects converted in one sync past which the heap is trimmed after it.
const HEAP_TRIM_AFTER_CONVERTED: usize = 1_000;

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
    /// Where the name index is written (see `names`).
    pub state_dir: PathBuf,
    pub healthz: SocketAddr,
    pub proxy_name: Option<String>,
    /// How often the source and interfaces are looked at.
    pub poll_interval: Duration,
    pub periods: Periods,
    pub external: ExternalConfig,
    pub socket_lb: SocketLbConfig,
    pub map_sizes: MapSizes,
    pub conntrack: ConntrackConfig,
    /// `None`: TCX where the kernel has it, else clsact.
    pub tc_attach: Option<AttachMode>,
    /// Serve IPv6 (`--ipv6`).
    pub ipv6: bool,
    /// `--lb-algorithm` and the Maglev tables' parameters.
    pub lb: crate::plan::LbConfig,
}

/// How tracked flows end (`--conntrack-*`).
#[derive(Clone, Debug)]
pub struct ConntrackConfig {
    pub timeouts: CtTimeouts,
    pub sweep_period: Duration,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        Self {
            timeouts: CtTimeouts::default(),
            sweep_period: Duration::from_secs(30),
        }
    }
}

/// Where external traffic (NodePort, LoadBalancer, external IPs) comes in.
#[derive(Clone, Debug)]
pub struct ExternalConfig {
    /// Names or globs of the external interfaces; `None`: no external traffic.
    pub interfaces: Option<String>,
    /// `--nodeport-addresses` CIDRs, either family; empty: the external
    /// interfaces' addresses.
    pub nodeport_cidrs: Vec<(std::net::IpAddr, u8)>,
    /// The addresses masqueraded flows leave with, at most one per family;
    /// default: the first address of each family on the external interfaces.
    pub node_ip: Vec<IpAddr>,
    pub xdp: XdpMode,
    /// `--lb-mode`: masquerade or DSR to other nodes' endpoints.
    pub lb_mode: LbMode,
}

impl ExternalConfig {
    pub fn none() -> Self {
        Self {
            interfaces: None,
            nodeport_cidrs: Vec::new(),
            node_ip: Vec::new(),
            xdp: XdpMode::Off,
            lb_mode: LbMode::Snat,
        }
    }
}

/// NodePort addresses and the masquerade addresses, from the interfaces'
/// addresses now: `--nodeport-addresses` CIDRs pick among all of them (never
/// loopback), the default is the external interfaces' own addresses.
/// Without external interfaces, IPv6 still gets a node address: its hairpin
/// flows leave with it.
fn node_addresses(
    external: &ExternalConfig,
    selector: Option<&InterfaceSelector>,
) -> Result<(Vec<IpAddr>, NodeIps), DatapathError> {
    let by_interface = crate::datapath::ip_addresses()?;
    let Some(selector) = selector else {
        let every: Vec<IpAddr> = by_interface.values().flatten().copied().collect();
        let node_ips = NodeIps {
            ipv4: None,
            ipv6: first_global_ipv6(external.node_ip.iter().chain(&every)),
        };
        return Ok((Vec::new(), node_ips));
    };
    let own: Vec<IpAddr> = by_interface
        .iter()
        .filter(|(name, _)| selector.matches(name))
        .flat_map(|(_, ips)| ips.iter().copied())
        .collect();
    let in_cidr = |ip: &IpAddr| {
        external
            .nodeport_cidrs
            .iter()
            .any(|range| crate::model::ip::cidr_contains(*range, *ip))
    };
    let mut nodeport: Vec<IpAddr> = if external.nodeport_cidrs.is_empty() {
        own.clone()
    } else {
        by_interface
            .values()
            .flatten()
            .copied()
            .filter(in_cidr)
            .collect()
    };
    nodeport.retain(|ip| !ip.is_loopback());
    nodeport.sort();
    nodeport.dedup();
    let node_ips = NodeIps {
        ipv4: external.node_ip.iter().chain(&own).find_map(|ip| match ip {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        }),
        ipv6: first_global_ipv6(external.node_ip.iter().chain(&own)),
    };
    Ok((nodeport, node_ips))
}

/// Link-local addresses route nowhere beyond the link, and loopback
/// nowhere at all.
fn first_global_ipv6<'a>(mut candidates: impl Iterator<Item = &'a IpAddr>) -> Option<Ipv6Addr> {
    candidates.find_map(|ip| match ip {
        IpAddr::V6(v6) if !v6.is_unicast_link_local() && !v6.is_loopback() => Some(*v6),
        _ => None,
    })
}

/// The node addresses masqueraded flows leave with, per family.
#[derive(Clone, Copy, Debug, Default)]
struct NodeIps {
    ipv4: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
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
        SourceConfig::Manifests(dir) => Source::Manifests(
            ManifestDir::new(dir)
                .with_node_name(&config.node_name)
                .with_proxy_name(config.proxy_name.clone())
                .with_ipv6(config.ipv6),
        ),
        SourceConfig::Kube { kubeconfig } => {
            let client = crate::source::kube::connect(kubeconfig.as_deref()).await?;
            Source::Kube(KubeSource::start(
                client,
                &config.node_name,
                config.proxy_name.as_deref(),
                config.ipv6,
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
    metrics: &Arc<Metrics>,
    stop: &AtomicBool,
) -> Result<(), AgentError> {
    let selector = InterfaceSelector::new(&config.pod_interfaces)?;
    let external_selector = config
        .external
        .interfaces
        .as_deref()
        .map(InterfaceSelector::new)
        .transpose()?;
    let (nodeport_addresses, node_ip) =
        node_addresses(&config.external, external_selector.as_ref())?;
    if external_selector.is_some() {
        info!(?nodeport_addresses, ?node_ip, xdp = ?config.external.xdp, lb_mode = ?config.external.lb_mode, "external traffic");
    }
    let mut load_options = LoadOptions::new(&config.pin_dir);
    load_options.node_ipv4 = node_ip.ipv4;
    // Without IPv6 served, no IPv6 flow is masqueraded.
    load_options.node_ipv6 = node_ip.ipv6.filter(|_| config.ipv6);
    load_options.sizes = config.map_sizes;
    // The same on every node: a flow hashes to the same table position.
    load_options.hash_seed = config.lb.flow_hash_seed();
    load_options.lb_mode = config.external.lb_mode;
    load_options.socket_lb = config.socket_lb.scope.unwrap_or(SocketLbScope::Host);
    // Logs the kernel's features and the chosen fallbacks; fails naming a missing essential.
    let (mut datapath, features) = load_probed(&load_options)?;
    spawn_trace_copy(load_options.clone());
    let stale_udp =
        socket_lb::set_up(&config.socket_lb, &config.pin_dir, &mut datapath, &features)?;
    let syncer = Syncer::restore_with(KernelMaps::take(&mut datapath)?, config.lb)?;
    let mut conntrack = Sweeper::new(
        ConntrackTable::take(&mut datapath)?,
        config.conntrack.timeouts,
        config.conntrack.sweep_period,
    );
    info!(
        node = %config.node_name,
        pins = %config.pin_dir.display(),
        restored_services = syncer.applied().services.len(),
        "datapath loaded"
    );
    let tc_attach = config.tc_attach.unwrap_or(features.tc_attach);
    let mut attacher = Attacher::new(&config.pin_dir).with_mode(tc_attach);
    let mut external_attacher = Attacher::external(&config.pin_dir).with_mode(tc_attach);
    // External interfaces with accept_local and XDP done, and the XDP mode each got.
    let mut external_set_up: BTreeMap<String, Option<&'static str>> = BTreeMap::new();
    let mut health_checks = HealthChecks::default();
    let builder = ModelBuilder::new(ModelOptions {
        proxy_name: config.proxy_name.clone(),
        node_name: Some(config.node_name.clone()),
        nodeport_addresses,
        nodeport_localhost: config.socket_lb.nodeport_localhost,
        ipv6: config.ipv6,
    });
    let mut sync = SyncLoop::new(builder, syncer, config.periods).with_metrics(metrics.clone());
    let mut metrics_refreshed: Option<Instant> = None;
    // The model generation the name index on disk describes, and when it was written.
    let (mut names_written, mut names_at): (Option<u64>, Option<Instant>) = (None, None);
    let mut missing_reported = false;
    let mut health_generation = None;

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

        if let Some(selector) = &external_selector {
            reconcile_external(
                config,
                selector,
                &mut datapath,
                &mut external_attacher,
                &mut external_set_up,
            );
        }

        let writes = sync.syncer().writes();
        let report = sync.step(&mut source, tick, health);
        // A sync that converted many objects (the first, a relist) leaves
        // their parsing's memory free but held by the allocator.
        if report.is_some_and(|r| r.converted >= HEAP_TRIM_AFTER_CONVERTED) {
            crate::datapath::trim_heap();
        }
        if let Some(stale_udp) = &stale_udp
            && sync.syncer().writes() != writes
        {
            stale_udp.sweep(sync.syncer().applied());
        }
        conntrack.tick(tick);
        // The model only moves when a sync commits; walking every frontend
        // on each tick would cost O(Services) per poll.
        if health_generation != Some(sync.generation()) {
            let all_open = health_checks.reconcile(sync.model());
            health_generation = all_open.then_some(sync.generation());
            metrics.set_no_local_endpoints(no_local_endpoints(sync.model(), config.ipv6));
        }
        if names_written != Some(sync.generation())
            && names_at.is_none_or(|at| tick.duration_since(at) >= NAMES_PERIOD)
        {
            names_at = Some(tick);
            names_written = Some(sync.generation());
            write_names(config, &ModelNames(sync.model()));
        }
        if metrics_refreshed.is_none_or(|at| tick.duration_since(at) >= METRICS_REFRESH) {
            metrics_refreshed = Some(tick);
            let snapshot = DatapathSnapshot {
                counters: conntrack.read_counters().unwrap_or_else(|error| {
                    warn!(%error, "reading the datapath counters failed");
                    Vec::new()
                }),
                maps: map_fill(config, sync.syncer().applied(), conntrack.live_entries()),
                maglev_frontends_on_slots: sync.syncer().maglev_frontends_on_slots() as u64,
                interfaces: vec![
                    ("pod", attacher.attached().count()),
                    ("external", external_attacher.attached().count()),
                ],
                xdp: external_set_up
                    .iter()
                    .filter_map(|(name, mode)| Some((name.clone(), (*mode)?)))
                    .collect(),
            };
            metrics.datapath.update(&snapshot);
        }

        std::thread::sleep(config.poll_interval.saturating_sub(tick.elapsed()));
    }
    info!("stopping; programs and maps stay pinned for the next agent (vipr cleanup removes them)");
    Ok(())
}

/// How often the loop refreshes the datapath metrics: a scrape reads them
/// at most this old, and the loop reads the kernel counters at most this often.
const METRICS_REFRESH: Duration = Duration::from_secs(1);

/// Longest the name index lags the model: writing it costs O(frontends).
const NAMES_PERIOD: Duration = Duration::from_secs(2);

/// Writes the name index for the CLI, whole (write, then rename): a reader
/// sees the old file or the new one. A failure costs the CLI its names only.
fn write_names(config: &AgentConfig, names: &ModelNames<'_>) {
    let path = index_path(&config.state_dir, &config.pin_dir);
    let started = Instant::now();
    let written = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(&config.state_dir)?;
        let partial = path.with_extension("json.partial");
        let mut file = std::io::BufWriter::new(std::fs::File::create(&partial)?);
        serde_json::to_writer(&mut file, names)?;
        std::io::Write::flush(&mut file)?;
        std::fs::rename(&partial, &path)
    })();
    match written {
        Ok(()) => tracing::debug!(
            path = %path.display(),
            bytes = std::fs::metadata(&path).map_or(0, |m| m.len()),
            took_ms = started.elapsed().as_millis() as u64,
            "name index written"
        ),
        Err(error) => {
            warn!(path = %path.display(), %error, "writing the name index failed; the CLI lists without names")
        }
    }
}

/// Distinct tables the Maglev index points at (frontends share tables).
fn maglev_tables_in_use(applied: &MapContents) -> usize {
    let firsts: BTreeSet<u32> = applied.maglev.values().map(|r| r.first).collect();
    firsts.len()
}

/// Fill levels of the maps that grow with the cluster.
fn map_fill(config: &AgentConfig, applied: &MapContents, conntrack: Option<u64>) -> Vec<MapFill> {
    let sizes = config.map_sizes;
    let fill = |map, entries: usize, capacity: u32| MapFill {
        map,
        entries: entries as u64,
        capacity: u64::from(capacity),
    };
    let mut maps = vec![
        fill(maps::SERVICES, applied.services.len(), sizes.services),
        fill(maps::BACKENDS, applied.backends.len(), sizes.backends),
        fill(maps::SLOTS, applied.slots.len(), sizes.slots),
        // In positions: tables the index points at × their size, of the
        // preallocated pool.
        fill(
            proxy_common::MAGLEV,
            maglev_tables_in_use(applied) * sizes.maglev_table_size as usize,
            sizes.maglev_positions(),
        ),
    ];
    if let Some(entries) = conntrack {
        maps.push(MapFill {
            map: maps::CONNTRACK,
            entries,
            capacity: u64::from(sizes.conntrack),
        });
    }
    maps
}

/// Keeps the TC programs (and XDP, if enabled) on the external interfaces
/// that are present, forgetting the ones that went.
fn reconcile_external(
    config: &AgentConfig,
    selector: &InterfaceSelector,
    datapath: &mut crate::datapath::Datapath,
    attacher: &mut Attacher,
    set_up: &mut BTreeMap<String, Option<&'static str>>,
) {
    let present = match selector.present() {
        Ok(present) => present,
        Err(error) => return warn!(%error, "listing interfaces failed"),
    };
    for error in attacher.reconcile(datapath, &present) {
        warn!(%error, "attach to external interface failed; will retry");
    }
    set_up.retain(|name, _| {
        let keep = present.contains_key(name);
        if !keep {
            detach_xdp(&config.pin_dir, name);
        }
        keep
    });
    for name in present.keys() {
        // Once per appearance: a failed XDP attach is not retried every
        // tick, and an operator may turn accept_local off again.
        if set_up.contains_key(name) {
            continue;
        }
        accept_local_sources(name);
        let mode = attach_xdp(datapath, &config.pin_dir, name, config.external.xdp).unwrap_or_else(
            |error| {
                warn!(%error, "XDP attach failed; TC handles it");
                None
            },
        );
        set_up.insert(name.clone(), mode);
    }
}

/// Masqueraded packets carry the node's own address as source (and replies
/// restored at ingress carry the frontend's). The TC program forwards them
/// itself; the few it leaves to the stack (no route from the FIB's point of
/// view) would be martians there unless `accept_local` is on.
fn accept_local_sources(interface: &str) {
    let path = format!("/proc/sys/net/ipv4/conf/{interface}/accept_local");
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "1") {
        return;
    }
    match std::fs::write(&path, "1") {
        Ok(()) => info!(interface, "accept_local enabled for masqueraded traffic"),
        Err(error) => {
            warn!(interface, %error, "cannot enable accept_local; masqueraded packets the FIB cannot route are dropped")
        }
    }
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

/// Loads the trace copy off the agent's path: a second verification of
/// every program must not delay serving, and tracing is for operators, so
/// the datapath serves without it.
fn spawn_trace_copy(options: LoadOptions) {
    std::thread::spawn(move || {
        let started = Instant::now();
        match crate::datapath::load_trace_copy(&options) {
            Ok(()) => info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "trace copy loaded"
            ),
            Err(error) => {
                warn!("vipr trace is unavailable: loading the trace copy failed: {error}")
            }
        }
    });
}
