//! Map contents as plain data: what the planner wants and what the datapath holds.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proxy_common::{
    Addr6, AffinityMember, Backend6Value, BackendValue, MaglevRef, Service6Key, ServiceKey,
    ServiceValue, SlotKey,
};

pub use super::maglev_pool::MaglevTable;

/// The full contents of the service maps. Built by the planner from the
/// model (desired), or read back from the kernel (applied).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapContents {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    /// IPv6 frontends; their ids are in the same space as `services`'.
    pub services6: BTreeMap<Service6Key, ServiceValue>,
    /// Both families' slots (ids never overlap).
    pub slots: BTreeMap<SlotKey, u32>,
    pub backends: BTreeMap<u32, BackendValue>,
    pub backends6: BTreeMap<u32, Backend6Value>,
    /// loadBalancerSourceRanges entries: (service id, prefix, prefix length).
    pub source_ranges: BTreeSet<SourceRange>,
    /// The IPv6 ones, of IPv6 frontends (their own LPM map).
    pub source_ranges6: BTreeSet<SourceRange6>,
    /// Session affinity: the endpoints an affinity may lead to, per
    /// frontend, with the frontend's timeout in seconds.
    pub affinity: BTreeMap<AffinityMember, u32>,
    /// Maglev frontends (either family): service id → where its table is.
    pub maglev: BTreeMap<u32, MaglevRef>,
    /// Table contents by their first position in the pool. Desired: the
    /// tables `maglev` points at. Applied: what was written (a fake keeps
    /// every table; the kernel's are not read back, their digests in
    /// `maglev` stand for them).
    pub maglev_tables: BTreeMap<u32, MaglevTable>,
}

impl MapContents {
    /// The endpoints in `service`'s slots, in slot order: the ones new
    /// connections may get (`None` for a slot that points nowhere).
    pub fn slot_backends(
        &self,
        service: &ServiceValue,
    ) -> impl Iterator<Item = Option<&BackendValue>> {
        (0..u32::from(service.backend_count)).map(move |slot| {
            let key = SlotKey {
                service_id: service.service_id,
                slot,
            };
            self.slots.get(&key).and_then(|id| self.backends.get(id))
        })
    }

    /// The endpoints in `service`'s slots, either family, as (address,
    /// port, `BACKEND_FLAG_*`), in slot order.
    pub fn slot_endpoints(
        &self,
        service: &ServiceValue,
    ) -> impl Iterator<Item = Option<(IpAddr, u16, u8)>> {
        (0..u32::from(service.backend_count)).map(move |slot| {
            let key = SlotKey {
                service_id: service.service_id,
                slot,
            };
            let id = self.slots.get(&key)?;
            match (self.backends.get(id), self.backends6.get(id)) {
                (Some(b), _) => Some((b.ip().into(), b.port(), b.flags)),
                (None, Some(b)) => Some((b.ip().into(), b.port(), b.flags)),
                (None, None) => None,
            }
        })
    }

    /// Whether new connections to `frontend` may still go to the endpoint
    /// at `addr:port` (wire order, as in the maps).
    pub fn serves(&self, frontend: &ServiceKey, addr: u32, port: u16) -> bool {
        self.services.get(frontend).is_some_and(|service| {
            self.slot_backends(service)
                .flatten()
                .any(|b| b.addr == addr && b.port == port)
        })
    }

    /// [`MapContents::serves`] for an IPv6 frontend.
    pub fn serves6(&self, frontend: &Service6Key, addr: Addr6, port: u16) -> bool {
        self.services6.get(frontend).is_some_and(|service| {
            (0..u32::from(service.backend_count))
                .filter_map(|slot| {
                    let key = SlotKey {
                        service_id: service.service_id,
                        slot,
                    };
                    self.slots.get(&key).and_then(|id| self.backends6.get(id))
                })
                .any(|b| b.addr == addr && b.port == port)
        })
    }
}

/// One allowed client prefix of one service.
pub type SourceRange = (u32, Ipv4Addr, u8);
/// One allowed IPv6 client prefix of one IPv6 service.
pub type SourceRange6 = (u32, Ipv6Addr, u8);

/// One write to one map. A diff is an ordered list of these, safe to apply in
/// order while packets flow: a slot never points at a missing backend and a
/// service's count never covers a missing slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOp {
    UpsertBackend(u32, BackendValue),
    UpsertSlot(SlotKey, u32),
    UpsertService(ServiceKey, ServiceValue),
    DeleteService(ServiceKey),
    DeleteSlot(SlotKey),
    DeleteBackend(u32),
    UpsertSourceRange(SourceRange),
    DeleteSourceRange(SourceRange),
    UpsertAffinity(AffinityMember, u32),
    DeleteAffinity(AffinityMember),
    UpsertBackend6(u32, Backend6Value),
    UpsertService6(Service6Key, ServiceValue),
    DeleteService6(Service6Key),
    DeleteBackend6(u32),
    UpsertSourceRange6(SourceRange6),
    DeleteSourceRange6(SourceRange6),
    /// A whole table at its first position, into a part of the pool no
    /// index entry points at (the planner's guarantee).
    WriteMaglevTable(u32, MaglevTable),
    /// Switches a frontend to a written table (one atomic hash update).
    UpsertMaglevRef(u32, MaglevRef),
    DeleteMaglevRef(u32),
}
