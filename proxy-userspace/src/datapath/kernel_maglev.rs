//! The Maglev maps of [`super::KernelMaps`]: the table pool and its index.
use aya::maps::{Array, HashMap, MapData};
use proxy_common::{MAGLEV, MAGLEV_INDEX, MaglevRef};

use super::{Datapath, DatapathError, kernel::take, sys};
use crate::plan::maps::{MaglevTable, MapContents};

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

    /// The index entries; the tables are not read back (their digests in
    /// the entries stand for them).
    pub(super) fn dump(&self, contents: &mut MapContents) -> Result<(), DatapathError> {
        for entry in self.index.iter() {
            let (service_id, r) = entry.map_err(map_err(MAGLEV_INDEX))?;
            contents.maglev.insert(service_id, r);
        }
        Ok(())
    }

    pub(super) fn index(&self) -> &HashMap<MapData, u32, MaglevRef> {
        &self.index
    }
}
