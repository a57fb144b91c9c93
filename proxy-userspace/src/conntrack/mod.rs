//! When a tracked flow is over: state-aware timeouts, as nf_conntrack keeps
//! them, applied to the kernel's notes on each entry (last packet, FIN, RST,
//! replied). Pure: the datapath reads the table and deletes what this says.
//!
//! The conntrack map never evicts on its own, so an idle keep-alive
//! connection keeps its entries however many short connections pass; only
//! its own state and silence end it.
mod sweeper;

use std::{collections::HashMap, hash::Hash, net::SocketAddr, time::Duration};

pub use sweeper::Sweeper;

use proxy_common::{
    CT_FLAG_DSR, CT_FLAG_FIN, CT_FLAG_REPLIED, CT_FLAG_RST, CT_FLAG_SNAT, CT_FORWARD, Ct6Key,
    Ct6Value, CtKey, CtValue, IPPROTO_TCP,
};

/// A conntrack key of either family, with what the sweep reads of its value.
pub trait Tracked: Copy + Eq + Hash {
    type Value: Copy;
    /// The other direction's key of the same flow.
    fn partner(&self, value: &Self::Value) -> Self;
    fn direction(&self) -> u8;
    fn proto(&self) -> u8;
    fn flags(value: &Self::Value) -> u8;
    fn last_seen(value: &Self::Value) -> u32;
    /// A forward entry's client, frontend, backend and, if masqueraded,
    /// the node address the client was translated to.
    fn ends(&self, value: &Self::Value) -> FlowEnds;
}

/// The addresses of a tracked flow, either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEnds {
    pub client: SocketAddr,
    pub frontend: SocketAddr,
    pub backend: SocketAddr,
    pub snat: Option<SocketAddr>,
}

macro_rules! tracked {
    ($key:ty, $value:ty, $host:path) => {
        impl Tracked for $key {
            type Value = $value;
            fn partner(&self, value: &$value) -> Self {
                <$key>::partner(self, value)
            }
            fn direction(&self) -> u8 {
                self.direction
            }
            fn proto(&self) -> u8 {
                self.proto
            }
            fn flags(value: &$value) -> u8 {
                value.flags
            }
            fn last_seen(value: &$value) -> u32 {
                value.last_seen
            }
            fn ends(&self, value: &$value) -> FlowEnds {
                let at = |addr, port: u16| SocketAddr::new($host(addr).into(), u16::from_be(port));
                FlowEnds {
                    client: at(self.src_addr, self.src_port),
                    frontend: at(self.dst_addr, self.dst_port),
                    backend: at(value.nat_addr, value.nat_port),
                    snat: (value.flags & CT_FLAG_SNAT != 0)
                        .then(|| at(value.snat_addr, value.snat_port)),
                }
            }
        }
    };
}

// The two families' entries have the same fields, with addresses of their size.
tracked!(CtKey, CtValue, proxy_common::host_addr);
tracked!(Ct6Key, Ct6Value, proxy_common::host_addr6);

/// How long a flow may stay silent in each state before its entries go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtTimeouts {
    /// TCP that has seen a reply and is not closing (nf_conntrack's
    /// ESTABLISHED; kube-proxy raises it to a day, Cilium keeps 6 h).
    pub tcp_established: Duration,
    /// TCP without a reply yet (SYN_SENT/SYN_RECV).
    pub tcp_opening: Duration,
    /// TCP after a RST, or a FIN each way (CLOSE/TIME_WAIT).
    pub tcp_closed: Duration,
    /// UDP (and other protocols) that has seen no reply.
    pub udp: Duration,
    /// UDP that has seen replies (nf_conntrack's "stream").
    pub udp_stream: Duration,
}

impl Default for CtTimeouts {
    fn default() -> Self {
        Self {
            tcp_established: Duration::from_secs(6 * 3600),
            tcp_opening: Duration::from_secs(60),
            tcp_closed: Duration::from_secs(10),
            udp: Duration::from_secs(30),
            udp_stream: Duration::from_secs(120),
        }
    }
}

/// A reverse entry whose forward entry is gone lives this long: the kernel
/// writes a masqueraded flow's reverse entry first, so a sweep may catch
/// one alone for an instant.
const ORPHAN_GRACE_SECONDS: u32 = 2;

