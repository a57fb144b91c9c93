//! The stateful layer: keeps the last valid version of every object, and the
//! model built from them, updated per Service so that the cost of a change
//! grows with the change and not with the number of Services.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::index::Index;
use super::node::convert_node;
use super::{
    ConversionError, FrontendKey, Kind, Model, ObjectRef, ServiceModel, SliceModel, Triggered,
    convert_service, convert_slice,
};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelOptions {
    /// Value of `service.kubernetes.io/service-proxy-name` this proxy answers
    /// to. Objects carrying that label with any other value (or any value,
    /// when `None`) are ignored, like kube-proxy does.
    pub proxy_name: Option<String>,
    /// This node's name: endpoints with this `nodeName` are local.
    pub node_name: Option<String>,
    /// Node addresses NodePorts answer on (kube-proxy's --nodeport-addresses),
    /// either family.
    pub nodeport_addresses: Vec<std::net::IpAddr>,
    /// NodePorts also answer the node itself on 127.0.0.1 (off by default,
    /// as in kube-proxy's nftables mode).
    pub nodeport_localhost: bool,
    /// Serve IPv6 too (dual-stack and IPv6-only Services). Off while the
    /// datapath programs IPv4 only: IPv6 parts are then skipped, each with
    /// its counted reason.
    pub ipv6: bool,
}

/// Converts Services and EndpointSlices into a [`Model`], either from full
/// snapshots ([`ModelBuilder::update`], [`ModelBuilder::replace_all`]) or one
/// object at a time ([`ModelBuilder::apply_service`], [`ModelBuilder::apply_slice`])
/// followed by [`ModelBuilder::commit`].
///
/// When an object's new version is invalid, the last valid version of that
/// object (same kind and namespace/name) keeps being used, and the object is
/// listed in [`Model::stale`]; it is forgotten only once it is absent from
/// the input. An object that was never valid contributes nothing.
#[derive(Debug, Default)]
pub struct ModelBuilder {
    options: ModelOptions,
    index: Index,
    /// Objects converted since the last commit (a cache hit is not counted).
    converted: usize,
    /// Trigger times of the slices converted since the last commit.
    triggered: Vec<Triggered>,
}

/// What one [`ModelBuilder::commit`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Commit {
    /// Frontends added, changed or removed, in key order.
    pub changed: BTreeSet<FrontendKey>,
    /// Objects converted (validated) since the previous commit.
    pub converted: usize,
    /// Services whose frontends were recomputed.
    pub services_recomputed: usize,
    /// Services that gained their first frontend, changed, or lost their last.
    pub services: Counts,
    /// Endpoints (ip:port) of those Services added, removed, or whose conditions changed.
    pub endpoints: Counts,
    /// When the endpoint changes in this commit were made, where their
    /// slices say (see [`super::SliceModel::trigger_time`]).
    pub triggered: Vec<Triggered>,
}

/// Added / changed / removed, for the log line of a sync.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
}

/// An object as a source converted it on arrival, so that the source need
/// not keep the API object: the model keeps only what it reads. Cheap to
/// clone (the conversion is shared).
#[derive(Clone, Debug, PartialEq)]
pub enum Converted {
    Service(Result<Arc<ServiceModel>, ConversionError>),
    Slice(Result<Arc<SliceModel>, ConversionError>),
}

impl Converted {
    pub fn service(svc: &Service, opts: &ModelOptions) -> Self {
        Self::Service(convert_service(svc, opts).map(Arc::new))
    }

    pub fn slice(slice: &EndpointSlice, opts: &ModelOptions) -> Self {
        Self::Slice(convert_slice(slice, opts).map(Arc::new))
    }
}

/// The last version seen of one object. `value` is its last *valid* version.
#[derive(Clone, Debug)]
pub(super) struct Entry<T> {
    /// Only set when the caller vouches that it identifies the content
    /// (objects from the API server), to skip converting an unchanged object.
    pub resource_version: Option<String>,
    /// Shared with the source that converted it, if that source keeps it.
    pub value: Option<Arc<T>>,
    /// Boxed: nearly every object has none, and the entry is kept per object.
    pub error: Option<Box<ConversionError>>,
}

impl ModelBuilder {
    pub fn new(options: ModelOptions) -> Self {
        let mut builder = Self {
            options,
            ..Self::default()
        };
        builder.index.options = builder.options.clone();
        builder
    }

    pub fn model(&self) -> &Model {
        &self.index.model
    }

    /// Takes the complete current set of objects (not a delta) and returns the
    /// new model plus one error per invalid object, sorted by object.
    pub fn update(
        &mut self,
        services: &[Service],
        slices: &[EndpointSlice],
    ) -> (Model, Vec<ConversionError>) {
        let errors = self.replace_all(services, slices, false);
        self.commit();
        (self.index.model.clone(), errors)
    }

