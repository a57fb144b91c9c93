//! The agent's container image under podman, run as `deploy/daemonset.yaml`
//! runs it: the container's command, capabilities, user, security options,
//! mounts, environment and arguments are read from the DaemonSet and its
//! ConfigMap, so a test of the container tests what users deploy.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};
use serde_yaml_ng::Value;

/// The image archive `cargo xtask image` writes: `VIPR_IMAGE` (set by
/// `cargo xtask test`), else the default output path.
pub fn image_archive() -> PathBuf {
    std::env::var_os("VIPR_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/image/vipr.oci.tar"))
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A host path mounted into the container.
#[derive(Debug, Clone)]
pub struct Mount {
    pub host: PathBuf,
    pub container: PathBuf,
    pub read_only: bool,
    /// Kubernetes' mountPropagation (None, HostToContainer, Bidirectional).
    pub propagation: String,
}

/// The agent container of `deploy/daemonset.yaml`.
#[derive(Debug, Clone)]
pub struct DaemonSet {
    pub command: Vec<String>,
    /// The args, `$(VAR)` still unexpanded.
    pub args: Vec<String>,
    /// The ConfigMap's data, which the container gets as its environment.
    pub env: BTreeMap<String, String>,
    pub caps_drop: Vec<String>,
    pub caps_add: Vec<String>,
    pub run_as_user: i64,
    pub privileged: bool,
    pub allow_privilege_escalation: bool,
    /// The seccomp profile type, if the manifest sets one.
    pub seccomp: Option<String>,
    pub host_network: bool,
    pub mounts: Vec<Mount>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

impl DaemonSet {
    /// Reads `deploy/daemonset.yaml` and `deploy/configmap.yaml`.
    pub fn load() -> Result<Self> {
        let deploy = workspace_root().join("deploy");
        let read = |name: &str| -> Result<Value> {
            let text = std::fs::read_to_string(deploy.join(name))?;
            serde_yaml_ng::from_str(&text).with_context(|| format!("parse {name}"))
        };
        let (ds, cm) = (read("daemonset.yaml")?, read("configmap.yaml")?);
        let pod = &ds["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let security = &container["securityContext"];
        let seccomp = security["seccompProfile"]["type"]
            .as_str()
            .or(pod["securityContext"]["seccompProfile"]["type"].as_str())
            .map(String::from);
        let env = cm["data"]
            .as_mapping()
            .context("configmap without data")?
            .iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
            .collect();
        let mut mounts = Vec::new();
        for m in container["volumeMounts"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            let name = m["name"].as_str().context("volumeMount without name")?;
            let volume = pod["volumes"]
                .as_sequence()
                .into_iter()
                .flatten()
                .find(|v| v["name"].as_str() == Some(name))
                .with_context(|| format!("no volume {name}"))?;
            mounts.push(Mount {
                host: volume["hostPath"]["path"]
                    .as_str()
                    .with_context(|| format!("volume {name} is not a hostPath"))?
                    .into(),
                container: m["mountPath"].as_str().context("no mountPath")?.into(),
                read_only: m["readOnly"].as_bool().unwrap_or(false),
                propagation: m["mountPropagation"].as_str().unwrap_or("None").into(),
            });
        }
        Ok(Self {
            command: strings(&container["command"]),
            args: strings(&container["args"]),
            env,
            caps_drop: strings(&security["capabilities"]["drop"]),
            caps_add: strings(&security["capabilities"]["add"]),
            run_as_user: security["runAsUser"].as_i64().context("no runAsUser")?,
            privileged: security["privileged"].as_bool().unwrap_or(false),
            allow_privilege_escalation: security["allowPrivilegeEscalation"]
                .as_bool()
                .unwrap_or(true),
            seccomp,
            host_network: pod["hostNetwork"].as_bool().unwrap_or(false),
            mounts,
        })
    }

    /// The args with `$(VAR)` replaced from `vars`, then the ConfigMap.
    pub fn expanded_args(&self, vars: &BTreeMap<&str, String>) -> Result<Vec<String>> {
        self.args
            .iter()
            .map(|arg| {
                let mut out = arg.clone();
                while let Some(start) = out.find("$(") {
                    let end = start + out[start..].find(')').context("unclosed $(")?;
                    let name = &out[start + 2..end];
                    let value = vars
                        .get(name)
                        .cloned()
                        .or_else(|| self.env.get(name).cloned())
                        .with_context(|| format!("{arg}: no value for {name}"))?;
                    out.replace_range(start..=end, &value);
                }
                Ok(out)
            })
            .collect()
    }
}

/// The kernel's number of a capability the DaemonSet may name.
pub fn capability_bit(name: &str) -> Result<u32> {
    Ok(match name.trim_start_matches("CAP_") {
        "NET_ADMIN" => 12,
        "NET_RAW" => 13,
        "SYS_PTRACE" => 19,
        "SYS_ADMIN" => 21,
        "SYS_RESOURCE" => 24,
        "PERFMON" => 38,
        "BPF" => 39,
        other => bail!("capability {other} unknown to the test"),
    })
}

/// podman with storage of its own (vfs, under the temp dir) and flags that
/// need no system configuration. Dropping it removes its containers, its
/// images and the storage.
#[derive(Debug)]
pub struct Podman {
    dir: PathBuf,
    containers: std::cell::RefCell<Vec<String>>,
    /// The parent cgroups podman makes (cgroupfs manager) that were not
    /// there before: it leaves them when its containers go.
    new_cgroups: Vec<PathBuf>,
}

const CGROUP_PARENT: &str = "libpod_parent";

/// Where podman would put its parent group: every hierarchy's root.
fn cgroup_parents() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut found: Vec<PathBuf> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path().join(CGROUP_PARENT))
        .collect();
    found.push(root.join(CGROUP_PARENT));
    found
}

