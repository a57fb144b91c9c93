//! `spec.sessionAffinity` and its timeout, validated as the API server does.
use k8s_openapi::api::core::v1::ServiceSpec;

use super::{ConversionError, ObjectRef};

/// kube-proxy's default when `sessionAffinityConfig` is absent: three hours.
pub const DEFAULT_TIMEOUT_SECONDS: u32 = 10_800;
/// The API's upper bound (one day).
pub const MAX_TIMEOUT_SECONDS: u32 = 86_400;

/// The affinity timeout in seconds for `ClientIP`, `None` for no affinity.
pub(super) fn timeout_of(
    spec: &ServiceSpec,
    object: &ObjectRef,
) -> Result<Option<u32>, ConversionError> {
    match spec.session_affinity.as_deref() {
        None | Some("None") => return Ok(None),
        Some("ClientIP") => {}
        Some(other) => {
            return Err(ConversionError::new(
                object,
                "spec.sessionAffinity",
                format!("{other:?} is neither None nor ClientIP"),
            ));
        }
    }
    let configured = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds);
    match configured {
        None => Ok(Some(DEFAULT_TIMEOUT_SECONDS)),
        Some(t) if t > 0 && t as u32 <= MAX_TIMEOUT_SECONDS => Ok(Some(t as u32)),
        Some(t) => Err(ConversionError::new(
            object,
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            format!("{t} is not within 1..={MAX_TIMEOUT_SECONDS}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ClientIPConfig, SessionAffinityConfig};

    use super::*;
    use crate::model::Kind;

    fn spec(affinity: Option<&str>, timeout: Option<i32>) -> ServiceSpec {
        ServiceSpec {
            session_affinity: affinity.map(String::from),
            session_affinity_config: timeout.map(|t| SessionAffinityConfig {
                client_ip: Some(ClientIPConfig {
                    timeout_seconds: Some(t),
                }),
            }),
            ..ServiceSpec::default()
        }
    }

    #[test]
    fn client_ip_affinity_with_kube_proxys_default_and_bounds() {
        let object = ObjectRef {
            kind: Kind::Service,
            namespace: "ns".into(),
            name: "svc".into(),
        };
        let timeout = |a, t| timeout_of(&spec(a, t), &object);
        assert_eq!(timeout(None, None), Ok(None));
        assert_eq!(timeout(Some("None"), Some(60)), Ok(None));
        assert_eq!(timeout(Some("ClientIP"), None), Ok(Some(10_800)));
        assert_eq!(timeout(Some("ClientIP"), Some(60)), Ok(Some(60)));
        assert_eq!(timeout(Some("ClientIP"), Some(86_400)), Ok(Some(86_400)));
        for bad in [0, -1, 86_401] {
            let error = timeout(Some("ClientIP"), Some(bad))
                .unwrap_err()
                .to_string();
            assert!(
                error
                    .contains("Service ns/svc: spec.sessionAffinityConfig.clientIP.timeoutSeconds"),
                "{error}"
            );
        }
        let error = timeout(Some("Cookie"), None).unwrap_err().to_string();
        assert!(
            error.contains("spec.sessionAffinity: \"Cookie\""),
            "{error}"
        );
    }
}
