//! The `manifests_parse` target: any text through `parse_str`. Whatever
//! parses must read the same once written back (as documents and as a
//! `kind: List`), and must go through the model without a panic.
use serde_yaml_ng::Value;
use vipr::model::{ModelBuilder, ModelOptions};
use vipr::source::manifests::{Parsed, parse_str};

pub fn run(data: &[u8]) {
    // Files are read as UTF-8 text; anything else fails before the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(parsed) = parse_str(text) else {
        return;
    };
    for yaml in [documents(&parsed), list(&parsed)] {
        let again = parse_str(&yaml).unwrap_or_else(|e| panic!("{e} in our own\n{yaml}"));
        assert_eq!(again, parsed, "written back as\n{yaml}");
    }
    let mut builder = ModelBuilder::new(ModelOptions {
        node_name: Some("node-a".into()),
        ..ModelOptions::default()
    });
    builder.set_node(parsed.nodes.first());
    builder.update(&parsed.services, &parsed.endpoint_slices);
}

fn values(parsed: &Parsed) -> Vec<Value> {
    let value = |r: Result<Value, _>| r.expect("objects serialize");
    let services = parsed.services.iter().map(serde_yaml_ng::to_value);
    let slices = parsed.endpoint_slices.iter().map(serde_yaml_ng::to_value);
    let nodes = parsed.nodes.iter().map(serde_yaml_ng::to_value);
    services.chain(slices).chain(nodes).map(value).collect()
}

fn documents(parsed: &Parsed) -> String {
    let docs = values(parsed).iter().map(to_string).collect::<Vec<_>>();
    docs.join("---\n")
}

fn list(parsed: &Parsed) -> String {
    let mut list = serde_yaml_ng::Mapping::new();
    list.insert("apiVersion".into(), "v1".into());
    list.insert("kind".into(), "List".into());
    list.insert("items".into(), Value::Sequence(values(parsed)));
    to_string(&Value::Mapping(list))
}

fn to_string(value: &Value) -> String {
    serde_yaml_ng::to_string(value).expect("values serialize")
}
