//! A two-node cluster with a host outside it, for NodePort, LoadBalancer and
//! external-IP end-to-end tests. Every node's agent also owns the node's
//! `eth0` (its link to the underlay) as external interface, and attaches its
//! socket hooks to a cgroup of the node's own.
use std::{
    fs,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    cgroup::Cgroup,
    demo::healthz_status,
    echo::EchoServer,
    netns::{self, ChildGuard, Topology},
};

pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 200);
/// The outside host's IPv6 address, on the nodes' IPv6 underlay link.
pub const CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x30, 0, 0, 0, 0, 0, 200);
pub const NODE_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(172, 30, 0, 1), Ipv4Addr::new(172, 30, 0, 2)];
/// (pod, node, ip)
pub const PODS: [(&str, &str, Ipv4Addr); 2] = [
    ("web-1", "node1", Ipv4Addr::new(10, 244, 1, 11)),
    ("web-2", "node2", Ipv4Addr::new(10, 244, 2, 11)),
];
/// LoadBalancer IPs and the node the outside routes each to.
pub const LB_LOCAL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const LB_ALLOWED: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);
pub const LB_BLOCKED: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 30);
pub const NODE_PORT_TCP: u16 = 30_080;
pub const NODE_PORT_UDP: u16 = 30_053;
pub const NODE_PORT_LOCAL: u16 = 30_081;
pub const HEALTH_CHECK_PORT: u16 = 32_000;
const HEALTHZ_PORT: u16 = 10_256;

/// The Services under test; `local_pods` are the endpoints of the
/// externalTrafficPolicy Local service.
pub fn manifests(local_pods: &[&str]) -> String {
    let endpoint = |pod: &str| {
        let (_, node, ip) = PODS.iter().find(|p| p.0 == pod).expect("known pod");
        format!("- {{addresses: [{ip}], nodeName: {node}, conditions: {{ready: true}}}}\n")
    };
    let all: String = PODS.iter().map(|p| endpoint(p.0)).collect();
    let local: String = local_pods.iter().map(|p| endpoint(p)).collect();
    let slice = |name: &str, endpoints: &str| {
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-x, namespace: ext, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: 5353, protocol: UDP}}]\nendpoints:{}\n{endpoints}",
            if endpoints.is_empty() { " []" } else { "" }
        )
    };
    let lb = |name: &str, cluster_ip: &str, ip: Ipv4Addr, extra: &str| {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ext}}\nspec:\n  type: LoadBalancer\n  clusterIP: {cluster_ip}\n{extra}  ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]\nstatus: {{loadBalancer: {{ingress: [{{ip: {ip}}}]}}}}\n"
        )
    };
    let local_service = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: local, namespace: ext}}\nspec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.51\n  externalTrafficPolicy: Local\n  healthCheckNodePort: {HEALTH_CHECK_PORT}\n  ports: [{{name: http, port: 80, targetPort: 8080, nodePort: {NODE_PORT_LOCAL}, protocol: TCP}}]\nstatus: {{loadBalancer: {{ingress: [{{ip: {LB_LOCAL}}}]}}}}\n"
    );
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: ext}}\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.50\n  ports:\n  - {{name: http, port: 80, targetPort: 8080, nodePort: {NODE_PORT_TCP}, protocol: TCP}}\n  - {{name: dns, port: 53, targetPort: 5353, nodePort: {NODE_PORT_UDP}, protocol: UDP}}\n{}{}{}{}{}{}{}",
        slice("web", &all),
        local_service,
        slice("local", &local),
        lb(
            "allowed",
            "10.96.0.52",
            LB_ALLOWED,
            &format!(
                "  loadBalancerSourceRanges: [{CLIENT_IP}/32, {}/32]\n",
                NODE_IPS[0]
            )
        ),
        slice("allowed", &all),
        lb(
            "blocked",
            "10.96.0.53",
            LB_BLOCKED,
            "  loadBalancerSourceRanges: [10.0.0.0/8]\n"
        ),
        slice("blocked", &all),
    )
}

/// How an agent is stopped before the next one starts.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    /// SIGTERM: the agent's own orderly exit.
    Term,
    /// SIGKILL: a crash.
    Kill,
}

pub struct ExternalCluster {
    pub topology: Topology,
    pub servers: Vec<EchoServer>,
    agents: Vec<(String, PathBuf, PathBuf, ChildGuard)>,
    /// Per node: the cgroup its agent's socket hooks attach to.
    cgroups: Vec<(String, Cgroup)>,
    manifests: PathBuf,
    vipr: PathBuf,
    /// Pass-through XDP on the nodes' uplink peers, in native XDP mode.
    uplink_xdp: Option<ChildGuard>,
    /// The host outside the cluster.
    pub client: String,
    /// The agents' `--xdp` mode.
    pub xdp: String,
}

