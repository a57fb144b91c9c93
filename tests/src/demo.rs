//! The demo cluster shared by `cargo xtask demo` and the end-to-end tests.
//!
//! Two nodes, three echo backends and two clients, matching `examples/`:
//! Service `demo/echo` (ClusterIP 10.96.0.10; `http` TCP 80 → 8080, `dns`
//! UDP 53 → 5353) with endpoints echo-1 10.244.1.11 (node1), echo-2
//! 10.244.1.12 (node1), echo-3 10.244.2.11 (node2); Service `demo/empty`
//! (10.96.0.20:80) without endpoints; client pods `client` 10.244.1.100 on
//! node1 and `client2` 10.244.2.100 on node2. One `vipr run` agent per node.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::echo::{self, EchoServer};
use crate::netns::{self, ChildGuard, Topology};

pub const NAMESPACE: &str = "demo";
pub const SERVICE: &str = "echo";
pub const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const EMPTY_SERVICE: &str = "empty";
pub const EMPTY_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
pub const HTTP_PORT: u16 = 80;
pub const HTTP_TARGET_PORT: u16 = 8080;
pub const DNS_PORT: u16 = 53;
pub const DNS_TARGET_PORT: u16 = 5353;
pub const HEALTHZ_PORT: u16 = 10256;
/// Where the demo agents serve /metrics (kube-proxy's port).
pub const METRICS_PORT: u16 = 10249;
pub const NODES: [&str; 2] = ["node1", "node2"];

/// A backend pod of Service demo/echo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    pub name: &'static str,
    pub ip: Ipv4Addr,
    pub node: &'static str,
}

pub const BACKENDS: [Backend; 3] = [
    Backend {
        name: "echo-1",
        ip: Ipv4Addr::new(10, 244, 1, 11),
        node: "node1",
    },
    Backend {
        name: "echo-2",
        ip: Ipv4Addr::new(10, 244, 1, 12),
        node: "node1",
    },
    Backend {
        name: "echo-3",
        ip: Ipv4Addr::new(10, 244, 2, 11),
        node: "node2",
    },
];

/// Client pods: (name, ip, node).
pub const CLIENTS: [(&str, Ipv4Addr, &str); 2] = [
    ("client", Ipv4Addr::new(10, 244, 1, 100), "node1"),
    ("client2", Ipv4Addr::new(10, 244, 2, 100), "node2"),
];

/// Looks a backend up by pod name.
pub fn backend(name: &str) -> Option<Backend> {
    BACKENDS.iter().copied().find(|b| b.name == name)
}

/// `10.96.0.10:80`
pub fn http_addr() -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(CLUSTER_IP, HTTP_PORT))
}

/// `10.96.0.10:53`
pub fn dns_addr() -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(CLUSTER_IP, DNS_PORT))
}

/// `10.96.0.20:80`
pub fn empty_http_addr() -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(EMPTY_CLUSTER_IP, HTTP_PORT))
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// YAML of both Services.
pub fn services_yaml() -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {SERVICE}
  namespace: {NAMESPACE}
spec:
  type: ClusterIP
  clusterIP: {CLUSTER_IP}
  clusterIPs:
  - {CLUSTER_IP}
  selector:
    app: echo
  ports:
  - name: http
    protocol: TCP
    port: {HTTP_PORT}
    targetPort: {HTTP_TARGET_PORT}
  - name: dns
    protocol: UDP
    port: {DNS_PORT}
    targetPort: {DNS_TARGET_PORT}
---
apiVersion: v1
kind: Service
metadata:
  name: {EMPTY_SERVICE}
  namespace: {NAMESPACE}
spec:
  type: ClusterIP
  clusterIP: {EMPTY_CLUSTER_IP}
  clusterIPs:
  - {EMPTY_CLUSTER_IP}
  selector:
    app: nothing
  ports:
  - name: http
    protocol: TCP
    port: {HTTP_PORT}
    targetPort: {HTTP_TARGET_PORT}
"
    )
}

