//! Maps pinned by an earlier agent are reused (that is how established flows
//! survive a restart), but only when their layout is the one this agent's
//! programs read: a map of another type or key/value size is refused with a
//! clear error, never reused or rewritten.
use std::{mem::size_of, path::Path};

use aya::maps::{MapInfo, MapType};
use proxy_common::{
    Affinity6Key, AffinityKey, AffinityMember, AffinityValue, Backend6Value, BackendValue, Ct6Key,
    Ct6Value, CtKey, CtValue, MaglevRef, Service6Key, ServiceKey, ServiceValue, SlotKey,
    SockRev6Key, SockRev6Value, SockRevKey, SockRevValue, SourceRange6Key, SourceRangeKey,
    TraceRecord, maps,
};

use super::DatapathError;

/// An LPM trie key carries its prefix length in front of the data.
const LPM_PREFIX_LEN: usize = size_of::<u32>();

/// Every map the object pins: name, type, key size, value size.
const LAYOUTS: [(&str, MapType, usize, usize); 18] = [
    (
        maps::SERVICES,
        MapType::Hash,
        size_of::<ServiceKey>(),
        size_of::<ServiceValue>(),
    ),
    (
        maps::SLOTS,
        MapType::Hash,
        size_of::<SlotKey>(),
        size_of::<u32>(),
    ),
    (
        maps::BACKENDS,
        MapType::Hash,
        size_of::<u32>(),
        size_of::<BackendValue>(),
    ),
    (
        maps::CONNTRACK,
        MapType::Hash,
        size_of::<CtKey>(),
        size_of::<CtValue>(),
    ),
    (
        maps::COUNTERS,
        MapType::PerCpuArray,
        size_of::<u32>(),
        size_of::<u64>(),
    ),
    (
        maps::SOURCE_RANGES,
        MapType::LpmTrie,
        LPM_PREFIX_LEN + size_of::<SourceRangeKey>(),
        size_of::<u8>(),
    ),
    (
        maps::SOCK_REVNAT,
        MapType::LruHash,
        size_of::<SockRevKey>(),
        size_of::<SockRevValue>(),
    ),
    (
        maps::SOCK_REVNAT6,
        MapType::LruHash,
        size_of::<SockRev6Key>(),
        size_of::<SockRev6Value>(),
    ),
    (
        maps::AFFINITY,
        MapType::LruHash,
        size_of::<AffinityKey>(),
        size_of::<AffinityValue>(),
    ),
    (
        maps::AFFINITY_MEMBERS,
        MapType::Hash,
        size_of::<AffinityMember>(),
        size_of::<u32>(),
    ),
    (
        maps::SERVICES6,
        MapType::Hash,
        size_of::<Service6Key>(),
        size_of::<ServiceValue>(),
    ),
    (
        maps::BACKENDS6,
        MapType::Hash,
        size_of::<u32>(),
        size_of::<Backend6Value>(),
    ),
    (
        maps::CONNTRACK6,
        MapType::Hash,
        size_of::<Ct6Key>(),
        size_of::<Ct6Value>(),
    ),
    (
        maps::SOURCE_RANGES6,
        MapType::LpmTrie,
        LPM_PREFIX_LEN + size_of::<SourceRange6Key>(),
        size_of::<u8>(),
    ),
    (
        maps::AFFINITY6,
        MapType::LruHash,
        size_of::<Affinity6Key>(),
        size_of::<AffinityValue>(),
    ),
    (
        proxy_common::TRACE_RECORD,
        MapType::Array,
        size_of::<u32>(),
        size_of::<TraceRecord>(),
    ),
    (
        proxy_common::MAGLEV,
        MapType::Array,
        size_of::<u32>(),
        size_of::<u32>(),
    ),
    (
        proxy_common::MAGLEV_INDEX,
        MapType::Hash,
        size_of::<u32>(),
        size_of::<MaglevRef>(),
    ),
];

/// A Maglev pool pinned with another size (`--maglev-table-size` or
/// `--maglev-max-tables` changed) cannot hold this agent's tables: it is
/// removed with its index, so the new pool starts empty and Maglev
/// frontends use their slots until the first sync writes their tables.
/// (Their flows stay in conntrack meanwhile.)
pub fn drop_resized_maglev_pool(map_dir: &Path, positions: u32) -> Result<(), DatapathError> {
    let pool = map_dir.join(proxy_common::MAGLEV);
    if !pool.exists() {
        return Ok(());
    }
    let name = proxy_common::MAGLEV;
    let info = MapInfo::from_pin(&pool).map_err(|source| DatapathError::Map { name, source })?;
    if info.max_entries() == positions {
        return Ok(());
    }
    tracing::warn!(
        pinned = info.max_entries(),
        wanted = positions,
        "the Maglev table size or pool changed: Maglev tables are rebuilt"
    );
    for path in [pool, map_dir.join(proxy_common::MAGLEV_INDEX)] {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(DatapathError::Pins {
                    path: path.display().to_string(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Maps that hold no state of the live programs: a pin of another layout
/// is removed and created anew rather than refused. The live programs
/// never write the trace record (only the trace copy, in its own maps),
/// so an upgrade that grows it loses nothing.
const STATELESS: [&str; 1] = [proxy_common::TRACE_RECORD];

/// Fails naming the first pinned map under `map_dir` whose layout differs.
/// Maps not pinned yet are fine: the load creates them.
pub fn check_pinned_layouts(map_dir: &Path) -> Result<(), DatapathError> {
    for (name, map_type, key_size, value_size) in LAYOUTS {
        let path = map_dir.join(name);
        if !path.exists() {
            continue;
        }
        let info =
            MapInfo::from_pin(&path).map_err(|source| DatapathError::Map { name, source })?;
        let found = (
            info.map_type().ok(),
            info.key_size() as usize,
            info.value_size() as usize,
        );
        if found != (Some(map_type), key_size, value_size) && STATELESS.contains(&name) {
            std::fs::remove_file(&path).map_err(|source| DatapathError::Pins {
                path: path.display().to_string(),
                source,
            })?;
            continue;
        }
        if found != (Some(map_type), key_size, value_size) {
            return Err(DatapathError::IncompatiblePins {
                path: path.display().to_string(),
                expected: format!("{map_type:?}, key {key_size} B, value {value_size} B"),
                found: format!("{:?}, key {} B, value {} B", found.0, found.1, found.2),
            });
        }
    }
    Ok(())
}
