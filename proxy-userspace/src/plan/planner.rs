//! Model → desired map contents, with stable ids; in full or per frontend.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hashbrown::HashMap;
use proxy_common::{
    AffinityMember, BackendValue, SVC_FLAG_AFFINITY, SVC_FLAG_DRAINING, SVC_FLAG_HAS_ENDPOINTS,
    SVC_FLAG_LOCAL_ONLY, SVC_FLAG_MAGLEV, SVC_FLAG_MASQUERADE, SVC_FLAG_SOURCE_RANGES, Service6Key,
    ServiceKey, ServiceValue, SlotKey,
};

use super::family::{Family, V4, V6};
use super::ids::IdTable;
use super::maglev_pool::{LbConfig, MaglevPool, add_maglev, forget_maglev};
use super::maps::MapContents;
use crate::model::{Frontend, FrontendKey, LbAlgorithm, Model};

/// Owns the id tables: service ids per map key, backend ids per (ip, port,
/// proto) (a backend value is exactly that triple), one set per address
/// family with disjoint id ranges. An id stays with its key as long as the
/// key is in the model, so unchanged services and backends produce no
/// writes and established flows keep their backend id.
///
/// It also keeps the last desired contents, so that [`Planner::update`] can
/// rewrite only the entries of the frontends that changed.
#[derive(Clone, Debug)]
pub struct Planner {
    v4: Tables<V4>,
    v6: Tables<V6>,
    desired: MapContents,
    maglev: MaglevPool,
}

impl Default for Planner {
    fn default() -> Self {
        Self::with_lb(LbConfig::random())
    }
}

/// One family's ids and references.
#[derive(Clone, Debug)]
struct Tables<F: Family> {
    services: IdTable<F::Key>,
    backends: IdTable<F::Backend>,
    /// Every backend (any condition) of each frontend in `desired`.
    frontend_backends: HashMap<F::Key, Vec<F::Backend>>,
    /// How many frontends list each backend; the entry goes at zero.
    backend_refs: HashMap<F::Backend, u32>,
}

impl<F: Family> Default for Tables<F> {
    fn default() -> Self {
        Self {
            services: IdTable::starting_at(F::FIRST_ID),
            backends: IdTable::starting_at(F::FIRST_ID),
            frontend_backends: HashMap::new(),
            backend_refs: HashMap::new(),
        }
    }
}

/// The map keys an incremental update may have changed: the diff looks at
/// these only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    pub services: BTreeSet<ServiceKey>,
    pub services6: BTreeSet<Service6Key>,
    pub slots: BTreeSet<SlotKey>,
    pub backends: BTreeSet<u32>,
    pub backends6: BTreeSet<u32>,
    pub source_ranges: BTreeSet<super::maps::SourceRange>,
    pub source_ranges6: BTreeSet<super::maps::SourceRange6>,
    pub affinity: BTreeSet<AffinityMember>,
    /// Service ids whose Maglev index entry may have changed.
    pub maglev: BTreeSet<u32>,
    /// Tables (first position) given a number no frontend used: to write.
    pub maglev_tables: BTreeSet<u32>,
}

impl Planner {
    pub fn new() -> Self {
        Self::default()
    }

    /// A planner balancing as `lb` says (`Planner::new`: slots only,
    /// unless a Service asks for Maglev).
    pub fn with_lb(lb: LbConfig) -> Self {
        Self {
            v4: Tables::default(),
            v6: Tables::default(),
            desired: MapContents::default(),
            maglev: MaglevPool::new(lb),
        }
    }

    /// Rebuilds the id tables from maps read back from the kernel (after an
    /// agent restart), so the next `desired` keeps every id and slot as is.
    pub fn restore(applied: &MapContents) -> Self {
        Self::restore_with(applied, LbConfig::random())
    }

    /// [`Planner::restore`] with a balancing configuration; Maglev tables
    /// whose contents are still wanted are kept where they are.
    pub fn restore_with(applied: &MapContents, lb: LbConfig) -> Self {
        Self {
            v4: Tables::restore(&applied.services, &applied.backends),
            v6: Tables::restore(&applied.services6, &applied.backends6),
            desired: MapContents::default(),
            maglev: MaglevPool::restore(lb, applied.maglev.values()),
        }
    }