/// Where a tracked flow stands, from the kernel's notes on its entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowState {
    /// TCP without a reply yet.
    Opening,
    /// TCP answered and not closing.
    Established,
    /// TCP with a FIN one way.
    Closing { replied: bool },
    /// TCP after a RST, or a FIN each way.
    Closed,
    /// Other protocols, with or without replies.
    Datagrams { replied: bool },
}

impl FlowState {
    /// The state of the flow of a forward entry and, if there is one, its
    /// reverse entry.
    pub fn of<K: Tracked>(key: &K, forward: &K::Value, reverse: Option<&K::Value>) -> Self {
        let forward_flags = K::flags(forward);
        let reverse_flags = reverse.map_or(0, K::flags);
        // A DSR ingress node never sees a reply: the kernel marks its forward
        // entry replied when the client acknowledges the server's SYN-ACK.
        let replied = (forward_flags | reverse_flags) & CT_FLAG_REPLIED != 0;
        if key.proto() != IPPROTO_TCP {
            return Self::Datagrams { replied };
        }
        let reset = (forward_flags | reverse_flags) & CT_FLAG_RST != 0;
        let fins =
            (forward_flags & CT_FLAG_FIN != 0) as u8 + (reverse_flags & CT_FLAG_FIN != 0) as u8;
        // A DSR flow passes a node one way only (the client's packets at the
        // ingress node, the endpoint's at its own): one FIN is all it sees,
        // so it is kept as a closing flow that was never answered (60 s of
        // silence: long enough for a half-close, not the 6 h of an answered one).
        let one_way = forward_flags & CT_FLAG_DSR != 0;
        match () {
            _ if reset || fins == 2 => Self::Closed,
            _ if fins == 1 && one_way => Self::Closing { replied: false },
            _ if fins == 1 => Self::Closing { replied },
            _ if replied => Self::Established,
            _ => Self::Opening,
        }
    }

    /// What `vipr conntrack list` shows.
    pub fn name(self) -> &'static str {
        match self {
            Self::Opening => "opening",
            Self::Established => "established",
            Self::Closing { .. } => "closing",
            Self::Closed => "closed",
            Self::Datagrams { replied: true } => "replied",
            Self::Datagrams { replied: false } => "unreplied",
        }
    }
}

impl CtTimeouts {
    /// The silence allowed to the flow of a forward entry and, if there is
    /// one, its reverse entry.
    pub fn allowed_silence<K: Tracked>(
        &self,
        key: &K,
        forward: &K::Value,
        reverse: Option<&K::Value>,
    ) -> Duration {
        match FlowState::of(key, forward, reverse) {
            FlowState::Datagrams { replied: true } => self.udp_stream,
            FlowState::Datagrams { replied: false } => self.udp,
            FlowState::Closed => self.tcp_closed,
            // Half-closed: the other side may still send for long.
            FlowState::Established | FlowState::Closing { replied: true } => self.tcp_established,
            FlowState::Opening | FlowState::Closing { replied: false } => self.tcp_opening,
        }
    }
}

/// The entries of one flow to delete together: its forward entry (or a lone
/// reverse one) and the other direction's, if present.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expired<K> {
    pub key: K,
    pub partner: Option<K>,
}

/// What to delete from a snapshot of the table at `now` (the kernel's
/// monotonic seconds): both entries of every flow silent past its allowed
/// time, and reverse entries left without a forward one.
pub fn expired<K: Tracked>(
    table: &HashMap<K, K::Value>,
    now: u32,
    timeouts: &CtTimeouts,
) -> Vec<Expired<K>> {
    let mut gone = Vec::new();
    for (key, value) in table {
        let partner = key.partner(value);
        let paired = table.get(&partner);
        if key.direction() != CT_FORWARD {
            if paired.is_none() && now.saturating_sub(K::last_seen(value)) >= ORPHAN_GRACE_SECONDS {
                gone.push(Expired {
                    key: *key,
                    partner: None,
                });
            }
            continue;
        }
        let last_seen = K::last_seen(value).max(paired.map_or(0, K::last_seen));
        let allowed = timeouts.allowed_silence(key, value, paired).as_secs();
        if u64::from(now.saturating_sub(last_seen)) >= allowed {
            gone.push(Expired {
                key: *key,
                partner: paired.map(|_| partner),
            });
        }
    }
    gone
}

#[cfg(test)]
mod tests {
    use proxy_common::{CT_REVERSE, IPPROTO_UDP};

    use super::*;

