//! [`ServiceMaps`] on the real BPF maps.
use aya::maps::{HashMap, LpmTrie, MapData, MapError, PerCpuArray, lpm_trie::Key};
use proxy_common::{
    AffinityMember, Backend6Value, BackendValue, Counter, Service6Key, ServiceKey, ServiceValue,
    SlotKey, SourceRange6Key, SourceRangeKey, host_addr, host_addr6, maps, wire_addr, wire_addr6,
};

use std::mem::discriminant;

use super::{Datapath, DatapathError, ServiceMaps, kernel_maglev::MaglevMaps, sys};
use crate::plan::maps::{MapContents, MapOp, SourceRange, SourceRange6};

pub struct KernelMaps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    slots: HashMap<MapData, SlotKey, u32>,
    backends: HashMap<MapData, u32, BackendValue>,
    source_ranges: LpmTrie<MapData, SourceRangeKey, u8>,
    affinity: HashMap<MapData, AffinityMember, u32>,
    /// The IPv6 maps; `None` in an object without them (IPv6 ops then fail
    /// naming the map, and IPv4 is served as before).
    services6: Option<HashMap<MapData, Service6Key, ServiceValue>>,
    backends6: Option<HashMap<MapData, u32, Backend6Value>>,
    source_ranges6: Option<LpmTrie<MapData, SourceRange6Key, u8>>,
    maglev: Option<MaglevMaps>,
    /// Cleared when the kernel refuses batch commands: single writes then.
    batching: bool,
}

/// Ops per batch system call: large enough that the call's own cost
/// vanishes, small enough that the key and value copies stay in cache.
const BATCH_LEN: usize = 4096;

/// Bits of the LPM key that are the service id, matched in full.
const SERVICE_ID_BITS: u32 = 32;

fn range_key(&(service_id, ip, len): &SourceRange) -> Key<SourceRangeKey> {
    Key::new(
        SERVICE_ID_BITS + u32::from(len),
        SourceRangeKey {
            service_id_be: service_id.to_be(),
            addr: wire_addr(ip),
        },
    )
}

/// A source-range LPM key back as (service id, prefix, length).
pub fn source_range_of(key: &Key<SourceRangeKey>) -> SourceRange {
    let data = key.data();
    let len = key.prefix_len().saturating_sub(SERVICE_ID_BITS) as u8;
    (u32::from_be(data.service_id_be), host_addr(data.addr), len)
}

fn range6_key(&(service_id, ip, len): &SourceRange6) -> Key<SourceRange6Key> {
    Key::new(
        SERVICE_ID_BITS + u32::from(len),
        SourceRange6Key {
            service_id_be: service_id.to_be(),
            addr: wire_addr6(ip),
        },
    )
}

/// [`source_range_of`] for the IPv6 map.
pub fn source_range6_of(key: &Key<SourceRange6Key>) -> SourceRange6 {
    let data = key.data();
    let len = key.prefix_len().saturating_sub(SERVICE_ID_BITS) as u8;
    (u32::from_be(data.service_id_be), host_addr6(data.addr), len)
}

pub(super) fn take<T>(datapath: &mut Datapath, name: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = datapath
        .ebpf
        .take_map(name)
        .ok_or(DatapathError::MissingMap(name))?;
    T::try_from(map).map_err(|source| DatapathError::Map { name, source })
}

/// An optional map, or the error of writing to one this object lacks.
fn present<'a, T>(map: &'a mut Option<T>, name: &'static str) -> Result<&'a mut T, DatapathError> {
    map.as_mut().ok_or(DatapathError::MissingMap(name))
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

/// Deleting what is not there is success: the desired state holds. (aya
/// reports a hash map's missing key as the system call's ENOENT.)
fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(error))
            if error.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => other,
    }
}

