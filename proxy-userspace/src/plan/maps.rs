//! Map contents as plain data: what the planner wants and what the datapath holds.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use proxy_common::{BackendValue, ServiceKey, ServiceValue, SlotKey};

/// The full contents of the three service maps. Built by the planner from the
/// model (desired), or read back from the kernel (applied).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapContents {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub slots: BTreeMap<SlotKey, u32>,
    pub backends: BTreeMap<u32, BackendValue>,
    /// loadBalancerSourceRanges entries: (service id, prefix, prefix length).
    pub source_ranges: BTreeSet<SourceRange>,
}

impl MapContents {
    /// Whether new connections to `frontend` may still go to the endpoint
    /// at `addr:port` (wire order, as in the maps): it is in one of the
    /// frontend's slots.
    pub fn serves(&self, frontend: &ServiceKey, addr: u32, port: u16) -> bool {
        let Some(service) = self.services.get(frontend) else {
            return false;
        };
        (0..u32::from(service.backend_count)).any(|slot| {
            let key = SlotKey {
                service_id: service.service_id,
                slot,
            };
            self.slots
                .get(&key)
                .and_then(|id| self.backends.get(id))
                .is_some_and(|b| b.addr == addr && b.port == port)
        })
    }
}

/// One allowed client prefix of one service.
pub type SourceRange = (u32, Ipv4Addr, u8);

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
}
