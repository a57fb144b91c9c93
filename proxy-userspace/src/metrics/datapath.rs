//! vipr's own metrics: the kernel programs' counters, map fill against
//! capacity, map write failures and attached interfaces. The agent loop
//! refreshes them from a [`DatapathSnapshot`] (at most once a second), so
//! a scrape reads memory and never the kernel.
use std::sync::atomic::Ordering;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Labels;

/// One map's fill level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapFill {
    pub map: &'static str,
    pub entries: u64,
    pub capacity: u64,
}

/// What the datapath holds and has counted, read by the agent loop.
#[derive(Clone, Debug, Default)]
pub struct DatapathSnapshot {
    /// Every kernel counter, summed over CPUs.
    pub counters: Vec<(proxy_common::Counter, u64)>,
    pub maps: Vec<MapFill>,
    /// Interfaces with the programs attached, by role (`pod`, `external`).
    pub interfaces: Vec<(&'static str, usize)>,
    /// (interface, XDP mode) of each external interface with XDP.
    pub xdp: Vec<(String, &'static str)>,
    /// Frontends that want Maglev but got no table (the pool is full).
    pub maglev_frontends_on_slots: u64,
}

#[derive(Debug, Default)]
pub struct DatapathMetrics {
    packets: Family<Labels, Counter>,
    drops: Family<Labels, Counter>,
    map_entries: Family<Labels, Gauge>,
    map_capacity: Family<Labels, Gauge>,
    map_write_failures: Counter,
    interfaces: Family<Labels, Gauge>,
    xdp: Family<Labels, Gauge>,
    maglev_on_slots: Gauge,
}

fn label(name: &'static str, value: impl Into<String>) -> Labels {
    vec![(name, value.into())]
}

fn gauge_value(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

impl DatapathMetrics {
    pub(super) fn register(&self, vipr: &mut Registry) {
        vipr.register(
            "datapath_packets",
            "Packets the kernel programs handled, by verdict",
            self.packets.clone(),
        );
        vipr.register(
            "datapath_drops",
            "Packets the kernel programs dropped, by reason",
            self.drops.clone(),
        );
        vipr.register(
            "map_entries",
            "Entries in a BPF map (conntrack: as of the last sweep)",
            self.map_entries.clone(),
        );
        vipr.register(
            "map_capacity",
            "Capacity of a BPF map (set by the --max-* flags)",
            self.map_capacity.clone(),
        );
        vipr.register(
            "map_write_failures",
            "Service map writes that failed (retried at the next sync)",
            self.map_write_failures.clone(),
        );
        vipr.register(
            "attached_interfaces",
            "Interfaces with vipr's programs attached, by role",
            self.interfaces.clone(),
        );
        vipr.register(
            "xdp_attached",
            "1 for each external interface with XDP, labelled with its mode",
            self.xdp.clone(),
        );
        vipr.register(
            "maglev_frontends_on_slots",
            "Frontends that want Maglev but choose by slot, which differs between nodes: \
             left without a table by a full pool (--maglev-max-tables), or until a failed \
             table write is retried",
            self.maglev_on_slots.clone(),
        );
    }

    pub fn update(&self, snapshot: &DatapathSnapshot) {
        for &(counter, total) in &snapshot.counters {
            let family = if counter.is_drop() {
                self.drops.get_or_create(&label("reason", counter.name()))
            } else {
                self.packets
                    .get_or_create(&label("verdict", counter.name()))
            };
            // The kernel's counters are the totals: mirror them. They only
            // fall when the pinned maps were removed, which Prometheus
            // reads as a counter reset.
            family.inner().store(total, Ordering::Relaxed);
        }
        for fill in &snapshot.maps {
            let labels = label("map", fill.map);
            self.map_entries
                .get_or_create(&labels)
                .set(gauge_value(fill.entries));
            self.map_capacity
                .get_or_create(&labels)
                .set(gauge_value(fill.capacity));
        }
        for &(role, count) in &snapshot.interfaces {
            self.interfaces
                .get_or_create(&label("role", role))
                .set(gauge_value(count));
        }
        self.maglev_on_slots
            .set(gauge_value(snapshot.maglev_frontends_on_slots));
        // Interfaces come and go: the set is rebuilt, not accumulated.
        self.xdp.clear();
        for (interface, mode) in &snapshot.xdp {
            let labels = vec![("interface", interface.clone()), ("mode", mode.to_string())];
            self.xdp.get_or_create(&labels).set(1);
        }
    }

    pub fn count_write_failures(&self, failed: u64) {
        self.map_write_failures.inc_by(failed);
    }
}
