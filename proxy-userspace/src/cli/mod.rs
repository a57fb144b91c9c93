//! `vipr service list`, `vipr conntrack list` and `vipr stats`: the
//! pinned maps read with the agent's name index, as a table (comfy-table)
//! or as JSON (`-o json`).
pub mod commands;
pub mod conntrack;
pub mod explain;
pub mod services;
pub mod stats;
pub mod trace;
mod trace_text;

use std::path::Path;

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;

use crate::datapath::DatapathError;
use crate::names::{NameIndex, index_path};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(
        "reading the name index {path}: {message} (is an agent running with this --bpffs and --state-dir?)"
    )]
    Names { path: String, message: String },
    #[error("encoding JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Usage(String),
}

/// How a listing is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Where the agent keeps its pins and its name index.
#[derive(Clone, Debug)]
pub struct AgentFiles<'a> {
    pub pin_dir: &'a Path,
    pub state_dir: &'a Path,
}

impl AgentFiles<'_> {
    pub fn names(&self) -> Result<NameIndex, CliError> {
        let path = index_path(self.state_dir, self.pin_dir);
        let names_error = |message: String| CliError::Names {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| names_error(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| names_error(e.to_string()))
    }
}

/// `rows` as JSON, or as a table with `header` and `cells` per row.
pub fn render<R: Serialize>(
    output: Output,
    rows: &[R],
    header: &[&str],
    cells: impl Fn(&R) -> Vec<String>,
) -> Result<String, CliError> {
    match output {
        Output::Json => Ok(serde_json::to_string_pretty(rows)? + "\n"),
        Output::Table => {
            let mut table = Table::new();
            table.load_preset(UTF8_FULL_CONDENSED);
            table.set_header(header.to_vec());
            for row in rows {
                table.add_row(cells(row));
            }
            Ok(format!("{table}\n"))
        }
    }
}
