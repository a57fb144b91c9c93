//! The per-Service model index behind [`super::ModelBuilder`]: object tables,
//! slices by Service, each Service's frontends, and which Service owns a
//! frontend when two claim it. A commit recomputes only the Services whose
//! inputs changed; its result equals [`super::build_model`] of all objects.

use std::collections::{BTreeMap, BTreeSet};
use std::mem;

use hashbrown::HashMap;

use super::build::service_frontends;
use super::builder::Entry;
use super::{
    Conditions, Counts, Frontend, FrontendKey, Kind, Model, ModelOptions, Name, NodeModel,
    ObjectRef, ServiceModel, SkipReason, Skipped, SliceModel, Unique,
};

#[derive(Debug, Default)]
pub(super) struct Index {
    // Tables looked up by object are hashed: nothing depends on their
    // order, and at 200,000 objects tree lookups (string compares) were a
    // third of the model's time.
    pub services: HashMap<ObjectRef, Entry<ServiceModel>>,
    pub slices: HashMap<ObjectRef, Entry<SliceModel>>,
    /// (namespace, service name) → slices labelled for it.
    by_service: BTreeMap<(Name, Unique), SortedSet<ObjectRef>>,
    /// The frontend keys each Service claims, in port × IP order. Only the
    /// owner's frontend is kept (in the model), not one copy per claimant.
    claims: HashMap<ObjectRef, Vec<FrontendKey>>,
    /// Services claiming a frontend; the first (by namespace/name) owns it.
    claimants: BTreeMap<FrontendKey, SortedSet<ObjectRef>>,
    /// Non-empty skip lists: an object's own reasons, then its topology
    /// notes, then its conflicts.
    skips: BTreeMap<ObjectRef, Vec<SkipReason>>,
    /// Each Service's topology notes as of its last recomputation.
    notes: HashMap<ObjectRef, Vec<SkipReason>>,
    stale: BTreeSet<ObjectRef>,
    /// Services to recompute at the next commit.
    dirty: BTreeSet<ObjectRef>,
    skips_dirty: bool,
    stale_dirty: bool,
    pub model: Model,
    /// Node name and NodePort addresses the frontends are made for.
    pub options: ModelOptions,
    pub skip_counts: BTreeMap<&'static str, usize>,
}

impl Index {
    pub fn objects(&self) -> impl Iterator<Item = &ObjectRef> {
        self.services.keys().chain(self.slices.keys())
    }

    pub fn set_service(&mut self, object: ObjectRef, entry: Option<Entry<ServiceModel>>) {
        let old = self.services.get(&object).and_then(|e| e.value.as_deref());
        if old != entry.as_ref().and_then(|e| e.value.as_deref()) {
            self.dirty.insert(object.clone());
        }
        self.set_stale(&object, entry.as_ref());
        match entry {
            Some(entry) => self.services.insert(object, entry),
            None => self.services.remove(&object),
        };
    }

    pub fn set_slice(&mut self, object: ObjectRef, entry: Option<Entry<SliceModel>>) {
        let old = self.slices.get(&object).and_then(|e| e.value.as_deref());
        let new = entry.as_ref().and_then(|e| e.value.as_deref());
        if old != new {
            let old_service = old.and_then(|m| m.service.clone());
            let new_service = new.and_then(|m| m.service.clone());
            let reasons = new.map(|m| m.skipped.clone()).unwrap_or_default();
            if let Some(name) = old_service {
                let key = (object.namespace.clone(), name);
                if let Some(set) = self.by_service.get_mut(&key) {
                    set.remove(&object);
                    if set.is_empty() {
                        self.by_service.remove(&key);
                    }
                }
                self.dirty.insert(service_ref(key));
            }
            if let Some(name) = new_service {
                let key = (object.namespace.clone(), name);
                self.by_service
                    .entry(key.clone())
                    .or_default()
                    .insert(object.clone());
                self.dirty.insert(service_ref(key));
            }
            self.set_skips(&object, reasons);
        }
        self.set_stale(&object, entry.as_ref());
        match entry {
            Some(entry) => self.slices.insert(object, entry),
            None => self.slices.remove(&object),
        };
    }

