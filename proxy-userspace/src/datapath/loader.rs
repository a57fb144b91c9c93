//! Loading the embedded object with its maps pinned under a bpffs directory,
//! so that maps (and with them established flows) survive agent restarts.
use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader, include_bytes_aligned,
    programs::{SchedClassifier, Xdp},
};
use proxy_common::{globals, maps, programs};

use super::DatapathError;

/// The kernel programs, built by build.rs from proxy-ebpf.
pub static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/proxy-ebpf"));

/// The datapath programs, loaded at start (probe programs are not among them).
pub const PROGRAMS: [&str; 4] = [
    programs::FROM_POD,
    programs::TO_POD,
    programs::FROM_EXTERNAL,
    programs::TO_EXTERNAL,
];

/// Under a pin directory: the pinned maps.
pub const MAP_DIR: &str = "maps";

/// Runtime knobs written into the object at load time.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// bpffs directory that holds this agent's pins.
    pub pin_dir: PathBuf,
    pub hash_seed: u32,
    /// Address masqueraded flows leave with; `None` disables masquerading.
    pub node_ipv4: Option<std::net::Ipv4Addr>,
    /// As `node_ipv4`, for IPv6 flows.
    pub node_ipv6: Option<std::net::Ipv6Addr>,
    /// Which sockets the cgroup hooks translate (when they are attached).
    pub socket_lb: super::SocketLbScope,
    /// How external flows reach another node's endpoint (`--lb-mode`).
    pub lb_mode: LbMode,
    pub sizes: MapSizes,
}

/// `--lb-mode`: how external flows under externalTrafficPolicy Cluster
/// reach an endpoint on another node (Cilium's names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LbMode {
    /// Masqueraded behind this node; the replies come back through it.
    #[default]
    Snat,
    /// Direct server return: the client's address kept, the frontend
    /// carried to the endpoint's node in an IPv4 option (IPv6: a
    /// destination options header); the replies go from there straight to
    /// the client.
    Dsr,
    /// DSR for TCP, masquerade for UDP.
    Hybrid,
}

impl LbMode {
    /// The kernel programs' `LB_MODE` global.
    pub fn global(self) -> u8 {
        match self {
            LbMode::Snat => proxy_common::LB_MODE_SNAT,
            LbMode::Dsr => proxy_common::LB_MODE_DSR,
            LbMode::Hybrid => proxy_common::LB_MODE_HYBRID,
        }
    }
}

/// Capacity of the maps that grow with the cluster. Hash maps preallocate,
/// so these are also what the maps cost in kernel memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// Frontends: (address, port, protocol, scope).
    pub services: u32,
    /// Distinct endpoints.
    pub backends: u32,
    /// Endpoint choices summed over frontends.
    pub slots: u32,
    /// Tracked flows, two entries each (LRU: the oldest are evicted).
    pub conntrack: u32,
    /// Sockets the cgroup hooks sent to a backend (LRU), per family.
    pub socket_revnat: u32,
    /// Maglev tables in the pool (an array: preallocated in full).
    pub maglev_tables: u32,
    /// Positions per Maglev table (M, a prime).
    pub maglev_table_size: u32,
}

impl MapSizes {
    /// Entries of the Maglev pool: every table's positions, end to end.
    pub fn maglev_positions(&self) -> u32 {
        // An array needs at least one entry; the agent caps the product.
        self.maglev_tables
            .saturating_mul(self.maglev_table_size)
            .max(1)
    }
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            services: maps::DEFAULT_MAX_SERVICES,
            backends: maps::DEFAULT_MAX_BACKENDS,
            slots: maps::DEFAULT_MAX_SLOTS,
            conntrack: maps::DEFAULT_MAX_CONNTRACK,
            socket_revnat: maps::DEFAULT_MAX_SOCK_REVNAT,
            maglev_tables: proxy_common::DEFAULT_MAX_MAGLEV_TABLES,
            maglev_table_size: proxy_common::DEFAULT_MAGLEV_TABLE_SIZE,
        }
    }
}

impl LoadOptions {
    pub fn new(pin_dir: impl Into<PathBuf>) -> Self {
        Self {
            pin_dir: pin_dir.into(),
            hash_seed: std::process::id().wrapping_mul(0x9e37_79b9) ^ seed_from_clock(),
            node_ipv4: None,
            node_ipv6: None,
            socket_lb: super::SocketLbScope::Host,
            lb_mode: LbMode::Snat,
            sizes: MapSizes::default(),
        }
    }
}

fn seed_from_clock() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// The loaded object: programs ready to attach, maps pinned.
pub struct Datapath {
    pub ebpf: Ebpf,
    pub pin_dir: PathBuf,
}

impl Datapath {
    pub fn load(options: &LoadOptions) -> Result<Self, DatapathError> {
        if OBJECT.is_empty() {
            return Err(DatapathError::NoObject);
        }
        ensure_bpffs(&options.pin_dir)?;
        let map_dir = options.pin_dir.join(MAP_DIR);
        for dir in [&options.pin_dir, &map_dir] {
            private_dir(dir).map_err(|source| DatapathError::Pins {
                path: dir.display().to_string(),
                source,
            })?;
        }
        super::pins::check_pinned_layouts(&map_dir)?;
        super::pins::drop_resized_maglev_pool(&map_dir, options.sizes.maglev_positions())?;
        let globals = Globals::of(options)?;
        let mut ebpf = globals.loader(&map_dir, &options.sizes).load(OBJECT)?;
        for name in PROGRAMS {
            program(&mut ebpf, name)?
                .load()
                .map_err(|source| DatapathError::Program { name, source })?;
        }
        xdp_program(&mut ebpf)?
            .load()
            .map_err(|source| DatapathError::Program {
                name: programs::XDP_EXTERNAL,
                source,
            })?;
        Ok(Self {
            ebpf,
            pin_dir: options.pin_dir.clone(),
        })
    }

