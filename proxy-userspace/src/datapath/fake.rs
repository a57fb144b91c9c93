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
    attempts: usize,
}

impl ServiceMaps for FakeMaps {
    fn apply(&mut self, op: &MapOp) -> Result<(), DatapathError> {
        let attempt = self.attempts;
        self.attempts += 1;
        if self.fail_at == Some(attempt) {
            return Err(DatapathError::MissingMap("injected failure"));
        }
        apply_op(&mut self.contents, op);
        self.log.push(op.clone());
        Ok(())
    }

    fn dump(&self) -> Result<MapContents, DatapathError> {
        Ok(self.contents.clone())
    }
}
