//! The `vipr` command: run the node agent, inspect or clean up its state.
use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use vipr::{
    agent::{self, AgentConfig, ConntrackConfig, ExternalConfig, SocketLbConfig, SourceConfig},
    cli::{Output, commands},
    conntrack::CtTimeouts,
    datapath::{AttachMode, LbMode, MapSizes, SocketLbScope, XdpMode},
    healthz::{self, Health},
    http, inspect,
    metrics::Metrics,
    plan::{LbConfig, LbDefault},
    sync::Periods,
};

use vipr::{DEFAULT_PIN_DIR, DEFAULT_STATE_DIR};

#[derive(Parser)]
#[command(
    name = "vipr",
    version,
    about = "Kubernetes Service proxy with an eBPF datapath"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once at start")]
enum Command {
    /// Run the node agent.
    Run {
        /// Directory of Service and EndpointSlice YAML (kubectl schema),
        /// instead of the Kubernetes API.
        #[arg(long, conflicts_with = "kubeconfig")]
        manifests: Option<PathBuf>,
        /// Kubeconfig for the API server; without it (and without
        /// --manifests) KUBECONFIG, ~/.kube/config or the service account.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// This node's name, as in EndpointSlice nodeName.
        #[arg(long)]
        node_name: String,
        /// Host-side pod interfaces: names or globs, comma-separated (e.g. 'veth*').
        #[arg(long)]
        pod_interfaces: String,
        /// bpffs directory for this agent's pinned maps and links.
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        bpffs: PathBuf,
        /// Directory for the agent's name index (`vipr service list` reads it).
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Where /healthz listens (kube-proxy's default).
        #[arg(long, default_value = "0.0.0.0:10256")]
        healthz_bind_address: SocketAddr,
        /// Where /metrics (Prometheus text format) listens (kube-proxy's default).
        #[arg(long, default_value = "127.0.0.1:10249")]
        metrics_bind_address: SocketAddr,
        /// Handle Services labelled service.kubernetes.io/service-proxy-name=NAME.
        #[arg(long)]
        service_proxy_name: Option<String>,
        /// How often to look for source and interface changes.
        #[arg(long, default_value = "300ms", value_parser = parse_duration)]
        poll_interval: Duration,
        /// Minimum time between two syncs: changes in between are batched.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        min_sync_period: Duration,
        /// Longest time between two syncs (with nothing changed, a sync
        /// writes nothing); /healthz turns unhealthy when no sync succeeded
        /// for twice this.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        sync_period: Duration,
        /// How often the kernel maps are read back whole and any drift is
        /// repaired (kube-proxy's full sync period). Costs O(Services).
        #[arg(long, default_value = "60m", value_parser = parse_duration)]
        full_resync_period: Duration,
        /// Interfaces external traffic (NodePort, LoadBalancer, external IPs)
        /// arrives on: names or globs, comma-separated. Unset: none.
        #[arg(long)]
        external_interfaces: Option<String>,
        /// CIDRs selecting the node addresses NodePorts answer on (as
        /// kube-proxy); default: the external interfaces' addresses.
        #[arg(long, value_delimiter = ',', value_parser = parse_cidr)]
        nodeport_addresses: Vec<(IpAddr, u8)>,
        /// The node addresses masqueraded traffic leaves with, one per
        /// family (comma-separated); default: the first address of each
        /// family on the external interfaces (IPv6: a global one).
        #[arg(long, value_delimiter = ',')]
        node_ip: Vec<IpAddr>,
        /// XDP fast path on the external interfaces (`auto`: native on NICs,
        /// none on virtual interfaces). Off by default, as an opt-in: the TC
        /// path alone is complete, and attaching native XDP makes some NIC
        /// drivers reconfigure their queues.
        #[arg(long, value_enum, default_value = "off")]
        xdp: XdpMode,
        /// How external traffic under externalTrafficPolicy Cluster reaches
        /// an endpoint on another node: `snat` masquerades it behind this
        /// node; `dsr` keeps the client's address and carries the frontend
        /// in an IPv4 option (IPv6: a destination options header), so the
        /// endpoint's node answers the client directly; `hybrid`: DSR for TCP,
        /// masquerade for UDP. Every node must run the same mode.
        #[arg(long, value_enum, default_value = "snat")]
        lb_mode: LbMode,
        /// Capacity of the services map (frontends: ClusterIP, NodePort per
        /// node address, LoadBalancer and external IPs, each port).
        #[arg(long, default_value_t = MapSizes::default().services)]
        max_services: u32,
        /// Capacity of the backends map (distinct endpoints).
        #[arg(long, default_value_t = MapSizes::default().backends)]
        max_backends: u32,
        /// Capacity of the slots map (endpoints summed over frontends).
        #[arg(long, default_value_t = MapSizes::default().slots)]
        max_slots: u32,
        /// Capacity of the conntrack map (two entries per flow). Never
        /// evicts: when full, new flows are dropped (drop_conntrack_full)
        /// and established ones kept until they close or idle out.
        #[arg(long, default_value_t = MapSizes::default().conntrack)]
        max_conntrack: u32,
        /// Silence after which an established TCP flow's entries go.
        #[arg(long, default_value = "6h", value_parser = parse_duration)]
        conntrack_tcp_timeout_established: Duration,
        /// Silence after which a TCP flow that never got a reply goes.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        conntrack_tcp_timeout_opening: Duration,
        /// How long a closed TCP flow (RST, or FIN both ways) is kept.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        conntrack_tcp_timeout_close: Duration,
        /// Silence after which a UDP flow without replies goes.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        conntrack_udp_timeout: Duration,
        /// Silence after which a UDP flow with replies goes.
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        conntrack_udp_timeout_stream: Duration,
        /// The conntrack sweep runs at least this often, and sooner when new
        /// flows may have filled half the table.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        conntrack_sweep_period: Duration,
        /// How TC programs attach: `auto` takes TCX links where the kernel
        /// has them, else clsact filters; `clsact` forces the filters (to
        /// sit beside tools that use them, or to test that path).
        #[arg(long, value_enum, default_value = "auto")]
        tc_attach: TcAttachFlag,
        /// Connect-time load balancing in cgroup socket hooks: `host` serves
        /// processes in the node's network namespace (host-network pods,
        /// node daemons); `all` serves pods' sockets too (no per-packet NAT
        /// for them; a service mesh that needs the ClusterIP wants `host`).
        #[arg(long, value_enum, default_value = "host")]
        socket_lb: SocketLbFlag,
        /// The cgroup the socket hooks attach to; default: the root of the
        /// cgroup2 mount.
        #[arg(long)]
        cgroup_root: Option<PathBuf>,
        /// NodePorts also answer the node itself on 127.0.0.1 (socket hooks
        /// only; off as in kube-proxy's nftables mode).
        #[arg(long)]
        nodeport_localhost: bool,
        /// Capacity of the socket reverse-translation map (one entry per
        /// socket and backend; least recently used evicted when full).
        #[arg(long, default_value_t = MapSizes::default().socket_revnat)]
        max_socket_revnat: u32,
        /// Serve IPv6 too: dual-stack and IPv6-only Services, everywhere
        /// IPv4 is served (as kube-proxy serves each family a node has).
        /// Off: IPv6 objects are skipped with counted reasons.
        #[arg(long, value_enum, default_value = "on")]
        ipv6: OnOff,
        /// How new connections pick an endpoint: `maglev` (a consistent-
        /// hashing table per frontend: the same choice on every node, about
        /// 1/N of choices move when an endpoint comes or goes), `random`
        /// (hash % endpoints), or `external-maglev`: Maglev for traffic from
        /// outside, random for pods and the node. A Service's
        /// `vipr.io/lb-algorithm: maglev|random` annotation overrides it.
        #[arg(long, value_enum, default_value = "external-maglev")]
        lb_algorithm: LbAlgorithmFlag,
        /// Positions per Maglev table, one of 251, 509, 1021, 2039, 4093,
        /// 8191, 16381, 32749, 65521: at least 100 per endpoint keeps the
        /// imbalance and the extra moves small. The same on every node.
        #[arg(long, default_value_t = proxy_common::DEFAULT_MAGLEV_TABLE_SIZE)]
        maglev_table_size: u32,
        /// Maglev tables the preallocated pool holds (4 bytes per position);
        /// frontends with the same endpoints share one. Frontends beyond
        /// it use random until tables free up.
        #[arg(long, default_value_t = proxy_common::DEFAULT_MAX_MAGLEV_TABLES)]
        maglev_max_tables: u32,
        /// Cluster-wide seed of the Maglev permutations and of the flow
        /// hash: the same on every node, so all choose alike. Keep it a
        /// secret of the cluster, or flow placement can be predicted.
        #[arg(long, default_value_t = vipr::plan::maglev::DEFAULT_SEED)]
        maglev_seed: u64,
    },
    /// Print the pinned service maps and the packet counters.
    Dump {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        bpffs: PathBuf,
    },
    /// Probe the kernel's BPF features; print them, the fallbacks chosen and
    /// the verifier's figures per program.
    Features {
        /// bpffs mount that holds the probe's temporary pins.
        #[arg(long, default_value = "/sys/fs/bpf")]
        bpffs: PathBuf,
    },
    /// Attach a pass-through XDP program to the host-side peers of veth
    /// external interfaces that run vipr in native XDP mode: the kernel only
    /// delivers a veth's XDP_TX frames to a peer that has an XDP program.
    /// Holds the programs until stopped, or pins them with --pin-dir and exits.
    VethPeer {
        #[arg(required = true)]
        interfaces: Vec<String>,
        /// bpffs directory to pin the links in (remove it to detach).
        #[arg(long)]
        pin_dir: Option<PathBuf>,
    },
    /// Detach vipr's programs from this network namespace's interfaces and remove its pins.
    Cleanup {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        bpffs: PathBuf,
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Services as the datapath serves them, with Kubernetes names.
    Service {
        #[command(subcommand)]
        command: commands::ServiceCommand,
    },
    /// The flows the datapath tracks.
    Conntrack {
        #[command(subcommand)]
        command: commands::ConntrackCommand,
    },
    /// A packet from SRC to DST:PORT/PROTO through the agent's programs and
    /// live service maps, decision by decision, without touching live state;
    /// or `--explain-drop COUNTER`: the conditions under which the programs
    /// count COUNTER.
    Trace {
        #[arg(long, value_name = "COUNTER", conflicts_with_all = ["source", "destination"])]
        explain_drop: Option<String>,
        #[command(flatten)]
        trace: vipr::cli::trace::TraceArgs,
    },
    /// Datapath counters with their rates.
    Stats {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        bpffs: PathBuf,
        /// How long to watch the counters for their rates.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        interval: Duration,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TcAttachFlag {
    Auto,
    Tcx,
    Clsact,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LbAlgorithmFlag {
    Random,
    Maglev,
    ExternalMaglev,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SocketLbFlag {
    Host,
    All,
    Off,
}

fn parse_cidr(text: &str) -> Result<(IpAddr, u8), String> {
    vipr::model::ip::parse_cidr(text)
        .ok_or_else(|| format!("{text}: not a CIDR (a.b.c.d/n, 0-32, or an IPv6 prefix, 0-128)"))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| text.split_at(i))
        .ok_or_else(|| format!("{text}: give a unit (ms, s, m or h)"))?;
    let n: u64 = number.parse().map_err(|e| format!("{text}: {e}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{text}: unit must be ms, s, m or h")),
    }
}

fn main() -> anyhow::Result<()> {
    // Before the runtime starts any thread.
    vipr::datapath::use_one_malloc_arena();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(cli())
}

async fn cli() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::Run {
            manifests,
            kubeconfig,
            node_name,
            pod_interfaces,
            bpffs,
            state_dir,
            healthz_bind_address,
            metrics_bind_address,
            service_proxy_name,
            poll_interval,
            min_sync_period,
            sync_period,
            full_resync_period,
            external_interfaces,
            nodeport_addresses,
            node_ip,
            xdp,
            lb_mode,
            max_services,
            max_backends,
            max_slots,
            max_conntrack,
            conntrack_tcp_timeout_established,
            conntrack_tcp_timeout_opening,
            conntrack_tcp_timeout_close,
            conntrack_udp_timeout,
            conntrack_udp_timeout_stream,
            conntrack_sweep_period,
            tc_attach,
            socket_lb,
            cgroup_root,
            nodeport_localhost,
            max_socket_revnat,
            ipv6,
            lb_algorithm,
            maglev_table_size,
            maglev_max_tables,
            maglev_seed,
        } => {
            let lb_default = match lb_algorithm {
                LbAlgorithmFlag::Random => LbDefault::Random,
                LbAlgorithmFlag::Maglev => LbDefault::Maglev,
                LbAlgorithmFlag::ExternalMaglev => LbDefault::ExternalMaglev,
            };
            let lb = LbConfig::checked(
                lb_default,
                maglev_table_size,
                maglev_max_tables,
                maglev_seed,
            )?;
            let source = match manifests {
                Some(dir) => SourceConfig::Manifests(dir),
                None => SourceConfig::Kube { kubeconfig },
            };
            let config = AgentConfig {
                source,
                node_name,
                pod_interfaces,
                pin_dir: bpffs,
                state_dir,
                healthz: healthz_bind_address,
                proxy_name: service_proxy_name,
                poll_interval,
                periods: Periods {
                    min_sync: min_sync_period,
                    sync: sync_period,
                    full_resync: full_resync_period,
                },
                external: ExternalConfig {
                    // "" (an unset ConfigMap value) means none.
                    interfaces: external_interfaces.filter(|list| !list.trim().is_empty()),
                    nodeport_cidrs: nodeport_addresses,
                    node_ip,
                    xdp,
                    lb_mode,
                },
                map_sizes: MapSizes {
                    services: max_services,
                    backends: max_backends,
                    slots: max_slots,
                    conntrack: max_conntrack,
                    socket_revnat: max_socket_revnat,
                    maglev_tables: maglev_max_tables,
                    maglev_table_size,
                },
                lb,
                ipv6: ipv6 == OnOff::On,
                tc_attach: match tc_attach {
                    TcAttachFlag::Auto => None,
                    TcAttachFlag::Tcx => Some(AttachMode::Tcx),
                    TcAttachFlag::Clsact => Some(AttachMode::Clsact),
                },
                conntrack: ConntrackConfig {
                    timeouts: CtTimeouts {
                        tcp_established: conntrack_tcp_timeout_established,
                        tcp_opening: conntrack_tcp_timeout_opening,
                        tcp_closed: conntrack_tcp_timeout_close,
                        udp: conntrack_udp_timeout,
                        udp_stream: conntrack_udp_timeout_stream,
                    },
                    sweep_period: conntrack_sweep_period,
                },
                socket_lb: SocketLbConfig {
                    scope: match socket_lb {
                        SocketLbFlag::Host => Some(SocketLbScope::Host),
                        SocketLbFlag::All => Some(SocketLbScope::All),
                        SocketLbFlag::Off => None,
                    },
                    cgroup_root,
                    nodeport_localhost,
                },
            };
            let health = Arc::new(Health::new(2 * sync_period));
            let metrics = Arc::new(Metrics::new());
            let listener = http::bind(config.healthz)
                .await
                .with_context(|| format!("binding /healthz on {}", config.healthz))?;
            tokio::spawn(http::serve(
                listener,
                healthz::route(health.clone(), metrics.clone()),
            ));
            let served = metrics.clone();
            tokio::spawn(http::serve_when_bound(
                metrics_bind_address,
                "/metrics",
                Arc::new(move |path| served.route(path)),
            ));
            let source = agent::open_source(&config).await.context("source")?;
            let stop = agent::stop_on_signals();
            tokio::task::spawn_blocking(move || {
                agent::run(&config, source, &health, &metrics, &stop)
            })
            .await?
            .context("agent")?;
        }
        Command::Dump { bpffs } => print!("{}", inspect::dump(&bpffs)?),
        Command::Features { bpffs } => print!("{}", vipr::datapath::features_report(&bpffs)?),
        Command::VethPeer {
            interfaces,
            pin_dir,
        } => {
            let held = vipr::datapath::attach_pass_through(&interfaces, pin_dir.as_deref())?;
            println!("pass-through XDP on {}", interfaces.join(", "));
            if pin_dir.is_none() {
                let stop = agent::stop_on_signals();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            drop(held);
        }
        Command::Service { command } => print!("{}", commands::service(&command)?),
        Command::Conntrack { command } => print!("{}", commands::conntrack(&command)?),
        Command::Trace {
            explain_drop: Some(counter),
            ..
        } => print!("{}", commands::explain_drop(&counter)?),
        Command::Trace { trace, .. } => print!("{}", vipr::cli::trace::trace(&trace)?),
        Command::Stats {
            bpffs,
            interval,
            output,
        } => print!("{}", commands::stats(&bpffs, interval, output)?),
        Command::Cleanup { bpffs, state_dir } => {
            let detached = inspect::cleanup(&bpffs, &state_dir)?;
            println!("removed {} and {detached} clsact filters", bpffs.display());
        }
    }
    Ok(())
}
