//! Multi-document Kubernetes YAML → Services, EndpointSlices and Nodes.

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;

/// The objects of one file (or of all files: a [`super::Snapshot`] has the same shape).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Parsed {
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    /// Only the agent's own Node counts (its zone steers topology hints);
    /// which one that is, is the reader's business.
    pub nodes: Vec<Node>,
}

/// Why a YAML text could not be read; the message of a YAML or schema error
/// carries its line and column when serde_yaml_ng knows them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("document {document}{}: {message}", item.map(|i| format!(", items[{i}]")).unwrap_or_default())]
pub struct ParseError {
    /// 1-based index of the YAML document in the file.
    pub document: usize,
    /// Index in a `kind: List`'s items.
    pub item: Option<usize>,
    pub message: String,
}

/// Parses every document of `text`, in the schema kubectl uses: `v1 Service`,
/// `discovery.k8s.io/v1 EndpointSlice`, `v1 Node`, and `v1 List` of those.
/// Other kinds are ignored (debug log); empty documents are skipped. The
/// first bad document fails the whole text, so a half-written file never counts.
pub fn parse_str(text: &str) -> Result<Parsed, ParseError> {
    let mut parsed = Parsed::default();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let document = i + 1;
        let fail = |item, message| ParseError {
            document,
            item,
            message,
        };
        let mut value = Value::deserialize(doc).map_err(|e| fail(None, e.to_string()))?;
        value.apply_merge().map_err(|e| fail(None, e.to_string()))?;
        if value.is_null() {
            continue;
        }
        match type_of(&value).map_err(|m| fail(None, m))? {
            ("v1", "List") => {
                let items = match value.get("items") {
                    None | Some(Value::Null) => &Vec::new(),
                    Some(Value::Sequence(items)) => items,
                    Some(_) => return Err(fail(None, "items: not a sequence".into())),
                };
                for (j, item) in items.iter().enumerate() {
                    // No line numbers here: the item was already parsed to a Value.
                    add(&mut parsed, item.clone(), None).map_err(|m| fail(Some(j), m))?;
                }
            }
            _ => add(&mut parsed, value, Some((text, i))).map_err(|m| fail(None, m))?,
        }
    }
    Ok(parsed)
}

fn type_of(value: &Value) -> Result<(&str, &str), String> {
    let field = |name| value.get(name).and_then(Value::as_str);
    match (field("apiVersion"), field("kind")) {
        (Some(api), Some(kind)) => Ok((api, kind)),
        _ => Err("not a Kubernetes object (needs string apiVersion and kind)".into()),
    }
}

/// Adds one object. `origin` (text and document index) lets a failed
/// conversion be redone on the original document for a line number.
fn add(parsed: &mut Parsed, value: Value, origin: Option<(&str, usize)>) -> Result<(), String> {
    match type_of(&value)? {
        ("v1", "Service") => parsed.services.push(typed(value, origin)?),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            parsed.endpoint_slices.push(typed(value, origin)?)
        }
        ("v1", "Node") => parsed.nodes.push(typed(value, origin)?),
        (api, kind) => tracing::debug!(
            api_version = api,
            kind,
            "ignoring object of unsupported kind"
        ),
    }
    Ok(())
}

fn typed<T: DeserializeOwned>(value: Value, origin: Option<(&str, usize)>) -> Result<T, String> {
    serde_yaml_ng::from_value(value).map_err(|e| {
        // Deserializing straight from the text gives the same error, with its position.
        let located = origin
            .and_then(|(text, index)| serde_yaml_ng::Deserializer::from_str(text).nth(index))
            .and_then(|doc| T::deserialize(doc).err());
        located.unwrap_or(e).to_string()
    })
}
