//! The network namespaces of the processes in a cgroup subtree: in `all`
//! scope the socket hooks translate pods' sockets too, and sock_diag only
//! sees the namespace it is asked from, so closing pods' stale UDP sockets
//! means visiting each pod's namespace.
use std::{
    collections::BTreeSet,
    fs::File,
    path::{Path, PathBuf},
};

use nix::sched::{CloneFlags, setns};

/// One open handle per network namespace of a process under `cgroup`,
/// the caller's own excluded. Processes that exit meanwhile are skipped.
pub fn namespaces_in(cgroup: &Path) -> Vec<File> {
    let mut seen: BTreeSet<(u64, u64)> = BTreeSet::new();
    if let Some(own) = identity_of(Path::new("/proc/thread-self/ns/net")) {
        seen.insert(own);
    }
    let mut found = Vec::new();
    for pid in pids_under(cgroup) {
        let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let Ok(file) = File::open(&path) else {
            continue;
        };
        let Ok(stat) = nix::sys::stat::fstat(&file) else {
            continue;
        };
        if seen.insert((stat.st_dev, stat.st_ino)) {
            found.push(file);
        }
    }
    found
}

/// Runs `work` inside each of `namespaces`, on one thread of its own (the
/// caller's namespace is never changed), and returns what each run gave.
pub fn run_in_each<T: Send>(namespaces: &[File], work: impl Fn() -> T + Sync) -> Vec<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                namespaces
                    .iter()
                    .filter(|ns| setns(ns, CloneFlags::CLONE_NEWNET).is_ok())
                    .map(|_| work())
                    .collect()
            })
            .join()
            .unwrap_or_default()
    })
}

fn identity_of(path: &Path) -> Option<(u64, u64)> {
    let stat = nix::sys::stat::stat(path).ok()?;
    Some((stat.st_dev, stat.st_ino))
}

/// Every pid in `cgroup` and the groups below it.
fn pids_under(cgroup: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut pending = vec![cgroup.to_path_buf()];
    while let Some(dir) = pending.pop() {
        if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        pending.extend(
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    pids
}
