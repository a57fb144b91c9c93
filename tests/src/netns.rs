//! Network namespace topologies that emulate Kubernetes nodes and pods.
//!
//! Every node and every pod is its own network namespace, named
//! `<prefix>-<name>` where the prefix is unique per [`Topology`] (`vt<pid>x<n>`),
//! so topologies can exist side by side and addresses can repeat across them.
//! Links are created directly inside the namespaces (`ip -n ... link add ...
//! netns ...`), so nothing ever appears in the root namespace; deleting the
//! namespaces deletes every link. [`Topology`]'s `Drop` deletes all of them.
//!
//! Layout:
//! - the underlay is a bridge `br0` in an extra namespace `<prefix>-ul`; node
//!   `N` (1-based, in the order of [`Topology::add_node`]) has `eth0` with
//!   `172.30.0.N/24` on it and owns the pod CIDR `10.244.N.0/24`; every node
//!   routes the other nodes' pod CIDRs via their underlay address;
//! - pods are attached Calico-style: pod side `eth0` with the pod IP as /32,
//!   `169.254.1.1` as an on-link gateway; node side `vp<n>` (glob
//!   [`Topology::pod_interface_glob`]) with proxy ARP and a /32 route.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};

mod ipv6;
pub use ipv6::POD_GATEWAY6;
use nix::sched::CloneFlags;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Prefix of every namespace name this module creates.
pub const NAME_PREFIX: &str = "vt";
/// Node-side name prefix of pod veths; the agent's `--pod-interfaces` glob.
pub const POD_IF_PREFIX: &str = "vp";
/// Gateway address pods route through (answered by the node's proxy ARP).
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Path of a named network namespace.
pub fn netns_path(netns: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(netns)
}

/// Moves the calling thread into the named network namespace.
///
/// Only use this on threads you own (for example from [`spawn_thread_in`]);
/// prefer [`run_in`].
pub fn enter(netns: &str) -> Result<()> {
    let path = netns_path(netns);
    let file = File::open(&path).with_context(|| format!("open {}", path.display()))?;
    nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("setns into {netns}"))?;
    Ok(())
}

/// Runs `f` on a new thread that has entered `netns`, and returns its result.
///
/// Sockets created by `f` belong to `netns` for their whole life, also when
/// they are used from other threads afterwards.
pub fn run_in<T, F>(netns: &str, f: F) -> Result<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    thread::scope(|s| {
        s.spawn(|| -> Result<T> {
            enter(netns)?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow!("thread in netns {netns} panicked"))?
    })
}

/// Spawns a long-lived thread inside `netns`. Fails if entering the namespace fails.
pub fn spawn_thread_in<T, F>(netns: &str, name: &str, f: F) -> Result<thread::JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel::<Result<()>>();
    let ns = netns.to_owned();
    let handle = thread::Builder::new()
        .name(name.chars().take(15).collect())
        .spawn(move || {
            let entered = enter(&ns);
            let ok = entered.is_ok();
            let _ = tx.send(entered);
            if !ok {
                // The caller gets the error through the channel; `f` must not run
                // in the wrong namespace.
                panic!("could not enter netns {ns}");
            }
            f()
        })
        .context("spawn thread")?;
    match rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(_) => Err(anyhow!("thread for netns {netns} died before entering it")),
    }
}

