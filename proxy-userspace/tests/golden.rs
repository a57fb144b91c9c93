//! Golden tests: `testdata/golden/NAME.yaml` (manifests) → model → planner →
//! `dump_text`, compared with `testdata/golden/NAME.dump`. The dump ends with
//! `#` lines listing skipped objects and conversion errors.
//!
//! `UPDATE_GOLDEN=1 cargo test -p proxy-userspace --test golden` rewrites the
//! expected files; review the git diff before committing them.

use std::fmt::Write;
use std::fs;
use std::path::{Path, PathBuf};

use vipr::model::{ModelBuilder, ModelOptions};
use vipr::plan::{Planner, dump_text};
use vipr::source::manifests::parse_str;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/golden")
}

/// What a golden file is compared with. `dual-stack*` files run with IPv6
/// on and node1's IPv6 address too.
fn render(manifests: &str, dual_stack: bool) -> Result<String, String> {
    let parsed = parse_str(manifests).map_err(|e| e.to_string())?;
    // Every golden runs as the agent on node1, whose NodePorts answer on 172.30.0.1.
    let mut nodeport_addresses = vec![std::net::Ipv4Addr::new(172, 30, 0, 1).into()];
    if dual_stack {
        nodeport_addresses.push("fd00:30::1".parse().expect("IPv6 literal"));
    }
    let options = ModelOptions {
        node_name: Some("node1".into()),
        nodeport_addresses,
        ipv6: dual_stack,
        ..ModelOptions::default()
    };
    let mut builder = ModelBuilder::new(options);
    // node1's Node manifest, if any, gives the zone topology hints are read against.
    let node = parsed
        .nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some("node1"));
    builder.set_node(node);
    let (model, errors) = builder.update(&parsed.services, &parsed.endpoint_slices);
    let mut out = dump_text(&Planner::new().desired(&model));
    for skipped in &model.skipped {
        let _ = writeln!(out, "# skipped {skipped}");
    }
    for error in &errors {
        let _ = writeln!(out, "# error {error}");
    }
    Ok(out)
}

#[test]
fn golden_dumps() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut inputs: Vec<PathBuf> = fs::read_dir(golden_dir())
        .expect("testdata/golden exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    inputs.sort();
    assert!(
        inputs.len() >= 6,
        "expected the golden scenarios, found {inputs:?}"
    );

    let mut failures = Vec::new();
    for input in &inputs {
        let text = fs::read_to_string(input).expect("read golden input");
        let dual_stack = input
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("dual-stack"));
        let got = render(&text, dual_stack).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
        let expected_path = input.with_extension("dump");
        if update {
            fs::write(&expected_path, &got).expect("write golden");
            continue;
        }
        let want = fs::read_to_string(&expected_path).unwrap_or_default();
        if got != want {
            failures.push(format!(
                "--- {}\n{want}+++ got\n{got}",
                expected_path.display()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "golden mismatch (UPDATE_GOLDEN=1 to accept):\n{}",
        failures.join("\n")
    );
}
