//! The contenders, each installed into a fresh one-node topology: direct
//! (no load balancer), vipr through its real agent (its TC path, and its
//! connect-time socket load balancing), and kube-proxy's iptables (legacy
//! and nft backends) and nftables shapes.
use std::{
    fmt::Write as _,
    fs,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use proxy_common::Counter;

use super::{
    PathCounters,
    rules::{self, BenchService},
};
use crate::{
    cgroup::Cgroup,
    demo::healthz_status,
    netns::{self, ChildGuard, Topology},
};

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const PORT: u16 = 80;
pub const TARGET_PORT: u16 = 8080;
pub const BACKEND_IPS: [Ipv4Addr; 4] = [
    Ipv4Addr::new(10, 244, 1, 11),
    Ipv4Addr::new(10, 244, 1, 12),
    Ipv4Addr::new(10, 244, 1, 13),
    Ipv4Addr::new(10, 244, 1, 14),
];
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 100);
const POD_CIDR: &str = "10.244.0.0/16";
const ENDPOINTS_PER_SERVICE: usize = 10;
const HEALTHZ_PORT: u16 = 10256;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Contender {
    Direct,
    /// The TC path: the agent's default `--socket-lb host` leaves pods to TC.
    Vipr,
    /// `--socket-lb all`: the client's sockets are translated at connect().
    ViprSocketLb,
    IptablesLegacy,
    IptablesNft,
    Nftables,
}

impl Contender {
    pub const ALL: [Contender; 6] = [
        Contender::Direct,
        Contender::Vipr,
        Contender::ViprSocketLb,
        Contender::IptablesLegacy,
        Contender::IptablesNft,
        Contender::Nftables,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Contender::Direct => "direct",
            Contender::Vipr => "vipr",
            Contender::ViprSocketLb => "vipr socket-LB",
            Contender::IptablesLegacy => "iptables-legacy",
            Contender::IptablesNft => "iptables-nft",
            Contender::Nftables => "nftables",
        }
    }
}

pub fn measured_service() -> BenchService {
    BenchService {
        vip: VIP,
        port: PORT,
        endpoints: BACKEND_IPS.iter().map(|ip| (*ip, TARGET_PORT)).collect(),
        udp: true,
    }
}

/// A contender installed on the node of a fresh topology.
pub struct Installed {
    pub targets: Vec<SocketAddr>,
    /// Time to program all services from cold.
    pub install: Duration,
    /// Time to apply one endpoint added to the measured service.
    pub one_change: Option<Duration>,
    /// Agent resident memory and BPF map memory (vipr only), bytes.
    pub agent_rss: Option<u64>,
    pub map_memory: Option<u64>,
    pub agent: Option<Agent>,
}

impl Installed {
    /// Socket-LB: moves this process into the hooks' group, so the client's
    /// sockets (and the processes it starts) are made there, until the
    /// guard drops; the other contenders have no group.
    pub fn enter_client_group(&self) -> Result<Option<crate::cgroup::Inside>> {
        let group = self.agent.as_ref().and_then(|a| a.cgroup.as_ref());
        group.map(Cgroup::enter).transpose()
    }

    /// vipr's path counters now (vipr only).
    pub fn path_counters(&self) -> Result<Option<PathCounters>> {
        self.agent.as_ref().map(Agent::path_counters).transpose()
    }
}

pub struct Agent {
    pub child: ChildGuard,
    pub pin_dir: PathBuf,
    pub log: PathBuf,
    vipr: PathBuf,
    node_ns: String,
    /// Socket-LB only: the group the hooks attach to, where the client must
    /// make its sockets. Fields drop after `drop` below, so the group goes
    /// once the agent is stopped and its links are gone.
    pub cgroup: Option<Cgroup>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.terminate();
        let _ = netns::command_in(&self.node_ns, &self.vipr)
            .arg("cleanup")
            .arg("--bpffs")
            .arg(&self.pin_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(&self.pin_dir);
    }
}

/// A rule loader ran past the install budget and was killed: the
/// contender is out at this N and above.
#[derive(Debug)]
pub struct OverBudget {
    pub tool: String,
    pub budget: Duration,
}

impl std::fmt::Display for OverBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.budget.as_secs();
        write!(f, "{} did not finish within {secs} s (killed)", self.tool)
    }
}

