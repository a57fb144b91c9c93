//! One file's objects, keyed by identity: Services and EndpointSlices by
//! kind and namespace/name, converted as they are read (the model keeps
//! nothing else of them); Nodes (cluster-scoped) by name.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;

use super::Parsed;
use crate::model::{Converted, Kind, ModelOptions, ObjectRef};

/// A Node's identity (cluster-scoped, so its name), logged as `Node NAME`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct NodeName(pub(super) String);

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Node {}", self.0)
    }
}

/// One file's objects, keyed by identity.
#[derive(Debug, Default)]
pub(super) struct FileObjects {
    pub(super) services: Vec<(ObjectRef, Arc<Converted>)>,
    pub(super) slices: Vec<(ObjectRef, Arc<Converted>)>,
    pub(super) nodes: Vec<(NodeName, Arc<Node>)>,
}

impl FileObjects {
    /// Objects without a name cannot be told apart, so they are left out
    /// with a warning rather than failing the whole file.
    pub(super) fn new(path: &Path, parsed: Parsed, opts: &ModelOptions) -> Self {
        fn keyed<T>(
            path: &Path,
            kind: Kind,
            objects: Vec<T>,
            meta: impl Fn(&T) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
            convert: impl Fn(&T) -> Converted,
        ) -> Vec<(ObjectRef, Arc<Converted>)> {
            let mut out = Vec::with_capacity(objects.len());
            for object in objects {
                match ObjectRef::of(kind, meta(&object)) {
                    Ok(key) => out.push((key, Arc::new(convert(&object)))),
                    Err(error) => {
                        tracing::warn!(path = %path.display(), %error, "object ignored");
                    }
                }
            }
            out
        }
        let mut nodes = Vec::with_capacity(parsed.nodes.len());
        for node in parsed.nodes {
            match node.metadata.name.clone().filter(|n| !n.is_empty()) {
                Some(name) => nodes.push((NodeName(name), Arc::new(node))),
                None => tracing::warn!(path = %path.display(), "Node without a name ignored"),
            }
        }
        Self {
            services: keyed(
                path,
                Kind::Service,
                parsed.services,
                |s| &s.metadata,
                |s| Converted::service(s, opts),
            ),
            slices: keyed(
                path,
                Kind::EndpointSlice,
                parsed.endpoint_slices,
                |s| &s.metadata,
                |s| Converted::slice(s, opts),
            ),
            nodes,
        }
    }
}
