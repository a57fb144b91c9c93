//! The trace copy: the same object loaded a second time with the global
//! `TRACE` set, for `vipr trace`. It reads the live service maps (shared
//! through their pins) but writes only maps of its own: its conntrack,
//! counters, affinities and socket entries are scratch, so a trace can
//! neither create live flows, claim masquerade ports nor bump live
//! counters. That holds by construction: the copy has no handle on them.
use std::path::{Path, PathBuf};

use proxy_common::{maps, programs};

use super::DatapathError;
use super::loader::{Globals, MAP_DIR, MapSizes, OBJECT, cleanup_pins, private_dir, typed_program};

/// Under the agent's pin directory.
const TRACE_DIR: &str = "trace";

/// Maps the programs only read: the trace copy uses the live ones.
const SHARED_MAPS: [&str; 10] = [
    maps::SERVICES,
    maps::SLOTS,
    maps::BACKENDS,
    maps::SERVICES6,
    maps::BACKENDS6,
    maps::SOURCE_RANGES,
    maps::SOURCE_RANGES6,
    maps::AFFINITY_MEMBERS,
    proxy_common::MAGLEV,
    proxy_common::MAGLEV_INDEX,
];

/// A trace writes a few entries; the tracer clears them before each run.
const SCRATCH_ENTRIES: u32 = 256;

/// Every program a trace may run; `TRACE_HOST` exists only here.
pub const TRACE_PROGRAMS: [&str; 6] = [
    programs::FROM_POD,
    programs::TO_POD,
    programs::FROM_EXTERNAL,
    programs::TO_EXTERNAL,
    programs::TRACE_HOST,
    programs::XDP_EXTERNAL,
];

pub fn trace_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join(TRACE_DIR)
}

/// Serialises traces with each other and with a (re)load of the copy:
/// an exclusive flock on the pin directory, which outlives the copy.
pub(super) fn lock(pin_dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, DatapathError> {
    let pins_error = |source: std::io::Error| DatapathError::Pins {
        path: pin_dir.display().to_string(),
        source,
    };
    let handle = std::fs::File::open(pin_dir).map_err(pins_error)?;
    nix::fcntl::Flock::lock(handle, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| pins_error(errno.into()))
}

pub(super) fn scratch_map(pin_dir: &Path, name: &str) -> PathBuf {
    trace_dir(pin_dir).join(MAP_DIR).join(name)
}

/// Loads the trace copy and pins its programs under `trace_dir(pin_dir)`,
/// replacing a copy an earlier agent left.
pub(super) fn load(
    pin_dir: &Path,
    globals: &Globals,
    sizes: &MapSizes,
) -> Result<(), DatapathError> {
    let live_maps = pin_dir.join(MAP_DIR);
    // aya would create (and pin) a missing map: never a live one.
    for name in SHARED_MAPS {
        aya::maps::MapData::from_pin(live_maps.join(name))
            .map_err(|source| DatapathError::Map { name, source })?;
    }
    let _lock = lock(pin_dir)?;
    let dir = trace_dir(pin_dir);
    cleanup_pins(&dir)?;
    let map_dir = dir.join(MAP_DIR);
    private_dir(&map_dir).map_err(|source| DatapathError::Pins {
        path: map_dir.display().to_string(),
        source,
    })?;
    let mut loader = globals.loader(&map_dir, sizes);
    loader.override_global(proxy_common::globals::TRACE, &1u8, true);
    for name in SHARED_MAPS {
        loader.map_pin_path(name, live_maps.join(name));
    }
    for name in [
        maps::CONNTRACK,
        maps::CONNTRACK6,
        maps::AFFINITY,
        maps::AFFINITY6,
        maps::SOCK_REVNAT,
        maps::SOCK_REVNAT6,
    ] {
        loader.map_max_entries(name, SCRATCH_ENTRIES);
    }
    let mut ebpf = loader.load(OBJECT)?;
    for name in TRACE_PROGRAMS {
        let pin_error = |e: aya::pin::PinError| DatapathError::Pins {
            path: dir.join(name).display().to_string(),
            source: std::io::Error::other(e.to_string()),
        };
        let program_error = |source| DatapathError::Program { name, source };
        if name == programs::XDP_EXTERNAL {
            let xdp = typed_program::<aya::programs::Xdp>(&mut ebpf, name)?;
            xdp.load().map_err(program_error)?;
            xdp.pin(dir.join(name)).map_err(pin_error)?;
        } else {
            let tc = typed_program::<aya::programs::SchedClassifier>(&mut ebpf, name)?;
            tc.load().map_err(program_error)?;
            tc.pin(dir.join(name)).map_err(pin_error)?;
        }
    }
    Ok(())
}
