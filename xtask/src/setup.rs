//! `cargo xtask setup`: everything a fresh machine lacks, installed by the
//! project itself. Each step first checks and does nothing when satisfied.
use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

/// Commands the build, the tests, the demo and the bench run, and the
/// Debian package of each (`vipr-bench` checks its own before it measures).
const TOOLS: [(&str, &str); 14] = [
    ("ip", "iproute2"),
    ("ethtool", "ethtool"),
    ("nsenter", "util-linux"),
    ("setpriv", "util-linux"),
    ("iptables", "iptables"),
    // The bench's kube-proxy iptables contenders, one per backend.
    ("iptables-legacy-restore", "iptables"),
    ("iptables-nft-restore", "iptables"),
    // The bench's kube-proxy nftables contender.
    ("nft", "nftables"),
    // Lists the programs on a cgroup (the socket-LB tests).
    ("bpftool", "bpftool"),
    // The bench's real workload: nginx behind every contender, wrk as client.
    // `nginx`: the name every Debian release has (the -light/-full
    // flavours are bookworm's and changed after it).
    ("nginx", "nginx"),
    ("wrk", "wrk"),
    // The container image's static agent: ring's C code for musl.
    ("musl-gcc", "musl-tools"),
    // The container test runs the image (`tests/tests/e2e_container.rs`),
    // with runc: crun refuses hybrid cgroup hosts with cgroup2 controllers.
    ("podman", "podman"),
    ("runc", "runc"),
];

pub fn run() -> anyhow::Result<()> {
    apt_packages()?;
    nightly_with_rust_src()?;
    musl_target()?;
    bpf_linker()?;
    cargo_fuzz()?;
    Ok(())
}

fn found(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Runs `cmd`; its stdout, or an error with its stderr.
pub(crate) fn run_checked(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn apt_packages() -> anyhow::Result<()> {
    let mut missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(tool, _)| !found(tool))
        .map(|(_, package)| *package)
        .collect();
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    apt_install("setup", &missing)?;
    // Debian starts a freshly installed nginx on port 80; the bench runs its
    // own in network namespaces and wants none on the host.
    if missing.contains(&"nginx") && found("systemctl") {
        let _ = Command::new("systemctl")
            .args(["disable", "--now", "nginx.service"])
            .status();
    }
    Ok(())
}

/// `apt-get update` and install `packages` (never empty), non-interactively.
pub fn apt_install(who: &str, packages: &[&str]) -> anyhow::Result<()> {
    println!("{who}: installing {}", packages.join(" "));
    run_checked(Command::new("apt-get").arg("update"))?;
    run_checked(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages),
    )?;
    Ok(())
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    Ok(PathBuf::from(
        run_checked(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim(),
    ))
}

fn nightly_with_rust_src() -> anyhow::Result<()> {
    if nightly_sysroot().is_err() {
        println!("setup: installing the nightly toolchain");
        run_checked(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let core_src = nightly_sysroot()?.join("lib/rustlib/src/rust/library/core");
    if !core_src.exists() {
        println!("setup: adding rust-src to nightly (for -Z build-std=core)");
        run_checked(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// The standard library for the container image's static build.
fn musl_target() -> anyhow::Result<()> {
    let target = crate::image::TARGET;
    let installed = run_checked(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if installed.lines().any(|l| l.trim() == target) {
        return Ok(());
    }
    println!("setup: adding the {target} target (the container image's static agent)");
    run_checked(Command::new("rustup").args(["target", "add", target]))?;
    Ok(())
}

/// bpf-linker linked against the LLVM inside the nightly toolchain: no
/// system LLVM of the right version exists on Debian bookworm.
fn bpf_linker() -> anyhow::Result<()> {
    let works = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if works {
        return Ok(());
    }
    let lib_dir = nightly_sysroot()?.join("lib");
    let llvm_lib = std::fs::read_dir(&lib_dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find_map(|name| {
            name.strip_prefix("lib")
                .and_then(|n| n.strip_suffix(".so"))
                .filter(|n| n.starts_with("LLVM-"))
                .map(String::from)
        })
        .context("no libLLVM-*.so in the nightly toolchain")?;
    let version = run_checked(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("nightly rustc does not report its LLVM version")?
        .to_string();
    println!("setup: building bpf-linker against {llvm_lib} (about a minute)");
    let lib_dir = lib_dir.display();
    let status = Command::new("cargo")
        .env(
            "RUSTFLAGS",
            format!("-L native={lib_dir} -l dylib={llvm_lib} -C link-arg=-Wl,-rpath,{lib_dir}"),
        )
        .args([
            "+stable",
            "install",
            "bpf-linker",
            "--version",
            "0.13.0",
            "--no-default-features",
            "--features",
            &format!("llvm-{major},no-llvm-linking"),
        ])
        .status()?;
    if !status.success() {
        bail!("building bpf-linker failed");
    }
    Ok(())
}

/// cargo-fuzz for the nightly toolchain (`cargo xtask fuzz`, and the short
/// fuzzing runs of `cargo xtask test`).
fn cargo_fuzz() -> anyhow::Result<()> {
    let nightly_cargo = crate::fuzz::nightly_cargo;
    let present = nightly_cargo()
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    println!("setup: installing cargo-fuzz (about a minute)");
    let status = nightly_cargo()
        .args(["install", "cargo-fuzz", "--locked", "--version", "^0.13"])
        .status()?;
    if !status.success() {
        bail!("installing cargo-fuzz failed");
    }
    Ok(())
}
