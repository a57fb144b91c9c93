//! The Maglev maps of [`super::KernelMaps`]: the table pool and its index.
use aya::maps::{Array, HashMap, MapData};
use proxy_common::{MAGLEV, MAGLEV_INDEX, MaglevRef};

use super::{Datapath, DatapathError, kernel::take, sys};
use crate::plan::{
    maglev,
    maps::{MaglevTable, MapContents},
};

pub(super) struct MaglevMaps {
    pool: Array<MapData, u32>,
    index: HashMap<MapData, u32, MaglevRef>,
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

impl MaglevMaps {
    /// `None` in an object without them: Maglev ops then fail naming the
    /// map, and the slots serve every frontend.
    pub(super) fn take(datapath: &mut Datapath) -> Option<Self> {
        Some(Self {
            pool: take(datapath, MAGLEV).ok()?,
            index: take(datapath, MAGLEV_INDEX).ok()?,
        })
    }

    /// One table, in one system call where the kernel allows: no index
    /// entry points at it yet, so no flow reads it half-written.
    pub(super) fn write_table(
        &mut self,
        first: u32,
        table: &MaglevTable,
        batching: bool,
    ) -> Result<(), DatapathError> {
        if batching && sys::update_array_batch(&self.pool, first, &table.ids).is_ok() {
            return Ok(());
        }
        for (position, id) in (first..).zip(table.ids.iter()) {
            self.pool.set(position, id, 0).map_err(map_err(MAGLEV))?;
        }
        Ok(())
    }

    pub(super) fn upsert(&mut self, service_id: u32, r: &MaglevRef) -> Result<(), DatapathError> {
        self.index
            .insert(service_id, r, 0)
            .map_err(map_err(MAGLEV_INDEX))
    }

    pub(super) fn delete(&mut self, service_id: u32) -> Result<(), aya::maps::MapError> {
        self.index.remove(&service_id)
    }

    /// The index entries, each with the digest of the table it points at
    /// as the kernel holds it: a table changed behind the agent's back (or
    /// left half-written) then differs from the plan's and is written again.
    pub(super) fn dump(&self, contents: &mut MapContents) -> Result<(), DatapathError> {
        let mut read: std::collections::HashMap<(u32, u32), u64> = Default::default();
        for entry in self.index.iter() {
            let (service_id, mut r) = entry.map_err(map_err(MAGLEV_INDEX))?;
            let held = *read
                .entry((r.first, r.size))
                .or_insert_with(|| self.held_digest(&r));
            r.digest = held;
            contents.maglev.insert(service_id, r);
        }
        Ok(())
    }

    /// The digest of the `r.size` positions at `r.first`; one no plan
    /// matches (`!r.digest`) when they cannot be read.
    fn held_digest(&self, r: &MaglevRef) -> u64 {
        // An entry naming positions past the pool holds no table (and the
        // kernel's array walk would wrap around to position 0).
        if r.first
            .checked_add(r.size)
            .is_none_or(|end| end > self.pool.len())
        {
            return !r.digest;
        }
        let mut ids = vec![0u32; r.size as usize];
        let read = sys::lookup_array_batch(&self.pool, r.first, &mut ids).or_else(|_| {
            // No batch lookups on arrays here: one position at a time.
            for (position, id) in (r.first..).zip(ids.iter_mut()) {
                *id = self.pool.get(&position, 0)?;
            }
            Ok::<(), aya::maps::MapError>(())
        });
        match read {
            Ok(()) => maglev::digest(&ids),
            Err(error) => {
                tracing::debug!(%error, first = r.first, "a Maglev table could not be read back");
                !r.digest
            }
        }
    }

    pub(super) fn index(&self) -> &HashMap<MapData, u32, MaglevRef> {
        &self.index
    }
}
