//! Which definition of each object counts when several files (or one file
//! twice) define it: the first in file-name then document order, as a
//! full listing would apply them. Kept per object, so a change to one file
//! costs what that file holds, not what the directory holds.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::hash::Hash;
use std::path::Path;
use std::sync::Arc;

use crate::model::ObjectRef;

/// An object's definitions by file; within a file, its first document.
/// Objects are keyed by [`ObjectRef`], or by name for cluster-scoped Nodes.
#[derive(Debug)]
pub(super) struct Definitions<T, K = ObjectRef> {
    /// Sorted by file. Nearly every object has one definition: a vector of
    /// one costs a tenth of a map's node, and the file's path is shared.
    by_object: HashMap<K, ByFile<T>>,
    /// Objects touched since [`Definitions::take_changes`], with the
    /// definition in force before: several files may change in one poll.
    touched: BTreeMap<K, Option<Arc<T>>>,
}

/// One object's definitions: (file, definition), sorted by file.
type ByFile<T> = Vec<(Arc<Path>, Arc<T>)>;

impl<T, K> Default for Definitions<T, K> {
    fn default() -> Self {
        Self {
            by_object: HashMap::new(),
            touched: BTreeMap::new(),
        }
    }
}

impl<T: PartialEq, K: Clone + Eq + Hash + Ord + Display> Definitions<T, K> {
    /// The definition in force for `object`.
    pub(super) fn winner(&self, object: &K) -> Option<&Arc<T>> {
        self.by_object.get(object)?.first().map(|(_, value)| value)
    }

    /// Every object with the definition in force, in object order.
    pub(super) fn winners(&self) -> BTreeMap<&K, &Arc<T>> {
        self.by_object
            .iter()
            .filter_map(|(object, defs)| Some((object, &defs.first()?.1)))
            .collect()
    }

    /// Replaces what `path` defines (`old`) by `new`.
    pub(super) fn replace_file(
        &mut self,
        path: &Arc<Path>,
        old: &[(K, Arc<T>)],
        new: &[(K, Arc<T>)],
    ) {
        for (object, _) in old.iter().chain(new) {
            if !self.touched.contains_key(object) {
                let before = self.winner(object).cloned();
                self.touched.insert(object.clone(), before);
            }
        }
        for (object, _) in old {
            if let Some(defs) = self.by_object.get_mut(object) {
                defs.retain(|(file, _)| file != path);
                if defs.is_empty() {
                    self.by_object.remove(object);
                }
            }
        }
        for (object, value) in new {
            let defs = self.by_object.entry(object.clone()).or_default();
            match defs.binary_search_by(|(file, _)| file.cmp(path)) {
                Ok(_) => {
                    tracing::warn!(%object, path = %path.display(), "defined twice in one file; using the first");
                }
                Err(at) => defs.insert(at, (path.clone(), value.clone())),
            }
        }
    }

    /// Every object whose definition in force changed since the last call,
    /// in object order (`None`: no file defines it any more).
    pub(super) fn take_changes(&mut self) -> Vec<(K, Option<Arc<T>>)> {
        let mut changed = Vec::new();
        for (object, before) in std::mem::take(&mut self.touched) {
            let after = self.winner(&object).cloned();
            let same = match (&before, &after) {
                (None, None) => true,
                (Some(b), Some(a)) => Arc::ptr_eq(b, a) || b == a,
                _ => false,
            };
            if !same {
                self.warn_if_duplicate(&object);
                changed.push((object, after));
            }
        }
        changed
    }

    fn warn_if_duplicate(&self, object: &K) {
        let Some(defs) = self.by_object.get(object) else {
            return;
        };
        if defs.len() > 1 {
            let files: Vec<String> = defs.iter().map(|(p, _)| p.display().to_string()).collect();
            tracing::warn!(%object, ?files, "defined in several files; using the first");
        }
    }
}