    const NOW: u32 = 100_000;

    fn flow(proto: u8, client_port: u16) -> (CtKey, CtValue, CtKey, CtValue) {
        let forward = CtKey {
            src_addr: 1,
            dst_addr: 2,
            src_port: client_port,
            dst_port: 80,
            proto,
            direction: CT_FORWARD,
            _pad: [0; 2],
        };
        let to_backend = CtValue {
            nat_addr: 3,
            nat_port: 8080,
            last_seen: NOW,
            ..CtValue::default()
        };
        let reverse = forward.partner(&to_backend);
        let to_frontend = CtValue {
            nat_addr: 2,
            nat_port: 80,
            last_seen: NOW,
            ..CtValue::default()
        };
        (forward, to_backend, reverse, to_frontend)
    }

    fn table(flows: &[(CtKey, CtValue, CtKey, CtValue)]) -> HashMap<CtKey, CtValue> {
        flows
            .iter()
            .flat_map(|&(fk, fv, rk, rv)| [(fk, fv), (rk, rv)])
            .collect()
    }

    fn sweep_at(table: &HashMap<CtKey, CtValue>, seconds_later: u32) -> Vec<CtKey> {
        let mut gone: Vec<CtKey> = expired(table, NOW + seconds_later, &CtTimeouts::default())
            .into_iter()
            .flat_map(|e| std::iter::once(e.key).chain(e.partner))
            .collect();
        gone.sort_by_key(|k| (k.src_port, k.direction));
        gone
    }

    #[test]
    fn established_tcp_stays_for_hours_and_goes_after_six() {
        let (fk, fv, rk, mut rv) = flow(IPPROTO_TCP, 1000);
        rv.flags = CT_FLAG_REPLIED;
        let t = table(&[(fk, fv, rk, rv)]);
        assert!(sweep_at(&t, 5 * 3600).is_empty());
        assert_eq!(sweep_at(&t, 6 * 3600).len(), 2);
    }

    #[test]
    fn unanswered_syn_goes_after_a_minute() {
        let (fk, fv, rk, rv) = flow(IPPROTO_TCP, 1000);
        let t = table(&[(fk, fv, rk, rv)]);
        assert!(sweep_at(&t, 59).is_empty());
        let gone = sweep_at(&t, 60);
        assert!(gone.contains(&fk) && gone.contains(&rk));
    }

    #[test]
    fn closed_tcp_goes_after_ten_seconds_half_closed_does_not() {
        let (fk, mut fv, rk, mut rv) = flow(IPPROTO_TCP, 1000);
        fv.flags = CT_FLAG_FIN;
        rv.flags = CT_FLAG_REPLIED;
        let half_closed = table(&[(fk, fv, rk, rv)]);
        assert!(sweep_at(&half_closed, 3600).is_empty());
        rv.flags |= CT_FLAG_FIN;
        let closed = table(&[(fk, fv, rk, rv)]);
        assert!(sweep_at(&closed, 9).is_empty());
        assert_eq!(sweep_at(&closed, 10).len(), 2);
        let (fk, fv, rk, mut rv) = flow(IPPROTO_TCP, 1001);
        rv.flags = CT_FLAG_REPLIED | CT_FLAG_RST;
        assert_eq!(sweep_at(&table(&[(fk, fv, rk, rv)]), 10).len(), 2);
    }

    #[test]
    fn a_dsr_flow_the_client_acknowledged_is_established_without_a_reply() {
        let (fk, mut fv, rk, rv) = flow(IPPROTO_TCP, 1000);
        fv.flags = CT_FLAG_DSR;
        let syn_only = table(&[(fk, fv, rk, rv)]);
        assert_eq!(FlowState::of(&fk, &fv, Some(&rv)), FlowState::Opening);
        assert_eq!(sweep_at(&syn_only, 60).len(), 2);
        fv.flags |= CT_FLAG_REPLIED;
        let acknowledged = table(&[(fk, fv, rk, rv)]);
        assert_eq!(FlowState::of(&fk, &fv, Some(&rv)), FlowState::Established);
        assert!(sweep_at(&acknowledged, 5 * 3600).is_empty());
        // Each node sees one side's FIN only: the ingress node the client's,
        // the endpoint's node the endpoint's (on its reverse entry). Kept
        // for a half-close, not for the 6 h of an answered flow.
        let closing = FlowState::Closing { replied: false };
        fv.flags |= CT_FLAG_FIN;
        let client_closed = table(&[(fk, fv, rk, rv)]);
        assert_eq!(FlowState::of(&fk, &fv, Some(&rv)), closing);
        assert!(sweep_at(&client_closed, 59).is_empty());
        assert_eq!(sweep_at(&client_closed, 60).len(), 2);
        let (fk, mut fv, rk, mut rv) = flow(IPPROTO_TCP, 1001);
        fv.flags = CT_FLAG_DSR;
        rv.flags = CT_FLAG_REPLIED | CT_FLAG_FIN;
        assert_eq!(FlowState::of(&fk, &fv, Some(&rv)), closing);
        assert_eq!(sweep_at(&table(&[(fk, fv, rk, rv)]), 60).len(), 2);
        rv.flags |= CT_FLAG_RST;
        assert_eq!(FlowState::of(&fk, &fv, Some(&rv)), FlowState::Closed);
    }