/// YAML of an EndpointSlice of demo/echo (named `slice_name`) holding `backends`.
pub fn echo_endpointslice_yaml(slice_name: &str, backends: &[Backend]) -> String {
    let mut y = format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {slice_name}
  namespace: {NAMESPACE}
  labels:
    kubernetes.io/service-name: {SERVICE}
addressType: IPv4
ports:
- name: http
  protocol: TCP
  port: {HTTP_TARGET_PORT}
- name: dns
  protocol: UDP
  port: {DNS_TARGET_PORT}
endpoints:
"
    );
    if backends.is_empty() {
        y.truncate(y.len() - "endpoints:\n".len());
        y.push_str("endpoints: []\n");
    }
    for b in backends {
        y.push_str(&format!(
            "- addresses:
  - {ip}
  conditions:
    ready: true
    serving: true
    terminating: false
  nodeName: {node}
  targetRef:
    kind: Pod
    namespace: {NAMESPACE}
    name: {name}
",
            ip = b.ip,
            node = b.node,
            name = b.name
        ));
    }
    y
}

/// Writes `contents` to `path` atomically (temp file without a .yaml suffix, then rename).
pub fn write_atomic(path: &Path, contents: &str) -> Result<()> {
    let dir = path.parent().context("path without parent")?;
    let name = path.file_name().context("path without file name")?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    {
        let mut f = File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))
}

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Fills `dir` with the manifests: copies `examples/*.yaml` if `examples` holds
/// any, else writes the generated ones ([`services_yaml`] plus an EndpointSlice
/// with all three backends).
pub fn prepare_manifests(dir: &Path, examples: Option<&Path>) -> Result<()> {
    fs::create_dir_all(dir)?;
    let sources = match examples {
        Some(ex) if ex.is_dir() => yaml_files(ex)?,
        _ => Vec::new(),
    };
    if sources.is_empty() {
        write_atomic(&dir.join("services.yaml"), &services_yaml())?;
        write_atomic(
            &dir.join("echo-endpoints.yaml"),
            &echo_endpointslice_yaml("echo-demo", &BACKENDS),
        )?;
        return Ok(());
    }
    for src in sources {
        let dst = dir.join(src.file_name().context("file name")?);
        fs::copy(&src, &dst).with_context(|| format!("copy {}", src.display()))?;
    }
    Ok(())
}

/// True if a YAML document describes endpoints of Service demo/echo.
fn is_echo_endpoints(doc: &str) -> bool {
    let kind = doc
        .lines()
        .find_map(|l| l.strip_prefix("kind:"))
        .map(|k| k.trim().trim_matches('"').to_owned());
    let mentions = |needle: &str| {
        doc.lines()
            .any(|l| l.trim().replace(['"', '\''], "") == needle)
    };
    match kind.as_deref() {
        Some("EndpointSlice") => mentions(&format!("kubernetes.io/service-name: {SERVICE}")),
        Some("Endpoints") => mentions(&format!("name: {SERVICE}")),
        _ => false,
    }
}

/// File the e2e tests and the demo keep the endpoints of demo/echo in.
pub const ECHO_ENDPOINTS_FILE: &str = "zz-echo-endpoints.yaml";

/// Sets the endpoints of demo/echo to `backends` in the manifests directory:
/// writes them to [`ECHO_ENDPOINTS_FILE`] first, then removes every other
/// EndpointSlice/Endpoints document of demo/echo from the other files (so the
/// agent sees, at worst, the union of old and new endpoints in between).
pub fn set_echo_endpoints(dir: &Path, backends: &[Backend]) -> Result<()> {
    write_atomic(
        &dir.join(ECHO_ENDPOINTS_FILE),
        &echo_endpointslice_yaml("echo-e2e", backends),
    )?;
    for file in yaml_files(dir)? {
        if file.file_name().is_some_and(|n| n == ECHO_ENDPOINTS_FILE) {
            continue;
        }
        let text = fs::read_to_string(&file)?;
        let docs: Vec<&str> = split_docs(&text);
        let kept: Vec<&str> = docs
            .iter()
            .copied()
            .filter(|d| !is_echo_endpoints(d))
            .collect();
        if kept.len() == docs.len() {
            continue;
        }
        if kept.iter().all(|d| d.trim().is_empty()) {
            fs::remove_file(&file)?;
        } else {
            let joined = kept
                .iter()
                .map(|d| d.trim_matches('\n'))
                .collect::<Vec<_>>()
                .join("\n---\n");
            write_atomic(&file, &format!("{joined}\n"))?;
        }
    }
    Ok(())
}