    /// Replaces every object with the given full sets; objects absent from
    /// them are deleted. Returns the errors of every invalid object given,
    /// sorted by object. With `trust_resource_version`, an object whose
    /// resourceVersion is the one last seen is not converted again (only
    /// for API server objects: a hand-edited manifest may keep its version).
    pub fn replace_all<'a>(
        &mut self,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
        trust_resource_version: bool,
    ) -> Vec<ConversionError> {
        let mut errors = Vec::new();
        let mut seen = BTreeSet::new();
        for svc in services {
            self.replace_one(
                Kind::Service,
                svc,
                trust_resource_version,
                &mut seen,
                &mut errors,
            );
        }
        for slice in slices {
            self.replace_one(
                Kind::EndpointSlice,
                slice,
                trust_resource_version,
                &mut seen,
                &mut errors,
            );
        }
        let gone: Vec<ObjectRef> = self
            .index
            .objects()
            .filter(|o| !seen.contains(*o))
            .cloned()
            .collect();
        for object in gone {
            self.remove(&object);
        }
        errors.sort_by_key(ConversionError::object);
        errors
    }

    /// Sets one Service from the API (`None`: deleted). Returns its
    /// conversion error, if it was converted and is invalid.
    pub fn apply_service(
        &mut self,
        object: &ObjectRef,
        svc: Option<&Service>,
    ) -> Option<ConversionError> {
        match svc {
            None => {
                self.remove(object);
                None
            }
            Some(svc) => self.apply_one(object, svc),
        }
    }

    /// Sets one EndpointSlice from the API (`None`: deleted).
    pub fn apply_slice(
        &mut self,
        object: &ObjectRef,
        slice: Option<&EndpointSlice>,
    ) -> Option<ConversionError> {
        match slice {
            None => {
                self.remove(object);
                None
            }
            Some(slice) => self.apply_one(object, slice),
        }
    }

    /// Sets one object a source converted on arrival (`None`: deleted).
    /// Returns its conversion error, if it is invalid. No resourceVersion
    /// is kept: the source converted the object already, so there is no
    /// conversion left to skip.
    pub fn apply_converted(
        &mut self,
        object: &ObjectRef,
        converted: Option<Converted>,
    ) -> Option<ConversionError> {
        let Some(converted) = converted else {
            self.remove(object);
            return None;
        };
        self.converted += 1;
        if let Converted::Slice(Ok(slice)) = &converted {
            self.triggered.extend(slice.trigger_time);
        }
        let index = &mut self.index;
        match converted {
            Converted::Service(result) => {
                apply_result(index, object, None, result, Service::entry, Service::set)
            }
            Converted::Slice(result) => apply_result(
                index,
                object,
                None,
                result,
                EndpointSlice::entry,
                EndpointSlice::set,
            ),
        }
    }

    /// After a relist of `kind`: forgets its objects that were not listed
    /// (their Delete events may have been missed).
    pub fn retain_listed(&mut self, kind: Kind, listed: &HashSet<ObjectRef>) {
        let gone: Vec<ObjectRef> = self
            .index
            .objects()
            .filter(|o| o.kind == kind && !listed.contains(*o))
            .cloned()
            .collect();
        for object in gone {
            self.remove(&object);
        }
    }

    /// Records this node's Node object (addresses, topology labels); a Node
    /// named other than `node_name` is some other node's and counts as none.
    /// A zone change recomputes, at the next commit, the Services whose
    /// endpoints carry zone hints.
    pub fn set_node(&mut self, node: Option<&Node>) {
        let ours = |n: &&Node| {
            self.options.node_name.is_none() || n.metadata.name == self.options.node_name
        };
        self.index.set_node(node.filter(ours).map(convert_node));
    }

    /// Brings the model up to date with the objects set since the last
    /// commit; only the Services they touch are recomputed.
    pub fn commit(&mut self) -> Commit {
        let changes = self.index.commit();
        Commit {
            changed: changes.frontends,
            converted: std::mem::take(&mut self.converted),
            triggered: std::mem::take(&mut self.triggered),
            services_recomputed: changes.services_recomputed,
            services: changes.services,
            endpoints: changes.endpoints,
        }
    }

    /// Counts of skipped objects (or parts) by reason, e.g. `ipv6-cluster-ip`.
    pub fn skip_counts(&self) -> &std::collections::BTreeMap<&'static str, usize> {
        &self.index.skip_counts
    }

    fn apply_one<O: Convert>(&mut self, object: &ObjectRef, obj: &O) -> Option<ConversionError> {
        let rv = obj.resource_version();
        if rv.is_some() && O::entry(&self.index, object).is_some_and(|e| e.resource_version == rv) {
            return None;
        }
        self.converted += 1;
        let result = obj.convert(&self.options).map(Arc::new);
        apply_result(&mut self.index, object, rv, result, O::entry, O::set)
    }

    /// One object of a full set, with the duplicate and last-good rules.
    fn replace_one<O: Convert>(
        &mut self,
        kind: Kind,
        obj: &O,
        trust_rv: bool,
        seen: &mut BTreeSet<ObjectRef>,
        errors: &mut Vec<ConversionError>,
    ) {
        let rv = obj.resource_version().filter(|_| trust_rv);
        if let Some(object) = obj.object_ref(kind)
            && rv.is_some()
            && !seen.contains(&object)
            && let Some(entry) = O::entry(&self.index, &object)
            && entry.resource_version == rv
            && entry.value.is_some()
        {
            errors.extend(entry.error.as_deref().cloned());
            seen.insert(object);
            return;
        }
        self.converted += 1;
        match obj.convert(&self.options) {
            Ok(model) => {
                let object = model.object().clone();
                if seen.contains(&object) {
                    errors.push(ConversionError::new(
                        &object,
                        "metadata.name",
                        "defined more than once; using the first definition",
                    ));
                    return;
                }
                let entry = Entry {
                    resource_version: rv,
                    value: Some(Arc::new(model)),
                    error: None,
                };
                O::set(&mut self.index, object.clone(), Some(entry));
                seen.insert(object);
            }
            Err(e) => {
                // A missing name gives an empty one, which no valid object has.
                let object = e.object();
                errors.push(e.clone());
                if seen.contains(&object) {
                    return;
                }
                let Some(previous) = O::entry(&self.index, &object).and_then(|e| e.value.clone())
                else {
                    return;
                };
                let entry = Entry {
                    resource_version: rv,
                    value: Some(previous),
                    error: Some(Box::new(e)),
                };
                O::set(&mut self.index, object.clone(), Some(entry));
                seen.insert(object);
            }
        }
    }

    fn remove(&mut self, object: &ObjectRef) {
        match object.kind {
            Kind::Service => self.index.set_service(object.clone(), None),
            Kind::EndpointSlice => self.index.set_slice(object.clone(), None),
        }
    }
}

