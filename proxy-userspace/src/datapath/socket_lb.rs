//! Connect-time load balancing: the cgroup socket programs, attached with
//! BPF links to one cgroup (by default the root of the cgroup2 mount) and
//! pinned, so host traffic keeps its Services while the agent restarts.
//!
//! Links on a cgroup are multi-attach: agents of several emulated nodes can
//! share a cgroup, each translating only its own network namespace. A new
//! agent attaches its programs first and then renames its link pins over the
//! old ones, which detaches the old programs: every socket call meets at
//! least one agent's programs, never none.
use std::path::{Path, PathBuf};

use aya::programs::{CgroupAttachMode, CgroupSockAddr, links::FdLink};
use proxy_common::programs;
use tracing::info;

use super::{Datapath, DatapathError, loader::typed_program};

/// Which sockets the hooks translate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketLbScope {
    /// Only the node's own network namespace; pods keep the TC path.
    Host,
    /// Every socket in the cgroup, pods included.
    All,
}

impl SocketLbScope {
    pub fn global(self) -> u8 {
        match self {
            SocketLbScope::Host => proxy_common::SOCKET_LB_HOST,
            SocketLbScope::All => proxy_common::SOCKET_LB_ALL,
        }
    }
}

/// The hooks and the pin name of each one's link. The IPv6 hooks attach
/// whatever `--ipv6` says: IPv6 frontends exist only with `--ipv6 on` (the
/// maps are empty otherwise), and v4-mapped IPv4 frontends are IPv4
/// Services reached from dual-stack sockets. The getpeername hooks are
/// optional: a kernel without them still balances (the peer then shows
/// the backend).
pub const SOCKET_PROGRAMS: [(&str, &str); 8] = [
    (programs::SOCK_CONNECT4, "sock-connect4"),
    (programs::SOCK_SENDMSG4, "sock-sendmsg4"),
    (programs::SOCK_RECVMSG4, "sock-recvmsg4"),
    (programs::SOCK_GETPEERNAME4, "sock-getpeername4"),
    (programs::SOCK_CONNECT6, "sock-connect6"),
    (programs::SOCK_SENDMSG6, "sock-sendmsg6"),
    (programs::SOCK_RECVMSG6, "sock-recvmsg6"),
    (programs::SOCK_GETPEERNAME6, "sock-getpeername6"),
];

/// The hooks a kernel may refuse while the others still balance.
pub const OPTIONAL_SOCKET_PROGRAMS: [&str; 2] =
    [programs::SOCK_GETPEERNAME4, programs::SOCK_GETPEERNAME6];

/// Loads the socket programs; the ones the kernel refuses are returned
/// with the reason, the rest are ready to attach.
pub fn load_socket_programs(datapath: &mut Datapath) -> Vec<(&'static str, String)> {
    let mut refused = Vec::new();
    for (name, _) in SOCKET_PROGRAMS {
        let loaded = typed_program::<CgroupSockAddr>(&mut datapath.ebpf, name).and_then(|p| {
            p.load()
                .map_err(|source| DatapathError::Program { name, source })
        });
        if let Err(e) = loaded {
            refused.push((name, super::probe::error_chain(&e)));
        }
    }
    refused
}

fn link_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

/// Attaches every loaded socket program to `cgroup` and pins its link in
/// place of the link an earlier agent pinned.
pub fn attach_socket_lb(datapath: &mut Datapath, cgroup: &Path) -> Result<(), DatapathError> {
    let dir = link_dir(&datapath.pin_dir);
    let pins_error = |path: &Path, source| DatapathError::Pins {
        path: path.display().to_string(),
        source,
    };
    super::loader::private_dir(&dir).map_err(|e| pins_error(&dir, e))?;
    let attach_error = |message: String| DatapathError::Interface {
        interface: format!("cgroup {}", cgroup.display()),
        message,
    };
    for (name, pin_name) in SOCKET_PROGRAMS {
        let program: &mut CgroupSockAddr = typed_program(&mut datapath.ebpf, name)?;
        if program.fd().is_err() {
            // Refused at load time (an optional hook this kernel lacks).
            continue;
        }
        let cgroup_dir = std::fs::File::open(cgroup).map_err(|e| attach_error(e.to_string()))?;
        // Links are always multi-attach; the kernel wants no flags for them.
        let id = program
            .attach(cgroup_dir, CgroupAttachMode::Single)
            .map_err(|e| attach_error(format!("{name}: {e}")))?;
        let link = program
            .take_link(id)
            .map_err(|e| attach_error(format!("{name}: {e}")))?;
        let link = FdLink::try_from(link).map_err(|e| attach_error(format!("{name}: {e}")))?;
        let pin = dir.join(pin_name);
        let fresh = dir.join(format!("{pin_name}-new"));
        // bpffs refuses dots in names.
        let _ = std::fs::remove_file(&fresh);
        link.pin(&fresh)
            .map_err(|e| attach_error(format!("{name}: pin: {e}")))?;
        std::fs::rename(&fresh, &pin).map_err(|e| pins_error(&pin, e))?;
    }
    info!(cgroup = %cgroup.display(), "socket load balancing attached");
    Ok(())
}

/// Removes the socket programs' link pins, which detaches them.
pub fn detach_socket_lb(pin_dir: &Path) -> usize {
    let dir = link_dir(pin_dir);
    SOCKET_PROGRAMS
        .iter()
        .filter(|(_, pin_name)| std::fs::remove_file(dir.join(pin_name)).is_ok())
        .count()
}

/// The cgroup2 mount point (the hierarchy's root as this process sees it).
pub fn cgroup2_root() -> Result<PathBuf, DatapathError> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").map_err(|source| DatapathError::Pins {
            path: "/proc/self/mounts".into(),
            source,
        })?;
    // Fields: device, mount point, type, options, ... (octal escapes in paths are rare here).
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let point = fields.nth(1)?;
            (fields.next()? == "cgroup2").then(|| PathBuf::from(point))
        })
        .next()
        .ok_or_else(|| DatapathError::Probe("no cgroup2 file system is mounted".into()))
}
