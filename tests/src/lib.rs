//! Test support for vipr: crafted packets for BPF_PROG_TEST_RUN, and network
//! namespace topologies with real servers for end-to-end tests and the demo.
pub mod apiserver;
pub mod bench;
pub mod cgroup;
pub mod churn;
pub mod demo;
pub mod echo;
pub mod external;
pub mod flow_table;
pub mod fuzz_packets;
pub mod netns;
pub mod packet;
pub mod soak;

/// The `vipr` binary under test: `VIPR_BIN` (set by `cargo xtask test`),
/// else the workspace's debug build.
pub fn vipr_bin() -> std::path::PathBuf {
    let bin = std::env::var_os("VIPR_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/vipr")
        });
    assert!(
        bin.is_file(),
        "vipr binary {} missing: build it or set VIPR_BIN",
        bin.display()
    );
    bin
}

/// The release build of `vipr`: `VIPR_BIN_ALT` (set by `cargo xtask test`),
/// else the workspace's release build. The restart test switches to it as
/// "another build"; the churn test measures the agent's CPU with it.
pub fn vipr_release_bin() -> std::path::PathBuf {
    let bin = std::env::var_os("VIPR_BIN_ALT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/vipr")
        });
    assert!(
        bin.is_file(),
        "{} missing: `cargo build --release -p proxy-userspace`, or set VIPR_BIN_ALT",
        bin.display()
    );
    bin
}