fn split_docs(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_end() == "---" {
            docs.push(&text[start..pos]);
            start = pos + line.len();
        }
        pos += line.len();
    }
    docs.push(&text[start..]);
    docs.retain(|d| {
        d.lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    });
    docs
}

/// Sends `GET /healthz` to 127.0.0.1:`port` inside `netns`; returns the HTTP status code.
pub fn healthz_status(netns: &str, port: u16) -> Result<u16> {
    Ok(http_get(netns, port, "/healthz")?.0)
}

/// `GET path` from 127.0.0.1:`port` inside `netns`: (status, body).
pub fn http_get(netns: &str, port: u16, path: &str) -> Result<(u16, String)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let response = netns::run_in(netns, || -> Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(request.as_bytes())?;
        let mut buf = Vec::new();
        let _ = s.take(4 << 20).read_to_end(&mut buf);
        Ok(String::from_utf8_lossy(&buf).into_owned())
    })??;
    let status = response
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("bad HTTP response {response:?}"))?
        .parse()
        .context("parse HTTP status")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Mounts bpffs on /sys/fs/bpf unless something is mounted there already.
pub fn ensure_bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/self/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf"))
    {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        "/sys/fs/bpf",
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .context("mount bpffs on /sys/fs/bpf")
}

/// What a node's agent is started with; [`DemoCluster::start_with`] lets a
/// test start it its own way (in a container).
#[derive(Debug)]
pub struct AgentSpec<'a> {
    pub node: &'a str,
    pub netns: &'a str,
    pub bpffs: &'a Path,
    pub manifests: &'a Path,
    pub pod_interfaces: String,
}

/// Builds the command of a node's agent, or None for the plain process.
pub type AgentLauncher<'a> = &'a dyn Fn(&AgentSpec) -> Result<Option<Command>>;

#[derive(Debug)]
struct Agent {
    node: String,
    netns: String,
    bpffs: PathBuf,
    log: PathBuf,
    child: ChildGuard,
}

/// The demo topology with echo servers and one running vipr agent per node.
/// Dropping it stops everything and removes namespaces and pins.
#[derive(Debug)]
pub struct DemoCluster {
    vipr_bin: PathBuf,
    manifests_dir: PathBuf,
    work_dir: PathBuf,
    servers: Vec<EchoServer>,
    agents: Vec<Agent>,
    topology: Option<Topology>,
    torn_down: bool,
    /// Pods and nodes dual-stack before the agents start with `--ipv6 on`.
    ipv6: bool,
}

impl DemoCluster {
    /// Builds the topology, starts the echo servers and the agents, and waits
    /// until every agent's /healthz answers 200 (at most 60 s).
    ///
    /// The agents are stopped when the calling thread exits: keep the cluster
    /// on the thread that started it.
    pub fn start(vipr_bin: &Path, manifests_dir: &Path) -> Result<Self> {
        Self::start_with(vipr_bin, manifests_dir, &|_| Ok(None))
    }

    /// [`Self::start`] with every node and pod dual-stack and the agents
    /// serving IPv6 (`--ipv6 on`); the backends' echo servers answer on
    /// their IPv6 addresses too.
    pub fn start_dual_stack(vipr_bin: &Path, manifests_dir: &Path) -> Result<Self> {
        Self::start_inner_with(vipr_bin, manifests_dir, &|_| Ok(None), true)
    }