    /// Frontends left on their slots in the last plan or update because
    /// the Maglev pool had no free table (`--maglev-max-tables`).
    pub fn maglev_exhausted(&self) -> usize {
        self.maglev.exhausted
    }

    pub fn service_id(&self, key: &ServiceKey) -> Option<u32> {
        self.v4.services.get(key)
    }

    pub fn backend_id(&self, backend: &BackendValue) -> Option<u32> {
        self.v4.backends.get(backend)
    }

    /// The desired contents as of the last [`Planner::desired`] or
    /// [`Planner::update`].
    pub fn current(&self) -> &MapContents {
        &self.desired
    }

    /// The map contents for `model`. Per service: `backend_count` = number of
    /// active backends (capped at u16::MAX), slots `0..count` hold their ids in
    /// (ip, port) order. The backends map holds every known backend of every
    /// service, active or not, so flows pinned to a terminating one go on.
    /// Ids of keys gone from the model become reusable from the next call.
    pub fn desired(&mut self, model: &Model) -> MapContents {
        self.plan(model);
        self.desired.clone()
    }

    /// [`Planner::desired`] without the copy: the result is [`Planner::current`].
    pub fn plan(&mut self, model: &Model) {
        self.desired = MapContents::default();
        self.v4.start_full();
        self.v6.start_full();
        self.maglev.start_full();
        // Allocation follows model order (frontends by ip:port/proto, backends by
        // ip:port), so ids are deterministic for a given history of models.
        for fe in model.frontends.values() {
            self.v4
                .add_frontend(&mut self.desired, fe, &mut self.maglev, None);
            self.v6
                .add_frontend(&mut self.desired, fe, &mut self.maglev, None);
        }
        self.v4.end_full(&mut self.desired);
        self.v6.end_full(&mut self.desired);
        self.maglev.end_full();
    }

    /// Rewrites the entries of the `changed` frontends (as [`Planner::desired`]
    /// would) and returns the keys it touched. The cost grows with the
    /// changed frontends and their backends, not with the model.
    pub fn update(&mut self, model: &Model, changed: &BTreeSet<FrontendKey>) -> Touched {
        self.update_noting_before(model, changed).0
    }

    /// [`Planner::update`], with what the touched keys held before it (a
    /// key absent there was absent): what the maps hold when they were in
    /// step with [`Planner::current`], so the caller need not keep a copy.
    pub fn update_noting_before(
        &mut self,
        model: &Model,
        changed: &BTreeSet<FrontendKey>,
    ) -> (Touched, MapContents) {
        self.v4.start_round();
        self.v6.start_round();
        self.maglev.start_round();
        let mut notes = Notes::default();
        for key in changed {
            let (desired, pool) = (&mut self.desired, &mut self.maglev);
            self.v4.update_key(desired, model, key, pool, &mut notes);
            self.v6.update_key(desired, model, key, pool, &mut notes);
        }
        (notes.touched, notes.before)
    }
}

impl<F: Family> Tables<F> {
    fn restore(
        services: &std::collections::BTreeMap<F::Key, ServiceValue>,
        backends: &std::collections::BTreeMap<u32, F::Backend>,
    ) -> Self {
        Self {
            services: IdTable::restore(
                F::FIRST_ID,
                services.iter().map(|(k, v)| (*k, v.service_id)),
            ),
            backends: IdTable::restore(F::FIRST_ID, backends.iter().map(|(id, v)| (*v, *id))),
            ..Self::default()
        }
    }

    fn start_round(&mut self) {
        self.services.start_round();
        self.backends.start_round();
    }

    /// A full plan: ids released in an earlier round become free now; keys
    /// gone from the model lose theirs in `end_full`, after the frontends
    /// are added, so no id passes from an old key to a new one within a round.
    fn start_full(&mut self) {
        self.start_round();
        self.frontend_backends.clear();
        self.backend_refs.clear();
    }

    fn end_full(&mut self, desired: &mut MapContents) {
        let (services, backend_refs) = (F::services(desired), &self.backend_refs);
        self.services
            .release_unless(|key| services.contains_key(key));
        self.backends
            .release_unless(|value| backend_refs.contains_key(value));
    }

