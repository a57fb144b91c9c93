//! A directory of Kubernetes YAML manifests as a source of snapshots.
//!
//! [`ManifestDir::poll`] is cheap when nothing changed (one `stat` per file),
//! so the agent can call it every few hundred milliseconds.

mod parse;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

pub use parse::{ParseError, Parsed, parse_str};

/// Every Service and EndpointSlice currently known, in file-name then
/// document order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
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
    parsed: Parsed,
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
            polled: false,
        }
    }

    /// Re-reads what changed. Returns a new snapshot when the set of parsed
    /// objects may have changed (always on the first call), `None` otherwise.
    ///
    /// Errors: `Err` only when the directory itself cannot be listed (the
    /// previous state is kept). A file that cannot be read or parsed keeps
    /// its last good objects; its error is logged with `tracing::warn!` once
    /// per change and is listed by [`ManifestDir::errors`] until fixed.
    /// Objects of deleted files are dropped.
    pub fn poll(&mut self) -> Result<Option<Snapshot>, ManifestError> {
        let listed = self.list().map_err(|source| ManifestError::Io {
            path: self.path.clone(),
            source,
        })?;
        let mut changed = !self.polled;
        self.polled = true;
        let before = self.files.len();
        self.files.retain(|path, _| listed.contains(path));
        changed |= self.files.len() != before;
        for path in listed {
            changed |= self.refresh(path);
        }
        Ok(changed.then(|| self.snapshot()))
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

    /// Brings one file's state up to date; true if its objects changed.
    fn refresh(&mut self, path: PathBuf) -> bool {
        let now = SystemTime::now();
        if let Some(state) = self.files.get(&path)
            && stat(&path).is_ok_and(|stamp| stamp == state.stamp && !racy(stamp, state.read_at))
        {
            return false;
        }
        let (stamp, text) = match read(&path) {
            Ok(ok) => ok,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return self.files.remove(&path).is_some();
            }
            Err(source) => {
                let error = ManifestError::Io {
                    path: path.clone(),
                    source,
                };
                self.set_error(path, None, error);
                return false;
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
            return false;
        }
        match parse_str(&text) {
            Ok(parsed) => {
                let old = self.files.get(&path);
                let changed = old.is_none_or(|old| old.parsed != parsed);
                if old.is_some_and(|old| old.error.is_some()) {
                    tracing::info!(path = %path.display(), "manifest fixed");
                }
                let state = FileState {
                    stamp,
                    read_at: now,
                    hash,
                    parsed,
                    error: None,
                };
                self.files.insert(path, state);
                changed
            }
            Err(source) => {
                let error = ManifestError::Parse {
                    path: path.clone(),
                    source,
                };
                self.set_error(path, Some((stamp, now, hash)), error);
                false
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
            parsed: Parsed::default(),
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

    fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for state in self.files.values() {
            snapshot
                .services
                .extend(state.parsed.services.iter().cloned());
            snapshot
                .endpoint_slices
                .extend(state.parsed.endpoint_slices.iter().cloned());
        }
        snapshot
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
