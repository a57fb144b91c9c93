//! The agent's side of socket load balancing: attach the cgroup hooks as
//! configured (or detach an earlier agent's), and after every sync that
//! moved the maps close the connected UDP sockets left on endpoints their
//! Service no longer uses.
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::{
    datapath::{
        Datapath, DatapathError, KernelFeatures, SocketLbScope, SocketRevNat, attach_socket_lb,
        cgroup2_root, detach_socket_lb, namespaces_in, run_in_each,
    },
    plan::MapContents,
};

/// Connect-time load balancing for sockets (`--socket-lb`).
#[derive(Clone, Debug)]
pub struct SocketLbConfig {
    /// `None`: off, and whatever an earlier agent attached is detached.
    pub scope: Option<SocketLbScope>,
    /// The cgroup the hooks attach to; default: the cgroup2 mount's root.
    pub cgroup_root: Option<PathBuf>,
    /// NodePorts also answer the node on 127.0.0.1.
    pub nodeport_localhost: bool,
}

/// Attaches the hooks. Returns what closes stale UDP sockets, when the
/// hooks are on and the kernel can destroy sockets.
pub fn set_up(
    config: &SocketLbConfig,
    pin_dir: &Path,
    datapath: &mut Datapath,
    features: &KernelFeatures,
) -> Result<Option<StaleUdpSweep>, DatapathError> {
    let Some(scope) = config.scope else {
        let detached = detach_socket_lb(pin_dir);
        info!(detached, "socket load balancing off");
        return Ok(None);
    };
    if let Some(why) = features.socket_lb_missing() {
        warn!(%why, "socket load balancing unavailable on this kernel: host-network clients are not load-balanced");
        detach_socket_lb(pin_dir);
        return Ok(None);
    }
    let cgroup = match &config.cgroup_root {
        Some(path) => path.clone(),
        None => match cgroup2_root() {
            Ok(root) => root,
            Err(error) => {
                warn!(%error, "socket load balancing needs cgroup2 (or --cgroup-root): host-network clients are not load-balanced");
                return Ok(None);
            }
        },
    };
    attach_socket_lb(datapath, &cgroup)?;
    info!(?scope, cgroup = %cgroup.display(), "socket load balancing on");
    if features.sock_destroy.is_err() {
        return Ok(None);
    }
    Ok(Some(StaleUdpSweep {
        revnat: SocketRevNat::take(datapath)?,
        pods_under: (scope == SocketLbScope::All).then_some(cgroup),
    }))
}

pub struct StaleUdpSweep {
    revnat: SocketRevNat,
    /// In `all` scope: the cgroup whose processes' namespaces (pods') are
    /// swept too.
    pods_under: Option<PathBuf>,
}

impl StaleUdpSweep {
    /// Closes the stale sockets of the node's namespace and, in `all`
    /// scope, of every namespace with a process under the cgroup.
    pub fn sweep(&self, applied: &MapContents) {
        let sweep_here = || self.revnat.destroy_stale_udp_sockets(applied);
        let mut results = vec![sweep_here()];
        if let Some(cgroup) = &self.pods_under {
            results.extend(run_in_each(&namespaces_in(cgroup), sweep_here));
        }
        let mut destroyed = 0;
        for result in results {
            match result {
                Ok(n) => destroyed += n,
                Err(error) => warn!(%error, "closing UDP sockets of endpoints that left failed"),
            }
        }
        if destroyed > 0 {
            info!(
                destroyed,
                "closed UDP sockets connected to endpoints that left"
            );
        }
    }
}