impl std::error::Error for OverBudget {}

/// Installs `contender` for `count` services on `topo`'s node1; a rule
/// loader running longer than `budget` is killed ([`OverBudget`]).
pub fn install(
    contender: Contender,
    topo: &Topology,
    count: usize,
    vipr: &Path,
    work: &Path,
    budget: Duration,
) -> Result<Installed> {
    let timed_stdin = |netns: &str, tool: &str, args: &[&str], input: &str, work: &Path| {
        timed_stdin(netns, tool, args, input, work, budget)
    };
    let node_ns = topo.netns("node1")?;
    let services = rules::synthetic(count, ENDPOINTS_PER_SERVICE, measured_service());
    let mut installed = Installed {
        targets: vec![SocketAddr::from((VIP, PORT))],
        install: Duration::ZERO,
        one_change: None,
        agent_rss: None,
        map_memory: None,
        agent: None,
    };
    let new_endpoint = (Ipv4Addr::new(10, 244, 1, 15), TARGET_PORT);
    match contender {
        Contender::Direct => {
            // No balancer: the client spreads over the same endpoints itself,
            // so every contender keeps the same servers busy.
            installed.targets = BACKEND_IPS
                .iter()
                .map(|ip| SocketAddr::from((*ip, TARGET_PORT)))
                .collect();
        }
        Contender::IptablesLegacy | Contender::IptablesNft => {
            let tool = if contender == Contender::IptablesLegacy {
                "iptables-legacy-restore"
            } else {
                "iptables-nft-restore"
            };
            let text = rules::iptables_restore(&services, POD_CIDR);
            installed.install = timed_stdin(&node_ns, tool, &[], &text, work)?;
            // kube-proxy's partial sync: the service list plus the one
            // service's chains (legacy still swaps the whole table in the kernel).
            let i = services.len() - 1;
            let mut changed = services.clone();
            changed[i].endpoints.push(new_endpoint);
            let change = rules::iptables_partial_sync(&changed, i, 0..0, POD_CIDR);
            let noflush = &["--noflush"];
            installed.one_change = Some(timed_stdin(&node_ns, tool, noflush, &change, work)?);
            // Back to the real endpoints before the load runs.
            let added = services[i].endpoints.len();
            let undo = rules::iptables_partial_sync(&services, i, added..added + 1, POD_CIDR);
            timed_stdin(&node_ns, tool, noflush, &undo, work)?;
        }
        Contender::Nftables => {
            installed.install = timed_stdin(
                &node_ns,
                "nft",
                &["-f", "-"],
                &rules::nft_ruleset(&services),
                work,
            )?;
            let i = services.len() - 1;
            let change = rules::nft_add_endpoint(i, &services[i], new_endpoint);
            installed.one_change = Some(timed_stdin(&node_ns, "nft", &["-f", "-"], &change, work)?);
            let undo = rules::nft_remove_added_endpoint(i, &services[i]);
            timed_stdin(&node_ns, "nft", &["-f", "-"], &undo, work)?;
        }
        Contender::Vipr | Contender::ViprSocketLb => {
            // Socket-LB: the hooks go on a group of this measurement's own.
            let socket_lb = (contender == Contender::ViprSocketLb)
                .then(|| Cgroup::create(&format!("vipr-bench-{}", topo.prefix())))
                .transpose()?;
            install_vipr(
                &mut installed,
                topo,
                &services,
                vipr,
                work,
                new_endpoint,
                socket_lb,
            )?
        }
    }
    Ok(installed)
}

