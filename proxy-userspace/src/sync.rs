//! Syncing the maps to the model, as kube-proxy does: nothing before the
//! source has listed everything; then only what changed, batched at most
//! once per `min_sync_period`; a sync at least every `sync_period` (which
//! keeps /healthz fresh); and a full resync every `full_resync_period` (an
//! hour, kube-proxy's `FullSyncPeriod`) that re-reads the kernel maps and
//! repairs any drift. The full resync costs O(Services): seconds of CPU at
//! 100,000, which is why it is not run every `sync_period`.
//!
//! Pure up to the [`ServiceMaps`] seam, so it runs against the fake in tests.
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{
    datapath::{DatapathError, ServiceMaps},
    healthz::Health,
    metrics::{Metrics, SyncObservation},
    model::{Commit, Counts, FrontendKey, Kind, Model, ModelBuilder},
    plan::{LbConfig, MapContents, MapOp, Planner, diff, diff_touched},
    source::{Source, Update},
};

/// What one sync did, for the log line and for tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Whole-model sync (first one, resync, or after a failed write).
    pub full: bool,
    pub frontends: usize,
    pub ops: usize,
    pub failed_ops: usize,
    /// Objects converted and Services recomputed by the model.
    pub converted: usize,
    pub services_recomputed: usize,
    pub services: Counts,
    pub endpoints: Counts,
    pub elapsed: Duration,
    /// Where `elapsed` went: taking objects into the model and computing
    /// frontends (conversion happens on arrival, before), planning map
    /// contents and the diff, and writing the maps.
    pub model_time: Duration,
    pub plan_time: Duration,
    pub write_time: Duration,
}

/// Brings the maps to what the model wants. While the maps are in step
/// with the planner's contents, those are the one copy of what is applied
/// (at 100,000 Services a second copy was 70 MB); a copy read back from
/// the maps exists only until a full sync succeeds (start, resync, failure).
pub struct Syncer<M: ServiceMaps> {
    pub maps: M,
    planner: Planner,
    /// What the maps hold when it may differ from the planner's contents
    /// (at start, or after a failed write): the next sync then compares
    /// everything, not just changes.
    applied: Option<MapContents>,
    /// Map writes done so far: tells the agent the maps moved.
    writes: u64,
}

impl<M: ServiceMaps> Syncer<M> {
    /// Starts from whatever the maps hold (pinned by an earlier agent), so a
    /// restart keeps ids and slots and rewrites nothing that is still right.
    pub fn restore(maps: M) -> Result<Self, DatapathError> {
        Self::restore_with(maps, LbConfig::random())
    }

    /// [`Syncer::restore`] balancing as `lb` says.
    pub fn restore_with(maps: M, lb: LbConfig) -> Result<Self, DatapathError> {
        let applied = maps.dump()?;
        Ok(Self {
            planner: Planner::restore_with(&applied, lb),
            applied: Some(applied),
            maps,
            writes: 0,
        })
    }

    pub fn applied(&self) -> &MapContents {
        self.applied
            .as_ref()
            .unwrap_or_else(|| self.planner.current())
    }

    /// Frontends that want Maglev but choose by slot for now: left without
    /// a table by a full pool, or unhooked because their table's write
    /// failed (the next sync writes both again).
    pub fn maglev_frontends_on_slots(&self) -> usize {
        let unhooked = self.applied.as_ref().map_or(0, |applied| {
            let wanted = &self.planner.current().maglev;
            wanted
                .keys()
                .filter(|id| !applied.maglev.contains_key(id))
                .count()
        });
        self.planner.maglev_exhausted() + unhooked
    }

    /// Map writes done since the start.
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// Applies the difference between the whole model and what is applied.
    /// On a failed write the applied state is read back from the maps, so
    /// the next sync retries exactly what is missing.
    pub fn sync(&mut self, model: &Model) -> Result<SyncReport, DatapathError> {
        let start = Instant::now();
        let applied = match self.applied.take() {
            Some(applied) => applied,
            // In step with the planner, whose contents are about to change.
            None => self.maps.dump()?,
        };
        self.planner.plan(model);
        let ops = diff(&applied, self.planner.current());
        self.warn_if_pool_full();
        self.applied = Some(applied);
        let planned = Instant::now();
        let failed_ops = self.write(&ops)?;
        if failed_ops == 0 {
            self.applied = None;
        }
        Ok(report(model, ops.len(), failed_ops, true, start, planned))
    }

