//! What the planner needs to know of each address family: its map key and
//! backend value, where its entries live in [`MapContents`], and its id
//! space. The families share the slot and affinity maps, keyed by id, so
//! their ids never overlap: IPv6 ids start at [`V6::FIRST_ID`].
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::hash::Hash;
use std::net::IpAddr;

use proxy_common::{
    BACKEND_FLAG_LOCAL, BACKEND_FLAG_NOT_SERVING, Backend6Value, BackendValue, Service6Key,
    ServiceKey, ServiceValue,
};

use super::maps::{MapContents, SourceRange, SourceRange6};
use super::planner::Touched;
use crate::model::{Backend, Frontend, FrontendKey};

pub(crate) trait Family {
    type Key: Copy + Ord + Hash + Debug;
    type Backend: Copy + Ord + Hash + Debug;
    /// A source range entry: (service id, prefix, prefix length).
    type Range: Copy + Ord + Debug;
    /// The lowest id of this family's services and backends.
    const FIRST_ID: u32;

    /// The map key of a frontend of this family (`None`: another family).
    fn key(key: &FrontendKey) -> Option<Self::Key>;
    /// The map value of an endpoint of this family behind `fe`.
    fn backend(fe: &Frontend, b: &Backend) -> Option<Self::Backend>;
    fn services(maps: &mut MapContents) -> &mut BTreeMap<Self::Key, ServiceValue>;
    fn backends(maps: &mut MapContents) -> &mut BTreeMap<u32, Self::Backend>;
    fn touched_services(touched: &mut Touched) -> &mut BTreeSet<Self::Key>;
    fn touched_backends(touched: &mut Touched) -> &mut BTreeSet<u32>;
    /// The entry of `service_id` allowing `net/len`, if `net` is of this
    /// family (the model gives a frontend only its own family's ranges).
    fn range(service_id: u32, net: IpAddr, len: u8) -> Option<Self::Range>;
    fn source_ranges(maps: &mut MapContents) -> &mut BTreeSet<Self::Range>;
    fn touched_ranges(touched: &mut Touched) -> &mut BTreeSet<Self::Range>;
}

/// `BACKEND_FLAG_*` of an endpoint, either family.
fn backend_flags(b: &Backend) -> u8 {
    let mut flags = 0;
    if b.local {
        flags |= BACKEND_FLAG_LOCAL;
    }
    if !b.conditions.serving {
        flags |= BACKEND_FLAG_NOT_SERVING;
    }
    flags
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct V4;
#[derive(Clone, Copy, Debug)]
pub(crate) struct V6;

impl Family for V4 {
    type Key = ServiceKey;
    type Backend = BackendValue;
    type Range = SourceRange;
    const FIRST_ID: u32 = 1;

    fn key(key: &FrontendKey) -> Option<ServiceKey> {
        let IpAddr::V4(ip) = key.ip else { return None };
        Some(ServiceKey::scoped(
            ip,
            key.port,
            key.protocol.number(),
            key.scope.number(),
        ))
    }

    fn backend(fe: &Frontend, b: &Backend) -> Option<BackendValue> {
        let IpAddr::V4(ip) = b.ip else { return None };
        Some(BackendValue {
            flags: backend_flags(b),
            ..BackendValue::new(ip, b.port, fe.key.protocol.number())
        })
    }

    fn services(maps: &mut MapContents) -> &mut BTreeMap<ServiceKey, ServiceValue> {
        &mut maps.services
    }
    fn backends(maps: &mut MapContents) -> &mut BTreeMap<u32, BackendValue> {
        &mut maps.backends
    }
    fn touched_services(touched: &mut Touched) -> &mut BTreeSet<ServiceKey> {
        &mut touched.services
    }
    fn touched_backends(touched: &mut Touched) -> &mut BTreeSet<u32> {
        &mut touched.backends
    }
    fn range(service_id: u32, net: IpAddr, len: u8) -> Option<SourceRange> {
        let IpAddr::V4(net) = net else { return None };
        Some((service_id, net, len))
    }
    fn source_ranges(maps: &mut MapContents) -> &mut BTreeSet<SourceRange> {
        &mut maps.source_ranges
    }
    fn touched_ranges(touched: &mut Touched) -> &mut BTreeSet<SourceRange> {
        &mut touched.source_ranges
    }
}

impl Family for V6 {
    type Key = Service6Key;
    type Backend = Backend6Value;
    type Range = SourceRange6;
    /// The upper half of the id space: more than any map holds of either.
    const FIRST_ID: u32 = 1 << 31;

    fn key(key: &FrontendKey) -> Option<Service6Key> {
        let IpAddr::V6(ip) = key.ip else { return None };
        Some(Service6Key::scoped(
            ip,
            key.port,
            key.protocol.number(),
            key.scope.number(),
        ))
    }

    fn backend(fe: &Frontend, b: &Backend) -> Option<Backend6Value> {
        let IpAddr::V6(ip) = b.ip else { return None };
        Some(Backend6Value {
            flags: backend_flags(b),
            ..Backend6Value::new(ip, b.port, fe.key.protocol.number())
        })
    }

    fn services(maps: &mut MapContents) -> &mut BTreeMap<Service6Key, ServiceValue> {
        &mut maps.services6
    }
    fn backends(maps: &mut MapContents) -> &mut BTreeMap<u32, Backend6Value> {
        &mut maps.backends6
    }
    fn touched_services(touched: &mut Touched) -> &mut BTreeSet<Service6Key> {
        &mut touched.services6
    }
    fn touched_backends(touched: &mut Touched) -> &mut BTreeSet<u32> {
        &mut touched.backends6
    }
    fn range(service_id: u32, net: IpAddr, len: u8) -> Option<SourceRange6> {
        let IpAddr::V6(net) = net else { return None };
        Some((service_id, net, len))
    }
    fn source_ranges(maps: &mut MapContents) -> &mut BTreeSet<SourceRange6> {
        &mut maps.source_ranges6
    }
    fn touched_ranges(touched: &mut Touched) -> &mut BTreeSet<SourceRange6> {
        &mut touched.source_ranges6
    }
}
