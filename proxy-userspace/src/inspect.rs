//! Reading a running (or stopped) agent's pinned maps: `vipr dump`, and
//! `vipr cleanup`.
use std::path::Path;

use aya::maps::{HashMap, LpmTrie, Map, MapData, PerCpuArray};
use comfy_table::Table;
use proxy_common::{Counter, Ct6Key, Ct6Value, CtKey, CtValue, maps};

use crate::{
    datapath::{
        DatapathError, all_interfaces, cleanup_attachments, cleanup_pins, read_counters,
        source_range_of, source_range6_of,
    },
    plan::{MapContents, dump_text},
};

fn open(pin_dir: &Path, name: &'static str) -> Result<MapData, DatapathError> {
    MapData::from_pin(pin_dir.join(crate::datapath::MAP_DIR).join(name))
        .map_err(|source| DatapathError::Map { name, source })
}

fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(
    name: &'static str,
    map: Map,
) -> Result<T, DatapathError> {
    T::try_from(map).map_err(|source| DatapathError::Map { name, source })
}

/// The service maps as pinned under `pin_dir`.
pub fn pinned_contents(pin_dir: &Path) -> Result<MapContents, DatapathError> {
    let services: HashMap<_, proxy_common::ServiceKey, proxy_common::ServiceValue> =
        typed(maps::SERVICES, Map::HashMap(open(pin_dir, maps::SERVICES)?))?;
    let slots: HashMap<_, proxy_common::SlotKey, u32> =
        typed(maps::SLOTS, Map::HashMap(open(pin_dir, maps::SLOTS)?))?;
    let backends: HashMap<_, u32, proxy_common::BackendValue> =
        typed(maps::BACKENDS, Map::HashMap(open(pin_dir, maps::BACKENDS)?))?;
    let mut contents = MapContents::default();
    let err = |name| move |source| DatapathError::Map { name, source };
    for entry in services.iter() {
        let (k, v) = entry.map_err(err(maps::SERVICES))?;
        contents.services.insert(k, v);
    }
    for entry in slots.iter() {
        let (k, v) = entry.map_err(err(maps::SLOTS))?;
        contents.slots.insert(k, v);
    }
    for entry in backends.iter() {
        let (k, v) = entry.map_err(err(maps::BACKENDS))?;
        contents.backends.insert(k, v);
    }
    let ranges: LpmTrie<_, proxy_common::SourceRangeKey, u8> = typed(
        maps::SOURCE_RANGES,
        Map::LpmTrie(open(pin_dir, maps::SOURCE_RANGES)?),
    )?;
    for key in ranges.keys() {
        let key = key.map_err(err(maps::SOURCE_RANGES))?;
        contents.source_ranges.insert(source_range_of(&key));
    }
    // Pins of an agent from before IPv6 have no IPv6 maps.
    if let (Ok(services6), Ok(backends6)) = (
        open(pin_dir, maps::SERVICES6),
        open(pin_dir, maps::BACKENDS6),
    ) {
        let services6: HashMap<_, proxy_common::Service6Key, proxy_common::ServiceValue> =
            typed(maps::SERVICES6, Map::HashMap(services6))?;
        for entry in services6.iter() {
            let (k, v) = entry.map_err(err(maps::SERVICES6))?;
            contents.services6.insert(k, v);
        }
        let backends6: HashMap<_, u32, proxy_common::Backend6Value> =
            typed(maps::BACKENDS6, Map::HashMap(backends6))?;
        for entry in backends6.iter() {
            let (k, v) = entry.map_err(err(maps::BACKENDS6))?;
            contents.backends6.insert(k, v);
        }
    }
    // Pins of an agent from before IPv6 source ranges have no such map.
    if let Ok(pinned) = open(pin_dir, maps::SOURCE_RANGES6) {
        let ranges6: LpmTrie<_, proxy_common::SourceRange6Key, u8> =
            typed(maps::SOURCE_RANGES6, Map::LpmTrie(pinned))?;
        for key in ranges6.keys() {
            let key = key.map_err(err(maps::SOURCE_RANGES6))?;
            contents.source_ranges6.insert(source_range6_of(&key));
        }
    }
    // Pins of an agent from before session affinity have no such map.
    if let Ok(pinned) = open(pin_dir, maps::AFFINITY_MEMBERS) {
        let members: HashMap<_, proxy_common::AffinityMember, u32> =
            typed(maps::AFFINITY_MEMBERS, Map::HashMap(pinned))?;
        for entry in members.iter() {
            let (member, timeout) = entry.map_err(err(maps::AFFINITY_MEMBERS))?;
            contents.affinity.insert(member, timeout);
        }
    }
    // Pins of an agent from before Maglev have no index.
    if let Ok(pinned) = open(pin_dir, proxy_common::MAGLEV_INDEX) {
        let index: HashMap<_, u32, proxy_common::MaglevRef> =
            typed(proxy_common::MAGLEV_INDEX, Map::HashMap(pinned))?;
        for entry in index.iter() {
            let (service_id, r) = entry.map_err(err(proxy_common::MAGLEV_INDEX))?;
            contents.maglev.insert(service_id, r);
        }
    }
    Ok(contents)
}

