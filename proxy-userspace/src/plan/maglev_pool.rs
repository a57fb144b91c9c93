//! Which frontends get a Maglev table, and where each table lives in the
//! preallocated `VIPR_MAGLEV` pool. Pure.
//!
//! Tables are shared by content: the NodePort frontends of one Service
//! port on several node addresses, with the same endpoints, use one table.
//! A changed table always goes to a table number no frontend points at:
//! written in full before any index entry is switched to it, so a new flow
//! never reads a half-written table. A number freed in one round is reused
//! from the next round on only, after that round's index switches are
//! applied (as ids are).
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use hashbrown::HashMap;
use proxy_common::{DEFAULT_MAX_MAGLEV_TABLES, MaglevRef};

use super::maglev::{self, MaglevParams};
use super::maps::MapContents;
use super::planner::Notes;
use crate::model::{Frontend, LbAlgorithm, Scope};

/// The agent's default algorithm (`--lb-algorithm`), which a Service's
/// `vipr.io/lb-algorithm` overrides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbDefault {
    Random,
    Maglev,
    /// Maglev for what arrives from outside (where ECMP may bring a flow
    /// to any node), random for cluster-internal frontends (where the
    /// client's own node chooses and conntrack holds the flow).
    ExternalMaglev,
}

/// How the planner balances: the default, the table parameters (the same
/// on every node) and the pool's capacity in tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LbConfig {
    pub default: LbDefault,
    pub params: MaglevParams,
    pub max_tables: u32,
}

impl LbConfig {
    /// Slots only, unless a Service asks for Maglev.
    pub fn random() -> Self {
        Self {
            default: LbDefault::Random,
            params: MaglevParams::default(),
            max_tables: DEFAULT_MAX_MAGLEV_TABLES,
        }
    }

    /// The algorithm `fe` uses.
    pub fn algorithm(&self, fe: &Frontend) -> LbAlgorithm {
        fe.policy.lb_algorithm.unwrap_or(match self.default {
            LbDefault::Random => LbAlgorithm::Random,
            LbDefault::Maglev => LbAlgorithm::Maglev,
            LbDefault::ExternalMaglev if fe.key.scope == Scope::External => LbAlgorithm::Maglev,
            LbDefault::ExternalMaglev => LbAlgorithm::Random,
        })
    }
}

/// Positions the pool may hold: 1 GiB of backend ids.
pub const MAX_POOL_POSITIONS: u64 = 1 << 28;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LbConfigError {
    #[error("--maglev-table-size {0} is not one of the primes {primes:?}", primes = proxy_common::MAGLEV_PRIMES)]
    NotAListedPrime(u32),
    #[error(
        "--maglev-max-tables {tables} × --maglev-table-size {size} is more than \
         {MAX_POOL_POSITIONS} positions (4 bytes each, preallocated)"
    )]
    PoolTooLarge { tables: u32, size: u32 },
}

impl LbConfig {
    /// The agent's flags, checked: a listed prime size, a pool the kernel
    /// can allocate.
    pub fn checked(
        default: LbDefault,
        size: u32,
        max_tables: u32,
        seed: u64,
    ) -> Result<Self, LbConfigError> {
        if !proxy_common::MAGLEV_PRIMES.contains(&size) {
            return Err(LbConfigError::NotAListedPrime(size));
        }
        if u64::from(size) * u64::from(max_tables) > MAX_POOL_POSITIONS {
            return Err(LbConfigError::PoolTooLarge {
                tables: max_tables,
                size,
            });
        }
        Ok(Self {
            default,
            params: MaglevParams { size, seed },
            max_tables,
        })
    }

    /// The datapath's flow-hash seed (`HASH_SEED`): derived from the
    /// cluster-wide Maglev seed, so that every node puts a flow at the
    /// same position of the same table.
    pub fn flow_hash_seed(&self) -> u32 {
        let seed = self.params.seed;
        (seed ^ (seed >> 32)) as u32
    }
}

impl Default for LbConfig {
    fn default() -> Self {
        Self::random()
    }
}

/// A table's contents (backend id per position) and their digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaglevTable {
    pub digest: u64,
    pub ids: Arc<[u32]>,
}

/// A table number and how many frontends use it.
#[derive(Clone, Copy, Debug)]
struct Held {
    number: u32,
    users: u32,
}

#[derive(Clone, Debug)]
pub(super) struct MaglevPool {
    pub(super) config: LbConfig,
    live: HashMap<Arc<[u32]>, Held>,
    /// Dropped by their last frontend this round: revived if a frontend
    /// takes the same contents again, else free from the next round.
    released: HashMap<Arc<[u32]>, u32>,
    /// A full plan's previous tables: kept by whoever still wants them.
    previous: HashMap<Arc<[u32]>, u32>,
    /// Tables found in the pins after a restart, by digest, until the
    /// first full plan adopts or frees them.
    restored: HashMap<u64, u32>,
    /// Numbers free from the next round on, contents forgotten.
    retired: Vec<u32>,
    /// Pinned tables no frontend may adopt (a number under two digests, a
    /// digest at two numbers): an index entry may still point at them
    /// until the first full plan's switches, so they retire after it.
    orphans: Vec<u32>,
    free: BTreeSet<u32>,
    /// Numbers from here on were never used.
    next: u32,
    /// Frontends left on their slots this round for want of a free table.
    pub(super) exhausted: usize,
}

