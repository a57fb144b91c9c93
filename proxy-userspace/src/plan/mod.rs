//! Pure planning: model → desired map contents → ordered diff against what
//! the kernel holds.
mod apply;
pub mod maglev;
pub mod maps;

mod diff;
mod diff_maglev;
mod dump;
mod family;
mod ids;
mod maglev_pool;
mod planner;
#[cfg(test)]
mod tests;

pub use apply::apply_op;
pub use diff::{check_consistency, diff, diff_touched};
pub use dump::dump_text;
pub use maglev_pool::{LbConfig, LbConfigError, LbDefault, MaglevTable};
pub use maps::{MapContents, MapOp};
pub use planner::{Planner, Touched};
