//! In-memory [`ServiceMaps`] that can be told to fail, for sync-loop tests.
use super::{DatapathError, ServiceMaps};
use crate::plan::{
    apply_op,
    maps::{MapContents, MapOp},
};

#[derive(Debug, Default)]
pub struct FakeMaps {
    pub contents: MapContents,
    /// Every op applied, in order.
    pub log: Vec<MapOp>,
    /// Fail the attempt with this index (0-based, counting every call).
    pub fail_at: Option<usize>,
    /// Fail every Maglev table write (a pool the kernel refuses).
    pub fail_tables: bool,
    attempts: usize,
}

impl ServiceMaps for FakeMaps {
    fn apply(&mut self, op: &MapOp) -> Result<(), DatapathError> {
        let attempt = self.attempts;
        self.attempts += 1;
        let table = matches!(op, MapOp::WriteMaglevTable(..));
        if self.fail_at == Some(attempt) || (table && self.fail_tables) {
            return Err(DatapathError::MissingMap("injected failure"));
        }
        apply_op(&mut self.contents, op);
        self.log.push(op.clone());
        Ok(())
    }

    /// As the kernel's read-back: index entries carry the digest of the
    /// table they point at as held (none: one no plan has), tables are not
    /// listed.
    fn dump(&self) -> Result<MapContents, DatapathError> {
        let mut contents = self.contents.clone();
        let tables = std::mem::take(&mut contents.maglev_tables);
        for r in contents.maglev.values_mut() {
            r.digest = tables
                .get(&r.first)
                .map_or(!r.digest, |t| crate::plan::maglev::digest(&t.ids));
        }
        Ok(contents)
    }
}