    /// Replaces the entries of frontend `key`, if it is of this family.
    fn update_key(
        &mut self,
        desired: &mut MapContents,
        model: &Model,
        key: &FrontendKey,
        pool: &mut MaglevPool,
        notes: &mut Notes,
    ) {
        let Some(skey) = F::key(key) else { return };
        F::touched_services(&mut notes.touched).insert(skey);
        let old = F::services(desired).remove(&skey);
        if let Some(old) = old {
            F::services(&mut notes.before).insert(skey, old);
            forget_service_entries(desired, old.service_id, notes);
            forget_maglev(desired, old.service_id, pool, notes);
        }
        let old_backends = self.frontend_backends.remove(&skey).unwrap_or_default();
        // Added before the old ones are dropped, so a backend the frontend
        // keeps never loses its id.
        match (model.frontends.get(key), old) {
            (Some(fe), _) => self.add_frontend(desired, fe, pool, Some(notes)),
            // Gone from the model: the frontend drains (see `draining`).
            (None, Some(old)) => {
                F::services(desired).insert(skey, draining(old.service_id));
            }
            (None, None) => self.services.release(&skey),
        }
        for value in old_backends {
            self.drop_backend_ref(desired, value, notes);
        }
    }

    /// Writes one frontend's service, slots and backends into `desired`,
    /// noting what it touched when asked (an incremental update). A
    /// frontend of the other family is left alone.
    fn add_frontend(
        &mut self,
        desired: &mut MapContents,
        fe: &Frontend,
        pool: &mut MaglevPool,
        mut notes: Option<&mut Notes>,
    ) {
        let Some(skey) = F::key(&fe.key) else { return };
        let values: Vec<F::Backend> = fe
            .backends
            .iter()
            .filter_map(|b| F::backend(fe, b))
            .collect();
        for value in &values {
            let refs = self.backend_refs.entry(*value).or_default();
            *refs += 1;
            if *refs == 1
                && let Some(id) = self.backends.get_or_alloc(value)
            {
                let old = F::backends(desired).insert(id, *value);
                if let Some(notes) = notes.as_deref_mut() {
                    if let Some(old) = old {
                        F::backends(&mut notes.before).entry(id).or_insert(old);
                    }
                    F::touched_backends(&mut notes.touched).insert(id);
                }
            }
        }
        self.frontend_backends.insert(skey, values);
        let Some(service_id) = self.services.get_or_alloc(&skey) else {
            return;
        };
        let mut members: Vec<(IpAddr, u16, u32)> = fe
            .active_backends()
            .into_iter()
            .filter_map(|b| Some((b.ip, b.port, self.backends.get(&F::backend(fe, b)?)?)))
            .collect();
        members.truncate(usize::from(u16::MAX));
        let ids: Vec<u32> = members.iter().map(|m| m.2).collect();
        for (slot, id) in (0u32..).zip(&ids) {
            let slot_key = SlotKey { service_id, slot };
            desired.slots.insert(slot_key, *id);
            if let Some(notes) = notes.as_deref_mut() {
                notes.touched.slots.insert(slot_key);
            }
        }
        if let Some(timeout) = fe.policy.affinity_timeout {
            for &backend_id in &ids {
                let member = AffinityMember {
                    service_id,
                    backend_id,
                };
                desired.affinity.insert(member, timeout);
                if let Some(notes) = notes.as_deref_mut() {
                    notes.touched.affinity.insert(member);
                }
            }
        }
        let backend_count = u16::try_from(ids.len()).unwrap_or(u16::MAX);
        for &(net, len) in &fe.policy.source_ranges {
            let Some(range) = F::range(service_id, net, len) else {
                continue;
            };
            F::source_ranges(desired).insert(range);
            if let Some(notes) = notes.as_deref_mut() {
                F::touched_ranges(&mut notes.touched).insert(range);
            }
        }
        let mut flags = flags_of(fe);
        if pool.config.algorithm(fe) == LbAlgorithm::Maglev
            && !members.is_empty()
            && add_maglev(desired, service_id, &members, pool, notes)
        {
            flags |= SVC_FLAG_MAGLEV;
        }
        F::services(desired).insert(
            skey,
            ServiceValue {
                service_id,
                backend_count,
                flags,
            },
        );
    }

