//! Endpoint churn at the pace of a rolling update, end to end: the real
//! agent on node1 follows the in-process API server while a Service's
//! endpoints are replaced 100 times a second for 60 s (`VIPR_CHURN_SECONDS`
//! shortens it), and a pod on node1 opens connections to it without pause.
//! Eight pods on two nodes answer for 400 endpoint addresses, with the
//! address each connection reached, so every landing is judged against the
//! record of when that endpoint was in the Service. With the default
//! --min-sync-period (1 s, kube-proxy's), a new connection may still reach
//! an endpoint up to about that long after its removal; the test bounds it
//! and prints how late the latest was.
use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use vipr_tests::{
    apiserver::{ApiServer, harness::service},
    churn::*,
    demo::healthz_status,
    netns::{self, ChildGuard, Topology},
    soak::{NewConnections, ServedCheck},
};

const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 60);
const TARGET_PORT: u16 = 8080;
const CHANGES_PER_SECOND: u32 = 100;
/// Endpoints in the Service at any time.
const WINDOW: usize = 8;
const ADDRESSES_PER_POD: u8 = 50;
const PODS_PER_NODE: u8 = 4;
const HEALTHZ_PORT: u16 = 10_256;
/// How long after its removal an endpoint may still get a new connection:
/// the agent's --min-sync-period (1 s, as kube-proxy's) plus the watch,
/// the sync and the poll.
const LAG: Duration = Duration::from_secs(2);
const LOAD_THREADS: usize = 2;

#[derive(Default, Debug)]
struct Landings {
    current: u64,
    /// Landed on an endpoint removed before the connection started, within `LAG`.
    late: u64,
    latest: Duration,
}

/// The pod addresses of pod `index` (0-based) on node `node` (1-based).
fn addresses(node: u8, index: u8) -> Vec<Ipv4Addr> {
    let first = 20 + index * ADDRESSES_PER_POD;
    (first..first + ADDRESSES_PER_POD)
        .map(|last| Ipv4Addr::new(10, 244, node, last))
        .collect()
}

struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_replaced_100_times_a_second_while_a_client_connects() -> Result<()> {
    let seconds: u32 = std::env::var("VIPR_CHURN_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    vipr_tests::demo::ensure_bpffs()?;
    let mut topo = Topology::new()?;
    topo.add_node("node1")?.add_node("node2")?;
    topo.add_pod("node1", "client", "10.244.1.250")?;
    let mut pool = Vec::new();
    let mut servers = Vec::new();
    for node in 1..=2u8 {
        for index in 0..PODS_PER_NODE {
            let name = format!("b{node}{index}");
            let own = Ipv4Addr::new(10, 244, node, 11 + index);
            topo.add_pod(&format!("node{node}"), &name, &own.to_string())?;
            let more = addresses(node, index);
            topo.add_pod_addresses(&name, &more)?;
            pool.extend(more);
            servers.push(AddressServer::start(&topo.netns(&name)?, TARGET_PORT)?);
        }
    }
    // Consecutive window members on different pods and nodes.
    pool.sort_by_key(|ip| (ip.octets()[3], ip.octets()[2]));

    let node1 = topo.netns("node1")?;
    let api = ApiServer::start_in(&node1).await?;
    api.apply(&service("churn", &CLUSTER_IP.to_string(), &[80]))?;
    api.apply(&slice_yaml(
        "churn",
        TARGET_PORT,
        "node1",
        &window(&pool, 0, WINDOW),
    ))?;
    let work = std::env::temp_dir().join(format!("{}-churn", topo.prefix()));
    std::fs::create_dir_all(&work)?;
    let kubeconfig = work.join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig())?;
    let log = work.join("vipr.log");
    let pins = Pins(PathBuf::from(format!(
        "/sys/fs/bpf/vipr-{}-node1",
        topo.prefix()
    )));
    let out = std::fs::File::create(&log)?;
    let mut cmd = netns::command_in(&node1, "setpriv");
    // The release build: its CPU time is one of the figures.
    let vipr = vipr_tests::vipr_release_bin();
    cmd.args(["--pdeathsig", "TERM", "--"])
        .arg(&vipr)
        .arg("run")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--node-name", "node1", "--pod-interfaces"])
        .arg(topo.pod_interface_glob())
        .arg("--bpffs")
        .arg(&pins.0)
        .args([
            "--healthz-bind-address",
            &format!("127.0.0.1:{HEALTHZ_PORT}"),
        ])
        .args(["--socket-lb", "off"])
        // More flags for the agent, e.g. a shorter --min-sync-period.
        .args(
            std::env::var("VIPR_CHURN_AGENT_ARGS")
                .unwrap_or_default()
                .split_whitespace(),
        )
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let mut agent = ChildGuard::spawn(&mut cmd)?;
    let pid = agent.pid().context("agent pid")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !matches!(healthz_status(&node1, HEALTHZ_PORT), Ok(200)) {
        if agent.try_wait()?.is_some() || Instant::now() > deadline {
            bail!("agent not healthy:\n{}", std::fs::read_to_string(&log)?);
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let membership: SharedMembership = Arc::default();
    let started = Instant::now();
    for ip in window(&pool, 0, WINDOW) {
        membership.lock().unwrap().add(ip, started);
    }
    let landings = Arc::new(Mutex::new(Landings::default()));
    let check: ServedCheck = {
        let (membership, landings) = (membership.clone(), landings.clone());
        Arc::new(move |answer: &str, started: Instant| {
            let ip = endpoint_of(answer).ok_or_else(|| format!("answer {answer:?}"))?;
            let landing = membership
                .lock()
                .unwrap()
                .landing(ip, started, Instant::now());
            let mut seen = landings.lock().unwrap();
            match landing {
                Landing::Current => seen.current += 1,
                Landing::Removed(ago) if ago <= LAG => {
                    seen.late += 1;
                    seen.latest = seen.latest.max(ago);
                }
                other => return Err(format!("{ip}: {other:?}")),
            }
            Ok(())
        })
    };
    let client = topo.netns("client")?;
    let frontend = std::net::SocketAddr::from((CLUSTER_IP, 80));
    let load = NewConnections::start(&[(client, frontend)], LOAD_THREADS, Some(check))?;

    let log_before = std::fs::metadata(&log)?.len() as usize;
    let cpu_before = cpu_time(pid)?;
    let churn_started = Instant::now();
    let steps = CHANGES_PER_SECOND * seconds;
    let pace = Duration::from_secs(1) / CHANGES_PER_SECOND;
    for step in 1..=steps as usize {
        let due = churn_started + pace * step as u32;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        api.apply(&slice_yaml(
            "churn",
            TARGET_PORT,
            "node1",
            &window(&pool, step, WINDOW),
        ))?;
        let now = Instant::now();
        let mut m = membership.lock().unwrap();
        m.remove(pool[(step - 1) % pool.len()], now);
        m.add(pool[(step + WINDOW - 1) % pool.len()], now);
    }
    let churn_took = churn_started.elapsed();
    let cpu = cpu_time(pid)? - cpu_before;
    std::thread::sleep(LAG);
    let (tally, took) = load.finish();
    let agent_log = std::fs::read_to_string(&log)?;
    agent.terminate()?;
    let _ = netns::command_in(&node1, &vipr)
        .arg("cleanup")
        .arg("--bpffs")
        .arg(&pins.0)
        .output();
    drop(servers);
    topo.teardown()?;
    let _ = std::fs::remove_dir_all(&work);

    let mut syncs = sync_times_us(agent_log.get(log_before..).unwrap_or(""));
    syncs.sort_unstable();
    let seen = landings.lock().unwrap();
    eprintln!(
        "{} endpoint changes in {:.1} s ({:.0}/s); {} syncs, sync time p50 {} µs, \
         p99 {} µs, max {} µs; agent CPU {:.2} s ({:.1}% of one core)\n\
         connections: {} in {:.1} s ({:.0}/s), {} failed, {} resets; {} on a current \
         endpoint, {} on one removed at most {} ms before they started (bound {} ms)",
        steps,
        churn_took.as_secs_f64(),
        f64::from(steps) / churn_took.as_secs_f64(),
        syncs.len(),
        percentile(&syncs, 0.5),
        percentile(&syncs, 0.99),
        syncs.last().copied().unwrap_or(0),
        cpu.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / churn_took.as_secs_f64(),
        tally.completed,
        took.as_secs_f64(),
        tally.completed as f64 / took.as_secs_f64(),
        tally.failed,
        tally.resets,
        seen.current,
        seen.late,
        seen.latest.as_millis(),
        LAG.as_millis(),
    );
    assert_eq!(tally.failed, 0, "{:?}", tally.errors);
    assert!(seen.current > 0 && !syncs.is_empty());
    Ok(())
}