    /// Applies only the entries of the `changed` frontends: the cost grows
    /// with the change. Falls back to [`Syncer::sync`] after a failed write.
    pub fn sync_changes(
        &mut self,
        model: &Model,
        changed: &BTreeSet<FrontendKey>,
    ) -> Result<SyncReport, DatapathError> {
        if self.applied.is_some() {
            return self.sync(model);
        }
        let start = Instant::now();
        let (touched, before) = self.planner.update_noting_before(model, changed);
        let ops = diff_touched(&before, self.planner.current(), &touched);
        self.warn_if_pool_full();
        let planned = Instant::now();
        let failed_ops = self.write(&ops)?;
        Ok(report(model, ops.len(), failed_ops, false, start, planned))
    }

    /// Re-reads the kernel maps, then [`Syncer::sync`]: repairs entries
    /// changed or removed behind the agent's back.
    pub fn resync(&mut self, model: &Model) -> Result<SyncReport, DatapathError> {
        self.applied = Some(self.maps.dump()?);
        self.sync(model)
    }

    /// Frontends that wanted Maglev but got no table are served by their
    /// slots; say so, since their choices then differ between nodes.
    fn warn_if_pool_full(&self) {
        let left = self.planner.maglev_exhausted();
        if left > 0 {
            tracing::warn!(
                frontends = left,
                "the Maglev pool is full: these frontends use random until tables free up (raise --maglev-max-tables)"
            );
        }
    }

    /// Writes `ops` in order. Returns how many failed.
    ///
    /// Fence: an index entry is never switched to a Maglev table whose
    /// write failed (it would send new flows by a half-written table). The
    /// entry is deleted instead: its old table may name backends this sync
    /// deletes, while the frontend's slots are up to date. The read-back
    /// that follows a failure has the next sync write both again.
    fn write(&mut self, ops: &[MapOp]) -> Result<usize, DatapathError> {
        let tables_end = ops
            .iter()
            .rposition(|op| matches!(op, MapOp::WriteMaglevTable(..)))
            .map_or(0, |last| last + 1);
        let (tables, rest) = ops.split_at(tables_end);
        let mut failed_ops = 0;
        let mut unwritten = BTreeSet::new();
        self.write_run(tables, &mut failed_ops, &mut unwritten);
        if unwritten.is_empty() {
            self.write_run(rest, &mut failed_ops, &mut unwritten);
        } else {
            let mut fenced_ops = 0;
            let fenced: Vec<MapOp> = rest
                .iter()
                .map(|op| match op {
                    MapOp::UpsertMaglevRef(id, r) if unwritten.contains(&r.first) => {
                        fenced_ops += 1;
                        MapOp::DeleteMaglevRef(*id)
                    }
                    other => other.clone(),
                })
                .collect();
            failed_ops += fenced_ops;
            self.write_run(&fenced, &mut failed_ops, &mut unwritten);
        }
        if failed_ops > 1 {
            tracing::warn!(failed_ops, "map writes failed in this sync");
        }
        if failed_ops > 0 {
            self.applied = Some(self.maps.dump()?);
        }
        Ok(failed_ops)
    }

    /// Applies `ops`, counting failures and noting Maglev tables not written.
    fn write_run(&mut self, ops: &[MapOp], failed_ops: &mut usize, unwritten: &mut BTreeSet<u32>) {
        // The read-back copy, if any, is not kept in step op by op: a
        // failure reads it back again, success drops it.
        let Self { maps, writes, .. } = self;
        maps.apply_all(ops, &mut |op, result| match result {
            Ok(()) => *writes += 1,
            Err(error) => {
                // One line, not one per op: a full map fails them by the million.
                if *failed_ops == 0 {
                    tracing::warn!(%error, ?op, "map write failed (a full map? see --max-*); will retry on the next sync");
                }
                if let MapOp::WriteMaglevTable(first, _) = op {
                    unwritten.insert(*first);
                }
                *failed_ops += 1;
            }
        });
    }
}

fn report(
    model: &Model,
    ops: usize,
    failed_ops: usize,
    full: bool,
    start: Instant,
    planned: Instant,
) -> SyncReport {
    SyncReport {
        full,
        frontends: model.frontends.len(),
        ops,
        failed_ops,
        elapsed: start.elapsed(),
        plan_time: planned.duration_since(start),
        write_time: planned.elapsed(),
        ..SyncReport::default()
    }
}

/// Minimum time between two syncs, maximum time between two syncs, and
/// time between two full resyncs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Periods {
    pub min_sync: Duration,
    pub sync: Duration,
    pub full_resync: Duration,
}