    #[test]
    fn the_later_direction_keeps_the_flow_alive() {
        let (fk, mut fv, rk, mut rv) = flow(IPPROTO_TCP, 1000);
        fv.last_seen = NOW - 7200;
        rv.flags = CT_FLAG_REPLIED;
        rv.last_seen = NOW;
        assert!(sweep_at(&table(&[(fk, fv, rk, rv)]), 60).is_empty());
    }

    #[test]
    fn udp_with_replies_lasts_longer_than_without() {
        let (fk, fv, rk, rv) = flow(IPPROTO_UDP, 53);
        let one_way = table(&[(fk, fv, rk, rv)]);
        assert_eq!(sweep_at(&one_way, 30).len(), 2);
        let (fk, fv, rk, mut rv) = flow(IPPROTO_UDP, 54);
        rv.flags = CT_FLAG_REPLIED;
        let stream = table(&[(fk, fv, rk, rv)]);
        assert!(sweep_at(&stream, 119).is_empty());
        assert_eq!(sweep_at(&stream, 120).len(), 2);
    }

    #[test]
    fn lone_entries_go_and_other_flows_stay() {
        let (fk, fv, rk, rv) = flow(IPPROTO_TCP, 1000);
        let (ok, ov, pk, mut pv) = flow(IPPROTO_TCP, 2000);
        pv.flags = CT_FLAG_REPLIED;
        let mut t = table(&[(fk, fv, rk, rv), (ok, ov, pk, pv)]);
        t.remove(&fk);
        assert!(
            sweep_at(&t, 1).is_empty(),
            "a fresh lone reverse entry may be a flow being written"
        );
        assert_eq!(sweep_at(&t, ORPHAN_GRACE_SECONDS), vec![rk]);
        t.remove(&rk);
        t.remove(&pk);
        // A forward entry alone is judged by its own notes.
        assert!(sweep_at(&t, 59).is_empty());
        assert_eq!(sweep_at(&t, 60), vec![ok]);
        assert_eq!(rk.direction, CT_REVERSE);
    }

    #[test]
    fn ipv6_flows_expire_by_the_same_rules() {
        let forward = Ct6Key {
            src_addr: [1, 0, 0, 1],
            dst_addr: [2, 0, 0, 2],
            src_port: 1000,
            dst_port: 80,
            proto: IPPROTO_UDP,
            direction: CT_FORWARD,
            _pad: [0; 2],
        };
        let to_backend = Ct6Value {
            nat_addr: [3, 0, 0, 3],
            nat_port: 8080,
            last_seen: NOW,
            ..Ct6Value::default()
        };
        let reverse = forward.partner(&to_backend);
        let to_frontend = Ct6Value {
            nat_addr: forward.dst_addr,
            nat_port: forward.dst_port,
            flags: CT_FLAG_REPLIED,
            last_seen: NOW,
            ..Ct6Value::default()
        };
        let table: HashMap<Ct6Key, Ct6Value> =
            [(forward, to_backend), (reverse, to_frontend)].into();
        let timeouts = CtTimeouts::default();
        let stream = timeouts.udp_stream.as_secs() as u32;
        assert!(expired(&table, NOW + stream - 1, &timeouts).is_empty());
        let gone = expired(&table, NOW + stream, &timeouts);
        assert_eq!(
            gone,
            [Expired {
                key: forward,
                partner: Some(reverse)
            }]
        );
        assert_eq!(reverse.direction, CT_REVERSE);
    }
}