    /// Records this node; when its zone changes, the Services whose endpoints
    /// carry zone hints are recomputed at the next commit (no other can
    /// choose differently).
    pub fn set_node(&mut self, node: Option<NodeModel>) {
        let zone = |n: Option<&NodeModel>| n.and_then(|n| n.zone.clone());
        if zone(self.model.node.as_ref()) != zone(node.as_ref()) {
            for slice in self.slices.values().filter_map(|e| e.value.as_deref()) {
                let Some(name) = &slice.service else { continue };
                if slice.endpoints.iter().any(|ep| !ep.hints.zones.is_empty()) {
                    let svc = service_ref((slice.object.namespace.clone(), name.clone()));
                    if self.services.contains_key(&svc) {
                        self.dirty.insert(svc);
                    }
                }
            }
        }
        self.model.node = node;
    }

    /// Recomputes the dirty Services and says what changed.
    pub fn commit(&mut self) -> Changes {
        let dirty = mem::take(&mut self.dirty);
        let mut out = Changes {
            services_recomputed: dirty.len(),
            ..Changes::default()
        };
        let mut touched = BTreeSet::new();
        // Frontends computed in this commit, by Service.
        let mut computed: HashMap<ObjectRef, Vec<Frontend>> = HashMap::new();
        for svc in &dirty {
            let (new, notes) = self.candidates_for(svc);
            if notes.is_empty() {
                self.notes.remove(svc);
            } else {
                self.notes.insert(svc.clone(), notes);
            }
            let old_keys = self.claims.remove(svc).unwrap_or_default();
            let old: Vec<&Frontend> = old_keys
                .iter()
                .filter_map(|k| self.model.frontends.get(k))
                .filter(|fe| &fe.service == svc)
                .collect();
            let differs = old.len() != new.len() || old.iter().zip(&new).any(|(a, b)| *a != b);
            count(&mut out.services, !old.is_empty(), !new.is_empty(), differs);
            count_endpoints(&mut out.endpoints, &old, &new);
            for key in old_keys {
                if let Some(set) = self.claimants.get_mut(&key) {
                    set.remove(svc);
                    if set.is_empty() {
                        self.claimants.remove(&key);
                    }
                }
                touched.insert(key);
            }
            for fe in &new {
                self.claimants
                    .entry(fe.key)
                    .or_default()
                    .insert(svc.clone());
                touched.insert(fe.key);
            }
            if !new.is_empty() {
                self.claims
                    .insert(svc.clone(), new.iter().map(|fe| fe.key).collect());
            }
            computed.insert(svc.clone(), new);
        }

        // Conflicts may have moved for every Service claiming a touched key.
        let mut recheck = dirty;
        for key in touched {
            let claimants = self.claimants.get(&key);
            recheck.extend(claimants.into_iter().flatten().cloned());
            let owner = claimants.and_then(SortedSet::first).cloned();
            let current = self.model.frontends.get(&key);
            let want = match owner {
                None => None,
                // Owner unchanged and not recomputed: its frontend stands.
                Some(o)
                    if !computed.contains_key(&o) && current.is_some_and(|f| f.service == o) =>
                {
                    continue;
                }
                Some(o) => {
                    // The key passed to a Service that did not change: compute it.
                    let fes = match computed.get(&o) {
                        Some(fes) => fes,
                        // Its inputs did not change, so neither did its notes.
                        None => {
                            let (fes, _) = self.candidates_for(&o);
                            computed.entry(o).or_insert(fes)
                        }
                    };
                    fes.iter().find(|fe| fe.key == key).cloned()
                }
            };
            if self.model.frontends.get(&key) != want.as_ref() {
                match want {
                    Some(fe) => self.model.frontends.insert(key, fe),
                    None => self.model.frontends.remove(&key),
                };
                out.frontends.insert(key);
            }
        }
        for svc in recheck {
            let reasons = self.service_skips(&svc);
            self.set_skips(&svc, reasons);
        }

        if mem::take(&mut self.skips_dirty) {
            self.skip_counts.clear();
            self.model.skipped.clear();
            for (object, reasons) in &self.skips {
                for reason in reasons {
                    *self.skip_counts.entry(reason.label()).or_default() += 1;
                    self.model.skipped.push(Skipped {
                        object: object.clone(),
                        reason: reason.clone(),
                    });
                }
            }
        }
        if mem::take(&mut self.stale_dirty) {
            self.model.stale = self.stale.iter().cloned().collect();
        }
        out
    }