    pub fn xdp(&mut self) -> Result<&mut Xdp, DatapathError> {
        xdp_program(&mut self.ebpf)
    }

    pub fn program(&mut self, name: &'static str) -> Result<&mut SchedClassifier, DatapathError> {
        program(&mut self.ebpf, name)
    }
}

/// The values written into the object's globals at load.
pub(super) struct Globals {
    hash_seed: u32,
    node_ipv4: u32,
    node_ipv6: proxy_common::Addr6,
    netns_cookie: u64,
    socket_lb_scope: u8,
    lb_mode: u8,
}

impl Globals {
    fn of(options: &LoadOptions) -> Result<Self, DatapathError> {
        Ok(Self {
            hash_seed: options.hash_seed,
            node_ipv4: options.node_ipv4.map_or(0, proxy_common::wire_addr),
            node_ipv6: options.node_ipv6.map_or([0; 4], proxy_common::wire_addr6),
            // The namespace the agent runs in is the node's: host-scope
            // socket translation keys on it.
            netns_cookie: super::netns_cookie()
                .map_err(|e| DatapathError::MissingFeatures(format!("SO_NETNS_COOKIE ({e})")))?,
            socket_lb_scope: options.socket_lb.global(),
            lb_mode: options.lb_mode.global(),
        })
    }

    /// A loader that pins the object's maps under `map_dir` (reusing what is
    /// pinned there) and writes these globals.
    pub(super) fn loader<'a>(&'a self, map_dir: &'a Path, sizes: &MapSizes) -> EbpfLoader<'a> {
        let mut loader = EbpfLoader::new();
        loader
            .default_map_pin_directory(map_dir)
            .override_global(globals::HASH_SEED, &self.hash_seed, true)
            .override_global(globals::NODE_IPV4, &self.node_ipv4, true)
            .override_global(globals::NODE_IPV6, &self.node_ipv6, true)
            .override_global(globals::NETNS_COOKIE, &self.netns_cookie, true)
            .override_global(globals::SOCKET_LB_SCOPE, &self.socket_lb_scope, true)
            .override_global(globals::LB_MODE, &self.lb_mode, true)
            .map_max_entries(maps::SERVICES, sizes.services)
            .map_max_entries(maps::BACKENDS, sizes.backends)
            .map_max_entries(maps::SLOTS, sizes.slots)
            .map_max_entries(maps::CONNTRACK, sizes.conntrack)
            // IPv6 maps hold what their IPv4 twins hold.
            .map_max_entries(maps::SERVICES6, sizes.services)
            .map_max_entries(maps::BACKENDS6, sizes.backends)
            .map_max_entries(maps::CONNTRACK6, sizes.conntrack)
            .map_max_entries(maps::SOCK_REVNAT, sizes.socket_revnat)
            .map_max_entries(maps::SOCK_REVNAT6, sizes.socket_revnat)
            // One member per slot at most.
            .map_max_entries(maps::AFFINITY_MEMBERS, sizes.slots)
            .map_max_entries(proxy_common::MAGLEV, sizes.maglev_positions())
            // One index entry per frontend at most.
            .map_max_entries(proxy_common::MAGLEV_INDEX, sizes.services);
        loader
    }
}

/// Loads the trace copy `vipr trace` runs beside the datapath `options`
/// loaded (same globals, same live service maps); see `trace_copy`.
pub fn load_trace_copy(options: &LoadOptions) -> Result<(), DatapathError> {
    let globals = Globals::of(options)?;
    super::trace_copy::load(&options.pin_dir, &globals, &options.sizes)
}

fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, DatapathError> {
    typed_program(ebpf, programs::XDP_EXTERNAL)
}

fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    typed_program(ebpf, name)
}

/// The object's program `name` as the program type it must be.
pub(super) fn typed_program<'a, T>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut T, DatapathError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(DatapathError::Program {
            name,
            source: aya::programs::ProgramError::NotLoaded,
        })?
        .try_into()
        .map_err(|source| DatapathError::Program { name, source })
}

/// Removes the pin directory (maps and links). Removing a link pin detaches
/// its program once nothing else holds the link.
pub fn cleanup_pins(pin_dir: &Path) -> Result<(), DatapathError> {
    match std::fs::remove_dir_all(pin_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DatapathError::Pins {
            path: pin_dir.display().to_string(),
            source,
        }),
    }
}

pub(super) const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// Creates `dir` (and its missing parents) readable by root only, and
/// makes it so if it exists: pinned maps and links are the datapath's state.
/// Pins themselves are 0600 (bpffs applies the umask to 0600).
pub(crate) fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PRIVATE_DIR_MODE))
}

const PRIVATE_DIR_MODE: u32 = 0o700;

/// Mounts bpffs at /sys/fs/bpf when the pins go there and nothing is mounted
/// yet, as a fresh host (or a container with /sys bind-mounted) may have it.
fn ensure_bpffs(pin_dir: &Path) -> Result<(), DatapathError> {
    let root = Path::new(BPFFS_ROOT);
    if !pin_dir.starts_with(root) {
        return Ok(());
    }
    let pins_error = |source: std::io::Error| DatapathError::Pins {
        path: BPFFS_ROOT.to_string(),
        source,
    };
    let is_bpffs = nix::sys::statfs::statfs(root)
        .map(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
        .map_err(|e| pins_error(e.into()))?;
    if !is_bpffs {
        tracing::info!("mounting bpffs at {BPFFS_ROOT}");
        nix::mount::mount(
            Some("bpffs"),
            root,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| pins_error(e.into()))?;
    }
    Ok(())
}
