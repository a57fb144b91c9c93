//! A directory of Kubernetes YAML manifests as a source of snapshots.
//!
//! [`ManifestDir::poll`] is cheap when nothing changed (one `stat` per file),
//! so the agent can call it every few hundred milliseconds; when a file
//! changed it hands over only the objects whose content changed, so one
//! edit costs the same with ten Services as with a hundred thousand.
//!
//! A `v1 Node` manifest stands in for the API's Node object, so topology
//! hints can be used without an API server: only the agent's own Node counts.

mod defs;
mod objects;
mod parse;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Node;

use crate::model::{Converted, ModelOptions, ObjectRef};
use defs::Definitions;
use objects::{FileObjects, NodeName};
pub use parse::{ParseError, Parsed, parse_str};

/// Every Service, EndpointSlice (as converted) and Node currently in
/// force, in object order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub services: Vec<(ObjectRef, Converted)>,
    pub endpoint_slices: Vec<(ObjectRef, Converted)>,
    pub nodes: Vec<Node>,
}

/// Objects whose definition in force changed since the last poll, in
/// object order; `None`: no file defines it any more.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Changes {
    pub services: Vec<(ObjectRef, Option<Arc<Converted>>)>,
    pub slices: Vec<(ObjectRef, Option<Arc<Converted>>)>,
    /// By node name.
    pub nodes: Vec<(String, Option<Arc<Node>>)>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.slices.is_empty() && self.nodes.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("reading {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: {source}", path.display())]
    Parse { path: PathBuf, source: ParseError },
}

/// Watches `*.yaml` / `*.yml` files directly in one directory (or one file).
/// Hidden files are skipped; symlinks are followed (ConfigMap volumes work).
#[derive(Debug)]
pub struct ManifestDir {
    path: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    /// What conversion reads (the proxy name).
    options: Arc<ModelOptions>,
    services: Definitions<Converted>,
    slices: Definitions<Converted>,
    nodes: Definitions<Node, NodeName>,
    /// The agent's node: the one Node manifest that counts.
    node_name: Option<String>,
    polled: bool,
}

#[derive(Debug)]
struct FileState {
    stamp: Stamp,
    /// When `stamp` was taken; a file modified in the same mtime tick as
    /// that read may have changed unseen, so it is hashed again.
    read_at: SystemTime,
    hash: u64,
    /// The last good parse (empty if the file never parsed).
    objects: FileObjects,
    error: Option<ManifestError>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime: Option<SystemTime>,
    dev: u64,
    ino: u64,
}

/// Margin for filesystems with coarse mtimes.
const RACY: Duration = Duration::from_secs(2);