    /// The Service's frontends with their backends, ignoring other Services,
    /// and its topology notes.
    fn candidates_for(&self, svc: &ObjectRef) -> (Vec<Frontend>, Vec<SkipReason>) {
        let Some(model) = self.services.get(svc).and_then(|e| e.value.as_deref()) else {
            return (Vec::new(), Vec::new());
        };
        let key = (svc.namespace.clone(), svc.name.clone());
        let slices: Vec<&SliceModel> = self
            .by_service
            .get(&key)
            .into_iter()
            .flatten()
            .filter_map(|o| self.slices.get(o).and_then(|e| e.value.as_deref()))
            .collect();
        let zone = self.model.node.as_ref().and_then(|n| n.zone.as_deref());
        service_frontends(model, &slices, &self.options, zone)
    }

    /// A Service's own skip reasons, its topology notes, then the frontends
    /// another Service owns.
    fn service_skips(&self, svc: &ObjectRef) -> Vec<SkipReason> {
        let mut reasons = self
            .services
            .get(svc)
            .and_then(|e| e.value.as_deref())
            .map(|m| m.skipped.clone())
            .unwrap_or_default();
        reasons.extend(self.notes.get(svc).into_iter().flatten().cloned());
        for key in self.claims.get(svc).into_iter().flatten() {
            if let Some(owner) = self.claimants.get(key).and_then(SortedSet::first)
                && owner != svc
            {
                reasons.push(SkipReason::FrontendConflict {
                    key: *key,
                    owner: owner.clone(),
                });
            }
        }
        reasons
    }

    fn set_skips(&mut self, object: &ObjectRef, reasons: Vec<SkipReason>) {
        if self
            .skips
            .get(object)
            .map(Vec::as_slice)
            .unwrap_or_default()
            == reasons.as_slice()
        {
            return;
        }
        self.skips_dirty = true;
        if reasons.is_empty() {
            self.skips.remove(object);
        } else {
            self.skips.insert(object.clone(), reasons);
        }
    }

    fn set_stale<T>(&mut self, object: &ObjectRef, entry: Option<&Entry<T>>) {
        let stale = entry.is_some_and(|e| e.value.is_some() && e.error.is_some());
        let changed = if stale {
            self.stale.insert(object.clone())
        } else {
            self.stale.remove(object)
        };
        self.stale_dirty |= changed;
    }
}

/// What one commit changed.
#[derive(Debug, Default)]
pub(super) struct Changes {
    pub frontends: BTreeSet<FrontendKey>,
    pub services: Counts,
    pub endpoints: Counts,
    pub services_recomputed: usize,
}

fn count(counts: &mut Counts, was: bool, is: bool, differs: bool) {
    match (was, is) {
        (false, true) => counts.added += 1,
        (true, false) => counts.removed += 1,
        (true, true) if differs => counts.changed += 1,
        _ => {}
    }
}

/// Endpoints (ip:port, any port of the Service) added, removed, or whose
/// conditions changed.
fn count_endpoints(counts: &mut Counts, old: &[&Frontend], new: &[Frontend]) {
    let endpoints = |fes: &mut dyn Iterator<Item = &Frontend>| -> BTreeMap<_, Conditions> {
        fes.flat_map(|fe| &fe.backends)
            .map(|b| ((b.ip, b.port), b.conditions))
            .collect()
    };
    let old = endpoints(&mut old.iter().copied());
    let new = endpoints(&mut new.iter());
    for (key, conditions) in &new {
        let before = old.get(key);
        count(counts, before.is_some(), true, before != Some(conditions));
    }
    counts.removed += old.keys().filter(|k| !new.contains_key(*k)).count();
}

/// A set that nearly always holds one element (the slices of a Service,
/// the Services claiming a frontend): a sorted vector of one costs a tenth
/// of a `BTreeSet`'s node, which was 80 MB at 100,000 Services.
#[derive(Debug)]
struct SortedSet<T>(Vec<T>);

impl<T> Default for SortedSet<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T: Ord> SortedSet<T> {
    fn insert(&mut self, value: T) {
        if let Err(at) = self.0.binary_search(&value) {
            self.0.insert(at, value);
        }
    }

    fn remove(&mut self, value: &T) {
        if let Ok(at) = self.0.binary_search(value) {
            self.0.remove(at);
        }
    }

    fn first(&self) -> Option<&T> {
        self.0.first()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a, T> IntoIterator for &'a SortedSet<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

fn service_ref((namespace, name): (Name, Unique)) -> ObjectRef {
    ObjectRef {
        kind: Kind::Service,
        namespace,
        name,
    }
}
