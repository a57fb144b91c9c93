//! The stateful layer: keeps the last valid version of every object.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{
    ConversionError, Model, ObjectRef, ServiceModel, SliceModel, build_model, convert_service,
    convert_slice,
};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelOptions {
    /// Value of `service.kubernetes.io/service-proxy-name` this proxy answers
    /// to. Objects carrying that label with any other value (or any value,
    /// when `None`) are ignored, like kube-proxy does.
    pub proxy_name: Option<String>,
}

/// Converts full snapshots of Services and EndpointSlices into a [`Model`].
///
/// When an object's new version is invalid, the last valid version of that
/// object (same kind and namespace/name) keeps being used, and the object is
/// listed in [`Model::stale`]; it is forgotten only once it is absent from
/// the input. An object that was never valid contributes nothing.
#[derive(Debug, Default)]
pub struct ModelBuilder {
    options: ModelOptions,
    services: BTreeMap<ObjectRef, ServiceModel>,
    slices: BTreeMap<ObjectRef, SliceModel>,
}

impl ModelBuilder {
    pub fn new(options: ModelOptions) -> Self {
        Self {
            options,
            ..Self::default()
        }
    }

    /// Takes the complete current set of objects (not a delta) and returns the
    /// new model plus one error per invalid object, sorted by object.
    pub fn update(
        &mut self,
        services: &[Service],
        slices: &[EndpointSlice],
    ) -> (Model, Vec<ConversionError>) {
        let mut errors = Vec::new();
        let mut stale = Vec::new();
        let opts = &self.options;
        let services = keep_last_good(
            services
                .iter()
                .map(|s| convert_service(s, opts).map(|m| (m.object.clone(), m))),
            &self.services,
            &mut errors,
            &mut stale,
        );
        let slices = keep_last_good(
            slices
                .iter()
                .map(|s| convert_slice(s, opts).map(|m| (m.object.clone(), m))),
            &self.slices,
            &mut errors,
            &mut stale,
        );
        self.services = services;
        self.slices = slices;
        let mut model = build_model(self.services.values(), self.slices.values());
        stale.sort();
        model.stale = stale;
        errors.sort_by_key(ConversionError::object);
        (model, errors)
    }
}

/// The new object table: valid versions from the input, else the previous
/// valid version of an invalid object. Objects not in the input are dropped.
fn keep_last_good<T: Clone>(
    converted: impl Iterator<Item = Result<(ObjectRef, T), ConversionError>>,
    previous: &BTreeMap<ObjectRef, T>,
    errors: &mut Vec<ConversionError>,
    stale: &mut Vec<ObjectRef>,
) -> BTreeMap<ObjectRef, T> {
    let mut out = BTreeMap::new();
    for result in converted {
        let (object, value) = match result {
            Ok(ok) => ok,
            Err(e) => {
                let object = e.object();
                errors.push(e);
                // A missing name gives an empty one, which no valid object has.
                match previous.get(&object) {
                    Some(old) if !out.contains_key(&object) => {
                        stale.push(object.clone());
                        (object, old.clone())
                    }
                    _ => continue,
                }
            }
        };
        if out.contains_key(&object) {
            errors.push(ConversionError::new(
                &object,
                "metadata.name",
                "defined more than once; using the first definition",
            ));
            continue;
        }
        out.insert(object, value);
    }
    out
}
