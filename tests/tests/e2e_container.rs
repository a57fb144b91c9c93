//! The container image (`cargo xtask image`) run under podman exactly as
//! `deploy/daemonset.yaml` runs it (command, capabilities, user, security
//! options, mounts, environment and arguments read from the manifests) as
//! node1's agent of the demo cluster; node2's agent is a plain process.
//!
//! Requires root, podman, the image archive (`VIPR_IMAGE`, else
//! target/image/vipr.oci.tar) and the host agent (`VIPR_BIN`) for node2
//! and the cleanup. Run with `--test-threads=1`.
use std::{
    collections::BTreeSet,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use vipr_tests::{
    container::{self, DaemonSet, Podman},
    demo::{self, AgentSpec, DemoCluster},
    echo,
};

/// The node whose agent runs in the container.
const NODE: &str = "node1";
const TIMEOUT: Duration = Duration::from_secs(2);

/// A manifests directory removed on drop.
struct Manifests(PathBuf);

impl Manifests {
    fn new(tag: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("vipr-e2e-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        demo::prepare_manifests(&path, Some(&container::workspace_root().join("examples")))?;
        Ok(Self(path))
    }
}

impl Drop for Manifests {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts the demo cluster with node1's agent in the DaemonSet's container,
/// given `caps` instead of the DaemonSet's added capabilities.
fn start(
    podman: &Podman,
    ds: &DaemonSet,
    image: &str,
    manifests: &Path,
    caps: &[String],
) -> Result<DemoCluster> {
    let launch = |spec: &AgentSpec| -> Result<Option<Command>> {
        if spec.node != NODE {
            return Ok(None);
        }
        let name = format!("vipr-{}", spec.netns);
        podman.agent_command(ds, image, &name, spec, caps).map(Some)
    };
    DemoCluster::start_with(&vipr_tests::vipr_bin(), manifests, &launch)
}

fn setup() -> (DaemonSet, Podman, String) {
    let ds = DaemonSet::load().expect("read deploy/");
    let podman = Podman::new().expect("podman storage");
    let archive = container::image_archive();
    assert!(
        archive.is_file(),
        "{} missing: run `cargo xtask image`",
        archive.display()
    );
    let image = podman.load(&archive).expect("podman load");
    (ds, podman, image)
}

#[test]
fn the_daemonsets_container_serves_the_cluster() {
    let (ds, podman, image) = setup();
    let manifests = Manifests::new("container").expect("manifests");
    let cluster =
        start(&podman, &ds, &image, &manifests.0, &ds.caps_add).unwrap_or_else(|e| panic!("{e:#}"));
    if let Err(e) =
        check_container(&podman, &ds, &image, &cluster).and_then(|()| check_traffic(&cluster))
    {
        panic!("{e:?}\n{}", cluster.logs());
    }
    cluster.shutdown().unwrap_or_else(|e| panic!("{e:#}"));
}

/// The container is what the DaemonSet asks for, seen by the kernel.
fn check_container(
    podman: &Podman,
    ds: &DaemonSet,
    image: &str,
    cluster: &DemoCluster,
) -> Result<()> {
    let entrypoint = podman.run(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.Entrypoint}}",
        image,
    ])?;
    let entrypoint: Vec<String> = serde_json::from_str(entrypoint.trim())?;
    ensure!(
        entrypoint == ds.command,
        "image entrypoint {entrypoint:?}, DaemonSet command {:?}",
        ds.command
    );
    let info = podman.inspect(&format!("vipr-{}", cluster.netns(NODE)))?;
    ensure!(
        info["HostConfig"]["Privileged"] == false,
        "privileged container"
    );
    let pid = info["State"]["Pid"].as_u64().context("no pid")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    let mut wanted = 0u64;
    for cap in &ds.caps_add {
        wanted |= 1 << container::capability_bit(cap)?;
    }
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        let bits = u64::from_str_radix(field(set)?, 16)?;
        ensure!(
            bits == wanted,
            "{set} {bits:#x}, the DaemonSet's {:?} are {wanted:#x}",
            ds.caps_add
        );
    }
    ensure!(
        field("NoNewPrivs")? == "1" || ds.allow_privilege_escalation,
        "privilege escalation allowed"
    );
    let uid = ds.run_as_user.to_string();
    ensure!(
        field("Uid")?.split_whitespace().all(|u| u == uid),
        "uid {}",
        field("Uid")?
    );
    // 0: no seccomp filter, 2: a filter.
    let seccomp = if ds.seccomp.as_deref() == Some("Unconfined") {
        "0"
    } else {
        "2"
    };
    ensure!(
        field("Seccomp")? == seccomp,
        "seccomp mode {}",
        field("Seccomp")?
    );
    let inode = |path: &str| std::fs::metadata(path).map(|m| (m.dev(), m.ino()));
    ensure!(
        inode(&format!("/proc/{pid}/ns/net"))?
            == inode(
                &vipr_tests::netns::netns_path(&cluster.netns(NODE))
                    .display()
                    .to_string()
            )?,
        "the agent is not in {NODE}'s network namespace"
    );
    let effective: BTreeSet<String> = info["EffectiveCaps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_str().map(String::from))
        .collect();
    let listed: BTreeSet<String> = ds.caps_add.iter().map(|c| format!("CAP_{c}")).collect();
    ensure!(effective == listed, "podman's EffectiveCaps {effective:?}");
    Ok(())
}

