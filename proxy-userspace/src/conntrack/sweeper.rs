//! When the agent sweeps the conntrack table: at least every period, and
//! sooner when the flows recorded since the last sweep may have filled half
//! of it or half of a masquerade port range, or when a new flow found no
//! room; but never so often that sweeping takes more than a tenth of the
//! agent's time.
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use proxy_common::{Counter, SNAT_PORT_COUNT};

use super::{CtTimeouts, Tracked, expired};
use crate::datapath::{ConntrackTable, DatapathError, FamilyTable, Pressure, conntrack_clock};

/// Sweeps may take at most 1/this of the time between them.
const SWEEP_DUTY_DIVISOR: u32 = 10;
/// Masqueraded flows to one backend share its port range, and closed ones
/// hold their port until swept: sweep before that many new flows could
/// have taken half of it.
const FLOWS_PER_PORT_RANGE_SWEEP: u64 = SNAT_PORT_COUNT as u64 / 2;

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
    at_last: Pressure,
}

impl Sweeper {
    pub fn new(table: ConntrackTable, timeouts: CtTimeouts, period: Duration) -> Self {
        Self {
            table,
            timeouts,
            period,
            last: None,
            at_last: Pressure::default(),
        }
    }

    /// Every datapath counter, summed over CPUs (the table holds the map).
    pub fn read_counters(&self) -> Result<Vec<(Counter, u64)>, DatapathError> {
        self.table.read_counters()
    }

    /// Entries left by the last sweep; `None` before the first.
    pub fn live_entries(&self) -> Option<u64> {
        self.last
            .map(|(_, stats)| (stats.entries - stats.removed) as u64)
    }

    /// Sweeps if it is due; logs, never fails: a missed sweep only delays.
    pub fn tick(&mut self, now: Instant) {
        let pressure = match self.table.pressure() {
            Ok(pressure) => pressure,
            Err(error) => return warn!(%error, "reading the flow counters failed"),
        };
        if !self.due(now, pressure) {
            return;
        }
        match self.sweep() {
            Ok(stats) => {
                debug!(?stats, "conntrack swept");
                self.last = Some((now, stats));
                self.at_last = pressure;
            }
            Err(error) => warn!(%error, "conntrack sweep failed; will retry"),
        }
    }

    fn due(&self, now: Instant, pressure: Pressure) -> bool {
        let Some((at, stats)) = self.last else {
            return true;
        };
        let since = now.saturating_duration_since(at);
        if since >= self.period {
            return true;
        }
        let live = (stats.entries - stats.removed) as u64;
        let new_flows = pressure.flows.saturating_sub(self.at_last.flows);
        let filling = 2 * (live + 2 * new_flows) >= u64::from(self.table.capacity())
            || new_flows >= FLOWS_PER_PORT_RANGE_SWEEP
            || pressure.refused > self.at_last.refused;
        filling && since >= stats.took * SWEEP_DUTY_DIVISOR
    }

    /// Deletes the entries of every flow, either family, that is over or
    /// silent past its state's timeout.
    pub fn sweep(&mut self) -> Result<SweepStats, DatapathError> {
        let started = Instant::now();
        let now = conntrack_clock()?;
        let (mut entries, mut removed) = sweep_family(&mut self.table.v4, now, &self.timeouts)?;
        if let Some(v6) = &mut self.table.v6 {
            let (more, gone) = sweep_family(v6, now, &self.timeouts)?;
            entries += more;
            removed += gone;
        }
        Ok(SweepStats {
            entries,
            removed,
            took: started.elapsed(),
        })
    }
}

/// One family's sweep: (entries seen, entries removed).
fn sweep_family<K: Tracked + aya::Pod>(
    table: &mut FamilyTable<K, K::Value>,
    now: u32,
    timeouts: &CtTimeouts,
) -> Result<(usize, usize), DatapathError>
where
    K::Value: aya::Pod,
{
    let snapshot = table.snapshot()?;
    let mut removed = 0;
    for flow in expired(&snapshot, now, timeouts) {
        let keys: Vec<K> = std::iter::once(flow.key).chain(flow.partner).collect();
        if table.remove_unless_used(&keys, &snapshot, K::last_seen)? {
            removed += keys.len();
        }
    }
    Ok((snapshot.len(), removed))
}