fn timed_stdin(
    netns: &str,
    tool: &str,
    args: &[&str],
    input: &str,
    work: &Path,
    budget: Duration,
) -> Result<Duration> {
    let file = work.join("ruleset.txt");
    let errors = work.join("tool.err");
    fs::write(&file, input)?;
    let start = Instant::now();
    // nsenter execs the tool, so killing the child kills the tool.
    let mut child = netns::command_in(netns, tool)
        .args(args)
        .stdin(fs::File::open(&file)?)
        .stdout(Stdio::null())
        .stderr(fs::File::create(&errors)?)
        .spawn()
        .with_context(|| format!("run {tool}"))?;
    // A watchdog kills the tool at the budget, so `wait` (and the timing)
    // stays exact instead of polling.
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let pid = child.id().to_string();
    let watchdog = std::thread::spawn(move || {
        let timed_out = finished.recv_timeout(budget).is_err();
        if timed_out {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid])
                .status();
        }
        timed_out
    });
    let status = child.wait()?;
    let elapsed = start.elapsed();
    let _ = done.send(());
    if watchdog.join().unwrap_or(false) {
        return Err(OverBudget {
            tool: tool.to_owned(),
            budget,
        }
        .into());
    }
    ensure!(
        status.success(),
        "{tool} failed: {}",
        fs::read_to_string(&errors)
            .unwrap_or_default()
            .lines()
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(elapsed)
}

fn yaml_service(out: &mut String, name: &str, s: &BenchService) {
    let _ = write!(
        out,
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: bench}}\nspec:\n  type: ClusterIP\n  clusterIP: {vip}\n  clusterIPs: [{vip}]\n  ports: [{{name: http, port: {port}, protocol: TCP, targetPort: http}}{udp_port}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-x\n  namespace: bench\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: http, port: {tp}, protocol: TCP}}{udp_target}]\nendpoints:\n",
        vip = s.vip,
        port = s.port,
        tp = s.endpoints.first().map_or(TARGET_PORT, |e| e.1),
        udp_port = if s.udp {
            format!(
                ", {{name: udp, port: {}, protocol: UDP, targetPort: udp}}",
                s.port
            )
        } else {
            String::new()
        },
        udp_target = if s.udp {
            format!(
                ", {{name: udp, port: {}, protocol: UDP}}",
                s.endpoints.first().map_or(TARGET_PORT, |e| e.1)
            )
        } else {
            String::new()
        },
    );
    for (ip, _) in &s.endpoints {
        let _ = writeln!(out, "- addresses: [{ip}]\n  conditions: {{ready: true}}");
    }
}

