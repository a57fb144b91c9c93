//! When the agent sweeps the conntrack table: at least every period, and
//! sooner when the flows recorded since the last sweep may have filled half
//! of it, but never so often that sweeping takes more than a tenth of the
//! agent's time.
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::{CtTimeouts, expired};
use crate::datapath::{ConntrackTable, DatapathError, conntrack_clock};

/// Sweeps may take at most 1/this of the time between them.
const SWEEP_DUTY_DIVISOR: u32 = 10;

/// What one sweep found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepStats {
    /// Entries in the table before the sweep.
    pub entries: usize,
    /// Entries deleted.
    pub removed: usize,
    pub took: Duration,
}

pub struct Sweeper {
    table: ConntrackTable,
    timeouts: CtTimeouts,
    period: Duration,
    last: Option<(Instant, SweepStats)>,
    flows_at_last: u64,
}

impl Sweeper {
    pub fn new(table: ConntrackTable, timeouts: CtTimeouts, period: Duration) -> Self {
        Self {
            table,
            timeouts,
            period,
            last: None,
            flows_at_last: 0,
        }
    }

    /// Sweeps if it is due; logs, never fails: a missed sweep only delays.
    pub fn tick(&mut self, now: Instant) {
        let flows = match self.table.flows_recorded() {
            Ok(flows) => flows,
            Err(error) => return warn!(%error, "reading the flow counters failed"),
        };
        if !self.due(now, flows) {
            return;
        }
        match self.sweep() {
            Ok(stats) => {
                debug!(?stats, "conntrack swept");
                self.last = Some((now, stats));
                self.flows_at_last = flows;
            }
            Err(error) => warn!(%error, "conntrack sweep failed; will retry"),
        }
    }

    fn due(&self, now: Instant, flows: u64) -> bool {
        let Some((at, stats)) = self.last else {
            return true;
        };
        let since = now.saturating_duration_since(at);
        if since >= self.period {
            return true;
        }
        let live = (stats.entries - stats.removed) as u64;
        let new_entries = 2 * flows.saturating_sub(self.flows_at_last);
        let filling = 2 * (live + new_entries) >= u64::from(self.table.capacity());
        filling && since >= stats.took * SWEEP_DUTY_DIVISOR
    }

    /// Deletes the entries of every flow that is over or silent past its
    /// state's timeout.
    pub fn sweep(&mut self) -> Result<SweepStats, DatapathError> {
        let started = Instant::now();
        let snapshot = self.table.snapshot()?;
        let now = conntrack_clock()?;
        let mut removed = 0;
        for flow in expired(&snapshot, now, &self.timeouts) {
            let keys: Vec<_> = std::iter::once(flow.key).chain(flow.partner).collect();
            if self.table.remove_unless_used(&keys, &snapshot)? {
                removed += keys.len();
            }
        }
        Ok(SweepStats {
            entries: snapshot.len(),
            removed,
            took: started.elapsed(),
        })
    }
}
