//! The conntrack map as the agent's sweep sees it: a snapshot to judge, and
//! deletion of what the judgement found over, unless a packet used it since.
use std::collections::HashMap as StdHashMap;

use aya::maps::{HashMap, IterableMap, MapData, MapError, PerCpuArray};
use nix::time::{ClockId, clock_gettime};
use proxy_common::{Counter, Ct6Key, Ct6Value, CtKey, CtValue, maps};

use super::{Datapath, DatapathError, kernel::take};

/// Counter readings that tell the sweep to hurry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pressure {
    pub flows: u64,
    pub refused: u64,
}

pub struct ConntrackTable {
    pub v4: FamilyTable<CtKey, CtValue>,
    /// `None` in an object without IPv6.
    pub v6: Option<FamilyTable<Ct6Key, Ct6Value>>,
    counters: PerCpuArray<MapData, u64>,
    capacity: u32,
}

/// One family's conntrack map.
pub struct FamilyTable<K, V> {
    map: HashMap<MapData, K, V>,
    name: &'static str,
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

/// The clock of `CtValue::last_seen`: the kernel's coarse monotonic clock
/// (`bpf_ktime_get_coarse_ns`), in whole seconds.
pub fn conntrack_clock() -> Result<u32, DatapathError> {
    let now = clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE)
        .map_err(|errno| DatapathError::Clock(errno.to_string()))?;
    Ok(now.tv_sec() as u32)
}

impl ConntrackTable {
    pub fn take(datapath: &mut Datapath) -> Result<Self, DatapathError> {
        let map: HashMap<MapData, CtKey, CtValue> = take(datapath, maps::CONNTRACK)?;
        let capacity = map
            .map()
            .info()
            .map_err(map_err(maps::CONNTRACK))?
            .max_entries();
        Ok(Self {
            v4: FamilyTable {
                map,
                name: maps::CONNTRACK,
            },
            v6: take(datapath, maps::CONNTRACK6)
                .ok()
                .map(|map| FamilyTable {
                    map,
                    name: maps::CONNTRACK6,
                }),
            counters: take(datapath, maps::COUNTERS)?,
            capacity,
        })
    }

    /// What fills the table, summed over CPUs since the programs were
    /// loaded: flows recorded (new and re-chosen), and new flows dropped
    /// for want of room (a full table, or no free masquerade port).
    pub fn pressure(&self) -> Result<Pressure, DatapathError> {
        Ok(Pressure {
            flows: self.sum(&[Counter::DnatNew, Counter::DnatReselected])?,
            refused: self.sum(&[Counter::DropConntrackFull, Counter::DropSnatPortsExhausted])?,
        })
    }

    fn sum(&self, counters: &[Counter]) -> Result<u64, DatapathError> {
        let mut total = 0;
        for &counter in counters {
            let per_cpu =
                self.counters
                    .get(&(counter as u32), 0)
                    .map_err(|source| DatapathError::Map {
                        name: maps::COUNTERS,
                        source,
                    })?;
            total += per_cpu.iter().sum::<u64>();
        }
        Ok(total)
    }

    /// Every counter of the datapath, summed over CPUs.
    pub fn read_counters(&self) -> Result<Vec<(Counter, u64)>, DatapathError> {
        super::read_counters(&self.counters)
    }

    /// Entries one family's map holds at most (two per flow).
    pub fn capacity(&self) -> u32 {
        self.capacity
    }
}

impl<K: aya::Pod + Eq + std::hash::Hash, V: aya::Pod> FamilyTable<K, V> {
    /// Every entry now. Entries deleted while the walk runs are skipped.
    pub fn snapshot(&self) -> Result<StdHashMap<K, V>, DatapathError> {
        let mut table = StdHashMap::new();
        for entry in self.map.iter() {
            match entry {
                Ok((key, value)) => {
                    table.insert(key, value);
                }
                Err(MapError::KeyNotFound) => continue,
                Err(source) => return Err(map_err(self.name)(source)),
            }
        }
        Ok(table)
    }

    /// Deletes the entries of `keys` together, unless one of them was used
    /// after `seen` recorded it (a packet came while the sweep judged:
    /// `last_seen` reads a value's note). Returns whether they went.
    pub fn remove_unless_used(
        &mut self,
        keys: &[K],
        seen: &StdHashMap<K, V>,
        last_seen: impl Fn(&V) -> u32,
    ) -> Result<bool, DatapathError> {
        for key in keys {
            let then = seen.get(key).map(&last_seen);
            match self.map.get(key, 0) {
                Ok(now) if Some(last_seen(&now)) != then => return Ok(false),
                Ok(_) | Err(MapError::KeyNotFound) => {}
                Err(source) => return Err(map_err(self.name)(source)),
            }
        }
        for key in keys {
            match self.map.remove(key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(source) => return Err(map_err(self.name)(source)),
            }
        }
        Ok(true)
    }
}
