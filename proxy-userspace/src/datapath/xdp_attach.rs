//! The XDP fast path on external interfaces: native on NICs (`--xdp auto`),
//! or as forced. Links are pinned like the TC ones so the fast path survives
//! agent restarts.
use std::path::{Path, PathBuf};

use aya::programs::{links::FdLink, xdp::XdpMode as AttachMode};
use tracing::{info, warn};

use super::{Datapath, DatapathError, parent_device};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpMode {
    /// Native on interfaces with a device driver behind them, where it pays;
    /// TC only on virtual ones (veth, bridges): generic XDP runs after the
    /// skb exists and saves nothing, and native XDP_TX on a veth needs an
    /// XDP program on its peer (see `veth_peer`).
    Auto,
    Native,
    Generic,
    /// TC programs only.
    Off,
}

/// Attaches the XDP program to `interface`; returns the mode it got, or
/// `None` when XDP is off or (in `auto`) could not be attached at all: the
/// TC programs then do the same work.
pub fn attach_xdp(
    datapath: &mut Datapath,
    pin_dir: &Path,
    interface: &str,
    mode: XdpMode,
) -> Result<Option<&'static str>, DatapathError> {
    let pin = link_pin(pin_dir, interface);
    // A fresh link each start, and none left from an earlier agent when XDP
    // is off now: aya 0.14 cannot take over a pinned XDP link atomically.
    let _ = std::fs::remove_file(&pin);
    let attempts: &[(AttachMode, &'static str)] = match mode {
        XdpMode::Off => return Ok(None),
        XdpMode::Auto if !has_device_driver(interface) => {
            info!(
                interface,
                "virtual interface: no XDP under --xdp auto; TC handles it"
            );
            return Ok(None);
        }
        XdpMode::Auto => &[(AttachMode::Driver, "native")],
        XdpMode::Native => &[(AttachMode::Driver, "native")],
        XdpMode::Generic => &[(AttachMode::Skb, "generic")],
    };
    let program = datapath.xdp()?;
    let mut last_error = String::new();
    for &(flags, name) in attempts {
        match program.attach(interface, flags) {
            Ok(id) => {
                let link = program.take_link(id).map_err(|e| error(interface, e))?;
                if let Some(dir) = pin.parent() {
                    let _ = super::loader::private_dir(dir);
                }
                match FdLink::try_from(link) {
                    Ok(fd_link) => {
                        fd_link.pin(&pin).map_err(|e| error(interface, e))?;
                    }
                    // Netlink-attached XDP (old kernels) stays until detached.
                    Err(e) => warn!(interface, error = %e, "XDP link not pinnable"),
                }
                info!(interface, mode = name, "XDP fast path attached");
                if flags == AttachMode::Driver && !has_device_driver(interface) {
                    warn!(
                        interface,
                        "native XDP on a virtual interface: if it is a veth, its peer needs \
                         an XDP program (`vipr veth-peer`) or frames sent back out are lost"
                    );
                }
                return Ok(Some(name));
            }
            Err(e) => last_error = format!("{name}: {e}"),
        }
    }
    if mode == XdpMode::Auto {
        warn!(interface, error = %last_error, "no XDP here; the TC programs handle external traffic");
        return Ok(None);
    }
    Err(error(interface, last_error))
}

/// NICs have the device their driver binds as parent; virtual interfaces
/// have none. An interface the kernel cannot describe counts as virtual.
fn has_device_driver(interface: &str) -> bool {
    match parent_device(interface) {
        Ok(parent) => parent.is_some(),
        Err(error) => {
            warn!(%error, "cannot tell whether this is a NIC");
            false
        }
    }
}

pub fn detach_xdp(pin_dir: &Path, interface: &str) {
    let _ = std::fs::remove_file(link_pin(pin_dir, interface));
}

fn link_pin(pin_dir: &Path, interface: &str) -> PathBuf {
    pin_dir.join("links").join(format!("{interface}-xdp"))
}

fn error(interface: &str, e: impl std::fmt::Display) -> DatapathError {
    DatapathError::Interface {
        interface: interface.to_string(),
        message: format!("XDP: {e}"),
    }
}