impl ExternalCluster {
    /// `xdp`: the agents' `--xdp` value.
    pub fn start(vipr: &Path, xdp: &str) -> Result<Self> {
        Self::start_with(vipr, xdp, "host")
    }

    /// `socket_lb`: the agents' `--socket-lb` value.
    pub fn start_with(vipr: &Path, xdp: &str, socket_lb: &str) -> Result<Self> {
        Self::start_with_args(vipr, xdp, &["--socket-lb", socket_lb])
    }

    /// `agent_args`: more `vipr run` flags for both agents.
    pub fn start_with_args(vipr: &Path, xdp: &str, agent_args: &[&str]) -> Result<Self> {
        Self::start_inner(vipr, xdp, agent_args, false)
    }

    /// Every node, pod and the outside host dual-stack before the agents
    /// start (`--ipv6 on` added), so that the agents find the nodes' IPv6
    /// addresses for NodePorts and masquerade; the outside host is
    /// [`CLIENT_IP6`].
    pub fn start_dual_stack(vipr: &Path, xdp: &str, agent_args: &[&str]) -> Result<Self> {
        let args: Vec<&str> = agent_args.iter().copied().chain(["--ipv6", "on"]).collect();
        Self::start_inner(vipr, xdp, &args, true)
    }

    fn start_inner(vipr: &Path, xdp: &str, agent_args: &[&str], ipv6: bool) -> Result<Self> {
        crate::demo::ensure_bpffs()?;
        let mut topology = Topology::new()?;
        topology.add_node("node1")?.add_node("node2")?;
        for (pod, node, ip) in PODS {
            topology.add_pod(node, pod, &ip.to_string())?;
        }
        let client = topology.add_external_host(
            "outside",
            CLIENT_IP,
            &[
                (&format!("{LB_LOCAL}/32"), "node2"),
                (&format!("{LB_ALLOWED}/32"), "node1"),
                (&format!("{LB_BLOCKED}/32"), "node1"),
            ],
        )?;
        // Traffic from outside arrives off the wire with complete checksums;
        // a veth would otherwise hand over partial ones, which XDP (blind to
        // checksum offload state) cannot update correctly.
        let out = std::process::Command::new("ip")
            .args([
                "netns", "exec", &client, "ethtool", "-K", "eth0", "tx", "off",
            ])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "ethtool: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let manifests = std::env::temp_dir().join(format!("{}-ext", topology.prefix()));
        fs::create_dir_all(&manifests)?;
        fs::write(manifests.join("ext.yaml"), self::manifests(&["web-2"]))?;
        let uplink_xdp = match xdp {
            "native" => Some(topology.pass_xdp_on_node_uplinks(vipr)?),
            _ => None,
        };
        let cgroups = ["node1", "node2"]
            .into_iter()
            .map(|node| {
                Ok((
                    node.to_owned(),
                    Cgroup::create(&format!("{}-{node}", topology.prefix()))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut cluster = Self {
            cgroups,
            uplink_xdp,
            xdp: xdp.to_owned(),
            servers: Vec::new(),
            agents: Vec::new(),
            manifests,
            vipr: vipr.to_owned(),
            client,
            topology,
        };
        for (pod, _, _) in PODS {
            if xdp != "off" {
                // Full checksums from the pods too: frames XDP transmits
                // become fresh packets at the receiver, which verifies them.
                cluster.topology.set_tx_checksum_offload(pod, false)?;
            }
            let ns = cluster.topology.netns(pod)?;
            cluster
                .servers
                .push(EchoServer::start(&ns, pod, Some(8080), Some(5353))?);
        }
        if ipv6 {
            cluster.topology.enable_ipv6()?;
            netns::ip(&[
                "-n",
                &cluster.client,
                "addr",
                "add",
                &format!("{CLIENT_IP6}/64"),
                "dev",
                "eth0",
                "nodad",
            ])?;
        }
        for node in ["node1", "node2"] {
            cluster.start_agent(node, agent_args)?;
            // The agent enables accept_local where it may; the datapath must
            // not need it (an unprivileged agent may not write sysctls).
            let ns = cluster.topology.netns(node)?;
            netns::sysctl(&ns, "net/ipv4/conf/eth0/accept_local", "0")?;
            netns::sysctl(&ns, "net/ipv4/conf/all/accept_local", "0")?;
        }
        Ok(cluster)
    }

    /// Starts `node`'s agent with `socket_args` (`--socket-lb`, ...) after
    /// stopping the one running, which leaves its pins for the new one.
    pub fn start_agent(&mut self, node: &str, socket_args: &[&str]) -> Result<()> {
        let vipr = self.vipr.clone();
        self.restart_agent(node, Stop::Term, &vipr, socket_args)
    }

    /// Stops `node`'s agent as `stop` says and starts `vipr` (possibly
    /// another build) with `args` in its place, on the same pins; returns
    /// once the new one is healthy.
    pub fn restart_agent(
        &mut self,
        node: &str,
        stop: Stop,
        vipr: &Path,
        args: &[&str],
    ) -> Result<()> {
        if let Some(i) = self.agents.iter().position(|a| a.0 == node) {
            let (_, _, _, mut child) = self.agents.remove(i);
            match stop {
                Stop::Term => child.terminate()?,
                Stop::Kill => child.kill()?,
            };
        }
        let socket_args = args;
        let xdp = self.xdp.clone();
        let cgroup = self.cgroup(node).to_owned();
        let ns = self.topology.netns(node)?;
        let pins = PathBuf::from(format!(
            "/sys/fs/bpf/vipr-{}-{node}",
            self.topology.prefix()
        ));
        let log = self.manifests.with_extension(format!("{node}.log"));
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut cmd = netns::command_in(&ns, "setpriv");
        cmd.args(["--pdeathsig", "TERM", "--"])
            .arg(vipr)
            .args(["run", "--node-name", node, "--pod-interfaces"])
            .arg(self.topology.pod_interface_glob())
            .arg("--manifests")
            .arg(&self.manifests)
            .args(["--external-interfaces", "eth0", "--xdp", &xdp, "--bpffs"])
            .arg(&pins)
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--healthz-bind-address")
            .arg(format!("127.0.0.1:{HEALTHZ_PORT}"))
            .arg("--cgroup-root")
            .arg(&cgroup)
            .args(socket_args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let mut child = ChildGuard::spawn(&mut cmd)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !matches!(healthz_status(&ns, HEALTHZ_PORT), Ok(200)) {
            if child.try_wait()?.is_some() || Instant::now() > deadline {
                bail!(
                    "agent on {node} did not become healthy:\n{}",
                    fs::read_to_string(&log)?
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.agents.push((node.to_owned(), pins, log, child));
        Ok(())
    }

    /// The cgroup `node`'s agent attaches its socket hooks to.
    pub fn cgroup(&self, node: &str) -> &Path {
        self.cgroups
            .iter()
            .find(|c| c.0 == node)
            .map(|c| c.1.path())
            .expect("known node")
    }

    /// The cgroup itself, to move the test into or to list its programs.
    pub fn node_cgroup(&self, node: &str) -> &Cgroup {
        &self
            .cgroups
            .iter()
            .find(|c| c.0 == node)
            .expect("known node")
            .1
    }

    /// The agents' state directory (their name indexes).
    pub fn state_dir(&self) -> PathBuf {
        self.manifests.with_extension("state")
    }

    /// `vipr ARGS` in `node`'s network namespace, on that node's agent's
    /// pins and name index.
    pub fn vipr_command(&self, node: &str, args: &[&str]) -> Result<std::process::Output> {
        Ok(self
            .topology
            .command_in(node, crate::vipr_bin())?
            .args(args)
            .arg("--bpffs")
            .arg(self.pins(node))
            .arg("--state-dir")
            .arg(self.state_dir())
            .output()?)
    }

    /// [`Self::vipr_command`]'s output, or an error carrying its stderr.
    pub fn vipr(&self, node: &str, args: &[&str]) -> Result<String> {
        let out = self.vipr_command(node, args)?;
        anyhow::ensure!(
            out.status.success(),
            "vipr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// [`Self::vipr`] with `-o json`, parsed.
    pub fn vipr_json(&self, node: &str, args: &[&str]) -> Result<serde_json::Value> {
        let text = self.vipr(node, &[args, &["-o", "json"]].concat())?;
        serde_json::from_str(&text).with_context(|| text.clone())
    }

    /// The pin directory of `node`'s agent.
    pub fn pins(&self, node: &str) -> PathBuf {
        PathBuf::from(format!(
            "/sys/fs/bpf/vipr-{}-{node}",
            self.topology.prefix()
        ))
    }

    /// Stops `node`'s agent and runs `vipr cleanup` on its pins.
    pub fn cleanup_agent(&mut self, node: &str) -> Result<()> {
        if let Some(i) = self.agents.iter().position(|a| a.0 == node) {
            let (_, _, _, mut child) = self.agents.remove(i);
            child.terminate()?;
        }
        let ns = self.topology.netns(node)?;
        let out = netns::command_in(&ns, &self.vipr)
            .arg("cleanup")
            .arg("--bpffs")
            .arg(self.pins(node))
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "vipr cleanup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Writes one more manifest file for the agents to pick up.
    pub fn write_manifest(&self, name: &str, text: &str) -> Result<()> {
        let tmp = self.manifests.join(format!(".{name}.tmp"));
        fs::write(&tmp, text)?;
        fs::rename(tmp, self.manifests.join(name)).context("replace manifest")
    }

    /// Rewrites the endpoints of the externalTrafficPolicy Local service.
    pub fn set_local_endpoints(&self, pods: &[&str]) -> Result<()> {
        let tmp = self.manifests.join(".ext.yaml.tmp");
        fs::write(&tmp, manifests(pods))?;
        fs::rename(tmp, self.manifests.join("ext.yaml")).context("replace manifests")
    }

    /// IPv6 twins of the pods' echo servers (same ports, each pod's IPv6
    /// address), after [`Topology::enable_ipv6`]; in `PODS` order.
    pub fn start_ipv6_servers(&self) -> Result<Vec<EchoServer>> {
        PODS.iter()
            .map(|(pod, _, _)| {
                let ip = self.topology.pod_ip6(pod)?;
                let netns = self.topology.netns(pod)?;
                EchoServer::start_on(&netns, pod, ip.into(), Some(8080), Some(5353))
            })
            .collect()
    }

    pub fn server(&self, pod: &str) -> &EchoServer {
        self.servers
            .iter()
            .find(|s| s.name() == pod)
            .expect("server")
    }

    pub fn logs(&self) -> String {
        self.agents
            .iter()
            .map(|(node, _, log, _)| {
                format!("== {node}\n{}", fs::read_to_string(log).unwrap_or_default())
            })
            .collect()
    }

    /// `vipr conntrack list` on both nodes shows a held connection from
    /// `client` to `frontend` (answered by `serving`, on node2) as a DSR
    /// flow, established on both (node1 never sees a reply: the client's
    /// ACK tells), and `vipr trace` on node1 says a new flow goes by DSR.
    pub fn tools_show_dsr(
        &self,
        frontend: std::net::SocketAddr,
        client: std::net::IpAddr,
        serving: &str,
    ) -> Result<()> {
        let mut session = crate::echo::TcpSession::connect(
            &self.client,
            frontend,
            std::time::Duration::from_secs(2),
        )?;
        anyhow::ensure!(session.request()? == serving);
        let held = session.local_addr().to_string();
        for node in ["node1", "node2"] {
            let rows = self.vipr_json(node, &["conntrack", "list"])?;
            let row = rows
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["client"] == held.as_str())
                .with_context(|| format!("{node}: no row for {held}: {rows:#}"))?;
            anyhow::ensure!(row["dsr"] == true, "{node}: {row:#}");
            anyhow::ensure!(row["state"] == "established", "{node}: {row:#}");
            anyhow::ensure!(row["snat"].is_null(), "{node}: {row:#}");
        }
        let traced = self.vipr_json(
            "node1",
            &[
                "trace",
                &std::net::SocketAddr::new(client, 41_000).to_string(),
                &format!("{frontend}/tcp"),
                "--from",
                "external",
            ],
        )?;
        anyhow::ensure!(traced["dsr"] == true, "{traced:#}");
        anyhow::ensure!(traced["masquerade"].is_null(), "{traced:#}");
        anyhow::ensure!(session.request()? == serving);
        Ok(())
    }

    /// A packet counter of the agent on `node`, summed over CPUs.
    pub fn counter(&self, node: &str, counter: proxy_common::Counter) -> Result<u64> {
        let (_, pins, _, _) = self
            .agents
            .iter()
            .find(|a| a.0 == node)
            .context("no such node")?;
        let counters = vipr::inspect::pinned_counters(pins)?;
        Ok(counters
            .into_iter()
            .find(|(c, _)| *c == counter)
            .map_or(0, |(_, n)| n))
    }

    /// GET the health-check node port of `node` from outside: (status, body).
    pub fn health_check(&self, node: usize) -> Result<(u16, String)> {
        use std::io::{Read, Write};
        let addr = SocketAddr::from((NODE_IPS[node], HEALTH_CHECK_PORT));
        netns::run_in(&self.client, move || -> Result<(u16, String)> {
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            let code = text.split_whitespace().nth(1).context("status")?.parse()?;
            let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
            Ok((code, body))
        })?
    }
}

impl Drop for ExternalCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for s in &mut self.servers {
            s.stop();
        }
        for (_, pins, log, child) in &mut self.agents {
            let _ = child.terminate();
            let _ = fs::remove_file(log);
            let _ = fs::remove_dir_all(pins.as_path());
        }
        for node in ["node1", "node2"] {
            let _ = fs::remove_dir_all(self.pins(node));
            let _ = fs::remove_file(self.manifests.with_extension(format!("{node}.log")));
        }
        // Links are gone with their pins; the groups can go now.
        self.cgroups.clear();
        if let Some(mut child) = self.uplink_xdp.take() {
            let _ = child.terminate();
        }
        let _ = self.topology.teardown();
        let _ = fs::remove_dir_all(&self.manifests);
        let _ = fs::remove_dir_all(self.manifests.with_extension("state"));
    }
}