/// Pods and the node's own processes on node1 reach an endpoint on node2
/// through the ClusterIP, over TCP and UDP.
fn check_traffic(cluster: &DemoCluster) -> Result<()> {
    cluster.set_endpoints(&["echo-3"])?;
    let (pod, node) = (cluster.netns("client"), cluster.netns(NODE));
    // Applied once 10 requests in a row reach echo-3.
    let moved = demo::wait_until(Duration::from_secs(5), || {
        (0..10).all(|_| {
            echo::tcp_request(&pod, demo::http_addr(), TIMEOUT).is_ok_and(|n| n == "echo-3")
        })
    });
    ensure!(
        moved,
        "requests from {NODE}'s pod do not reach echo-3 on node2"
    );
    for from in [&pod, &node] {
        for i in 0..10 {
            let name = echo::tcp_request(from, demo::http_addr(), TIMEOUT)
                .with_context(|| format!("TCP request {i} from {from}"))?;
            ensure!(name == "echo-3", "TCP from {from} served by {name}");
            let (name, _) = echo::udp_request(from, demo::dns_addr(), TIMEOUT)
                .with_context(|| format!("UDP request {i} from {from}"))?;
            ensure!(name == "echo-3", "UDP from {from} served by {name}");
        }
    }
    Ok(())
}

/// SYS_ADMIN is needed (it implies BPF and PERFMON, so the others cannot
/// be shown needed the same way; see the DaemonSet): without it the agent
/// exits for want of permission instead of becoming healthy.
#[test]
fn the_agent_does_not_start_without_sys_admin() {
    let (ds, podman, image) = setup();
    assert!(ds.caps_add.iter().any(|c| c == "SYS_ADMIN"));
    let manifests = Manifests::new("container-caps").expect("manifests");
    let fewer: Vec<String> = ds
        .caps_add
        .iter()
        .filter(|c| *c != "SYS_ADMIN")
        .cloned()
        .collect();
    let err = match start(&podman, &ds, &image, &manifests.0, &fewer) {
        Ok(cluster) => panic!("healthy without SYS_ADMIN:\n{}", cluster.logs()),
        Err(e) => format!("{e:#}"),
    };
    // Under a seccomp profile that denies bpf() without SYS_ADMIN, the
    // feature probe sees EPERM and reports every feature missing.
    let denied = err.lines().find(|l| {
        [
            "Operation not permitted",
            "Permission denied",
            "lacks what the datapath needs",
        ]
        .iter()
        .any(|m| l.contains(m))
    });
    assert!(
        err.contains(&format!("vipr agent on {NODE} exited early")) && denied.is_some(),
        "without SYS_ADMIN the agent should fail for want of permission: {err}"
    );
    eprintln!("without SYS_ADMIN: {}", denied.unwrap_or_default());
}
