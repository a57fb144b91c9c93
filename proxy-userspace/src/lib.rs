//! vipr: a Kubernetes Service proxy with an eBPF datapath.
//!
//! Data flows one way: `source` → `model` → `plan` → `datapath`.
//! See ARCHITECTURE.md for the map of the code.
pub mod agent;
pub mod conntrack;
pub mod datapath;
pub mod healthcheck;
pub mod healthz;
pub mod http;
pub mod inspect;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod socket_lb;
pub mod source;
pub mod sync;
