//! The only code that touches the kernel: load the programs, attach them,
//! pin what must outlive the agent, and write the service maps.
//!
//! Everything above this module works on [`MapContents`]/[`MapOp`] data; the
//! [`ServiceMaps`] trait is the seam, with a kernel implementation and an
//! in-memory fake for tests.

mod attach;
mod conntrack;
mod fake;
mod interfaces;
mod kernel;
mod kernel_maglev;
mod links;
mod loader;
mod namespaces;
mod pins;
mod probe;
mod sock_destroy;
mod socket_lb;
mod sys;
mod trace_copy;
mod trace_run;
mod veth_peer;
mod xdp_attach;

pub use attach::{AttachMode, Attacher, cleanup_attachments};
pub use conntrack::{ConntrackTable, FamilyTable, Pressure, conntrack_clock};
pub use fake::FakeMaps;
pub use interfaces::{InterfaceSelector, all_interfaces, ip_addresses};
pub use kernel::{KernelMaps, read_counters, source_range_of, source_range6_of};
pub use links::parent_device;
pub use loader::{
    Datapath, LbMode, LoadOptions, MAP_DIR, MapSizes, OBJECT, cleanup_pins, load_trace_copy,
};
pub use namespaces::{namespaces_in, run_in_each};
pub use probe::{
    KernelFeatures, XdpSupport, load_probed, program_figures, report as features_report,
};
pub use sock_destroy::{SocketRevNat, probe_sock_destroy};
pub use socket_lb::{
    OPTIONAL_SOCKET_PROGRAMS, SOCKET_PROGRAMS, SocketLbScope, attach_socket_lb, cgroup2_root,
    detach_socket_lb, load_socket_programs,
};
pub use sys::{netns_cookie, trim_heap, use_one_malloc_arena};
pub use trace_copy::trace_dir;
pub use trace_run::{TraceAffinity, TraceFlow, TraceInput, TraceRun, run_trace};
pub use veth_peer::attach_pass_through;
pub use xdp_attach::{XdpMode, attach_xdp, detach_xdp};

use crate::plan::maps::{MapContents, MapOp};

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("this vipr was built with AYA_BUILD_SKIP: it carries no kernel programs")]
    NoObject,
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("interface {interface}: {message}")]
    Interface { interface: String, message: String },
    #[error("this kernel lacks what the datapath needs: {0}")]
    MissingFeatures(String),
    #[error("sock_diag: {0}")]
    SockDiag(String),
    #[error("reading the monotonic clock: {0}")]
    Clock(String),
    #[error("probing kernel features: {0}")]
    Probe(String),
    #[error(
        "pinned map {path} has another layout ({found}) than this vipr reads ({expected}): \
         it was left by an incompatible version; remove the pins (`vipr cleanup --bpffs DIR`) \
         to start afresh, which resets established flows"
    )]
    IncompatiblePins {
        path: String,
        expected: String,
        found: String,
    },
    #[error("bpffs directory {path}: {source}")]
    Pins {
        path: String,
        source: std::io::Error,
    },
}

/// Write access to the service maps, so the sync loop can run against the
/// kernel or against a fake.
pub trait ServiceMaps {
    fn apply(&mut self, op: &MapOp) -> Result<(), DatapathError>;
    /// Applies `ops` in order, telling `done` each op's result. An
    /// implementation may write a run of ops of one kind at once: the diff's
    /// order matters only between kinds (see `plan::diff`).
    fn apply_all(
        &mut self,
        ops: &[MapOp],
        done: &mut dyn FnMut(&MapOp, Result<(), DatapathError>),
    ) {
        for op in ops {
            done(op, self.apply(op));
        }
    }
    /// Reads back everything currently in the maps.
    fn dump(&self) -> Result<MapContents, DatapathError>;
}
