//! The one error type of the conversion: an invalid field of one object.

use super::{Kind, ObjectRef};

/// An object that fails validation, e.g.
/// `Service default/web: spec.ports[1].port: 0 is not a valid port`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {namespace}/{name}: {field}: {message}")]
pub struct ConversionError {
    pub kind: Kind,
    /// "" if the object has no usable name.
    pub namespace: super::Name,
    pub name: super::Unique,
    /// Path of the offending field, kubectl style (`spec.ports[1].port`).
    pub field: String,
    pub message: String,
}

impl ConversionError {
    pub(crate) fn new(
        object: &ObjectRef,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            kind: object.kind,
            namespace: object.namespace.clone(),
            name: object.name.clone(),
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn object(&self) -> ObjectRef {
        ObjectRef {
            kind: self.kind,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}
