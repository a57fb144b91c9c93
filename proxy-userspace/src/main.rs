//! The `vipr` command: run the node agent, inspect or clean up its state.
use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use vipr::{
    agent::{self, AgentConfig},
    healthz::{self, Health},
    inspect,
};

const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/vipr";

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
enum Command {
    /// Run the node agent.
    Run {
        /// Directory of Service and EndpointSlice YAML (kubectl schema).
        #[arg(long)]
        manifests: PathBuf,
        /// This node's name, as in EndpointSlice nodeName.
        #[arg(long)]
        node_name: String,
        /// Host-side pod interfaces: names or globs, comma-separated (e.g. 'veth*').
        #[arg(long)]
        pod_interfaces: String,
        /// bpffs directory for this agent's pinned maps and links.
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        bpffs: PathBuf,
        /// Where /healthz listens (kube-proxy's default).
        #[arg(long, default_value = "0.0.0.0:10256")]
        healthz_bind_address: SocketAddr,
        /// Handle Services labelled service.kubernetes.io/service-proxy-name=NAME.
        #[arg(long)]
        service_proxy_name: Option<String>,
        /// How often to look for manifest and interface changes.
        #[arg(long, default_value = "300ms", value_parser = parse_duration)]
        poll_interval: Duration,
    },
    /// Print the pinned service maps and the packet counters.
    Dump {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        bpffs: PathBuf,
    },
    /// Detach vipr's programs from this network namespace's interfaces and remove its pins.
    Cleanup {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        bpffs: PathBuf,
    },
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| text.split_at(i))
        .ok_or_else(|| format!("{text}: give a unit (ms or s)"))?;
    let n: u64 = number.parse().map_err(|e| format!("{text}: {e}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        _ => Err(format!("{text}: unit must be ms or s")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::Run {
            manifests,
            node_name,
            pod_interfaces,
            bpffs,
            healthz_bind_address,
            service_proxy_name,
            poll_interval,
        } => {
            let config = AgentConfig {
                manifests,
                node_name,
                pod_interfaces,
                pin_dir: bpffs,
                healthz: healthz_bind_address,
                proxy_name: service_proxy_name,
                poll_interval,
            };
            let health = Arc::new(Health::default());
            let listener = healthz::bind(config.healthz)
                .await
                .with_context(|| format!("binding /healthz on {}", config.healthz))?;
            tokio::spawn(healthz::serve(listener, health.clone()));
            let stop = agent::stop_on_signals();
            tokio::task::spawn_blocking(move || agent::run(&config, &health, &stop))
                .await?
                .context("agent")?;
        }
        Command::Dump { bpffs } => print!("{}", inspect::dump(&bpffs)?),
        Command::Cleanup { bpffs } => {
            let detached = inspect::cleanup(&bpffs)?;
            println!("removed {} and {detached} clsact filters", bpffs.display());
        }
    }
    Ok(())
}