fn remove_cgroup_tree(dir: &Path) {
    for child in std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
    {
        if child.path().is_dir() {
            let _ = std::fs::remove_dir(child.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

const DIR_PREFIX: &str = "vipr-podman-";

impl Podman {
    pub fn new() -> Result<Self> {
        remove_dead_runs();
        let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            containers: Default::default(),
            new_cgroups: cgroup_parents()
                .into_iter()
                .filter(|p| !p.exists())
                .collect(),
        })
    }

    /// `podman` with this storage.
    pub fn command(&self) -> Command {
        command_for(&self.dir)
    }

    /// Runs podman; its stdout, or an error with its stderr.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let out = self.command().args(args).output().context("run podman")?;
        ensure!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Loads an image archive; the image's name.
    pub fn load(&self, archive: &Path) -> Result<String> {
        let out = self.run(&["load", "-q", "-i", &archive.display().to_string()])?;
        out.lines()
            .filter_map(|l| l.split_once(": ").map(|(_, name)| name.trim()))
            .next_back()
            .map(String::from)
            .with_context(|| format!("podman load printed no image name: {out}"))
    }

    /// Remembers a container to remove on drop.
    pub fn track(&self, name: &str) {
        self.containers.borrow_mut().push(name.to_owned());
    }

    /// `podman inspect` of a container, as JSON.
    pub fn inspect(&self, name: &str) -> Result<serde_json::Value> {
        let out = self.run(&["inspect", "--type", "container", name])?;
        let list: serde_json::Value = serde_json::from_str(&out)?;
        Ok(list[0].clone())
    }
}

fn command_for(dir: &Path) -> Command {
    let mut cmd = Command::new("podman");
    cmd.args(global_args(dir));
    cmd
}

fn global_args(dir: &Path) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    for (flag, sub) in [
        ("--root", "root"),
        ("--runroot", "runroot"),
        ("--tmpdir", "tmp"),
    ] {
        args.push(flag.into());
        args.push(dir.join(sub).into());
    }
    // runc: crun refuses the hybrid cgroup layout when cgroup2 holds
    // controllers (as on the test VM).
    for arg in [
        "--storage-driver=vfs",
        "--cgroup-manager=cgroupfs",
        "--events-backend=none",
        "--runtime=runc",
    ] {
        args.push(arg.into());
    }
    args
}

fn remove_storage(dir: &Path) -> Result<()> {
    let out = command_for(dir).args(["rm", "-af", "-t", "0"]).output()?;
    let removed = command_for(dir).args(["rmi", "-af"]).output()?;
    let _ = std::fs::remove_dir_all(dir);
    ensure!(
        out.status.success() && removed.status.success(),
        "podman cleanup in {}: {}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&removed.stderr)
    );
    Ok(())
}

/// Storage left by killed test runs (their pid is gone).
fn remove_dead_runs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let dead = name
            .strip_prefix(DIR_PREFIX)
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
        if dead {
            let _ = remove_storage(&entry.path());
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for name in self.containers.borrow().iter() {
            let _ = self.command().args(["rm", "-f", "-t", "0", name]).output();
        }
        if let Err(e) = remove_storage(&self.dir) {
            eprintln!("warning: {e:#}");
        }
        for group in &self.new_cgroups {
            remove_cgroup_tree(group);
            if group.exists() {
                eprintln!("warning: cgroup {} left behind", group.display());
            }
        }
    }
}

