//! Test support for vipr: crafted packets for BPF_PROG_TEST_RUN, and network
//! namespace topologies with real servers for end-to-end tests and the demo.
pub mod apiserver;
pub mod bench;
pub mod capture;
pub mod cgroup;
pub mod churn;
pub mod container;
pub mod demo;
pub mod demo6;
pub mod echo;
pub mod external;
pub mod flow_table;
pub mod fuzz_packets;
pub mod metrics;
pub mod netns;
pub mod packet;
pub mod packet6;
pub mod soak;

/// The `vipr` binary under test: `VIPR_BIN` (set by `cargo xtask test`),
/// else the workspace's debug build.
pub fn vipr_bin() -> std::path::PathBuf {
    built_vipr("VIPR_BIN", "debug", "build it")
}

/// A release build of `vipr`: `VIPR_BIN_ALT` (set by `cargo xtask test` to
/// the image's static musl build), else the workspace's release build. The
/// restart test switches to it as "another build"; the churn test measures
/// the agent's CPU with it.
pub fn vipr_release_bin() -> std::path::PathBuf {
    built_vipr(
        "VIPR_BIN_ALT",
        "release",
        "`cargo build --release -p proxy-userspace`",
    )
}

fn built_vipr(variable: &str, profile: &str, how: &str) -> std::path::PathBuf {
    let bin = std::env::var_os(variable)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join(format!("../target/{profile}/vipr"))
        });
    assert!(
        bin.is_file(),
        "vipr binary {} missing: {how}, or set {variable}",
        bin.display()
    );
    bin
}
