//! Attaching the programs to pod interfaces: TCX where the kernel has it,
//! clsact otherwise. Which one is decided by trying TCX once, not by the
//! kernel version. TCX links are pinned so they outlive the agent; clsact
//! filters stay attached by themselves and are found again by name.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType,
    links::{FdLink, PinnedLink},
    tc::{
        NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle, qdisc_add_clsact,
        qdisc_detach_program,
    },
};
use proxy_common::programs;
use tracing::{info, warn};

use super::{Datapath, DatapathError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Tcx,
    Clsact,
}

/// Where vipr's clsact filters sit, fixed so that the next agent finds its
/// predecessor's filter and swaps the program in it atomically. Ahead of
/// the kernel's automatic priorities (49152 and up).
const CLSACT_PRIORITY: u16 = 50;
const CLSACT_HANDLE: TcHandle = TcHandle::new(0, 1);

/// Program, hook and the pin-name suffix of its link, for one kind of interface.
type Hooks = [(&'static str, TcAttachType, &'static str); 2];

/// Host side of pod interfaces.
const POD_HOOKS: Hooks = [
    (programs::FROM_POD, TcAttachType::Ingress, "ingress"),
    (programs::TO_POD, TcAttachType::Egress, "egress"),
];

/// The node's external interfaces (NodePort, LoadBalancer, external IPs).
const EXTERNAL_HOOKS: Hooks = [
    (
        programs::FROM_EXTERNAL,
        TcAttachType::Ingress,
        "ext-ingress",
    ),
    (programs::TO_EXTERNAL, TcAttachType::Egress, "ext-egress"),
];

/// Tracks which interfaces carry our programs.
pub struct Attacher {
    mode: Option<AttachMode>,
    hooks: &'static Hooks,
    link_dir: PathBuf,
    /// Interface name → ifindex it had when attached.
    attached: BTreeMap<String, u32>,
}

impl Attacher {
    /// For pod interfaces.
    pub fn new(pin_dir: &Path) -> Self {
        Self {
            mode: None,
            hooks: &POD_HOOKS,
            link_dir: pin_dir.join("links"),
            attached: BTreeMap::new(),
        }
    }

    /// For the node's external interfaces.
    pub fn external(pin_dir: &Path) -> Self {
        Self {
            hooks: &EXTERNAL_HOOKS,
            ..Self::new(pin_dir)
        }
    }

    /// Uses `mode` (found by the feature probe) instead of trying TCX on
    /// the first interface.
    pub fn with_mode(mut self, mode: AttachMode) -> Self {
        self.mode = Some(mode);
        self
    }

    pub fn mode(&self) -> Option<AttachMode> {
        self.mode
    }

    pub fn attached(&self) -> impl Iterator<Item = (&str, u32)> {
        self.attached.iter().map(|(n, i)| (n.as_str(), *i))
    }

    /// Brings the set of attached interfaces in line with `present`
    /// (name → ifindex of the interfaces that match the configured globs).
    pub fn reconcile(
        &mut self,
        datapath: &mut Datapath,
        present: &BTreeMap<String, u32>,
    ) -> Vec<DatapathError> {
        let gone: Vec<String> = self
            .attached
            .iter()
            .filter(|(name, index)| present.get(*name) != Some(index))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            info!(interface = %name, "interface gone; forgetting it");
            self.attached.remove(&name);
            self.remove_link_pins(&name);
        }
        let mut errors = Vec::new();
        for (name, index) in present {
            if self.attached.contains_key(name) {
                continue;
            }
            match self.attach(datapath, name) {
                Ok(()) => {
                    info!(interface = %name, mode = ?self.mode, "attached");
                    self.attached.insert(name.clone(), *index);
                }
                Err(e) => errors.push(e),
            }
        }
        errors
    }

    fn attach(&mut self, datapath: &mut Datapath, interface: &str) -> Result<(), DatapathError> {
        if self.mode.is_none() {
            self.mode = Some(self.probe_tcx(datapath, interface)?);
            return Ok(());
        }
        // Attached the new way first, then the other way's attachments
        // (an earlier agent's, in the other mode) go: never a moment without.
        match self.mode {
            Some(AttachMode::Tcx) => {
                self.attach_tcx(datapath, interface)?;
                detach_clsact(interface, self.hooks);
            }
            _ => {
                attach_clsact(datapath, interface, self.hooks)?;
                self.remove_link_pins(interface);
            }
        }
        Ok(())
    }

    /// Attaches to the first interface with TCX; if the kernel refuses, with clsact.
    fn probe_tcx(
        &mut self,
        datapath: &mut Datapath,
        interface: &str,
    ) -> Result<AttachMode, DatapathError> {
        match self.attach_tcx(datapath, interface) {
            Ok(()) => {
                info!("kernel supports TCX: attaching with BPF links");
                Ok(AttachMode::Tcx)
            }
            Err(e) => {
                warn!(error = %e, "TCX attach failed: falling back to clsact");
                attach_clsact(datapath, interface, self.hooks)?;
                Ok(AttachMode::Clsact)
            }
        }
    }

    fn link_pin(&self, interface: &str, direction: &str) -> PathBuf {
        self.link_dir.join(format!("{interface}-{direction}"))
    }

    fn attach_tcx(
        &mut self,
        datapath: &mut Datapath,
        interface: &str,
    ) -> Result<(), DatapathError> {
        super::loader::private_dir(&self.link_dir).map_err(|source| DatapathError::Pins {
            path: self.link_dir.display().to_string(),
            source,
        })?;
        for &(name, attach_type, direction) in self.hooks {
            let pin = self.link_pin(interface, direction);
            let program = datapath.program(name)?;
            // A link pinned by an earlier agent gets the new program atomically,
            // so packets never see a moment without one.
            if pin.exists() {
                if replace_pinned(program, &pin).is_ok() {
                    continue;
                }
                let _ = std::fs::remove_file(&pin);
            }
            let id = program
                .attach_with_options(
                    interface,
                    attach_type,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(|e| interface_error(interface, e))?;
            let link = program
                .take_link(id)
                .map_err(|e| interface_error(interface, e))?;
            let fd_link = FdLink::try_from(link).map_err(|e| interface_error(interface, e))?;
            fd_link
                .pin(&pin)
                .map_err(|e| interface_error(interface, e))?;
        }
        Ok(())
    }

    fn remove_link_pins(&self, interface: &str) {
        for &(_, _, direction) in self.hooks {
            let _ = std::fs::remove_file(self.link_pin(interface, direction));
        }
    }
}

