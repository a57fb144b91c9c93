//! vipr: a Kubernetes Service proxy with an eBPF datapath.
//!
//! Data flows one way: `source` → `model` → `plan` → `datapath`.
//! See ARCHITECTURE.md for the map of the code.
pub mod agent;
pub mod cli;
pub mod conntrack;
pub mod datapath;
pub mod healthcheck;
pub mod healthz;
pub mod http;
pub mod inspect;
pub mod metrics;
pub mod model;
pub mod names;
pub mod plan;
pub mod socket_lb;
pub mod source;
pub mod sync;

/// Where an agent pins its maps and links unless told otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/vipr";
/// Where an agent keeps its other files (the name index) unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/run/vipr";
