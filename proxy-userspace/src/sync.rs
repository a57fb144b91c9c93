//! One sync: model → desired maps → diff → write. Pure up to the
//! [`ServiceMaps`] seam, so it runs against the fake in tests.
use std::time::{Duration, Instant};

use crate::{
    datapath::{DatapathError, ServiceMaps},
    model::Model,
    plan::{MapContents, Planner, diff},
};

/// What one sync did, for the log line and for tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub frontends: usize,
    pub ops: usize,
    pub failed_ops: usize,
    pub elapsed: Duration,
}

/// Holds what is applied and brings the maps to what the model wants.
pub struct Syncer<M: ServiceMaps> {
    pub maps: M,
    planner: Planner,
    applied: MapContents,
}

impl<M: ServiceMaps> Syncer<M> {
    /// Starts from whatever the maps hold (pinned by an earlier agent), so a
    /// restart keeps ids and slots and rewrites nothing that is still right.
    pub fn restore(maps: M) -> Result<Self, DatapathError> {
        let applied = maps.dump()?;
        Ok(Self {
            planner: Planner::restore(&applied),
            applied,
            maps,
        })
    }

    pub fn applied(&self) -> &MapContents {
        &self.applied
    }

    /// Applies the difference. On a failed write the applied state is read
    /// back from the maps, so the next sync retries exactly what is missing.
    pub fn sync(&mut self, model: &Model) -> Result<SyncReport, DatapathError> {
        let start = Instant::now();
        let desired = self.planner.desired(model);
        let ops = diff(&self.applied, &desired);
        let mut failed_ops = 0;
        for op in &ops {
            if let Err(error) = self.maps.apply(op) {
                tracing::warn!(%error, ?op, "map write failed; will retry on the next sync");
                failed_ops += 1;
            }
        }
        self.applied = if failed_ops == 0 {
            desired
        } else {
            self.maps.dump()?
        };
        Ok(SyncReport {
            frontends: model.frontends.len(),
            ops: ops.len(),
            failed_ops,
            elapsed: start.elapsed(),
        })
    }
}
