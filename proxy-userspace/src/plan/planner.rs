//! Model → desired map contents, with stable ids; in full or per frontend.

use std::collections::BTreeSet;

use hashbrown::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use proxy_common::{
    AffinityMember, BackendValue, SVC_FLAG_AFFINITY, SVC_FLAG_DRAINING, SVC_FLAG_HAS_ENDPOINTS,
    SVC_FLAG_LOCAL_ONLY, SVC_FLAG_MASQUERADE, SVC_FLAG_SOURCE_RANGES, ServiceKey, ServiceValue,
    SlotKey,
};

use super::ids::IdTable;
use super::maps::MapContents;
use crate::model::{Backend, Frontend, FrontendKey, Model};

/// Owns the id tables: service ids per [`ServiceKey`], backend ids per
/// (ip, port, proto) (a [`BackendValue`] is exactly that triple). An id stays
/// with its key as long as the key is in the model, so unchanged services and
/// backends produce no writes and established flows keep their backend id.
///
/// It also keeps the last desired contents, so that [`Planner::update`] can
/// rewrite only the entries of the frontends that changed.
#[derive(Clone, Debug, Default)]
pub struct Planner {
    services: IdTable<ServiceKey>,
    backends: IdTable<BackendValue>,
    desired: MapContents,
    /// Every backend (any condition) of each frontend in `desired`.
    frontend_backends: HashMap<ServiceKey, Vec<BackendValue>>,
    /// How many frontends list each backend; the entry goes at zero.
    backend_refs: HashMap<BackendValue, u32>,
}

/// The map keys an incremental update may have changed: the diff looks at
/// these only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    pub services: BTreeSet<ServiceKey>,
    pub slots: BTreeSet<SlotKey>,
    pub backends: BTreeSet<u32>,
    pub source_ranges: BTreeSet<super::maps::SourceRange>,
    pub affinity: BTreeSet<AffinityMember>,
}