/// `socket_lb`: `None` runs the agent's default (`--socket-lb host` on the
/// cgroup2 root: the pods stay on the TC path); `Some(group)` runs
/// `--socket-lb all` on `group`, which the agent then owns.
fn install_vipr(
    installed: &mut Installed,
    topo: &Topology,
    services: &[BenchService],
    vipr: &Path,
    work: &Path,
    new_endpoint: (Ipv4Addr, u16),
    socket_lb: Option<Cgroup>,
) -> Result<()> {
    let node_ns = topo.netns("node1")?;
    let manifests = work.join("manifests");
    fs::create_dir_all(&manifests)?;
    let (measured, bulk) = services.split_last().context("no services")?;
    let mut text = String::with_capacity(bulk.len() * 700);
    for (i, s) in bulk.iter().enumerate() {
        yaml_service(&mut text, &format!("svc-{i}"), s);
    }
    fs::write(manifests.join("bulk.yaml"), text)?;
    // A file modified within 2 s of a read is read again at the next poll
    // (mtime granularity guard); an old mtime keeps that re-read of the bulk
    // out of the one-change figure, as for any file not just written.
    fs::File::options()
        .write(true)
        .open(manifests.join("bulk.yaml"))?
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(60))?;
    let mut measured_yaml = String::new();
    yaml_service(&mut measured_yaml, "measured", measured);
    fs::write(manifests.join("measured.yaml"), &measured_yaml)?;

    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/vipr-bench-{}", topo.prefix()));
    let log = work.join("vipr.log");
    let mut cmd = netns::command_in(&node_ns, "setpriv");
    cmd.args(["--pdeathsig", "TERM", "--"])
        .arg(vipr)
        .arg("run")
        .arg("--manifests")
        .arg(&manifests)
        .args(["--node-name", "node1", "--pod-interfaces"])
        .arg(topo.pod_interface_glob())
        .arg("--bpffs")
        .arg(&pin_dir)
        .arg("--healthz-bind-address")
        .arg(format!("127.0.0.1:{HEALTHZ_PORT}"))
        .args(map_size_args(services.len()))
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&log)?)
        .stderr(fs::File::create(work.join("vipr.err"))?);
    if let Some(group) = &socket_lb {
        cmd.args(["--socket-lb", "all", "--cgroup-root"])
            .arg(group.path());
    }
    let start = Instant::now();
    let child = ChildGuard::spawn(&mut cmd)?;
    let agent = Agent {
        child,
        pin_dir,
        log: log.clone(),
        vipr: vipr.to_owned(),
        node_ns: node_ns.clone(),
        cgroup: socket_lb,
    };
    let deadline = start + Duration::from_secs(900);
    while !matches!(healthz_status(&node_ns, HEALTHZ_PORT), Ok(200)) {
        if Instant::now() > deadline {
            bail!(
                "vipr not healthy after 900 s: {}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    installed.install = start.elapsed();
    let pid = agent.child.pid().context("agent pid")?;
    installed.agent_rss = status_field(pid, "VmRSS:").map(|kb| kb * 1024);
    installed.map_memory = Some(map_memlock(pid));

    // One endpoint more for the measured service; the agent reports the sync time.
    let mut changed = measured.clone();
    changed.endpoints.push(new_endpoint);
    let before = synced_lines(&log).len();
    let mut yaml = String::new();
    yaml_service(&mut yaml, "measured", &changed);
    fs::write(manifests.join("measured.yaml"), yaml)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    installed.one_change = loop {
        let lines = synced_lines(&log);
        if lines.len() > before {
            break lines
                .last()
                .and_then(|l| field(l, "elapsed_us"))
                .map(Duration::from_micros);
        }
        if Instant::now() > deadline {
            bail!("vipr did not sync the endpoint change");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Back to the real endpoints before the load runs.
    let before = synced_lines(&log).len();
    fs::write(manifests.join("measured.yaml"), &measured_yaml)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while synced_lines(&log).len() <= before {
        if Instant::now() > deadline {
            bail!("vipr did not sync the endpoint change back");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    installed.agent = Some(agent);
    Ok(())
}

/// Map capacities for `services` × [`ENDPOINTS_PER_SERVICE`] with a
/// quarter spare, never below the agent's defaults (what an operator sizing
/// for the cluster would pass).
fn map_size_args(services: usize) -> Vec<String> {
    let defaults = vipr::datapath::MapSizes::default();
    let room = |n: usize, default: u32| (n + n / 4).max(default as usize).to_string();
    let endpoints = services * ENDPOINTS_PER_SERVICE;
    vec![
        "--max-services".into(),
        room(services + 1, defaults.services),
        "--max-backends".into(),
        room(endpoints, defaults.backends),
        "--max-slots".into(),
        room(endpoints + ENDPOINTS_PER_SERVICE, defaults.slots),
    ]
}

fn synced_lines(log: &Path) -> Vec<String> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" synced") && l.contains("elapsed_us="))
        .map(strip_ansi)
        // Periodic syncs with nothing to do are not the change being timed.
        .filter(|l| field(l, "converted").is_some_and(|n| n > 0))
        .collect()
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn field(line: &str, name: &str) -> Option<u64> {
    let rest = line.split(&format!("{name}=")).nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn status_field(pid: u32, name: &str) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(name))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Sum of `memlock` over the BPF maps the agent holds open (kernel accounting).
fn map_memlock(pid: u32) -> u64 {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| fs::read_to_string(e.path()).ok())
        .filter(|info| info.contains("map_type:"))
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

impl Agent {
    /// The datapath counters that tell which path the load took.
    pub fn path_counters(&self) -> Result<PathCounters> {
        let counters = vipr::inspect::pinned_counters(&self.pin_dir)?;
        let get = |counter| {
            counters
                .iter()
                .find(|(c, _)| *c == counter)
                .map_or(0, |(_, v)| *v)
        };
        Ok(PathCounters {
            dnat_new: get(Counter::DnatNew),
            dnat_reselected: get(Counter::DnatReselected),
            sock_translated: get(Counter::SockTranslated),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_log_fields_parse_with_and_without_colours() {
        let plain =
            "2026 INFO vipr::agent: synced frontends=3 map_writes=2 failed=0 elapsed_us=412";
        assert_eq!(field(plain, "elapsed_us"), Some(412));
        let coloured = "\u{1b}[2melapsed_us\u{1b}[0m\u{1b}[2m=\u{1b}[0m16 synced";
        assert_eq!(field(&strip_ansi(coloured), "elapsed_us"), Some(16));
    }
}
