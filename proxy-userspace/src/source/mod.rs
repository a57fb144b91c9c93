//! Where Services, EndpointSlices and this node's Node come from: a
//! manifests directory or the Kubernetes API. A source says *which* objects
//! may have changed and hands over their current versions (or every object);
//! the model never sees events.
pub mod kube;
pub mod manifests;

use std::collections::HashSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;

use crate::model::{Converted, Kind, ObjectRef};

/// What a source has for the model since it was last asked.
#[derive(Debug, Default)]
pub enum Update {
    #[default]
    None,
    /// Objects converted on arrival (`None`: deleted), in arrival order of
    /// their last event, then the kinds relisted since: their objects that
    /// were not listed are gone.
    Converted {
        objects: Vec<(ObjectRef, Option<Converted>)>,
        relisted: Vec<(Kind, HashSet<ObjectRef>)>,
        node: Option<Arc<Node>>,
    },
}

/// The one source an agent runs.
// One per agent, made once: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Source {
    Manifests(manifests::ManifestDir),
    Kube(kube::KubeSource),
}

impl Source {
    /// False until every object kind has been listed once: no map is
    /// written before that (an empty store would delete every Service).
    pub fn ready(&self) -> bool {
        match self {
            Source::Manifests(_) => true,
            Source::Kube(kube) => kube.ready(),
        }
    }

    /// What changed since the last call. Errors are logged by the source
    /// and leave the model as it is.
    pub fn poll(&mut self) -> Update {
        match self {
            // Like the API source, every change carries the current Node.
            Source::Manifests(dir) => match dir.poll() {
                // The model keeps its own copy; the directory's stays for
                // telling which definition of an object is in force.
                Ok(Some(changes)) => Update::Converted {
                    objects: changes
                        .services
                        .into_iter()
                        .chain(changes.slices)
                        .map(|(object, c)| (object, c.map(|c| (*c).clone())))
                        .collect(),
                    relisted: Vec::new(),
                    node: dir.node(),
                },
                Ok(None) => Update::None,
                Err(error) => {
                    tracing::warn!(%error, "reading manifests failed; serving what is programmed");
                    Update::None
                }
            },
            Source::Kube(kube) => kube.poll(),
        }
    }
}