    fn drop_backend_ref(
        &mut self,
        desired: &mut MapContents,
        value: F::Backend,
        notes: &mut Notes,
    ) {
        let Some(refs) = self.backend_refs.get_mut(&value) else {
            return;
        };
        *refs -= 1;
        if *refs > 0 {
            return;
        }
        self.backend_refs.remove(&value);
        if let Some(id) = self.backends.get(&value) {
            if let Some(old) = F::backends(desired).remove(&id) {
                F::backends(&mut notes.before).entry(id).or_insert(old);
            }
            F::touched_backends(&mut notes.touched).insert(id);
        }
        self.backends.release(&value);
    }
}

/// Removes (noting them) the slots, affinity members and source ranges of
/// the service with `service_id`: the slot and member maps both families
/// share by id, and either family's ranges (ids never overlap).
fn forget_service_entries(desired: &mut MapContents, service_id: u32, notes: &mut Notes) {
    let ranges: Vec<_> = desired
        .source_ranges
        .range((service_id, Ipv4Addr::UNSPECIFIED, 0)..)
        .take_while(|r| r.0 == service_id)
        .copied()
        .collect();
    for range in ranges {
        desired.source_ranges.remove(&range);
        notes.touched.source_ranges.insert(range);
        notes.before.source_ranges.insert(range);
    }
    let ranges6: Vec<_> = desired
        .source_ranges6
        .range((service_id, Ipv6Addr::UNSPECIFIED, 0)..)
        .take_while(|r| r.0 == service_id)
        .copied()
        .collect();
    for range in ranges6 {
        desired.source_ranges6.remove(&range);
        notes.touched.source_ranges6.insert(range);
        notes.before.source_ranges6.insert(range);
    }
    let members: Vec<AffinityMember> = desired
        .affinity
        .range(
            AffinityMember {
                service_id,
                backend_id: 0,
            }..,
        )
        .take_while(|(m, _)| m.service_id == service_id)
        .map(|(m, _)| *m)
        .collect();
    for member in members {
        if let Some(timeout) = desired.affinity.remove(&member) {
            notes.before.affinity.insert(member, timeout);
        }
        notes.touched.affinity.insert(member);
    }
    let slots: Vec<SlotKey> = desired
        .slots
        .range(
            SlotKey {
                service_id,
                slot: 0,
            }..,
        )
        .take_while(|(k, _)| k.service_id == service_id)
        .map(|(k, _)| *k)
        .collect();
    for slot_key in slots {
        if let Some(id) = desired.slots.remove(&slot_key) {
            notes.before.slots.insert(slot_key, id);
        }
        notes.touched.slots.insert(slot_key);
    }
}

/// What an incremental update touched, and what those keys held before.
#[derive(Default)]
pub(super) struct Notes {
    pub(super) touched: Touched,
    pub(super) before: MapContents,
}

/// A deleted frontend keeps its entry, without endpoints, until the next
/// full sync ([`Planner::desired`]: at start, hourly, after a failed write):
/// its established flows go on as conntrack has them, as kube-proxy's do,
/// while new connections pass as if it never existed.
fn draining(service_id: u32) -> ServiceValue {
    ServiceValue {
        service_id,
        backend_count: 0,
        flags: SVC_FLAG_DRAINING,
    }
}

/// The datapath's view of a frontend's policy.
fn flags_of(fe: &Frontend) -> u16 {
    let mut flags = 0;
    if fe.policy.local_only {
        flags |= SVC_FLAG_LOCAL_ONLY;
    }
    if fe.has_endpoints_anywhere() {
        flags |= SVC_FLAG_HAS_ENDPOINTS;
    }
    if fe.policy.masquerade {
        flags |= SVC_FLAG_MASQUERADE;
    }
    if !fe.policy.source_ranges.is_empty() {
        flags |= SVC_FLAG_SOURCE_RANGES;
    }
    if fe.policy.affinity_timeout.is_some() {
        flags |= SVC_FLAG_AFFINITY;
    }
    flags
}