impl KernelMaps {
    pub fn take(datapath: &mut Datapath) -> Result<Self, DatapathError> {
        Ok(Self {
            services: take(datapath, maps::SERVICES)?,
            slots: take(datapath, maps::SLOTS)?,
            backends: take(datapath, maps::BACKENDS)?,
            source_ranges: take(datapath, maps::SOURCE_RANGES)?,
            affinity: take(datapath, maps::AFFINITY_MEMBERS)?,
            services6: take(datapath, maps::SERVICES6).ok(),
            backends6: take(datapath, maps::BACKENDS6).ok(),
            source_ranges6: take(datapath, maps::SOURCE_RANGES6).ok(),
            maglev: MaglevMaps::take(datapath),
            batching: true,
        })
    }

    /// Whether runs of writes still go in batches (false once the kernel
    /// refused a batch command).
    pub fn batches_writes(&self) -> bool {
        self.batching
    }

    /// Writes a run of ops of one kind in one system call where the kernel
    /// offers it. `Ok(false)`: this kind has no batch form, write singly.
    fn write_batch(&self, run: &[MapOp]) -> std::io::Result<bool> {
        // One arm per kind: the op's fields are the batch's keys and values.
        macro_rules! batch {
            ($map:expr, upsert $kind:ident) => {
                upsert($map, run, |op| match op {
                    MapOp::$kind(key, value) => Some((*key, *value)),
                    _ => None,
                })
            };
            ($map:expr, delete $kind:ident) => {
                delete($map, run, |op| match op {
                    MapOp::$kind(key) => Some(*key),
                    _ => None,
                })
            };
        }
        match run[0] {
            MapOp::UpsertBackend(..) => batch!(&self.backends, upsert UpsertBackend),
            MapOp::UpsertSlot(..) => batch!(&self.slots, upsert UpsertSlot),
            MapOp::UpsertService(..) => batch!(&self.services, upsert UpsertService),
            MapOp::UpsertAffinity(..) => batch!(&self.affinity, upsert UpsertAffinity),
            MapOp::DeleteService(..) => batch!(&self.services, delete DeleteService),
            MapOp::DeleteSlot(..) => batch!(&self.slots, delete DeleteSlot),
            MapOp::DeleteBackend(..) => batch!(&self.backends, delete DeleteBackend),
            MapOp::DeleteAffinity(..) => batch!(&self.affinity, delete DeleteAffinity),
            MapOp::UpsertBackend6(..) => match &self.backends6 {
                Some(map) => batch!(map, upsert UpsertBackend6),
                None => Ok(false),
            },
            MapOp::UpsertService6(..) => match &self.services6 {
                Some(map) => batch!(map, upsert UpsertService6),
                None => Ok(false),
            },
            MapOp::DeleteService6(..) => match &self.services6 {
                Some(map) => batch!(map, delete DeleteService6),
                None => Ok(false),
            },
            MapOp::DeleteBackend6(..) => match &self.backends6 {
                Some(map) => batch!(map, delete DeleteBackend6),
                None => Ok(false),
            },
            MapOp::UpsertMaglevRef(..) => match &self.maglev {
                Some(maglev) => batch!(maglev.index(), upsert UpsertMaglevRef),
                None => Ok(false),
            },
            // Each table is a batch of its own; deletes are rare.
            MapOp::WriteMaglevTable(..) | MapOp::DeleteMaglevRef(_) => Ok(false),
            // The LPM trie has no batch commands.
            MapOp::UpsertSourceRange(_)
            | MapOp::DeleteSourceRange(_)
            | MapOp::UpsertSourceRange6(_)
            | MapOp::DeleteSourceRange6(_) => Ok(false),
        }
    }
}

fn upsert<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    run: &[MapOp],
    entry: impl Fn(&MapOp) -> Option<(K, V)>,
) -> std::io::Result<bool> {
    let (keys, values): (Vec<K>, Vec<V>) = run.iter().filter_map(entry).unzip();
    sys::update_batch(map, &keys, &values).map(|()| true)
}