/// Where the test mounts the manifests directory (the DaemonSet reads the
/// API server instead; this one flag is added to its args).
const MANIFESTS: &str = "/etc/vipr/manifests";

impl Podman {
    /// `podman run` of the DaemonSet's container as `spec`'s agent, named
    /// `name`, with `caps_add` in place of the DaemonSet's added
    /// capabilities. In the foreground: podman passes SIGTERM on and exits
    /// with the agent, so the command can stand for the agent's process.
    pub fn agent_command(
        &self,
        ds: &DaemonSet,
        image: &str,
        name: &str,
        spec: &crate::demo::AgentSpec,
        caps_add: &[String],
    ) -> Result<Command> {
        ensure!(
            ds.host_network,
            "the DaemonSet must use the host network namespace"
        );
        let vars = BTreeMap::from([
            ("NODE_NAME", spec.node.to_owned()),
            ("POD_INTERFACES", spec.pod_interfaces.clone()),
        ]);
        let mut args = Vec::new();
        for arg in ds.expanded_args(&vars)? {
            // The pins of each test cluster have their own directory.
            if arg.starts_with("--bpffs=") {
                args.push(format!("--bpffs={}", spec.bpffs.display()));
            } else {
                args.push(arg);
            }
        }
        args.push(format!("--manifests={MANIFESTS}"));
        // setpriv: a killed test run takes the agent down with it.
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "TERM", "--", "podman"])
            .args(global_args(&self.dir))
            .args(["run", "--rm", "--pull", "never", "--name", name]);
        cmd.arg(format!(
            "--network=ns:{}",
            crate::netns::netns_path(spec.netns).display()
        ));
        for cap in &ds.caps_drop {
            cmd.args(["--cap-drop", cap]);
        }
        for cap in caps_add {
            cmd.args(["--cap-add", cap]);
        }
        cmd.arg(format!("--user={}", ds.run_as_user));
        // podman's default limits (2^20 open files) exceed the hard limits
        // of a test run, which the runtime cannot raise once the
        // capabilities are dropped; the agent needs far fewer.
        cmd.args([
            "--ulimit",
            "nofile=4096:4096",
            "--ulimit",
            "nproc=4096:4096",
        ]);
        if ds.privileged {
            cmd.arg("--privileged");
        }
        if !ds.allow_privilege_escalation {
            cmd.args(["--security-opt", "no-new-privileges"]);
        }
        match ds.seccomp.as_deref() {
            Some("Unconfined") => {
                cmd.args(["--security-opt", "seccomp=unconfined"]);
            }
            Some("RuntimeDefault") => {}
            other => bail!(
                "the DaemonSet's seccomp profile {other:?}: name one (Unconfined or \
                 RuntimeDefault), the kubelet's default depends on its flags"
            ),
        }
        for m in &ds.mounts {
            // The DaemonSet's cgroup2 volume means the host's cgroup2 mount
            // (/sys/fs/cgroup/unified on hosts with the hybrid layout).
            let host = if m.host == Path::new("/sys/fs/cgroup") {
                vipr::datapath::cgroup2_root()?
            } else {
                m.host.clone()
            };
            let propagation = match m.propagation.as_str() {
                "HostToContainer" => "rslave",
                "Bidirectional" => "rshared",
                _ => "rprivate",
            };
            let mode = if m.read_only { "ro" } else { "rw" };
            cmd.arg(format!(
                "--volume={}:{}:{mode},{propagation}",
                host.display(),
                m.container.display()
            ));
        }
        cmd.arg(format!(
            "--volume={}:{MANIFESTS}:ro",
            spec.manifests.display()
        ));
        for (key, value) in &ds.env {
            cmd.arg(format!("--env={key}={value}"));
        }
        let (entrypoint, rest) = ds.command.split_first().context("no command")?;
        cmd.arg(format!("--entrypoint={entrypoint}"));
        cmd.arg(image).args(rest).args(args);
        self.track(name);
        Ok(cmd)
    }
}
