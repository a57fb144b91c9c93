//! The far end of a veth external interface in native XDP mode.
//!
//! On a NIC, `XDP_TX` puts the frame on the wire. On a veth it lands in the
//! peer's receive ring, and the kernel (drivers/net/veth.c) only wakes the
//! peer to take it when the peer runs an XDP program itself; GRO alone is not
//! enough. Without one, translated frames sit in the ring and are lost. Nodes
//! whose uplink is a veth (containers, our test namespaces) therefore need a
//! pass-through program on the host side before `--xdp native` works there.
use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    programs::{Xdp, links::FdLink, xdp::XdpMode},
};
use proxy_common::{maps, programs};

use super::{
    DatapathError,
    loader::{BPFFS_ROOT, OBJECT, cleanup_pins, typed_program},
};

/// Attaches the pass-through program in native mode to each of `interfaces`
/// (in the caller's network namespace). With `pin_dir`, the links are pinned
/// there (one file per interface) and outlive the process; without, they
/// last as long as the returned object.
pub fn attach_pass_through(
    interfaces: &[String],
    pin_dir: Option<&Path>,
) -> Result<Ebpf, DatapathError> {
    if OBJECT.is_empty() {
        return Err(DatapathError::NoObject);
    }
    // The object's maps come along, pinned as declared; this program never
    // reads them. They get the smallest size and a pin directory of their
    // own, removed once loaded, so they never meet an agent's.
    let map_dir =
        std::path::PathBuf::from(BPFFS_ROOT).join(format!("vipr-veth-peer-{}", std::process::id()));
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(&map_dir);
    for map in [maps::SERVICES, maps::BACKENDS, maps::SLOTS, maps::CONNTRACK] {
        loader.map_max_entries(map, 1);
    }
    super::loader::private_dir(&map_dir).map_err(|source| DatapathError::Pins {
        path: map_dir.display().to_string(),
        source,
    })?;
    let loaded = loader.load(OBJECT);
    cleanup_pins(&map_dir)?;
    let mut ebpf = loaded?;
    let name = programs::XDP_PASS;
    let program: &mut Xdp = typed_program(&mut ebpf, name)?;
    program
        .load()
        .map_err(|source| DatapathError::Program { name, source })?;
    for interface in interfaces {
        let id = program
            .attach(interface, XdpMode::Driver)
            .map_err(|e| error(interface, e))?;
        let Some(dir) = pin_dir else { continue };
        let link = FdLink::try_from(program.take_link(id).map_err(|e| error(interface, e))?)
            .map_err(|e| error(interface, e))?;
        super::loader::private_dir(dir).map_err(|source| DatapathError::Pins {
            path: dir.display().to_string(),
            source,
        })?;
        link.pin(dir.join(format!("{interface}-xdp-pass")))
            .map_err(|e| error(interface, e))?;
    }
    Ok(ebpf)
}

fn error(interface: &str, e: impl std::fmt::Display) -> DatapathError {
    DatapathError::Interface {
        interface: interface.to_string(),
        message: format!("pass-through XDP: {e}"),
    }
}