impl Default for Periods {
    /// kube-proxy's defaults (`--min-sync-period` 1 s, `--sync-period` 30 s,
    /// a full sync every hour).
    fn default() -> Self {
        Self {
            min_sync: Duration::from_secs(1),
            sync: Duration::from_secs(30),
            full_resync: Duration::from_secs(3600),
        }
    }
}

/// The model and the maps, fed by a [`Source`] and synced on kube-proxy's
/// schedule. Call [`SyncLoop::step`] often (every poll interval).
pub struct SyncLoop<M: ServiceMaps> {
    builder: ModelBuilder,
    syncer: Syncer<M>,
    periods: Periods,
    last_sync: Option<Instant>,
    last_full: Option<Instant>,
    /// The model has changes not yet synced.
    pending: bool,
    /// Time spent converting fed objects since the last sync, counted in its report.
    feed_time: Duration,
    waiting_reported: bool,
    /// Bumped each time the model commits, so readers can tell it moved.
    generation: u64,
    /// Parts of objects served without (a conflict, unusable topology),
    /// each logged once when it appears.
    reported_problems: BTreeSet<String>,
    metrics: Arc<Metrics>,
}

impl<M: ServiceMaps> SyncLoop<M> {
    pub fn new(builder: ModelBuilder, syncer: Syncer<M>, periods: Periods) -> Self {
        Self {
            builder,
            syncer,
            periods,
            last_sync: None,
            last_full: None,
            pending: false,
            feed_time: Duration::ZERO,
            waiting_reported: false,
            generation: 0,
            reported_problems: BTreeSet::new(),
            metrics: Arc::default(),
        }
    }

    /// Reports syncs and queued changes to `metrics` (the agent's, served
    /// on /metrics) instead of a private set.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn model(&self) -> &Model {
        self.builder.model()
    }

    /// Changes whenever [`SyncLoop::model`] may have changed.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Skipped objects (or parts) by reason, e.g. `ipv6-cluster-ip`.
    pub fn skip_counts(&self) -> &std::collections::BTreeMap<&'static str, usize> {
        self.builder.skip_counts()
    }

    pub fn syncer(&self) -> &Syncer<M> {
        &self.syncer
    }

    pub fn syncer_mut(&mut self) -> &mut Syncer<M> {
        &mut self.syncer
    }

    /// Takes what the source has and syncs if one is due. Returns the
    /// report of the sync that ran, if any (errors are logged).
    pub fn step(
        &mut self,
        source: &mut Source,
        now: Instant,
        health: &Health,
    ) -> Option<SyncReport> {
        if !source.ready() {
            if !std::mem::replace(&mut self.waiting_reported, true) {
                tracing::info!("waiting for the initial list of every object kind; maps untouched");
            }
            return None;
        }
        let full_due = self
            .last_full
            .is_none_or(|t| now.duration_since(t) >= self.periods.full_resync);
        let periodic_due = self
            .last_sync
            .is_none_or(|t| now.duration_since(t) >= self.periods.sync);
        let fed = Instant::now();
        let fed_something = self.feed(source.poll());
        // Polls that found nothing are the source's idle cost, not the change's.
        if fed_something {
            self.feed_time += fed.elapsed();
        }
        self.pending |= fed_something;
        let min_elapsed = self
            .last_sync
            .is_none_or(|t| now.duration_since(t) >= self.periods.min_sync);
        if !(full_due || periodic_due || self.pending && min_elapsed) {
            return None;
        }
        self.last_sync = Some(now);
        if full_due {
            self.last_full = Some(now);
        }
        self.pending = false;
        let start = Instant::now();
        let commit = self.builder.commit();
        let model_time = start.elapsed() + self.feed_time;
        self.generation += 1;
        let model = self.builder.model();
        let result = if full_due {
            self.syncer.resync(model)
        } else {
            self.syncer.sync_changes(model, &commit.changed)
        };
        // A partial sync falls back to a full one after a failed write.
        let observation = |full, succeeded| SyncObservation {
            duration: start.elapsed(),
            full,
            succeeded,
        };
        match result {
            Ok(mut report) => {
                let succeeded = report.failed_ops == 0;
                self.metrics
                    .observe_sync(observation(report.full, succeeded));
                self.metrics
                    .datapath
                    .count_write_failures(report.failed_ops as u64);
                if succeeded {
                    self.metrics.programmed(commit.triggered.iter().copied());
                }
                let elapsed = start.elapsed() + std::mem::take(&mut self.feed_time);
                add_commit(&mut report, &commit, elapsed);
                report.model_time = model_time;
                log(&report, self.builder.skip_counts());
                if report.converted > 0 {
                    for problem in self.new_problems() {
                        tracing::warn!(%problem, "served without this part of its spec");
                    }
                }
                if report.failed_ops == 0 {
                    health.record_sync();
                }
                Some(report)
            }
            Err(error) => {
                self.metrics.observe_sync(observation(full_due, false));
                tracing::warn!(%error, "sync failed; will retry");
                None
            }
        }
    }

    /// Problems with what an object asks for that the last sync found and
    /// earlier ones did not, to be logged once each (the sync line only
    /// counts them). IPv6 and other kinds vipr leaves out by design are
    /// only counted.
    fn new_problems(&mut self) -> Vec<String> {
        use crate::model::SkipReason;
        let current: BTreeSet<String> = self
            .builder
            .model()
            .skipped
            .iter()
            .filter(|s| {
                matches!(
                    s.reason,
                    SkipReason::UnknownTrafficDistribution(_)
                        | SkipReason::TopologyUnused { .. }
                        | SkipReason::FrontendConflict { .. }
                        | SkipReason::SpecialAddress { .. }
                )
            })
            .map(ToString::to_string)
            .collect();
        let new = current
            .difference(&self.reported_problems)
            .cloned()
            .collect();
        self.reported_problems = current;
        new
    }

    /// Hands an update to the model. True if it may have changed something.
    fn feed(&mut self, update: Update) -> bool {
        let errors = match update {
            Update::None => return false,
            Update::Converted {
                objects,
                relisted,
                node,
            } => {
                self.builder.set_node(node.as_deref());
                let mut errors = Vec::new();
                let (mut services, mut slices) = (0, 0);
                for (object, converted) in objects {
                    match object.kind {
                        Kind::Service => services += 1,
                        Kind::EndpointSlice => slices += 1,
                    }
                    errors.extend(self.builder.apply_converted(&object, converted));
                }
                if services + slices > 0 {
                    self.metrics.queued(services, slices);
                }
                for (kind, listed) in &relisted {
                    self.builder.retain_listed(*kind, listed);
                }
                errors
            }
        };
        for error in &errors {
            tracing::warn!(%error, "invalid object; keeping its last valid version");
        }
        true
    }
}