impl MaglevPool {
    pub(super) fn new(config: LbConfig) -> Self {
        Self {
            config,
            live: HashMap::new(),
            released: HashMap::new(),
            previous: HashMap::new(),
            restored: HashMap::new(),
            retired: Vec::new(),
            orphans: Vec::new(),
            free: BTreeSet::new(),
            next: 0,
            exhausted: 0,
        }
    }

    /// Takes the tables the pinned index points at, so the first plan
    /// reuses those whose contents it still wants (no writes) and never
    /// writes over one still in use.
    pub(super) fn restore<'a>(config: LbConfig, refs: impl Iterator<Item = &'a MaglevRef>) -> Self {
        let mut pool = Self::new(config);
        let size = config.params.size;
        let mut digests: HashMap<u32, u64> = HashMap::new();
        for r in refs {
            let number = r.first / size;
            if r.size != size || !r.first.is_multiple_of(size) || number >= config.max_tables {
                continue;
            }
            pool.next = pool.next.max(number + 1);
            // One number under two digests (a switch that failed): its
            // contents are unknown, so no frontend adopts it.
            if digests
                .insert(number, r.digest)
                .is_some_and(|d| d != r.digest)
            {
                pool.restored.retain(|_, n| *n != number);
                pool.orphans.push(number);
                continue;
            }
            if let Some(old) = pool.restored.insert(r.digest, number)
                && old != number
            {
                pool.orphans.push(old);
            }
        }
        let used: BTreeSet<u32> = pool
            .restored
            .values()
            .chain(&pool.orphans)
            .copied()
            .collect();
        pool.free = (0..pool.next).filter(|n| !used.contains(n)).collect();
        pool
    }

    pub(super) fn start_round(&mut self) {
        self.exhausted = 0;
        self.free.extend(self.released.drain().map(|(_, n)| n));
        self.free.extend(self.retired.drain(..));
    }

    pub(super) fn start_full(&mut self) {
        self.start_round();
        self.previous
            .extend(self.live.drain().map(|(ids, held)| (ids, held.number)));
    }

    /// After a full plan: what no frontend took is freed next round.
    pub(super) fn end_full(&mut self) {
        self.released.extend(self.previous.drain());
        self.retired.extend(self.restored.drain().map(|(_, n)| n));
        self.retired.append(&mut self.orphans);
    }

    /// The table of `backends` (address, port, id) for a frontend: its
    /// index entry, and whether the table must be written (a number no
    /// frontend used). `None`: the pool is full.
    pub(super) fn acquire(
        &mut self,
        backends: &[(IpAddr, u16, u32)],
    ) -> Option<(MaglevRef, MaglevTable, bool)> {
        let params = self.config.params;
        let ids: Arc<[u32]> = maglev::build(backends, params).into();
        let digest = maglev::digest(&ids);
        let (number, fresh) = if let Some(held) = self.live.get_mut(&ids) {
            held.users += 1;
            (held.number, false)
        } else {
            let (number, fresh) = match self
                .released
                .remove(&ids)
                .or_else(|| self.previous.remove(&ids))
                .or_else(|| self.restored.remove(&digest))
            {
                Some(number) => (number, false),
                None => (self.allocate()?, true),
            };
            self.live.insert(ids.clone(), Held { number, users: 1 });
            (number, fresh)
        };
        let r = MaglevRef {
            first: number * params.size,
            size: params.size,
            digest,
        };
        Some((r, MaglevTable { digest, ids }, fresh))
    }

    /// A frontend no longer uses `table`; true when no frontend does.
    pub(super) fn release(&mut self, table: &MaglevTable) -> bool {
        let Some(held) = self.live.get_mut(&table.ids) else {
            return false;
        };
        held.users -= 1;
        if held.users > 0 {
            return false;
        }
        let number = held.number;
        self.live.remove(&table.ids);
        self.released.insert(table.ids.clone(), number);
        true
    }

    fn allocate(&mut self) -> Option<u32> {
        if let Some(number) = self.free.pop_first() {
            return Some(number);
        }
        if self.next < self.config.max_tables {
            self.next += 1;
            return Some(self.next - 1);
        }
        self.exhausted += 1;
        None
    }
}

/// Gives `service_id` the table of `members`; false when the pool is full
/// (the frontend stays on its slots).
pub(super) fn add_maglev(
    desired: &mut MapContents,
    service_id: u32,
    members: &[(IpAddr, u16, u32)],
    pool: &mut MaglevPool,
    notes: Option<&mut Notes>,
) -> bool {
    let Some((r, table, fresh)) = pool.acquire(members) else {
        return false;
    };
    desired.maglev_tables.insert(r.first, table);
    desired.maglev.insert(service_id, r);
    if let Some(notes) = notes {
        notes.touched.maglev.insert(service_id);
        if fresh {
            notes.touched.maglev_tables.insert(r.first);
        }
    }
    true
}

/// Removes (noting it) the Maglev index entry of `service_id`, and its
/// table once no frontend uses it.
pub(super) fn forget_maglev(
    desired: &mut MapContents,
    service_id: u32,
    pool: &mut MaglevPool,
    notes: &mut Notes,
) {
    let Some(r) = desired.maglev.remove(&service_id) else {
        return;
    };
    notes.before.maglev.insert(service_id, r);
    notes.touched.maglev.insert(service_id);
    if let Some(table) = desired.maglev_tables.get(&r.first)
        && pool.release(table)
    {
        desired.maglev_tables.remove(&r.first);
    }
}
