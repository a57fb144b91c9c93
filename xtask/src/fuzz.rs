//! Fuzzing: the cargo-fuzz targets of `proxy-userspace/fuzz` (object
//! conversion, manifests parser) and the packet fuzzer (`tests/tests/packets_fuzz.rs`).
//! `cargo xtask test` runs each target briefly; `cargo xtask fuzz` for longer.
use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

/// The cargo-fuzz targets, in the order they run.
pub const TARGETS: [&str; 2] = ["model_objects", "manifests_parse"];
/// Seconds per target within `cargo xtask test`.
pub const TEST_SECONDS: u64 = 20;

/// `cargo +nightly <args>` through rustup, whatever toolchain runs xtask:
/// cargo-fuzz needs nightly (sanitizer coverage flags).
pub(crate) fn nightly_cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg("+nightly");
    for var in ["CARGO", "RUSTC", "RUSTDOC", "RUSTUP_TOOLCHAIN"] {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs every cargo-fuzz target for `seconds`; a crash fails with the
/// input saved under `proxy-userspace/fuzz/artifacts/<target>/`.
pub fn run_targets(root: &Path, seconds: u64) -> anyhow::Result<()> {
    let dir = root.join("proxy-userspace/fuzz");
    for target in TARGETS {
        let corpus = dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus).with_context(|| corpus.display().to_string())?;
        let mut cmd = nightly_cargo();
        cmd.current_dir(&dir)
            // The targets never load the kernel object: skip building it.
            .env("AYA_BUILD_SKIP", "1")
            // Safe Rust only: coverage without ASan runs several times faster.
            .args(["fuzz", "run", "--sanitizer", "none", target])
            .arg(&corpus);
        if target == "manifests_parse" {
            // Read-only seeds: the golden and example manifests.
            cmd.arg(root.join("proxy-userspace/testdata/golden"))
                .arg(root.join("examples"));
        }
        // An input slower than 10 s counts as a failure (a hang), not a wait.
        cmd.args(["--", &format!("-max_total_time={seconds}"), "-timeout=10"]);
        if target == "manifests_parse" {
            cmd.arg(format!("-dict={}", dir.join("manifests.dict").display()));
        }
        println!("fuzz: {target} for {seconds} s");
        if !cmd.status()?.success() {
            bail!(
                "fuzz target {target} failed to build or found a failure (its input is then under {}/artifacts/{target})",
                dir.display()
            );
        }
    }
    Ok(())
}

/// The packet fuzzer with `packets` packets, optimised (its checks are
/// userspace work per packet).
pub fn run_packets(root: &Path, packets: u64) -> anyhow::Result<()> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .env("VIPR_FUZZ_PACKETS", packets.to_string())
        .args([
            "test",
            "--release",
            "-p",
            "vipr-tests",
            "--test",
            "packets_fuzz",
        ])
        .args(["--", "--nocapture"])
        .status()?;
    if !status.success() {
        bail!("packet fuzzer failed");
    }
    Ok(())
}