fn add_commit(report: &mut SyncReport, commit: &Commit, elapsed: Duration) {
    report.converted = commit.converted;
    report.services_recomputed = commit.services_recomputed;
    report.services = commit.services;
    report.endpoints = commit.endpoints;
    report.elapsed = elapsed;
}

/// The one line per sync.
fn log(r: &SyncReport, skipped: &std::collections::BTreeMap<&'static str, usize>) {
    tracing::info!(
        full = r.full,
        frontends = r.frontends,
        services_added = r.services.added,
        services_changed = r.services.changed,
        services_removed = r.services.removed,
        endpoints_added = r.endpoints.added,
        endpoints_changed = r.endpoints.changed,
        endpoints_removed = r.endpoints.removed,
        converted = r.converted,
        map_writes = r.ops,
        failed = r.failed_ops,
        skipped = ?skipped,
        elapsed_us = r.elapsed.as_micros() as u64,
        model_us = r.model_time.as_micros() as u64,
        plan_us = r.plan_time.as_micros() as u64,
        write_us = r.write_time.as_micros() as u64,
        "synced"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::FakeMaps;
    use crate::model::ModelOptions;
    use crate::source::manifests::ManifestDir;

    const SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: web}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [10.244.1.11]}]
";

    #[test]
    fn periodic_syncs_write_nothing_and_only_full_resyncs_repair_drift() {
        let dir = std::env::temp_dir().join(format!("vipr-sync-periods-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("web.yaml"), SERVICE).expect("write");
        let mut source = Source::Manifests(ManifestDir::new(&dir));
        let periods = Periods {
            min_sync: Duration::from_secs(1),
            sync: Duration::from_secs(10),
            full_resync: Duration::from_secs(100),
        };
        let syncer = Syncer::restore(FakeMaps::default()).expect("restore");
        let builder = ModelBuilder::new(ModelOptions::default());
        let mut sync = SyncLoop::new(builder, syncer, periods);
        let health = Health::new(Duration::from_secs(20));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);

        let first = sync.step(&mut source, at(0), &health).expect("first sync");
        assert!(first.full && first.ops > 0, "{first:?}");
        assert_eq!(sync.step(&mut source, at(5), &health), None, "nothing due");

        // Drift behind the agent's back survives periodic syncs...
        sync.syncer_mut().maps.contents.services.clear();
        let periodic = sync.step(&mut source, at(11), &health).expect("periodic");
        assert!(!periodic.full && periodic.ops == 0, "{periodic:?}");
        assert!(sync.syncer().maps.contents.services.is_empty());

        // ...until the full resync reads the maps back and repairs it.
        let full = sync.step(&mut source, at(101), &health).expect("full");
        assert!(full.full && full.ops > 0, "{full:?}");
        assert_eq!(sync.syncer().maps.contents, *sync.syncer().applied());
        assert!(!sync.syncer().maps.contents.services.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn after_a_failed_write_the_next_sync_writes_only_what_is_missing() {
        let periods = Periods {
            min_sync: Duration::from_secs(1),
            sync: Duration::from_secs(10),
            full_resync: Duration::from_secs(100),
        };
        let health = Health::new(Duration::from_secs(20));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let random = LbConfig::random();
        // What an unfailing sync leaves in the maps.
        let (_whole_dir, mut source, mut whole) =
            sync_loop("whole", FakeMaps::default(), random, periods);
        whole.step(&mut source, at(0), &health).expect("sync");
        let expected = whole.syncer().maps.contents.clone();

        let mut maps = FakeMaps::default();
        maps.fail_at = Some(1);
        let (_dir, mut source, mut sync) = sync_loop("retry", maps, random, periods);
        let first = sync.step(&mut source, at(0), &health).expect("first sync");
        assert_eq!(first.failed_ops, 1, "{first:?}");
        assert_ne!(sync.syncer().maps.contents, expected);
        assert_eq!(
            sync.syncer().applied(),
            &sync.syncer().maps.contents,
            "what the maps hold is read back"
        );
        let written = sync.syncer().maps.log.len();

        let retry = sync.step(&mut source, at(11), &health).expect("retry");
        assert_eq!((retry.ops, retry.failed_ops), (1, 0), "{retry:?}");
        assert_eq!(sync.syncer().maps.log.len(), written + 1);
        assert_eq!(sync.syncer().maps.contents, expected);
        let settled = sync.step(&mut source, at(22), &health).expect("periodic");
        assert_eq!(settled.ops, 0, "{settled:?}");
    }

    /// A manifests directory holding `SERVICE`, removed when dropped (also
    /// when the test fails).
    struct ManifestsDir(std::path::PathBuf);

    impl ManifestsDir {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("vipr-sync-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            std::fs::write(dir.join("web.yaml"), SERVICE).expect("write");
            Self(dir)
        }
    }

    impl Drop for ManifestsDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A sync loop over `SERVICE` on `maps`.
    fn sync_loop(
        tag: &str,
        maps: FakeMaps,
        lb: LbConfig,
        periods: Periods,
    ) -> (ManifestsDir, Source, SyncLoop<FakeMaps>) {
        let dir = ManifestsDir::new(tag);
        let source = Source::Manifests(ManifestDir::new(&dir.0));
        let syncer = Syncer::restore_with(maps, lb).expect("restore");
        let builder = ModelBuilder::new(ModelOptions::default());
        (dir, source, SyncLoop::new(builder, syncer, periods))
    }

    /// A sync loop over `SERVICE` with Maglev for every frontend (M = 251).
    fn maglev_loop(tag: &str, maps: FakeMaps) -> (ManifestsDir, Source, SyncLoop<FakeMaps>) {
        let lb = LbConfig::checked(crate::plan::LbDefault::Maglev, 251, 16, 7).expect("config");
        sync_loop(tag, maps, lb, Periods::default())
    }

    /// Every Maglev index entry points at a table written with its digest.
    fn index_points_at_written_tables(maps: &MapContents) -> bool {
        maps.maglev.values().all(|r| {
            maps.maglev_tables
                .get(&r.first)
                .is_some_and(|t| t.digest == r.digest && t.ids.len() == r.size as usize)
        })
    }

    #[test]
    fn no_index_entry_switches_to_a_table_whose_write_failed() {
        let mut maps = FakeMaps::default();
        maps.fail_tables = true;
        let (dir, mut source, mut sync) = maglev_loop("fence", maps);
        let health = Health::new(Duration::from_secs(20));
        let t0 = Instant::now();
        let first = sync.step(&mut source, t0, &health).expect("first sync");
        assert!(first.failed_ops >= 2, "the table and its switch: {first:?}");
        let held = &sync.syncer().maps.contents;
        assert!(
            held.maglev.is_empty(),
            "switched to an unwritten table: {held:?}"
        );
        assert!(!held.services.is_empty(), "the rest is written");
        assert_eq!(sync.syncer().maglev_frontends_on_slots(), 1, "the metric");

        // Once the pool takes writes, the next sync writes both.
        sync.syncer_mut().maps.fail_tables = false;
        let later = t0 + Periods::default().sync;
        let second = sync.step(&mut source, later, &health).expect("second sync");
        assert_eq!(second.failed_ops, 0, "{second:?}");
        let held = &sync.syncer().maps.contents;
        assert_eq!(held.maglev.len(), 1, "{held:?}");
        assert!(index_points_at_written_tables(held), "{held:?}");
        assert_eq!(sync.syncer().maglev_frontends_on_slots(), 0);

        // The endpoint is replaced and the new table cannot be written: the
        // frontend must not stay on its old table, whose backend is deleted.
        std::fs::write(
            dir.0.join("web.yaml"),
            SERVICE.replace("10.244.1.11", "10.244.1.12"),
        )
        .expect("write");
        sync.syncer_mut().maps.fail_tables = true;
        let third = sync
            .step(&mut source, later + Periods::default().sync, &health)
            .expect("third sync");
        assert!(third.failed_ops >= 2, "{third:?}");
        let held = &sync.syncer().maps.contents;
        assert!(held.maglev.is_empty(), "left on its old table: {held:?}");
        assert_eq!(
            crate::plan::check_consistency(held),
            Vec::<String>::new(),
            "{held:?}"
        );
    }

    #[test]
    fn a_table_changed_behind_the_agents_back_is_unhooked_then_rewritten() {
        let (_dir, mut source, mut sync) = maglev_loop("readback", FakeMaps::default());
        let periods = Periods::default();
        let health = Health::new(Duration::from_secs(20));
        let t0 = Instant::now();
        sync.step(&mut source, t0, &health).expect("first sync");
        assert!(index_points_at_written_tables(&sync.syncer().maps.contents));

        // A table position overwritten behind the agent's back.
        let maps = &mut sync.syncer_mut().maps;
        let table = maps
            .contents
            .maglev_tables
            .values_mut()
            .next()
            .expect("a table");
        let mut ids = table.ids.to_vec();
        ids[0] = ids[0].wrapping_add(1);
        table.ids = ids.into();
        let written_before = maps.log.len();

        let full = sync
            .step(&mut source, t0 + periods.full_resync, &health)
            .expect("full resync");
        assert!(full.full, "{full:?}");
        let maps = &sync.syncer().maps;
        let ops = &maps.log[written_before..];
        let position = |wanted: fn(&MapOp) -> bool| ops.iter().position(wanted);
        let unhooked = position(|op| matches!(op, MapOp::DeleteMaglevRef(_)));
        let rewritten = position(|op| matches!(op, MapOp::WriteMaglevTable(..)));
        let switched = position(|op| matches!(op, MapOp::UpsertMaglevRef(..)));
        assert!(
            unhooked < rewritten && rewritten < switched && unhooked.is_some(),
            "unhook, write, switch: {ops:?}"
        );
        assert!(
            index_points_at_written_tables(&maps.contents),
            "{:?}",
            maps.contents
        );
    }

    #[test]
    fn a_problem_with_an_object_is_reported_once() {
        let dir = std::env::temp_dir().join(format!("vipr-sync-problems-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let odd = SERVICE.replace("spec: {", "spec: {trafficDistribution: PreferFarAway, ");
        assert_ne!(odd, SERVICE, "the fixture has a spec");
        std::fs::write(dir.join("web.yaml"), &odd).expect("write");
        let mut source = Source::Manifests(ManifestDir::new(&dir));
        let syncer = Syncer::restore(FakeMaps::default()).expect("restore");
        let mut sync = SyncLoop::new(
            ModelBuilder::new(ModelOptions::default()),
            syncer,
            Periods::default(),
        );
        let health = Health::new(Duration::from_secs(20));
        sync.step(&mut source, Instant::now(), &health)
            .expect("sync");
        assert_eq!(
            sync.reported_problems.len(),
            1,
            "{:?}",
            sync.reported_problems
        );
        let line = sync.reported_problems.iter().next().unwrap();
        assert!(line.contains("PreferFarAway"), "{line}");
        assert!(sync.new_problems().is_empty(), "reported once");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
