//! What each contender needs on the machine, checked before anything is
//! measured: a missing tool stops the bench at once, naming its package,
//! instead of turning every row of a contender into a failure.
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Result, bail};

use super::contenders::Contender;

/// Every measurement: the topology (`ip`, `nsenter`), the agent and the
/// servers run under `setpriv`, nginx in the pods and wrk in the client.
const COMMON: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
    ("setpriv", "util-linux"),
    ("nginx", "nginx"),
    ("wrk", "wrk"),
];

/// (command, Debian package) that `contender` runs beside [`COMMON`].
pub fn required(contender: Contender) -> &'static [(&'static str, &'static str)] {
    match contender {
        Contender::Direct | Contender::Vipr | Contender::ViprSocketLb => &[],
        Contender::IptablesLegacy => &[("iptables-legacy-restore", "iptables")],
        Contender::IptablesNft => &[("iptables-nft-restore", "iptables")],
        Contender::Nftables => &[("nft", "nftables")],
    }
}

/// `command` as the bench will run it: the first executable on `PATH`.
fn on_path(command: &str, path: &std::ffi::OsStr) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|dir| dir.join(command))
        .find(|file| {
            file.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// What is missing for `contenders`, as "command (contender; package P)".
fn missing_in(contenders: &[Contender], path: &std::ffi::OsStr) -> Vec<String> {
    let mut missing: Vec<String> = Vec::new();
    let needs = COMMON
        .iter()
        .map(|&(command, package)| (command, package, "every contender".to_owned()))
        .chain(contenders.iter().flat_map(|&c| {
            required(c)
                .iter()
                .map(move |&(command, package)| (command, package, c.name().to_owned()))
        }));
    for (command, package, who) in needs {
        if on_path(command, path).is_none() {
            missing.push(format!("{command} (for {who}; Debian package {package})"));
        }
    }
    missing
}

/// Fails at once, naming every missing tool and its package.
pub fn check(contenders: &[Contender], vipr: &Path) -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut missing = missing_in(contenders, &path);
    if !vipr.is_file() {
        missing.push(format!(
            "{} (the vipr agent; `cargo build --release -p proxy-userspace`)",
            vipr.display()
        ));
    }
    if !missing.is_empty() {
        bail!(
            "missing before measuring anything (`cargo xtask setup` installs the packages):\n  {}",
            missing.join("\n  ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_is_named_with_its_package_and_contender() {
        let dir = std::env::temp_dir().join(format!("vipr-tools-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (command, _) in COMMON {
            let file = dir.join(command);
            std::fs::write(&file, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        // Present but not executable counts as missing.
        std::fs::write(dir.join("nft"), "").unwrap();
        let path = dir.clone().into_os_string();
        assert!(missing_in(&[Contender::Direct, Contender::Vipr], &path).is_empty());
        let missing = missing_in(&[Contender::Nftables, Contender::IptablesLegacy], &path);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            missing,
            [
                "nft (for nftables; Debian package nftables)",
                "iptables-legacy-restore (for iptables-legacy; Debian package iptables)"
            ]
        );
    }
}
