//! How a Service's frontends pick an endpoint for a new connection: the
//! per-Service annotation, which overrides the agent's `--lb-algorithm`.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{ConversionError, ObjectRef};

/// vipr's counterpart of Cilium's `service.cilium.io/lb-algorithm`.
pub const ANNOTATION_LB_ALGORITHM: &str = "vipr.io/lb-algorithm";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LbAlgorithm {
    /// A slot by `hash % endpoints`: cheapest to write, but a change of
    /// the endpoint set moves most choices, and each node chooses alone.
    Random,
    /// The frontend's Maglev table: a change moves about 1/N of the
    /// choices, and every node chooses the same endpoint for a flow.
    Maglev,
}

impl LbAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            LbAlgorithm::Random => "random",
            LbAlgorithm::Maglev => "maglev",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "random" => Some(LbAlgorithm::Random),
            "maglev" => Some(LbAlgorithm::Maglev),
            _ => None,
        }
    }
}

/// The annotation's algorithm; `None` without it. An unknown value makes
/// the Service invalid (its last valid version stays programmed).
pub(super) fn of(
    meta: &ObjectMeta,
    object: &ObjectRef,
) -> Result<Option<LbAlgorithm>, ConversionError> {
    let Some(raw) = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_LB_ALGORITHM))
    else {
        return Ok(None);
    };
    LbAlgorithm::parse(raw.trim()).map(Some).ok_or_else(|| {
        ConversionError::new(
            object,
            format!("metadata.annotations[{ANNOTATION_LB_ALGORITHM}]"),
            format!("{raw:?} is neither maglev nor random"),
        )
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::Kind;

    fn meta(value: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            name: Some("web".into()),
            namespace: Some("default".into()),
            annotations: value
                .map(|v| BTreeMap::from([(ANNOTATION_LB_ALGORITHM.into(), v.into())])),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn the_annotation_names_an_algorithm_or_the_service_is_invalid() {
        let m = meta(None);
        let object = ObjectRef::of(Kind::Service, &m).unwrap();
        assert_eq!(of(&m, &object), Ok(None));
        assert_eq!(
            of(&meta(Some("maglev")), &object),
            Ok(Some(LbAlgorithm::Maglev))
        );
        assert_eq!(
            of(&meta(Some("random")), &object),
            Ok(Some(LbAlgorithm::Random))
        );
        let error = of(&meta(Some("round-robin")), &object).unwrap_err();
        assert!(
            error.to_string().contains("vipr.io/lb-algorithm"),
            "{error}"
        );
        assert!(error.to_string().contains("round-robin"), "{error}");
    }
}
