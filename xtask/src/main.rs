//! Project tasks: `cargo xtask <setup|build-ebpf|image|demo|test|bench|bench-sync|fuzz>`.
mod fuzz;
mod image;
mod setup;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build and the tests need (idempotent, quick when present).
    Setup,
    /// Build the kernel programs (and the agent that embeds them).
    BuildEbpf,
    /// Build the agent's container image from this workspace (a static
    /// `vipr` on an empty base) as an OCI archive for `podman load`.
    Image {
        #[arg(long, default_value = "target/image")]
        out: PathBuf,
    },
    /// Build, start a two-node demo cluster in network namespaces, send requests, tear down.
    Demo {
        /// Number of TCP requests to send through the ClusterIP.
        #[arg(long, default_value_t = 30)]
        requests: usize,
    },
    /// Run every test: unit, golden, packet (BPF_PROG_TEST_RUN) and end-to-end.
    Test {
        /// Also run cargo fmt --check and clippy -D warnings first.
        #[arg(long)]
        lint: bool,
    },
    /// Fuzz for longer than `test` does: each cargo-fuzz target (object
    /// conversion, manifests parser) for `--seconds`, then the packet fuzzer.
    Fuzz {
        #[arg(long, default_value_t = 300)]
        seconds: u64,
        #[arg(long, default_value_t = 10_000_000)]
        packets: u64,
    },
    /// Run the packet tests and a reduced end-to-end scenario on Debian's
    /// 6.1 and 6.12 kernels under qemu (software emulation).
    VmTest {
        /// 6.1, 6.12 or all.
        #[arg(long, default_value = "all")]
        kernel: String,
        /// Also restart and upgrade the agents under load on 6.1 (clsact;
        /// several minutes under emulation).
        #[arg(long)]
        with_restart: bool,
    },
    /// Benchmarks: vipr against kube-proxy's iptables/nftables shapes and
    /// no load balancer; writes a JSON result file, a Markdown report and plots.
    Bench {
        /// The quick run (up to 10,000 Services); the default.
        #[arg(long, conflicts_with_all = ["full", "packets_only"])]
        quick: bool,
        /// The full run (up to 100,000 Services, longer loads).
        #[arg(long)]
        full: bool,
        /// Only the kernel cost per packet (BPF_PROG_TEST_RUN).
        #[arg(long, conflicts_with = "full")]
        packets_only: bool,
        /// Where the report goes.
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
    },
    /// Sync cost at scale against an in-process API server: map writes,
    /// objects converted and time per sync; the agent's RSS and initial sync.
    BenchSync {
        #[arg(long, default_value = "1000,10000")]
        services: String,
        #[arg(long, default_value_t = 10)]
        endpoints: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let root = workspace_root();
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::BuildEbpf => {
            setup::run()?;
            build_agent(&root)?;
            let object = find_object(&root)?;
            println!(
                "kernel object: {} ({} bytes)",
                object.display(),
                std::fs::metadata(&object)?.len()
            );
            Ok(())
        }
        Task::Image { out } => {
            setup::run()?;
            image::build(&root, &root.join(out)).map(drop)
        }
        Task::Demo { requests } => {
            require_root()?;
            setup::run()?;
            let vipr = build_agent(&root)?;
            let examples = root.join("examples");
            cargo_run_tool(
                &root,
                "vipr-demo",
                &[
                    vipr.as_os_str(),
                    examples.as_os_str(),
                    requests.to_string().as_ref(),
                ],
            )
        }
        Task::Test { lint } => {
            require_root()?;
            setup::run()?;
            if lint {
                cargo(&root, &["fmt", "--all", "--check"])?;
                cargo(
                    &root,
                    &[
                        "clippy",
                        "--workspace",
                        "--all-targets",
                        "--",
                        "-D",
                        "warnings",
                    ],
                )?;
            }
            let vipr = build_agent(&root)?;
            // The container test runs the agent from the image. Its static
            // release build is also the other build the restart test
            // upgrades to (one release build instead of two: 3 minutes).
            let image = image::build(&root, &root.join("target/image"))?;
            // Pure and unit tests in parallel; the kernel-facing tests share
            // kernel state and run one at a time.
            cargo(&root, &["test", "--workspace", "--exclude", "vipr-tests"])?;
            let status = Command::new(env_cargo())
                .current_dir(&root)
                .env("VIPR_BIN", &vipr)
                .env("VIPR_BIN_ALT", image::release_binary(&root))
                .env("VIPR_IMAGE", &image)
                .args(["test", "-p", "vipr-tests", "--", "--test-threads=1"])
                .status()?;
            if !status.success() {
                bail!("kernel-facing tests failed");
            }
            fuzz::run_targets(&root, fuzz::TEST_SECONDS)
        }
        Task::Fuzz { seconds, packets } => {
            require_root()?;
            setup::run()?;
            fuzz::run_targets(&root, seconds)?;
            fuzz::run_packets(&root, packets)
        }
        Task::VmTest {
            kernel,
            with_restart,
        } => {
            require_root()?;
            setup::run()?;
            vm::run(&root, &kernel, with_restart)
        }
        Task::Bench {
            quick: _,
            full,
            packets_only,
            out,
        } => {
            require_root()?;
            setup::run()?;
            // The agent's own sync time is one of the figures: optimise it.
            cargo(&root, &["build", "--release", "-p", "proxy-userspace"])?;
            let vipr = root.join("target/release/vipr");
            let mode = match (full, packets_only) {
                (true, _) => "--full",
                (_, true) => "--packets-only",
                _ => "--quick",
            };
            let out = root.join(out);
            cargo_run_tool(
                &root,
                "vipr-bench",
                &[vipr.as_os_str(), out.as_os_str(), mode.as_ref()],
            )
        }
        Task::BenchSync {
            services,
            endpoints,
        } => {
            require_root()?;
            setup::run()?;
            cargo(&root, &["build", "--release", "-p", "proxy-userspace"])?;
            let status = Command::new(env_cargo())
                .current_dir(&root)
                .env("VIPR_BIN", root.join("target/release/vipr"))
                .args(["run", "--quiet", "--release", "-p", "vipr-tests"])
                .args(["--bin", "vipr-sync-bench", "--", &services])
                .arg(endpoints.to_string())
                .status()?;
            if !status.success() {
                bail!("vipr-sync-bench failed");
            }
            Ok(())
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn env_cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn cargo(root: &Path, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(env_cargo())
        .current_dir(root)
        .args(args)
        .status()
        .with_context(|| format!("cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

/// Runs one of the test crate's tools. The dev profile is enough: what they
/// measure is kernel time.
fn cargo_run_tool(root: &Path, bin: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
    // The bench's load generator competes with what it measures for the
    // same two cores: build it optimised, as the agent under test is.
    let profile: &[&str] = if bin == "vipr-bench" {
        &["--release"]
    } else {
        &[]
    };
    let status = Command::new(env_cargo())
        .current_dir(root)
        .args(["run", "--quiet"])
        .args(profile)
        .args(["-p", "vipr-tests", "--bin", bin, "--"])
        .args(args)
        .status()?;
    if !status.success() {
        bail!("{bin} failed");
    }
    Ok(())
}

/// Builds the `vipr` binary (its build script builds the kernel object).
fn build_agent(root: &Path) -> anyhow::Result<PathBuf> {
    cargo(root, &["build", "-p", "proxy-userspace"])?;
    Ok(root.join("target/debug/vipr"))
}

fn find_object(root: &Path) -> anyhow::Result<PathBuf> {
    find_object_in(&root.join("target/debug/build"))
}

/// The newest kernel object a build script left under `build`.
fn find_object_in(build: &Path) -> anyhow::Result<PathBuf> {
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in std::fs::read_dir(build)? {
        let candidate = entry?.path().join("out/proxy-ebpf");
        if let Ok(meta) = std::fs::metadata(&candidate) {
            let modified = meta.modified()?;
            if newest.as_ref().is_none_or(|(t, _)| modified > *t) {
                newest = Some((modified, candidate));
            }
        }
    }
    newest
        .map(|(_, p)| p)
        .with_context(|| format!("no kernel object under {}", build.display()))
}

fn require_root() -> anyhow::Result<()> {
    if !nix_is_root() {
        bail!("this task loads BPF programs and creates network namespaces: run it as root");
    }
    Ok(())
}

fn nix_is_root() -> bool {
    // /proc/self/status "Uid:" real uid; avoids a libc dependency for one call.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}