/// The conntrack entries as pinned under `pin_dir`.
pub fn pinned_conntrack(
    pin_dir: &Path,
) -> Result<std::collections::HashMap<CtKey, CtValue>, DatapathError> {
    pinned_entries(pin_dir, maps::CONNTRACK)
}

/// The IPv6 conntrack entries (none for pins of an agent from before IPv6).
pub fn pinned_conntrack6(
    pin_dir: &Path,
) -> Result<std::collections::HashMap<Ct6Key, Ct6Value>, DatapathError> {
    if open(pin_dir, maps::CONNTRACK6).is_err() {
        return Ok(Default::default());
    }
    pinned_entries(pin_dir, maps::CONNTRACK6)
}

fn pinned_entries<K, V>(
    pin_dir: &Path,
    name: &'static str,
) -> Result<std::collections::HashMap<K, V>, DatapathError>
where
    K: aya::Pod + Eq + std::hash::Hash,
    V: aya::Pod,
{
    let table: HashMap<_, K, V> = typed(name, Map::HashMap(open(pin_dir, name)?))?;
    table
        .iter()
        .map(|entry| entry.map_err(|source| DatapathError::Map { name, source }))
        .collect()
}

/// Counter totals as pinned under `pin_dir`.
pub fn pinned_counters(pin_dir: &Path) -> Result<Vec<(Counter, u64)>, DatapathError> {
    let counters: PerCpuArray<_, u64> = typed(
        maps::COUNTERS,
        Map::PerCpuArray(open(pin_dir, maps::COUNTERS)?),
    )?;
    read_counters(&counters)
}

/// Human-readable report of maps and non-zero counters.
pub fn dump(pin_dir: &Path) -> Result<String, DatapathError> {
    let mut out = dump_text(&pinned_contents(pin_dir)?);
    let mut table = Table::new();
    table.set_header(vec!["counter", "packets"]);
    for (counter, value) in pinned_counters(pin_dir)? {
        if value != 0 {
            table.add_row(vec![counter.name().to_string(), value.to_string()]);
        }
    }
    out.push('\n');
    out.push_str(&table.to_string());
    out.push('\n');
    Ok(out)
}

/// Detaches vipr's programs from every interface of this network namespace
/// and removes the pins and the name index. Safe to run when nothing is there.
pub fn cleanup(pin_dir: &Path, state_dir: &Path) -> Result<usize, DatapathError> {
    let detached = cleanup_attachments(all_interfaces()?.into_keys());
    cleanup_pins(pin_dir)?;
    // The agent's name index goes with its pins; absent is fine.
    let _ = std::fs::remove_file(crate::names::index_path(state_dir, pin_dir));
    // And the state directory, if that left it empty.
    let _ = std::fs::remove_dir(state_dir);
    Ok(detached)
}
