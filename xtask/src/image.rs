//! `cargo xtask image`: the agent's container image, assembled here without
//! a registry, a base image or a container engine. It is one layer holding
//! a static (musl) `vipr` at the Dockerfile's path and the build host's CA
//! roots, written as an OCI image archive that `podman load` and `skopeo
//! copy oci-archive:` take. Every timestamp and owner is fixed: the same
//! binary gives the same image digest.
use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, bail};
use sha2::{Digest as _, Sha256};

pub const TARGET: &str = "x86_64-unknown-linux-musl";
/// The name `podman load` gives the image.
pub const NAME: &str = "localhost/vipr:dev";
/// Where the binary lives in the image: the DaemonSet's `command`.
const BIN_PATH: &str = "usr/local/bin/vipr";
/// Debian's bundle of CA roots (ca-certificates). kube's client trusts the
/// system roots only for an API server whose CA the kubeconfig lacks; the
/// in-cluster config always carries one, so the image works without them.
const CA_BUNDLE: &str = "etc/ssl/certs/ca-certificates.crt";

/// The static release `vipr` the image holds, once [`build`] has run.
pub fn release_binary(root: &Path) -> PathBuf {
    root.join("target").join(TARGET).join("release/vipr")
}

/// Builds the image archive into `out` (`vipr.oci.tar`) and returns its path.
pub fn build(root: &Path, out: &Path) -> anyhow::Result<PathBuf> {
    let started = Instant::now();
    crate::cargo(
        root,
        &[
            "build",
            "--release",
            "--target",
            TARGET,
            "-p",
            "proxy-userspace",
        ],
    )?;
    let target_dir = root.join("target").join(TARGET).join("release");
    let object = crate::find_object_in(&target_dir.join("build"))?;
    if std::fs::metadata(&object)?.len() == 0 {
        bail!(
            "the musl build embedded an empty kernel object ({}): unset AYA_BUILD_SKIP",
            object.display()
        );
    }
    let binary = std::fs::read(target_dir.join("vipr")).context("read the musl vipr")?;
    let roots = std::fs::read(Path::new("/").join(CA_BUNDLE))
        .inspect_err(|e| println!("image: no CA roots in the image (/{CA_BUNDLE}: {e})"))
        .unwrap_or_default();
    let mut files = vec![(BIN_PATH, 0o755, binary.as_slice())];
    if !roots.is_empty() {
        files.push((CA_BUNDLE, 0o644, roots.as_slice()));
    }
    let layer = tar(&files)?;
    let archive = oci_archive(&layer)?;
    std::fs::create_dir_all(out)?;
    let path = out.join("vipr.oci.tar");
    let tmp = out.join(".vipr.oci.tar.tmp");
    std::fs::write(&tmp, &archive)?;
    std::fs::rename(&tmp, &path)?;
    println!(
        "image: {} ({NAME}, {:.1} MiB, layer {}) in {:.0} s; load it with `podman load -i {}`",
        path.display(),
        archive.len() as f64 / (1 << 20) as f64,
        digest(&layer),
        started.elapsed().as_secs_f64(),
        path.display()
    );
    Ok(path)
}

fn digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A tar of `files` (path, mode, contents) with their parent directories,
/// owned by root, dated 0.
fn tar(files: &[(&str, u32, &[u8])]) -> anyhow::Result<Vec<u8>> {
    let mut dirs: Vec<String> = files
        .iter()
        .flat_map(|(path, _, _)| {
            let parts: Vec<&str> = path.split('/').collect();
            (1..parts.len())
                .map(|n| format!("{}/", parts[..n].join("/")))
                .collect::<Vec<_>>()
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    let mut builder = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, mode: u32, size: usize| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size as u64);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h
    };
    for dir in &dirs {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        builder.append_data(&mut h, dir, std::io::empty())?;
    }
    for (path, mode, contents) in files {
        let mut h = header(tar::EntryType::Regular, *mode, contents.len());
        builder.append_data(&mut h, path, *contents)?;
    }
    Ok(builder.into_inner()?)
}

/// The OCI image layout (config, manifest, index) around one uncompressed
/// layer, as a tar.
fn oci_archive(layer: &[u8]) -> anyhow::Result<Vec<u8>> {
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z","config":{{"Entrypoint":["/{BIN_PATH}"]}},"rootfs":{{"type":"layers","diff_ids":["{}"]}},"history":[{{"created":"1970-01-01T00:00:00Z","created_by":"cargo xtask image"}}]}}"#,
        digest(layer)
    );
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}]}}"#,
        digest(config.as_bytes()),
        config.len(),
        digest(layer),
        layer.len()
    );
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"{NAME}"}}}}]}}"#,
        digest(manifest.as_bytes()),
        manifest.len()
    );
    let blob_path = |bytes: &[u8]| format!("blobs/{}", digest(bytes).replace(':', "/"));
    let paths = [
        blob_path(manifest.as_bytes()),
        blob_path(config.as_bytes()),
        blob_path(layer),
    ];
    tar(&[
        ("oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#),
        ("index.json", 0o644, index.as_bytes()),
        (&paths[0], 0o644, manifest.as_bytes()),
        (&paths[1], 0o644, config.as_bytes()),
        (&paths[2], 0o644, layer),
    ])
}
