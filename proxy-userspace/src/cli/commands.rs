//! The listing commands' arguments (clap) and what they print.
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{AgentFiles, CliError, Output, conntrack, render, services, stats};
use crate::datapath::conntrack_clock;
use crate::inspect::{pinned_conntrack, pinned_conntrack6, pinned_contents, pinned_counters};

/// Where the agent's files are, and how to print.
#[derive(Clone, Debug, clap::Args)]
pub struct ListArgs {
    /// The agent's bpffs pin directory.
    #[arg(long, default_value = crate::DEFAULT_PIN_DIR)]
    pub bpffs: PathBuf,
    /// The agent's state directory (its name index).
    #[arg(long, default_value = crate::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Output,
}

impl ListArgs {
    fn files(&self) -> AgentFiles<'_> {
        AgentFiles {
            pin_dir: &self.bpffs,
            state_dir: &self.state_dir,
        }
    }
}

#[derive(Clone, Debug, clap::Subcommand)]
pub enum ServiceCommand {
    /// Every frontend: its Service, type, policies and endpoints.
    List(ListArgs),
}

#[derive(Clone, Debug, clap::Subcommand)]
pub enum ConntrackCommand {
    /// The tracked flows: client, frontend, endpoint, masquerade, state, idle time.
    List {
        #[command(flatten)]
        list: ListArgs,
        /// Only flows to this Service (namespace/name).
        #[arg(long)]
        service: Option<String>,
        /// Only flows to this endpoint (address, or address:port).
        #[arg(long)]
        backend: Option<String>,
    },
}

/// The name index, or a warning on stderr and none: the maps alone still
/// give a listing (without Kubernetes names).
fn names_or_warn(files: &AgentFiles<'_>) -> Option<crate::names::NameIndex> {
    match files.names() {
        Ok(names) => Some(names),
        Err(error) => {
            eprintln!("warning: {error}; listing without names");
            None
        }
    }
}

pub fn service(command: &ServiceCommand) -> Result<String, CliError> {
    let ServiceCommand::List(args) = command;
    let maps = pinned_contents(&args.bpffs)?;
    let names = names_or_warn(&args.files());
    let rows = services::rows(&maps, names.as_ref());
    render(args.output, &rows, &services::HEADER, services::cells)
}

pub fn conntrack(command: &ConntrackCommand) -> Result<String, CliError> {
    let ConntrackCommand::List {
        list,
        service,
        backend,
    } = command;
    let entries = pinned_conntrack(&list.bpffs)?;
    let entries6 = pinned_conntrack6(&list.bpffs)?;
    let names = names_or_warn(&list.files());
    let filter = conntrack::FlowFilter {
        service: service.clone(),
        backend: backend.clone(),
    };
    let now = conntrack_clock()?;
    let mut rows = conntrack::rows(&entries, names.as_ref(), now, &filter);
    rows.extend(conntrack::rows(&entries6, names.as_ref(), now, &filter));
    conntrack::sort(&mut rows);
    render(list.output, &rows, &conntrack::HEADER, conntrack::cells)
}

/// Counters read twice, `interval` apart.
pub fn stats(bpffs: &Path, interval: Duration, output: Output) -> Result<String, CliError> {
    let before = pinned_counters(bpffs)?;
    std::thread::sleep(interval);
    let after = pinned_counters(bpffs)?;
    let rows = stats::rows(&before, &after, interval);
    render(output, &rows, &stats::HEADER, stats::cells)
}

/// What makes the programs count `name`, or the names there are.
pub fn explain_drop(name: &str) -> Result<String, CliError> {
    let counter = super::explain::counter_named(name).ok_or_else(|| {
        let names: Vec<&str> = proxy_common::Counter::ALL
            .iter()
            .map(|c| c.name())
            .collect();
        CliError::Usage(format!(
            "no counter {name:?}; the counters are: {}",
            names.join(", ")
        ))
    })?;
    Ok(format!(
        "{}: {}\n",
        counter.name(),
        super::explain::explain(counter)
    ))
}