impl ManifestDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            files: BTreeMap::new(),
            options: Arc::default(),
            services: Definitions::default(),
            slices: Definitions::default(),
            nodes: Definitions::default(),
            node_name: None,
            polled: false,
        }
    }

    /// Names the agent's node: only the Node manifest of that name counts.
    pub fn with_node_name(mut self, name: impl Into<String>) -> Self {
        self.node_name = Some(name.into());
        self
    }

    /// Objects labelled for another proxy than this one (`None`: the
    /// default proxy) are left out, as kube-proxy does.
    pub fn with_proxy_name(mut self, name: Option<String>) -> Self {
        Arc::make_mut(&mut self.options).proxy_name = name;
        self
    }

    /// IPv6 parts are converted (else skipped with their reasons).
    pub fn with_ipv6(mut self, on: bool) -> Self {
        Arc::make_mut(&mut self.options).ipv6 = on;
        self
    }

    /// This node's Node manifest in force. Without a node name, the only
    /// Node defined, if there is exactly one (the model then keeps it only
    /// if its name is the agent's).
    pub fn node(&self) -> Option<Arc<Node>> {
        match &self.node_name {
            Some(name) => self.nodes.winner(&NodeName(name.clone())).cloned(),
            None => {
                let winners = self.nodes.winners();
                let mut all = winners.into_values();
                match (all.next(), all.next()) {
                    (Some(only), None) => Some(only.clone()),
                    _ => None,
                }
            }
        }
    }

    /// Re-reads what changed. Returns the objects whose definition in force
    /// changed (always on the first call, even if empty), `None` otherwise.
    ///
    /// Errors: `Err` only when the directory itself cannot be listed (the
    /// previous state is kept). A file that cannot be read or parsed keeps
    /// its last good objects; its error is logged with `tracing::warn!` once
    /// per change and is listed by [`ManifestDir::errors`] until fixed.
    /// Objects of deleted files are dropped.
    pub fn poll(&mut self) -> Result<Option<Changes>, ManifestError> {
        let listed = self.list().map_err(|source| ManifestError::Io {
            path: self.path.clone(),
            source,
        })?;
        let first = !std::mem::replace(&mut self.polled, true);
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|path| !listed.contains(*path))
            .cloned()
            .collect();
        for path in gone {
            self.forget(&path);
        }
        for path in listed {
            self.refresh(path);
        }
        let changes = Changes {
            services: self.services.take_changes(),
            slices: self.slices.take_changes(),
            nodes: self.node_changes(),
        };
        Ok((first || !changes.is_empty()).then_some(changes))
    }

    /// Every object in force, as a full listing would give it.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            services: self
                .services
                .winners()
                .into_iter()
                .map(|(o, s)| (o.clone(), (**s).clone()))
                .collect(),
            endpoint_slices: self
                .slices
                .winners()
                .into_iter()
                .map(|(o, s)| (o.clone(), (**s).clone()))
                .collect(),
            nodes: self
                .nodes
                .winners()
                .into_values()
                .map(|n| (**n).clone())
                .collect(),
        }
    }

    /// Node definitions that changed, with a word when one is not this node's.
    fn node_changes(&mut self) -> Vec<(String, Option<Arc<Node>>)> {
        let changes = self.nodes.take_changes();
        let defined = || changes.iter().filter(|(_, node)| node.is_some());
        match &self.node_name {
            Some(ours) => {
                for (NodeName(name), _) in defined().filter(|(n, _)| &n.0 != ours) {
                    tracing::debug!(node = %name, "ignoring the Node manifest of another node");
                }
            }
            None if defined().next().is_some() && self.node().is_none() => {
                tracing::warn!("several Node manifests and no node name: none of them is used");
            }
            None => {}
        }
        changes
            .into_iter()
            .map(|(NodeName(name), node)| (name, node))
            .collect()
    }

    /// Current per-file problems, by file name.
    pub fn errors(&self) -> Vec<&ManifestError> {
        self.files
            .values()
            .filter_map(|f| f.error.as_ref())
            .collect()
    }

    fn list(&self) -> io::Result<BTreeSet<PathBuf>> {
        if fs::metadata(&self.path)?.is_file() {
            return Ok(BTreeSet::from([self.path.clone()]));
        }
        let mut out = BTreeSet::new();
        for entry in fs::read_dir(&self.path)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let manifest =
                !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"));
            // fs::metadata follows symlinks; a vanished entry is simply not listed.
            if manifest && fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                out.insert(path);
            }
        }
        Ok(out)
    }

    /// Drops a file that is gone, with every definition it made.
    fn forget(&mut self, path: &Path) {
        if let Some(state) = self.files.remove(path) {
            self.define(path, &state.objects, &FileObjects::default());
        }
    }

    fn define(&mut self, path: &Path, old: &FileObjects, new: &FileObjects) {
        let path: Arc<Path> = Arc::from(path);
        let path = &path;
        self.services
            .replace_file(path, &old.services, &new.services);
        self.slices.replace_file(path, &old.slices, &new.slices);
        self.nodes.replace_file(path, &old.nodes, &new.nodes);
    }

    /// Brings one file's state up to date.
    fn refresh(&mut self, path: PathBuf) {
        let now = SystemTime::now();
        if let Some(state) = self.files.get(&path)
            && stat(&path).is_ok_and(|stamp| stamp == state.stamp && !racy(stamp, state.read_at))
        {
            return;
        }
        let (stamp, text) = match read(&path) {
            Ok(ok) => ok,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.forget(&path);
                return;
            }
            Err(source) => {
                let error = ManifestError::Io {
                    path: path.clone(),
                    source,
                };
                self.set_error(path, None, error);
                return;
            }
        };
        let mut hasher = DefaultHasher::new();
        text.hash(&mut hasher);
        let hash = hasher.finish();
        if let Some(state) = self.files.get_mut(&path)
            && state.hash == hash
        {
            state.stamp = stamp;
            state.read_at = now;
            return;
        }
        match parse_str(&text) {
            Ok(parsed) => {
                let objects = FileObjects::new(&path, parsed, &self.options);
                let old = self.files.remove(&path);
                if old.as_ref().is_some_and(|old| old.error.is_some()) {
                    tracing::info!(path = %path.display(), "manifest fixed");
                }
                let old = old.map(|o| o.objects).unwrap_or_default();
                self.define(&path, &old, &objects);
                let state = FileState {
                    stamp,
                    read_at: now,
                    hash,
                    objects,
                    error: None,
                };
                self.files.insert(path, state);
            }
            Err(source) => {
                let error = ManifestError::Parse {
                    path: path.clone(),
                    source,
                };
                self.set_error(path, Some((stamp, now, hash)), error);
            }
        }
    }

    fn set_error(
        &mut self,
        path: PathBuf,
        read: Option<(Stamp, SystemTime, u64)>,
        error: ManifestError,
    ) {
        let state = self.files.entry(path).or_insert_with(|| FileState {
            stamp: Stamp {
                len: 0,
                mtime: None,
                dev: 0,
                ino: 0,
            },
            read_at: SystemTime::UNIX_EPOCH,
            hash: 0,
            objects: FileObjects::default(),
            error: None,
        });
        if state.error.as_ref().map(ToString::to_string) != Some(error.to_string()) {
            tracing::warn!(%error, "manifest not applied; keeping its last good version");
        }
        if let Some((stamp, read_at, hash)) = read {
            state.stamp = stamp;
            state.read_at = read_at;
            state.hash = hash;
        }
        state.error = Some(error);
    }
}

fn stat(path: &Path) -> io::Result<Stamp> {
    let meta = fs::metadata(path)?;
    Ok(Stamp {
        len: meta.len(),
        mtime: meta.modified().ok(),
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// The stamp is taken before reading, so a write during the read shows up
/// as a different stamp at the next poll.
fn read(path: &Path) -> io::Result<(Stamp, String)> {
    let stamp = stat(path)?;
    Ok((stamp, fs::read_to_string(path)?))
}

/// True when the file may have changed after `read_at` without its mtime
/// moving (same clock tick), or when there is no mtime to trust.
fn racy(stamp: Stamp, read_at: SystemTime) -> bool {
    stamp.mtime.is_none_or(|mtime| mtime + RACY >= read_at)
}