    /// [`Self::start`], with the agents whose command `launch` returns
    /// started by that command instead (its stdout and stderr are the log).
    pub fn start_with(
        vipr_bin: &Path,
        manifests_dir: &Path,
        launch: AgentLauncher,
    ) -> Result<Self> {
        Self::start_inner_with(vipr_bin, manifests_dir, launch, false)
    }

    fn start_inner_with(
        vipr_bin: &Path,
        manifests_dir: &Path,
        launch: AgentLauncher,
        ipv6: bool,
    ) -> Result<Self> {
        ensure!(
            vipr_bin.is_file(),
            "vipr binary {} not found (build it with `cargo build -p proxy-userspace` or set VIPR_BIN)",
            vipr_bin.display()
        );
        ensure!(
            manifests_dir.is_dir(),
            "manifests directory {} not found",
            manifests_dir.display()
        );
        ensure_bpffs()?;
        let mut topo = Topology::new()?;
        let work_dir = std::env::temp_dir().join(format!("{}-demo", topo.prefix()));
        fs::create_dir_all(&work_dir)?;
        let mut cluster = Self {
            vipr_bin: vipr_bin.to_owned(),
            manifests_dir: manifests_dir.canonicalize()?,
            work_dir,
            servers: Vec::new(),
            agents: Vec::new(),
            topology: None,
            torn_down: false,
            ipv6,
        };
        for node in NODES {
            topo.add_node(node)?;
        }
        for b in BACKENDS {
            topo.add_pod(b.node, b.name, &b.ip.to_string())?;
        }
        for (name, ip, node) in CLIENTS {
            topo.add_pod(node, name, &ip.to_string())?;
        }
        if ipv6 {
            topo.enable_ipv6()?;
        }
        cluster.topology = Some(topo);
        if let Err(e) = cluster.start_inner(launch) {
            let logs = cluster.logs();
            return Err(e.context(format!("demo cluster failed to start; agent logs:\n{logs}")));
        }
        Ok(cluster)
    }

    /// The agent of `node` as a plain process in the node's namespace.
    fn agent_command(
        &self,
        netns: &str,
        node: &str,
        bpffs: &Path,
        pod_interfaces: String,
    ) -> Command {
        // setpriv: the agent gets SIGTERM if the thread that started it dies
        // (a killed test run), instead of lingering with its programs attached.
        let mut cmd = netns::command_in(netns, "setpriv");
        cmd.args(["--pdeathsig", "TERM", "--"])
            .arg(&self.vipr_bin)
            .arg("run")
            .arg("--manifests")
            .arg(&self.manifests_dir)
            .args(["--node-name", node])
            .arg("--pod-interfaces")
            .arg(pod_interfaces)
            .arg("--bpffs")
            .arg(bpffs)
            .arg("--healthz-bind-address")
            .arg(format!("127.0.0.1:{HEALTHZ_PORT}"))
            .arg("--metrics-bind-address")
            .arg(format!("127.0.0.1:{METRICS_PORT}"))
            .env("RUST_LOG", "info");
        if self.ipv6 {
            cmd.args(["--ipv6", "on"]);
        }
        cmd
    }

