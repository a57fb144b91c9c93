//! Stable small-integer ids for map keys.

use std::collections::BTreeSet;
use std::hash::Hash;

use hashbrown::HashMap;

/// Hands out ids `first..` (`1..` by default), lowest free first; 0 is never
/// used (reads as "unset").
///
/// An id released in one round (see [`IdTable::retain`]) is quarantined and
/// becomes free only at the next round: the diff of the round that releases
/// it still deletes the old user's entries, and must not also write a new
/// user's entries under the same id (the old frontend would briefly send
/// traffic to the new user's backends).
#[derive(Clone, Debug)]
pub(crate) struct IdTable<K> {
    /// Hashed, not ordered: nothing walks it in order, and at 1M backends
    /// a tree's inserts were a tenth of a full plan.
    ids: HashMap<K, u32>,
    /// Ids below `next` that nobody holds.
    free: BTreeSet<u32>,
    quarantine: BTreeSet<u32>,
    next: u32,
    /// The lowest id this table hands out.
    first: u32,
}

impl<K> Default for IdTable<K> {
    fn default() -> Self {
        Self::starting_at(1)
    }
}

impl<K> IdTable<K> {
    /// A table whose ids are `first..` (`first` ≥ 1).
    pub fn starting_at(first: u32) -> Self {
        let first = first.max(1);
        Self {
            ids: HashMap::new(),
            free: BTreeSet::new(),
            quarantine: BTreeSet::new(),
            next: first,
            first,
        }
    }
}

impl<K: Eq + Hash + Clone> IdTable<K> {
    /// Rebuilds a table of ids `first..` from (key, id) pairs read back from
    /// the kernel. A key or id seen twice keeps its first pairing; the other
    /// ids are quarantined so the next round does not reuse them while
    /// still mapped. Ids below `first` belong to another table: ignored.
    pub fn restore(first: u32, pairs: impl IntoIterator<Item = (K, u32)>) -> Self {
        let mut table = Self::starting_at(first);
        let first = table.first;
        let mut held = BTreeSet::new();
        let mut orphans = BTreeSet::new();
        for (key, id) in pairs {
            if id < first {
                continue;
            }
            if held.contains(&id) || table.ids.contains_key(&key) {
                orphans.insert(id);
                continue;
            }
            held.insert(id);
            table.ids.insert(key, id);
        }
        orphans.retain(|id| !held.contains(id));
        let max = held.iter().chain(&orphans).max().copied();
        table.next = max.map_or(first, |m| m.saturating_add(1));
        table.free = (first..table.next)
            .filter(|id| !held.contains(id) && !orphans.contains(id))
            .collect();
        table.quarantine = orphans;
        table
    }

    pub fn get(&self, key: &K) -> Option<u32> {
        self.ids.get(key).copied()
    }

    /// Starts a round: ids released in the previous round become free.
    pub fn start_round(&mut self) {
        self.free.append(&mut self.quarantine);
    }

    /// Releases the key's id into quarantine (free from the next round).
    pub fn release(&mut self, key: &K) {
        if let Some(id) = self.ids.remove(key) {
            self.quarantine.insert(id);
        }
    }

    /// Releases (into quarantine) the ids of keys for which `keep` is false.
    pub fn release_unless(&mut self, mut keep: impl FnMut(&K) -> bool) {
        let quarantine = &mut self.quarantine;
        self.ids.retain(|key, id| {
            let kept = keep(key);
            if !kept {
                quarantine.insert(*id);
            }
            kept
        });
    }

    /// The key's id, allocating the lowest free one if needed. `None` only
    /// when all 2^32-1 ids are taken.
    pub fn get_or_alloc(&mut self, key: &K) -> Option<u32> {
        if let Some(id) = self.get(key) {
            return Some(id);
        }
        let id = match self.free.pop_first() {
            Some(id) => id,
            None => {
                let id = self.next;
                self.next = self.next.checked_add(1)?;
                id
            }
        };
        self.ids.insert(key.clone(), id);
        Some(id)
    }
}
