//! Maglev lookup tables (Eisenbud et al., NSDI 2016): the layouts the
//! kernel reads to pick a backend by consistent hashing.
//!
//! The tables live in one preallocated array, `VIPR_MAGLEV`, cut into
//! tables of `size` positions; a frontend flagged `SVC_FLAG_MAGLEV` finds
//! its table through `VIPR_MAGLEV_INDEX`. The agent writes a changed table
//! in full into a table no frontend uses, then switches the frontend's
//! index entry to it (one hash update, atomic): a new flow sees the old
//! table or the new one, never a mix.

/// `u32` array: `first + position` → backend id, for every table.
pub const MAGLEV: &str = "VIPR_MAGLEV";
/// service id (`u32`) → [`MaglevRef`]: where a frontend's table is.
pub const MAGLEV_INDEX: &str = "VIPR_MAGLEV_INDEX";

/// `ServiceValue::flags`: new connections pick their backend from the
/// frontend's Maglev table (the slots while it has none yet).
pub const SVC_FLAG_MAGLEV: u16 = 1 << 6;

/// Table sizes the agent accepts: primes, so that every skip in `1..M` is
/// coprime with M and each backend's permutation visits every position.
/// Each is about twice the last: the choice is memory against evenness.
pub const MAGLEV_PRIMES: [u32; 9] = [251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521];
/// Positions per table: at least 100 per backend up to 10 backends, where
/// the paper's imbalance stays within about 1% (see ARCHITECTURE.md).
pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = 1021;
/// Tables in the preallocated pool (4 MiB per 1024 tables of 1021).
pub const DEFAULT_MAX_MAGLEV_TABLES: u32 = 4096;

/// Value of `VIPR_MAGLEV_INDEX`. No padding: 4 + 4 + 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct MaglevRef {
    /// Index of the table's position 0 in `VIPR_MAGLEV`.
    pub first: u32,
    /// Positions in the table (M, a prime).
    pub size: u32,
    /// Hash of the table's contents, for the agent only: a table whose
    /// digest matches needs no rewrite (after a restart, say).
    pub digest: u64,
}