fn delete<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    run: &[MapOp],
    key: impl Fn(&MapOp) -> Option<K>,
) -> std::io::Result<bool> {
    let keys: Vec<K> = run.iter().filter_map(key).collect();
    sys::delete_batch(map, &keys).map(|()| true)
}

/// Errors that mean this kernel or map has no batch commands at all.
fn batching_unsupported(error: &std::io::Error) -> bool {
    const ENOTSUPP: i32 = 524; // the kernel's own "not supported", not in libc
    matches!(
        error.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
    )
}

impl ServiceMaps for KernelMaps {
    /// Runs of one kind go in batches: at 100,000 Services the first sync is
    /// about 1.1 million writes, and one system call each was a third of
    /// its time. A batch that fails is written again op by op, which is
    /// safe (upserts and deletes of missing keys repeat harmlessly) and
    /// gives each op its own result.
    fn apply_all(
        &mut self,
        ops: &[MapOp],
        done: &mut dyn FnMut(&MapOp, Result<(), DatapathError>),
    ) {
        let same_kind = |a: &MapOp, b: &MapOp| discriminant(a) == discriminant(b);
        for run in ops
            .chunk_by(same_kind)
            .flat_map(|run| run.chunks(BATCH_LEN))
        {
            if self.batching && run.len() > 1 {
                match self.write_batch(run) {
                    Ok(true) => {
                        run.iter().for_each(|op| done(op, Ok(())));
                        continue;
                    }
                    Ok(false) => {}
                    Err(error) => {
                        if batching_unsupported(&error) {
                            tracing::debug!(%error, "no batch map writes on this kernel");
                            self.batching = false;
                        }
                    }
                }
            }
            for op in run {
                done(op, self.apply(op));
            }
        }
    }

    fn apply(&mut self, op: &MapOp) -> Result<(), DatapathError> {
        match op {
            MapOp::UpsertBackend(id, b) => self
                .backends
                .insert(id, b, 0)
                .map_err(map_err(maps::BACKENDS)),
            MapOp::UpsertSlot(k, id) => self.slots.insert(k, id, 0).map_err(map_err(maps::SLOTS)),
            MapOp::UpsertService(k, v) => self
                .services
                .insert(k, v, 0)
                .map_err(map_err(maps::SERVICES)),
            MapOp::DeleteService(k) => {
                ignore_missing(self.services.remove(k)).map_err(map_err(maps::SERVICES))
            }
            MapOp::DeleteSlot(k) => {
                ignore_missing(self.slots.remove(k)).map_err(map_err(maps::SLOTS))
            }
            MapOp::DeleteBackend(id) => {
                ignore_missing(self.backends.remove(id)).map_err(map_err(maps::BACKENDS))
            }
            MapOp::UpsertSourceRange(range) => self
                .source_ranges
                .insert(&range_key(range), 1, 0)
                .map_err(map_err(maps::SOURCE_RANGES)),
            MapOp::DeleteSourceRange(range) => {
                ignore_missing(self.source_ranges.remove(&range_key(range)))
                    .map_err(map_err(maps::SOURCE_RANGES))
            }
            MapOp::UpsertAffinity(member, timeout) => self
                .affinity
                .insert(member, timeout, 0)
                .map_err(map_err(maps::AFFINITY_MEMBERS)),
            MapOp::DeleteAffinity(member) => ignore_missing(self.affinity.remove(member))
                .map_err(map_err(maps::AFFINITY_MEMBERS)),
            MapOp::UpsertBackend6(id, b) => present(&mut self.backends6, maps::BACKENDS6)?
                .insert(id, b, 0)
                .map_err(map_err(maps::BACKENDS6)),
            MapOp::UpsertService6(k, v) => present(&mut self.services6, maps::SERVICES6)?
                .insert(k, v, 0)
                .map_err(map_err(maps::SERVICES6)),
            MapOp::DeleteService6(k) => {
                ignore_missing(present(&mut self.services6, maps::SERVICES6)?.remove(k))
                    .map_err(map_err(maps::SERVICES6))
            }
            MapOp::DeleteBackend6(id) => {
                ignore_missing(present(&mut self.backends6, maps::BACKENDS6)?.remove(id))
                    .map_err(map_err(maps::BACKENDS6))
            }
            MapOp::UpsertSourceRange6(range) => {
                present(&mut self.source_ranges6, maps::SOURCE_RANGES6)?
                    .insert(&range6_key(range), 1, 0)
                    .map_err(map_err(maps::SOURCE_RANGES6))
            }
            MapOp::DeleteSourceRange6(range) => ignore_missing(
                present(&mut self.source_ranges6, maps::SOURCE_RANGES6)?.remove(&range6_key(range)),
            )
            .map_err(map_err(maps::SOURCE_RANGES6)),
            MapOp::WriteMaglevTable(first, table) => {
                let batching = self.batching;
                present(&mut self.maglev, proxy_common::MAGLEV)?
                    .write_table(*first, table, batching)
            }
            MapOp::UpsertMaglevRef(id, r) => {
                present(&mut self.maglev, proxy_common::MAGLEV_INDEX)?.upsert(*id, r)
            }
            MapOp::DeleteMaglevRef(id) => {
                ignore_missing(present(&mut self.maglev, proxy_common::MAGLEV_INDEX)?.delete(*id))
                    .map_err(map_err(proxy_common::MAGLEV_INDEX))
            }
        }
    }

