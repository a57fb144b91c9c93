//! `unsafe` stays where ARCHITECTURE.md says: the kernel programs
//! (proxy-ebpf), the `aya::Pod` impls of proxy-common, and the one audited
//! userspace module, `datapath/sys.rs`.
use std::path::{Path, PathBuf};

/// Files outside proxy-ebpf that may use `unsafe`, and how.
const ALLOWED: [(&str, Option<&str>); 2] = [
    (
        "proxy-common/src/maps.rs",
        Some("unsafe impl aya::Pod for "),
    ),
    ("proxy-userspace/src/datapath/sys.rs", None),
];
/// Crates whose sources are checked (proxy-ebpf is all kernel code).
const CHECKED: [&str; 4] = ["proxy-common", "proxy-userspace", "tests", "xtask"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Whether the code part of `line` (before any `//`) has the `unsafe` keyword.
fn uses_unsafe(line: &str) -> bool {
    let code = line.split("//").next().unwrap_or_default();
    code.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .any(|word| word == "unsafe")
}

#[test]
fn unsafe_is_confined_to_the_audited_places() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for krate in CHECKED {
        rust_files(&root.join(krate), &mut files);
    }
    assert!(files.len() > 50, "found only {} files", files.len());
    let this_file = file!().rsplit('/').next().unwrap_or_default();
    let mut stray = Vec::new();
    for file in files {
        let relative = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        if relative.ends_with(this_file) {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read");
        for (n, line) in text.lines().enumerate() {
            if !uses_unsafe(line) {
                continue;
            }
            let allowed = ALLOWED.iter().any(|(path, shape)| {
                relative == *path && shape.is_none_or(|s| line.trim_start().starts_with(s))
            });
            if !allowed {
                stray.push(format!("{relative}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        stray.is_empty(),
        "unsafe outside the audited places:\n{}",
        stray.join("\n")
    );
}