fn replace_pinned(program: &mut SchedClassifier, pin: &Path) -> Result<(), DatapathError> {
    let pinned = PinnedLink::from_pin(pin).map_err(|e| interface_error("pinned link", e))?;
    let link = SchedClassifierLink::try_from(FdLink::from(pinned))
        .map_err(|e| interface_error("pinned link", e))?;
    let id = program
        .attach_to_link(link)
        .map_err(|e| interface_error("pinned link", e))?;
    // The pin keeps the link alive; our handle may go.
    drop(program.take_link(id));
    Ok(())
}

fn attach_clsact(
    datapath: &mut Datapath,
    interface: &str,
    hooks: &Hooks,
) -> Result<(), DatapathError> {
    // EEXIST when the qdisc is already there is fine.
    let _ = qdisc_add_clsact(interface);
    for &(name, attach_type, _) in hooks {
        let program = datapath.program(name)?;
        // An earlier agent's filter gets the new program in place, atomically.
        let replaced = SchedClassifierLink::attached(
            interface,
            attach_type,
            CLSACT_PRIORITY,
            CLSACT_HANDLE,
            None,
        )
        .ok()
        .and_then(|earlier| program.attach_to_link(earlier).ok());
        let id = match replaced {
            Some(id) => id,
            None => {
                // None there, or one left by a vipr that let the kernel
                // choose its place: that one must go first.
                let _ = qdisc_detach_program(interface, attach_type, name);
                program
                    .attach_with_options(
                        interface,
                        attach_type,
                        TcAttachOptions::Netlink(NlOptions {
                            priority: CLSACT_PRIORITY,
                            handle: CLSACT_HANDLE,
                            ..NlOptions::default()
                        }),
                    )
                    .map_err(|e| interface_error(interface, e))?
            }
        };
        let link = program
            .take_link(id)
            .map_err(|e| interface_error(interface, e))?;
        // Dropping the handle would detach the filter; it must outlive the agent.
        std::mem::forget(link);
    }
    Ok(())
}

/// Removes vipr's clsact filters of `hooks` from `interface`, if any.
fn detach_clsact(interface: &str, hooks: &Hooks) {
    for &(name, attach_type, _) in hooks {
        let _ = qdisc_detach_program(interface, attach_type, name);
    }
}

fn interface_error(interface: &str, error: impl std::fmt::Display) -> DatapathError {
    DatapathError::Interface {
        interface: interface.to_string(),
        message: error.to_string(),
    }
}

/// Detaches clsact filters vipr left on any interface of this network
/// namespace. TCX links go with their pins (see `cleanup_pins`).
pub fn cleanup_attachments(interfaces: impl IntoIterator<Item = String>) -> usize {
    let mut removed = 0;
    for interface in interfaces {
        for &(name, attach_type, _) in POD_HOOKS.iter().chain(&EXTERNAL_HOOKS) {
            if qdisc_detach_program(&interface, attach_type, name).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}
