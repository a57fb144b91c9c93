//! Pure planning: model → desired map contents → ordered diff against what
//! the kernel holds.
pub mod maglev;
pub mod maps;

mod diff;
mod dump;
mod family;
mod ids;
mod planner;
#[cfg(test)]
mod tests;

pub use diff::{apply_op, check_consistency, diff, diff_touched};
pub use dump::dump_text;
pub use maps::{MapContents, MapOp};
pub use planner::{Planner, Touched};
