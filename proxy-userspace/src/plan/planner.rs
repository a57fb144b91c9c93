//! Model → desired map contents, with stable ids.

use std::collections::BTreeSet;

use proxy_common::{BackendValue, ServiceKey, ServiceValue, SlotKey};

use super::ids::IdTable;
use super::maps::MapContents;
use crate::model::{Frontend, Model};

/// Owns the id tables: service ids per [`ServiceKey`], backend ids per
/// (ip, port, proto) (a [`BackendValue`] is exactly that triple). An id stays
/// with its key as long as the key is in the model, so unchanged services and
/// backends produce no writes and established flows keep their backend id.
#[derive(Clone, Debug, Default)]
pub struct Planner {
    services: IdTable<ServiceKey>,
    backends: IdTable<BackendValue>,
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
        }
    }

    pub fn service_id(&self, key: &ServiceKey) -> Option<u32> {
        self.services.get(key)
    }

    pub fn backend_id(&self, backend: &BackendValue) -> Option<u32> {
        self.backends.get(backend)
    }

    /// The map contents for `model`. Per service: `backend_count` = number of
    /// active backends (capped at u16::MAX), slots `0..count` hold their ids in
    /// (ip, port) order. The backends map holds every known backend of every
    /// service, active or not, so flows pinned to a terminating one go on.
    /// Ids of keys gone from the model become reusable from the next call.
    pub fn desired(&mut self, model: &Model) -> MapContents {
        let frontends: Vec<(ServiceKey, &Frontend)> = model
            .frontends
            .values()
            .map(|fe| {
                (
                    ServiceKey::new(fe.key.ip, fe.key.port, fe.key.protocol.number()),
                    fe,
                )
            })
            .collect();
        let service_keys: BTreeSet<ServiceKey> = frontends.iter().map(|(k, _)| *k).collect();
        let backend_keys: BTreeSet<BackendValue> = frontends
            .iter()
            .flat_map(|(_, fe)| fe.backends.iter().map(|b| backend_value(fe, b.ip, b.port)))
            .collect();
        self.services.retain(|k| service_keys.contains(k));
        self.backends.retain(|k| backend_keys.contains(k));

        let mut out = MapContents::default();
        // Allocation follows model order (frontends by ip:port/proto, backends by
        // ip:port), so ids are deterministic for a given history of models.
        for (key, fe) in frontends {
            let mut ids = Vec::new();
            for b in &fe.backends {
                let value = backend_value(fe, b.ip, b.port);
                if let Some(id) = self.backends.get_or_alloc(&value) {
                    out.backends.insert(id, value);
                }
            }
            let Some(service_id) = self.services.get_or_alloc(&key) else {
                continue;
            };
            for b in fe.active_backends() {
                if let Some(id) = self.backends.get(&backend_value(fe, b.ip, b.port)) {
                    ids.push(id);
                }
            }
            ids.truncate(usize::from(u16::MAX));
            for (slot, id) in (0u32..).zip(&ids) {
                out.slots.insert(SlotKey { service_id, slot }, *id);
            }
            let backend_count = u16::try_from(ids.len()).unwrap_or(u16::MAX);
            out.services.insert(
                key,
                ServiceValue {
                    service_id,
                    backend_count,
                    flags: 0,
                },
            );
        }
        out
    }
}

fn backend_value(fe: &Frontend, ip: std::net::Ipv4Addr, port: u16) -> BackendValue {
    BackendValue::new(ip, port, fe.key.protocol.number())
}