impl Planner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds the id tables from maps read back from the kernel (after an
    /// agent restart), so the next `desired` keeps every id and slot as is.
    pub fn restore(applied: &MapContents) -> Self {
        Self {
            services: IdTable::restore(applied.services.iter().map(|(k, v)| (*k, v.service_id))),
            backends: IdTable::restore(applied.backends.iter().map(|(id, v)| (*v, *id))),
            ..Self::default()
        }
    }

    pub fn service_id(&self, key: &ServiceKey) -> Option<u32> {
        self.services.get(key)
    }

    pub fn backend_id(&self, backend: &BackendValue) -> Option<u32> {
        self.backends.get(backend)
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
        // Ids released in an earlier round become free now; keys gone from
        // the model lose theirs after the frontends are added, so no id
        // passes from an old key to a new one within this round.
        self.services.start_round();
        self.backends.start_round();
        self.desired = MapContents::default();
        self.frontend_backends.clear();
        self.backend_refs.clear();
        // Allocation follows model order (frontends by ip:port/proto, backends by
        // ip:port), so ids are deterministic for a given history of models.
        for fe in model.frontends.values() {
            self.add_frontend(fe, None);
        }
        let (desired, backend_refs) = (&self.desired, &self.backend_refs);
        self.services
            .release_unless(|key| desired.services.contains_key(key));
        self.backends
            .release_unless(|value| backend_refs.contains_key(value));
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
        self.services.start_round();
        self.backends.start_round();
        let mut notes = Notes::default();
        for key in changed {
            let Some(skey) = key_of(key) else { continue };
            notes.touched.services.insert(skey);
            let old = self.desired.services.remove(&skey);
            if let Some(old) = old {
                notes.before.services.insert(skey, old);
                let ranges: Vec<_> = self
                    .desired
                    .source_ranges
                    .range((old.service_id, Ipv4Addr::UNSPECIFIED, 0)..)
                    .take_while(|r| r.0 == old.service_id)
                    .copied()
                    .collect();
                for range in ranges {
                    self.desired.source_ranges.remove(&range);
                    notes.touched.source_ranges.insert(range);
                    notes.before.source_ranges.insert(range);
                }
                let members: Vec<AffinityMember> = self
                    .desired
                    .affinity
                    .range(
                        AffinityMember {
                            service_id: old.service_id,
                            backend_id: 0,
                        }..,
                    )
                    .take_while(|(m, _)| m.service_id == old.service_id)
                    .map(|(m, _)| *m)
                    .collect();
                for member in members {
                    if let Some(timeout) = self.desired.affinity.remove(&member) {
                        notes.before.affinity.insert(member, timeout);
                    }
                    notes.touched.affinity.insert(member);
                }
                for slot in 0..u32::from(old.backend_count) {
                    let slot_key = SlotKey {
                        service_id: old.service_id,
                        slot,
                    };
                    if let Some(id) = self.desired.slots.remove(&slot_key) {
                        notes.before.slots.insert(slot_key, id);
                    }
                    notes.touched.slots.insert(slot_key);
                }
            }
            let old_backends = self.frontend_backends.remove(&skey).unwrap_or_default();
            // Added before the old ones are dropped, so a backend the frontend
            // keeps never loses its id.
            match (model.frontends.get(key), old) {
                (Some(fe), _) => self.add_frontend(fe, Some(&mut notes)),
                // Gone from the model: the frontend drains (see `draining`).
                (None, Some(old)) => {
                    self.desired.services.insert(skey, draining(old.service_id));
                }
                (None, None) => self.services.release(&skey),
            }
            for value in old_backends {
                self.drop_backend_ref(value, &mut notes);
            }
        }
        (notes.touched, notes.before)
    }

    /// Writes one frontend's service, slots and backends into `desired`,
    /// noting what it touched when asked (an incremental update).
    fn add_frontend(&mut self, fe: &Frontend, mut notes: Option<&mut Notes>) {
        let Some(skey) = key_of(&fe.key) else { return };
        let values: Vec<BackendValue> = backend_values(fe).collect();
        for value in &values {
            let refs = self.backend_refs.entry(*value).or_default();
            *refs += 1;
            if *refs == 1
                && let Some(id) = self.backends.get_or_alloc(value)
            {
                let old = self.desired.backends.insert(id, *value);
                if let Some(notes) = notes.as_deref_mut() {
                    if let Some(old) = old {
                        notes.before.backends.entry(id).or_insert(old);
                    }
                    notes.touched.backends.insert(id);
                }
            }
        }
        self.frontend_backends.insert(skey, values);
        let Some(service_id) = self.services.get_or_alloc(&skey) else {
            return;
        };
        let mut ids: Vec<u32> = fe
            .active_backends()
            .into_iter()
            .filter_map(|b| self.backends.get(&value_of(fe, b)?))
            .collect();
        ids.truncate(usize::from(u16::MAX));
        for (slot, id) in (0u32..).zip(&ids) {
            let slot_key = SlotKey { service_id, slot };
            self.desired.slots.insert(slot_key, *id);
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
                self.desired.affinity.insert(member, timeout);
                if let Some(notes) = notes.as_deref_mut() {
                    notes.touched.affinity.insert(member);
                }
            }
        }
        let backend_count = u16::try_from(ids.len()).unwrap_or(u16::MAX);
        for (ip, len) in ipv4_ranges(&fe.policy.source_ranges) {
            let range = (service_id, ip, len);
            self.desired.source_ranges.insert(range);
            if let Some(notes) = notes.as_deref_mut() {
                notes.touched.source_ranges.insert(range);
            }
        }
        self.desired.services.insert(
            skey,
            ServiceValue {
                service_id,
                backend_count,
                flags: flags_of(fe),
            },
        );
    }

    fn drop_backend_ref(&mut self, value: BackendValue, notes: &mut Notes) {
        let Some(refs) = self.backend_refs.get_mut(&value) else {
            return;
        };
        *refs -= 1;
        if *refs > 0 {
            return;
        }
        self.backend_refs.remove(&value);
        if let Some(id) = self.backends.get(&value) {
            if let Some(old) = self.desired.backends.remove(&id) {
                notes.before.backends.entry(id).or_insert(old);
            }
            notes.touched.backends.insert(id);
        }
        self.backends.release(&value);
    }
}

/// What an incremental update touched, and what those keys held before.
#[derive(Default)]
struct Notes {
    touched: Touched,
    before: MapContents,
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

/// The IPv4 maps' key of a frontend; `None` for an IPv6 one, which these
/// maps cannot hold (the model makes those only with `ModelOptions::ipv6`).
fn key_of(key: &FrontendKey) -> Option<ServiceKey> {
    let IpAddr::V4(ip) = key.ip else {
        return None;
    };
    Some(ServiceKey::scoped(
        ip,
        key.port,
        key.protocol.number(),
        key.scope.number(),
    ))
}

/// The IPv4 ones of a frontend's source ranges (all of them, for an IPv4
/// frontend: the model gives each frontend the ranges of its family).
fn ipv4_ranges(ranges: &[(IpAddr, u8)]) -> impl Iterator<Item = (Ipv4Addr, u8)> + '_ {
    ranges.iter().filter_map(|&(ip, len)| match ip {
        IpAddr::V4(v4) => Some((v4, len)),
        IpAddr::V6(_) => None,
    })
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

fn backend_values(fe: &Frontend) -> impl Iterator<Item = BackendValue> + '_ {
    fe.backends.iter().filter_map(|b| value_of(fe, b))
}

/// `None` for an IPv6 endpoint (never behind an IPv4 frontend).
fn value_of(fe: &Frontend, b: &Backend) -> Option<BackendValue> {
    let IpAddr::V4(ip) = b.ip else {
        return None;
    };
    let mut value = BackendValue::new(ip, b.port, fe.key.protocol.number());
    if b.local {
        value = value.local();
    }
    if !b.conditions.serving {
        value = value.not_serving();
    }
    Some(value)
}