    fn dump(&self) -> Result<MapContents, DatapathError> {
        let mut contents = MapContents::default();
        for entry in self.services.iter() {
            let (k, v) = entry.map_err(map_err(maps::SERVICES))?;
            contents.services.insert(k, v);
        }
        for entry in self.slots.iter() {
            let (k, v) = entry.map_err(map_err(maps::SLOTS))?;
            contents.slots.insert(k, v);
        }
        for entry in self.backends.iter() {
            let (k, v) = entry.map_err(map_err(maps::BACKENDS))?;
            contents.backends.insert(k, v);
        }
        for key in self.source_ranges.keys() {
            let key = key.map_err(map_err(maps::SOURCE_RANGES))?;
            contents.source_ranges.insert(source_range_of(&key));
        }
        for entry in self.affinity.iter() {
            let (member, timeout) = entry.map_err(map_err(maps::AFFINITY_MEMBERS))?;
            contents.affinity.insert(member, timeout);
        }
        if let Some(services6) = &self.services6 {
            for entry in services6.iter() {
                let (k, v) = entry.map_err(map_err(maps::SERVICES6))?;
                contents.services6.insert(k, v);
            }
        }
        if let Some(backends6) = &self.backends6 {
            for entry in backends6.iter() {
                let (k, v) = entry.map_err(map_err(maps::BACKENDS6))?;
                contents.backends6.insert(k, v);
            }
        }
        if let Some(maglev) = &self.maglev {
            maglev.dump(&mut contents)?;
        }
        if let Some(ranges6) = &self.source_ranges6 {
            for key in ranges6.keys() {
                let key = key.map_err(map_err(maps::SOURCE_RANGES6))?;
                contents.source_ranges6.insert(source_range6_of(&key));
            }
        }
        Ok(contents)
    }
}

/// Sums the per-CPU counters; returns (counter, total) in enum order.
pub fn read_counters(
    counters: &PerCpuArray<MapData, u64>,
) -> Result<Vec<(Counter, u64)>, DatapathError> {
    // A counter map pinned by an older agent may be shorter: counters added
    // since read as zero instead of failing the whole read.
    let len = counters.len();
    Counter::ALL
        .iter()
        .map(|&c| {
            if c as u32 >= len {
                return Ok((c, 0));
            }
            let per_cpu = counters
                .get(&(c as u32), 0)
                .map_err(map_err(maps::COUNTERS))?;
            Ok((c, per_cpu.iter().sum()))
        })
        .collect()
}