/// Keeps `object`'s last valid version when `result` is an error.
fn apply_result<M: Clone + HasObject>(
    index: &mut Index,
    object: &ObjectRef,
    resource_version: Option<String>,
    result: Result<Arc<M>, ConversionError>,
    entry: for<'a> fn(&'a Index, &ObjectRef) -> Option<&'a Entry<M>>,
    set: fn(&mut Index, ObjectRef, Option<Entry<M>>),
) -> Option<ConversionError> {
    let previous = || entry(index, object).and_then(|e| e.value.clone());
    let (value, error) = match result {
        Ok(model) if model.object() == object => (Some(model), None),
        Ok(model) => {
            let e = ConversionError::new(
                object,
                "metadata.name",
                format!("does not match its store key ({})", model.object()),
            );
            (previous(), Some(e))
        }
        Err(e) => (previous(), Some(e)),
    };
    let entry = Entry {
        resource_version,
        value,
        error: error.clone().map(Box::new),
    };
    set(index, object.clone(), Some(entry));
    error
}

/// The two input kinds, so the keep-last-good rules are written once.
trait Convert {
    type Model: Clone + HasObject;
    fn resource_version(&self) -> Option<String>;
    fn object_ref(&self, kind: Kind) -> Option<ObjectRef>;
    fn convert(&self, opts: &ModelOptions) -> Result<Self::Model, ConversionError>;
    fn entry<'a>(index: &'a Index, object: &ObjectRef) -> Option<&'a Entry<Self::Model>>;
    fn set(index: &mut Index, object: ObjectRef, entry: Option<Entry<Self::Model>>);
}

pub(super) trait HasObject {
    fn object(&self) -> &ObjectRef;
}

impl HasObject for ServiceModel {
    fn object(&self) -> &ObjectRef {
        &self.object
    }
}

impl HasObject for SliceModel {
    fn object(&self) -> &ObjectRef {
        &self.object
    }
}

impl Convert for Service {
    type Model = ServiceModel;
    fn resource_version(&self) -> Option<String> {
        self.metadata.resource_version.clone()
    }
    fn object_ref(&self, kind: Kind) -> Option<ObjectRef> {
        super::service::object_ref(kind, &self.metadata).ok()
    }
    fn convert(&self, opts: &ModelOptions) -> Result<ServiceModel, ConversionError> {
        convert_service(self, opts)
    }
    fn entry<'a>(index: &'a Index, object: &ObjectRef) -> Option<&'a Entry<ServiceModel>> {
        index.services.get(object)
    }
    fn set(index: &mut Index, object: ObjectRef, entry: Option<Entry<ServiceModel>>) {
        index.set_service(object, entry);
    }
}

impl Convert for EndpointSlice {
    type Model = SliceModel;
    fn resource_version(&self) -> Option<String> {
        self.metadata.resource_version.clone()
    }
    fn object_ref(&self, kind: Kind) -> Option<ObjectRef> {
        super::service::object_ref(kind, &self.metadata).ok()
    }
    fn convert(&self, opts: &ModelOptions) -> Result<SliceModel, ConversionError> {
        convert_slice(self, opts)
    }
    fn entry<'a>(index: &'a Index, object: &ObjectRef) -> Option<&'a Entry<SliceModel>> {
        index.slices.get(object)
    }
    fn set(index: &mut Index, object: ObjectRef, entry: Option<Entry<SliceModel>>) {
        index.set_slice(object, entry);
    }
}
