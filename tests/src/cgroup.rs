//! cgroup2 groups for emulated nodes: each node's agent attaches its socket
//! hooks to its own group, and a test moves itself into a node's group to
//! make sockets as that node's processes (sockets keep the group they were
//! made in).
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};

/// A cgroup made for a test, removed on drop.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Makes `<cgroup2 root>/<name>`.
    pub fn create(name: &str) -> Result<Self> {
        let path = vipr::datapath::cgroup2_root()?.join(name);
        std::fs::create_dir_all(&path).with_context(|| format!("mkdir {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves this whole process into the group until the guard drops.
    pub fn enter(&self) -> Result<Inside> {
        let original = current()?;
        move_self(&self.path)?;
        Ok(Inside { original })
    }

    /// Names of the programs attached to this group (bpftool).
    pub fn attached_programs(&self) -> Result<Vec<String>> {
        let out = crate::netns::cmd(
            "bpftool",
            &["-j", "cgroup", "show", &self.path.display().to_string()],
        )?;
        let list: Vec<serde_json::Value> = serde_json::from_str(out.trim()).unwrap_or_default();
        Ok(list
            .iter()
            .filter_map(|p| p["name"].as_str().map(String::from))
            .collect())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // A process that just left may still be counted for a moment.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("could not remove cgroup {}", self.path.display());
    }
}

/// Puts the process back where it was.
pub struct Inside {
    original: PathBuf,
}

impl Drop for Inside {
    fn drop(&mut self) {
        if let Err(e) = move_self(&self.original) {
            eprintln!(
                "could not return to cgroup {}: {e:#}",
                self.original.display()
            );
        }
    }
}

/// The process's cgroup2 group (the `0::` line of /proc/self/cgroup).
fn current() -> Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup")?;
    let relative = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .context("no cgroup2 line in /proc/self/cgroup")?;
    Ok(vipr::datapath::cgroup2_root()?.join(relative.trim_start_matches('/')))
}

fn move_self(group: &Path) -> Result<()> {
    let procs = group.join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string())
        .with_context(|| format!("write {}", procs.display()))
}