/// Runs a command, failing with its stderr if it does not succeed.
pub fn cmd(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {program}"))?;
    ensure!(
        out.status.success(),
        "`{program} {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn ip(args: &[&str]) -> Result<String> {
    cmd("ip", args)
}

/// Runs `ip -n netns -batch -` on `commands` (one per line).
fn ip_batch(netns: &str, commands: &str) -> Result<()> {
    use std::io::Write as _;
    let mut child = Command::new("ip")
        .args(["-n", netns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run ip -batch")?;
    child
        .stdin
        .take()
        .context("ip stdin")?
        .write_all(commands.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "ip -batch in {netns}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Writes a sysctl inside `netns` (`key` like `net/ipv4/ip_forward`).
pub fn sysctl(netns: &str, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{key}");
    run_in(netns, || std::fs::write(&path, value))?
        .with_context(|| format!("sysctl {key}={value} in {netns}"))
}

/// A `Command` that runs `program` inside `netns` with `nsenter --net`,
/// keeping the caller's mount namespace (so /sys/fs/bpf is the host's).
pub fn command_in(netns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", netns_path(netns).display()))
        .arg("--")
        .arg(program);
    c
}

/// Names of all named network namespaces (`ip netns list`).
pub fn list_netns() -> Result<Vec<String>> {
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Names of the links in the root namespace.
pub fn list_root_links() -> Result<Vec<String>> {
    Ok(ip(&["-o", "link", "show"])?
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_owned())
        .collect())
}

/// Deletes namespaces and root links whose name starts with `prefix` (leftovers
/// of a killed run). Returns what it deleted.
pub fn cleanup_stale(prefix: &str) -> Result<Vec<String>> {
    ensure!(!prefix.is_empty(), "refusing to clean up an empty prefix");
    let mut deleted = Vec::new();
    for ns in list_netns()? {
        if ns.starts_with(prefix) {
            ip(&["netns", "del", &ns])?;
            deleted.push(ns);
        }
    }
    for link in list_root_links()? {
        if link.starts_with(prefix) {
            ip(&["link", "del", &link])?;
            deleted.push(link);
        }
    }
    Ok(deleted)
}

/// Cleans up the namespaces of every `vt<pid>x…` topology whose process is gone.
pub fn cleanup_dead_runs() -> Result<Vec<String>> {
    let mut deleted = Vec::new();
    for ns in list_netns()? {
        let Some(pid) = ns
            .strip_prefix(NAME_PREFIX)
            .and_then(|r| r.split('x').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            ip(&["netns", "del", &ns])?;
            deleted.push(ns);
        }
    }
    Ok(deleted)
}

/// Per-netns checksum error counters from /proc/net/snmp.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CsumErrors {
    pub tcp: u64,
    pub udp: u64,
}

/// Reads `InCsumErrors` of `Tcp` and `Udp` from /proc/thread-self/net/snmp in `netns`.
pub fn snmp_checksum_errors(netns: &str) -> Result<CsumErrors> {
    let text = snmp_text(netns)?;
    Ok(CsumErrors {
        tcp: snmp_field(&text, "Tcp", "InCsumErrors")?,
        udp: snmp_field(&text, "Udp", "InCsumErrors")?,
    })
}

/// The text of /proc/thread-self/net/snmp as seen from inside `netns`.
pub fn snmp_text(netns: &str) -> Result<String> {
    run_in(netns, || {
        std::fs::read_to_string("/proc/thread-self/net/snmp")
    })?
    .context("read snmp")
}

/// Looks a field up in /proc/net/snmp format (header line, then value line).
pub fn snmp_field(text: &str, group: &str, field: &str) -> Result<u64> {
    let tag = format!("{group}:");
    let mut lines = text
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(&tag));
    let header = lines
        .next()
        .with_context(|| format!("no {group} in snmp"))?;
    let values = lines.next().with_context(|| format!("no {group} values"))?;
    let idx = header
        .split_whitespace()
        .position(|h| h == field)
        .with_context(|| format!("no {group} {field}"))?;
    values
        .split_whitespace()
        .nth(idx)
        .with_context(|| format!("short {group} line"))?
        .parse()
        .context("parse snmp value")
}

/// A child process that is terminated when dropped (SIGTERM, SIGKILL after a grace period).
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    grace: Duration,
}

impl ChildGuard {
    /// Spawns `cmd` and guards it. The grace period before SIGKILL is 5 s.
    pub fn spawn(cmd: &mut Command) -> Result<Self> {
        let child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
        Ok(Self {
            child: Some(child),
            grace: Duration::from_secs(5),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Returns the exit status if the process has ended.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => Ok(None),
        }
    }

    /// SIGKILL, no grace: what a crash or an OOM kill does.
    pub fn kill(&mut self) -> Result<Option<ExitStatus>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        let _ = child.kill();
        Ok(Some(child.wait()?))
    }

    /// Sends SIGTERM, waits up to the grace period, then SIGKILLs. Returns the exit status.
    pub fn terminate(&mut self) -> Result<Option<ExitStatus>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let pid = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(Some(status));
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        Ok(Some(child.wait()?))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

#[derive(Debug, Clone)]
struct Node {
    name: String,
    index: u8,
    netns: String,
}

#[derive(Debug, Clone)]
struct Pod {
    name: String,
    node: String,
    ip: Ipv4Addr,
    netns: String,
    host_if: String,
}

/// A set of namespaces emulating Kubernetes nodes and pods. Dropping it deletes everything.
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    underlay: String,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    /// Namespaces created, in creation order.
    created: Vec<String>,
}

impl Topology {
    /// Creates the underlay namespace with its bridge.
    pub fn new() -> Result<Self> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{NAME_PREFIX}{}x{n}", std::process::id());
        let mut topo = Self {
            underlay: format!("{prefix}-ul"),
            prefix,
            nodes: Vec::new(),
            pods: Vec::new(),
            created: Vec::new(),
        };
        let ul = topo.underlay.clone();
        topo.create_netns(&ul)?;
        ip(&["-n", &ul, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &ul, "link", "set", "br0", "up"])?;
        Ok(topo)
    }

    fn create_netns(&mut self, name: &str) -> Result<()> {
        ensure!(
            !self.created.iter().any(|c| c == name),
            "namespace {name} already exists in this topology"
        );
        ip(&["netns", "add", name])?;
        self.created.push(name.to_owned());
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        sysctl(name, "net/ipv4/conf/all/rp_filter", "0")?;
        sysctl(name, "net/ipv4/conf/default/rp_filter", "0")?;
        // Links made from now on are usable at once in IPv6 too: no test
        // waits a second for duplicate address detection.
        sysctl(name, "net/ipv6/conf/default/accept_dad", "0")?;
        Ok(())
    }

    /// The unique prefix of this topology's namespace names.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Glob matching the node-side interfaces of pods (for `--pod-interfaces`).
    pub fn pod_interface_glob(&self) -> String {
        format!("{POD_IF_PREFIX}*")
    }

    /// Adds node number `len+1`: netns, forwarding, underlay address, routes to and from other nodes.
    pub fn add_node(&mut self, name: &str) -> Result<&mut Self> {
        ensure!(self.nodes.len() < 250, "too many nodes");
        ensure!(
            !self.nodes.iter().any(|n| n.name == name),
            "node {name} exists"
        );
        let index = u8::try_from(self.nodes.len() + 1)?;
        let netns = format!("{}-{name}", self.prefix);
        self.create_netns(&netns)?;
        sysctl(&netns, "net/ipv4/ip_forward", "1")?;
        // Lets proxy ARP answer for the pods' gateway address (it needs a route
        // to the target through another interface).
        ip(&[
            "-n",
            &netns,
            "route",
            "add",
            &format!("{POD_GATEWAY}/32"),
            "dev",
            "lo",
        ])?;
        let addr = Self::underlay_ip(index);
        self.plug_into_underlay(&format!("n{index}"), &netns, addr)?;
        for other in &self.nodes {
            let other_addr = Self::underlay_ip(other.index).to_string();
            ip(&[
                "-n",
                &netns,
                "route",
                "add",
                &Self::pod_cidr(other.index),
                "via",
                &other_addr,
            ])?;
            ip(&[
                "-n",
                &other.netns,
                "route",
                "add",
                &Self::pod_cidr(index),
                "via",
                &addr.to_string(),
            ])?;
        }
        self.nodes.push(Node {
            name: name.to_owned(),
            index,
            netns,
        });
        Ok(self)
    }

    /// Adds a host outside the cluster on the underlay (`eth0` with
    /// `ip`/24), with `routes` of (CIDR, node name) sending e.g. a
    /// LoadBalancer IP to a node. Its namespace is `<prefix>-<name>`.
    pub fn add_external_host(
        &mut self,
        name: &str,
        ip_addr: Ipv4Addr,
        routes: &[(&str, &str)],
    ) -> Result<String> {
        let netns = format!("{}-{name}", self.prefix);
        self.create_netns(&netns)?;
        let ul_if = format!("x{}", self.created.len());
        self.plug_into_underlay(&ul_if, &netns, ip_addr)?;
        for (cidr, node) in routes {
            let via = Self::underlay_ip(self.node(node)?.index).to_string();
            ip(&["-n", &netns, "route", "add", cidr, "via", &via])?;
        }
        Ok(netns)
    }

    /// Connects `netns` to the underlay bridge: `ul_if` on the bridge,
    /// `eth0` with `addr`/24 in `netns`.
    fn plug_into_underlay(&self, ul_if: &str, netns: &str, addr: Ipv4Addr) -> Result<()> {
        ip(&[
            "-n",
            &self.underlay,
            "link",
            "add",
            ul_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            netns,
        ])?;
        ip(&[
            "-n",
            &self.underlay,
            "link",
            "set",
            ul_if,
            "master",
            "br0",
            "up",
        ])?;
        // A veth only receives XDP_TX frames from its peer when NAPI is on
        // (GRO or an XDP program): a physical NIC needs nothing of the kind.
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.underlay,
                "ethtool",
                "-K",
                ul_if,
                "gro",
                "on",
            ])
            .output();
        ip(&[
            "-n",
            netns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", netns, "link", "set", "eth0", "up"])?;
        Ok(())
    }

    fn underlay_ip(index: u8) -> Ipv4Addr {
        Ipv4Addr::new(172, 30, 0, index)
    }

    fn pod_cidr(index: u8) -> String {
        format!("10.244.{index}.0/24")
    }

    /// Adds a pod on `node` with `ip` (a /32 on its eth0).
    pub fn add_pod(&mut self, node: &str, name: &str, ip_addr: &str) -> Result<&mut Self> {
        let pod_ip: Ipv4Addr = ip_addr.parse().context("pod ip")?;
        ensure!(
            !self.pods.iter().any(|p| p.name == name),
            "pod {name} exists"
        );
        let node_ns = self.node(node)?.netns.clone();
        let netns = format!("{}-{name}", self.prefix);
        self.create_netns(&netns)?;
        let host_if = format!("{POD_IF_PREFIX}{}", self.pods.len());
        ip(&[
            "-n", &node_ns, "link", "add", &host_if, "type", "veth", "peer", "name", "eth0",
            "netns", &netns,
        ])?;
        sysctl(&node_ns, &format!("net/ipv4/conf/{host_if}/proxy_arp"), "1")?;
        sysctl(
            &node_ns,
            &format!("net/ipv4/neigh/{host_if}/proxy_delay"),
            "0",
        )?;
        ip(&["-n", &node_ns, "link", "set", &host_if, "up"])?;
        ip(&[
            "-n",
            &node_ns,
            "route",
            "add",
            &format!("{pod_ip}/32"),
            "dev",
            &host_if,
        ])?;
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{pod_ip}/32"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
        let gw = POD_GATEWAY.to_string();
        ip(&["-n", &netns, "route", "add", &gw, "dev", "eth0"])?;
        ip(&[
            "-n", &netns, "route", "add", "default", "via", &gw, "dev", "eth0",
        ])?;
        self.pods.push(Pod {
            name: name.to_owned(),
            node: node.to_owned(),
            ip: pod_ip,
            netns,
            host_if,
        });
        Ok(self)
    }

    /// Gives pod `name` more addresses (each a /32 on its eth0, routed to
    /// it by its node): one pod answering for many endpoints.
    pub fn add_pod_addresses(&self, name: &str, addrs: &[Ipv4Addr]) -> Result<()> {
        let pod = self.pod(name)?;
        let node_ns = self.node(&pod.node)?.netns.clone();
        let on_pod: String = addrs
            .iter()
            .map(|a| format!("addr add {a}/32 dev eth0\n"))
            .collect();
        let on_node: String = addrs
            .iter()
            .map(|a| format!("route add {a}/32 dev {}\n", pod.host_if))
            .collect();
        ip_batch(&pod.netns, &on_pod)?;
        ip_batch(&node_ns, &on_node)
    }

    fn node(&self, name: &str) -> Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .with_context(|| format!("no node {name}"))
    }

    fn pod(&self, name: &str) -> Result<&Pod> {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("no pod {name}"))
    }

    /// Netns name of a node or pod.
    pub fn netns(&self, name: &str) -> Result<String> {
        if let Ok(n) = self.node(name) {
            return Ok(n.netns.clone());
        }
        Ok(self.pod(name)?.netns.clone())
    }

    /// Path (/run/netns/…) of a node's or pod's netns.
    pub fn netns_path(&self, name: &str) -> Result<PathBuf> {
        Ok(netns_path(&self.netns(name)?))
    }

    /// Node names in the order they were added.
    pub fn nodes(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// Pod names with their node, IP and node-side interface.
    pub fn pods(&self) -> BTreeMap<String, (String, Ipv4Addr, String)> {
        self.pods
            .iter()
            .map(|p| (p.name.clone(), (p.node.clone(), p.ip, p.host_if.clone())))
            .collect()
    }

    /// Node-side veth name of a pod.
    pub fn host_interface(&self, pod: &str) -> Result<String> {
        Ok(self.pod(pod)?.host_if.clone())
    }

    /// IP of a pod.
    pub fn pod_ip(&self, pod: &str) -> Result<Ipv4Addr> {
        Ok(self.pod(pod)?.ip)
    }

    /// Node a pod runs on.
    pub fn pod_node(&self, pod: &str) -> Result<String> {
        Ok(self.pod(pod)?.node.clone())
    }

    /// Underlay address of a node.
    pub fn node_ip(&self, node: &str) -> Result<Ipv4Addr> {
        Ok(Self::underlay_ip(self.node(node)?.index))
    }

    /// Pod CIDR of a node.
    pub fn node_pod_cidr(&self, node: &str) -> Result<String> {
        Ok(Self::pod_cidr(self.node(node)?.index))
    }

    /// Turns TX checksum offload on or off on the pod's eth0 and its node-side veth.
    pub fn set_tx_checksum_offload(&self, pod: &str, on: bool) -> Result<()> {
        let p = self.pod(pod)?;
        let node_ns = &self.node(&p.node)?.netns;
        let state = if on { "on" } else { "off" };
        for (ns, dev) in [(&p.netns, "eth0"), (node_ns, p.host_if.as_str())] {
            let out = command_in(ns, "ethtool")
                .args(["-K", dev, "tx", state])
                .output()
                .context("run ethtool")?;
            if !out.status.success() {
                bail!(
                    "ethtool -K {dev} tx {state} in {ns}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(())
    }

    /// Runs `f` on a thread inside the netns of node or pod `name`.
    pub fn run_in<T: Send, F: FnOnce() -> T + Send>(&self, name: &str, f: F) -> Result<T> {
        run_in(&self.netns(name)?, f)
    }

    /// TCP and UDP `InCsumErrors` inside a node's or pod's netns.
    pub fn snmp_checksum_errors(&self, name: &str) -> Result<CsumErrors> {
        snmp_checksum_errors(&self.netns(name)?)
    }

    /// A command running `program` inside the netns of node or pod `name` (mount namespace kept).
    pub fn command_in(&self, name: &str, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        Ok(command_in(&self.netns(name)?, program))
    }

    /// Starts `program args…` inside the netns of node or pod `name`; killed when the guard drops.
    pub fn spawn_in(&self, name: &str, program: &str, args: &[&str]) -> Result<ChildGuard> {
        let mut c = self.command_in(name, program)?;
        c.args(args);
        ChildGuard::spawn(&mut c)
    }

    /// Runs `vipr veth-peer` on the underlay end of every node's uplink. A
    /// NIC puts native XDP_TX frames on the wire; a veth hands them to its
    /// peer only when the peer runs an XDP program, so without this the
    /// nodes' translated frames never reach the bridge. Detached when the
    /// guard drops.
    pub fn pass_xdp_on_node_uplinks(&self, vipr: &std::path::Path) -> Result<ChildGuard> {
        let ports: Vec<String> = (1..=self.nodes.len()).map(|i| format!("n{i}")).collect();
        // Gone with the test process, however it ends.
        let mut cmd = command_in(&self.underlay, "setpriv");
        cmd.args(["--pdeathsig", "TERM", "--"])
            .arg(vipr)
            .arg("veth-peer")
            .args(&ports)
            .stdout(std::process::Stdio::null());
        let mut child = ChildGuard::spawn(&mut cmd)?;
        let attached = |port: &str| {
            ip(&["-n", &self.underlay, "link", "show", port])
                .is_ok_and(|out| out.contains("prog/xdp"))
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !ports.iter().all(|p| attached(p)) {
            ensure!(child.try_wait()?.is_none(), "vipr veth-peer exited early");
            ensure!(
                std::time::Instant::now() < deadline,
                "vipr veth-peer did not attach to {ports:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(child)
    }

    /// Deletes every namespace of the topology (and with them all links). Idempotent.
    pub fn teardown(&mut self) -> Result<()> {
        let mut errors = Vec::new();
        while let Some(ns) = self.created.pop() {
            if let Err(e) = ip(&["netns", "del", &ns]) {
                errors.push(format!("{e:#}"));
            }
        }
        self.nodes.clear();
        self.pods.clear();
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("teardown: {}", errors.join("; "))
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("warning: {e:#}");
        }
    }
}