    fn start_inner(&mut self, launch: AgentLauncher) -> Result<()> {
        let topo = self.topology.as_ref().context("no topology")?;
        for b in BACKENDS {
            self.servers.push(EchoServer::start(
                &topo.netns(b.name)?,
                b.name,
                Some(HTTP_TARGET_PORT),
                Some(DNS_TARGET_PORT),
            )?);
            if self.ipv6 {
                self.servers.push(EchoServer::start_on(
                    &topo.netns(b.name)?,
                    b.name,
                    topo.pod_ip6(b.name)?.into(),
                    Some(HTTP_TARGET_PORT),
                    Some(DNS_TARGET_PORT),
                )?);
            }
        }
        for node in NODES {
            let netns = topo.netns(node)?;
            let bpffs = PathBuf::from(format!("/sys/fs/bpf/vipr-{}-{node}", topo.prefix()));
            let log = self.work_dir.join(format!("vipr-{node}.log"));
            let out = File::create(&log)?;
            let err = out.try_clone()?;
            let spec = AgentSpec {
                node,
                netns: &netns,
                bpffs: &bpffs,
                manifests: &self.manifests_dir,
                pod_interfaces: topo.pod_interface_glob(),
            };
            let mut cmd = match launch(&spec)? {
                Some(cmd) => cmd,
                None => self.agent_command(&netns, node, &bpffs, topo.pod_interface_glob()),
            };
            cmd.stdin(Stdio::null()).stdout(out).stderr(err);
            let child = ChildGuard::spawn(&mut cmd)?;
            self.agents.push(Agent {
                node: node.to_owned(),
                netns,
                bpffs,
                log,
                child,
            });
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for agent in &mut self.agents {
            loop {
                if let Some(status) = agent.child.try_wait()? {
                    bail!("vipr agent on {} exited early: {status}", agent.node);
                }
                if matches!(healthz_status(&agent.netns, HEALTHZ_PORT), Ok(200)) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("vipr agent on {} not healthy after 60 s", agent.node);
                }
                thread::sleep(Duration::from_millis(200));
            }
        }
        Ok(())
    }

    pub fn topology(&self) -> &Topology {
        self.topology
            .as_ref()
            .expect("topology exists until teardown")
    }

    /// Netns name of a node or pod.
    pub fn netns(&self, name: &str) -> String {
        self.topology()
            .netns(name)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub fn prefix(&self) -> String {
        self.topology().prefix().to_owned()
    }

    /// Runs `vipr ARGS --bpffs PINS` on `node`'s agent's pins (the listing
    /// commands read pins and the name index, no namespace needed); stdout.
    pub fn vipr(&self, node: &str, args: &[&str]) -> Result<String> {
        let agent = self
            .agents
            .iter()
            .find(|a| a.node == node)
            .with_context(|| format!("no agent on {node}"))?;
        let out = std::process::Command::new(&self.vipr_bin)
            .args(args)
            .arg("--bpffs")
            .arg(&agent.bpffs)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "vipr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// The /metrics text of `node`'s agent.
    pub fn metrics(&self, node: &str) -> Result<String> {
        let agent = self
            .agents
            .iter()
            .find(|a| a.node == node)
            .with_context(|| format!("no agent on {node}"))?;
        let (status, body) = http_get(&agent.netns, METRICS_PORT, "/metrics")?;
        anyhow::ensure!(status == 200, "/metrics answered {status}: {body}");
        Ok(body)
    }

    pub fn manifests_dir(&self) -> &Path {
        &self.manifests_dir
    }

    /// bpffs pin directories of the agents.
    pub fn pin_dirs(&self) -> Vec<PathBuf> {
        self.agents.iter().map(|a| a.bpffs.clone()).collect()
    }

    /// The echo server of a backend pod.
    pub fn server(&self, name: &str) -> &EchoServer {
        self.servers
            .iter()
            .find(|s| s.name() == name)
            .unwrap_or_else(|| panic!("no echo server {name}"))
    }

    /// TCP connections accepted per backend so far.
    pub fn tcp_connections(&self) -> BTreeMap<String, usize> {
        // A dual-stack pod has a server per family.
        let mut counts = BTreeMap::new();
        for s in &self.servers {
            *counts.entry(s.name().to_owned()).or_insert(0) += s.tcp_connections();
        }
        counts
    }

    /// Replaces the endpoints of demo/echo in the manifests directory.
    pub fn set_endpoints(&self, names: &[&str]) -> Result<()> {
        let backends = names
            .iter()
            .map(|n| backend(n).with_context(|| format!("no backend {n}")))
            .collect::<Result<Vec<_>>>()?;
        set_echo_endpoints(&self.manifests_dir, &backends)
    }

    /// True while every agent process is still running.
    pub fn agents_running(&mut self) -> bool {
        self.agents
            .iter_mut()
            .all(|a| matches!(a.child.try_wait(), Ok(None)))
    }

    /// All agent logs, each headed by its node.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for a in &self.agents {
            let text = fs::read_to_string(&a.log).unwrap_or_else(|e| format!("<{e}>"));
            s.push_str(&format!(
                "===== vipr on {} ({}) =====\n{text}\n",
                a.node,
                a.log.display()
            ));
        }
        s
    }

