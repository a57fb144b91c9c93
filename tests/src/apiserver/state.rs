//! The API server's data: objects, a monotonic resourceVersion, the window
//! of recent changes that watches resume from, and list snapshots for
//! `continue` tokens.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};

/// The three resources served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Services,
    EndpointSlices,
    Nodes,
}

impl Resource {
    pub fn from_kind(kind: &str) -> Option<Self> {
        match kind {
            "Service" => Some(Self::Services),
            "EndpointSlice" => Some(Self::EndpointSlices),
            "Node" => Some(Self::Nodes),
            _ => None,
        }
    }
    pub fn kind(self) -> &'static str {
        match self {
            Self::Services => "Service",
            Self::EndpointSlices => "EndpointSlice",
            Self::Nodes => "Node",
        }
    }
    pub fn api_version(self) -> &'static str {
        match self {
            Self::EndpointSlices => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }
    pub fn plural(self) -> &'static str {
        match self {
            Self::Services => "services",
            Self::EndpointSlices => "endpointslices",
            Self::Nodes => "nodes",
        }
    }
    pub fn namespaced(self) -> bool {
        self != Self::Nodes
    }
}

pub type Key = (Resource, String, String);

/// A list's resourceVersion and items, kept while its pages are read.
pub type ListSnapshot = (u64, Arc<Vec<Arc<Value>>>);

/// One write: the object before and after (None: absent).
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub resource: Resource,
    pub old: Option<Arc<Value>>,
    pub new: Option<Arc<Value>>,
}

#[derive(Debug)]
pub struct State {
    pub rv: u64,
    pub objects: BTreeMap<Key, Arc<Value>>,
    pub history: VecDeque<Arc<Change>>,
    pub history_limit: usize,
    /// Watches from an older resourceVersion get 410 Gone.
    pub oldest_watchable: u64,
    /// List snapshots by id, for `continue`; `(rv, items)`.
    pub lists: HashMap<u64, ListSnapshot>,
    next_list: u64,
}

impl Default for State {
    fn default() -> Self {
        Self {
            rv: 1000,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_limit: 10_000,
            oldest_watchable: 1000,
            lists: HashMap::new(),
            next_list: 1,
        }
    }
}

impl State {
    /// Creates or replaces an object; returns its new resourceVersion.
    pub fn put(&mut self, resource: Resource, mut obj: Value) -> Result<u64, String> {
        let meta = obj
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .ok_or("object without metadata")?;
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .ok_or("object without metadata.name")?
            .to_string();
        let namespace = if resource.namespaced() {
            let ns = meta
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_string();
            meta.insert("namespace".into(), json!(ns));
            ns
        } else {
            String::new()
        };
        let key = (resource, namespace.clone(), name.clone());
        let uid = self
            .objects
            .get(&key)
            .and_then(|o| o["metadata"]["uid"].as_str().map(String::from))
            .unwrap_or_else(|| format!("uid-{}-{namespace}-{name}", self.rv + 1));
        meta.insert("uid".into(), json!(uid));
        let rv = self.bump();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        obj["kind"] = json!(resource.kind());
        obj["apiVersion"] = json!(resource.api_version());
        let new = Arc::new(obj);
        let old = self.objects.insert(key, new.clone());
        self.record(Change {
            rv,
            resource,
            old,
            new: Some(new),
        });
        Ok(rv)
    }

    pub fn delete(&mut self, resource: Resource, namespace: &str, name: &str) -> bool {
        let ns = if resource.namespaced() { namespace } else { "" };
        let Some(old) = self
            .objects
            .remove(&(resource, ns.to_string(), name.to_string()))
        else {
            return false;
        };
        let rv = self.bump();
        // The DELETED event carries the last state with the deletion's version.
        let mut last = (*old).clone();
        last["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.record(Change {
            rv,
            resource,
            old: Some(Arc::new(last)),
            new: None,
        });
        true
    }

    /// Forgets all history: watches from any earlier version get 410 Gone,
    /// as after an etcd compaction.
    pub fn compact(&mut self) {
        self.history.clear();
        self.lists.clear();
        self.oldest_watchable = self.rv;
    }

    pub fn snapshot_list(&mut self, items: Vec<Arc<Value>>) -> u64 {
        let id = self.next_list;
        self.next_list += 1;
        self.lists.insert(id, (self.rv, Arc::new(items)));
        id
    }

    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn record(&mut self, change: Change) {
        self.history.push_back(Arc::new(change));
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.oldest_watchable = dropped.rv;
            }
        }
    }
}

/// `labelSelector` and `fieldSelector` as the API server reads them, for
/// the forms clients use here: `key`, `!key`, `key=value`, `key!=value`,
/// and `metadata.name` / `metadata.namespace` fields.
#[derive(Clone, Debug, Default)]
pub struct Selector {
    labels: Vec<Term>,
    fields: Vec<Term>,
}

#[derive(Clone, Debug)]
enum Term {
    Exists(String),
    Absent(String),
    Equals(String, String),
    NotEquals(String, String),
}

impl Selector {
    pub fn parse(labels: Option<&str>, fields: Option<&str>) -> Self {
        Self {
            labels: terms(labels),
            fields: terms(fields),
        }
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        let label = |k: &str| meta["labels"][k].as_str().map(String::from);
        let field = |k: &str| match k {
            "metadata.name" => meta["name"].as_str().map(String::from),
            "metadata.namespace" => meta["namespace"].as_str().map(String::from),
            _ => None,
        };
        self.labels.iter().all(|t| t.matches(&label))
            && self.fields.iter().all(|t| t.matches(&field))
    }
}

impl Term {
    fn matches(&self, get: &dyn Fn(&str) -> Option<String>) -> bool {
        match self {
            Term::Exists(k) => get(k).is_some(),
            Term::Absent(k) => get(k).is_none(),
            Term::Equals(k, v) => get(k).as_deref() == Some(v.as_str()),
            Term::NotEquals(k, v) => get(k).as_deref() != Some(v.as_str()),
        }
    }
}

fn terms(text: Option<&str>) -> Vec<Term> {
    let Some(text) = text else { return Vec::new() };
    text.split(',')
        .filter(|t| !t.is_empty())
        .map(|t| {
            if let Some((k, v)) = t.split_once("!=") {
                Term::NotEquals(k.into(), v.into())
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                Term::Equals(k.into(), v.into())
            } else if let Some(k) = t.strip_prefix('!') {
                Term::Absent(k.into())
            } else {
                Term::Exists(t.into())
            }
        })
        .collect()
}