    /// Sends `n` TCP requests from `client` to 10.96.0.10:80, printing who served each.
    pub fn run_demo(&self, n: usize) -> Result<BTreeMap<String, usize>> {
        let client = self.netns("client");
        let mut counts = BTreeMap::new();
        for i in 1..=n {
            let name = echo::tcp_request(&client, http_addr(), Duration::from_secs(2))
                .with_context(|| format!("request {i} to {}", http_addr()))?;
            let ip = backend(&name).map_or_else(|| "?".to_owned(), |b| b.ip.to_string());
            println!("request {i} -> served by {name} ({ip})");
            *counts.entry(name).or_insert(0) += 1;
        }
        Ok(counts)
    }

    /// Stops everything and reports what could not be cleaned up.
    pub fn shutdown(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let mut errors = Vec::new();
        for s in &mut self.servers {
            s.stop();
        }
        self.servers.clear();
        for a in &mut self.agents {
            if let Err(e) = a.child.terminate() {
                errors.push(format!("stop agent on {}: {e:#}", a.node));
            }
        }
        for a in &self.agents {
            let mut cmd = netns::command_in(&a.netns, &self.vipr_bin);
            cmd.arg("cleanup")
                .arg("--bpffs")
                .arg(&a.bpffs)
                .env("RUST_LOG", "info");
            match cmd.output() {
                Ok(o) if o.status.success() => {}
                Ok(o) => errors.push(format!(
                    "vipr cleanup on {} failed ({}): {}{}",
                    a.node,
                    o.status,
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )),
                Err(e) => errors.push(format!("run vipr cleanup: {e}")),
            }
        }
        if let Some(mut topo) = self.topology.take()
            && let Err(e) = topo.teardown()
        {
            errors.push(format!("{e:#}"));
        }
        for a in &self.agents {
            if a.bpffs.exists() {
                errors.push(format!(
                    "pin dir {} left behind; removing it",
                    a.bpffs.display()
                ));
                let _ = fs::remove_dir_all(&a.bpffs);
            }
        }
        if errors.is_empty() {
            let _ = fs::remove_dir_all(&self.work_dir);
            Ok(())
        } else {
            bail!(
                "demo cluster teardown: {}\nagent logs:\n{}",
                errors.join("\n"),
                self.logs()
            )
        }
    }
}

impl Drop for DemoCluster {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.logs());
        }
        if let Err(e) = self.teardown() {
            eprintln!("warning: {e:#}");
        }
    }
}

/// Cleans up after killed runs: namespaces of dead `vt<pid>x…` topologies, and
/// their pin directories under /sys/fs/bpf (through `vipr cleanup`, then removal).
pub fn cleanup_dead_runs(vipr_bin: &Path) -> Result<Vec<String>> {
    let mut cleaned = netns::cleanup_dead_runs()?;
    let tmp = std::env::temp_dir();
    for entry in fs::read_dir(&tmp)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let dead = name
            .strip_suffix("-demo")
            .and_then(|r| r.strip_prefix(netns::NAME_PREFIX))
            .and_then(|r| r.split('x').next())
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
        if dead && fs::remove_dir_all(entry.path()).is_ok() {
            cleaned.push(entry.path().display().to_string());
        }
    }
    let Ok(entries) = fs::read_dir("/sys/fs/bpf") else {
        return Ok(cleaned);
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("vipr-")
            .and_then(|r| r.strip_prefix(netns::NAME_PREFIX))
            .and_then(|r| r.split('x').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let path = entry.path();
        if vipr_bin.is_file() {
            let _ = std::process::Command::new(vipr_bin)
                .arg("cleanup")
                .arg("--bpffs")
                .arg(&path)
                .output();
        }
        let _ = fs::remove_dir_all(&path);
        cleaned.push(path.display().to_string());
    }
    Ok(cleaned)
}
