//! `cargo xtask bench-sync`: what a sync costs at scale, with N Services ×
//! E endpoints (one EndpointSlice each).
//!
//! Per N, in process (vipr's kube source + model + planner + in-memory maps):
//! the initial sync (list + full sync), then one endpoint changed in one
//! slice — the map writes, objects converted and Services recomputed of that
//! sync. Then, as root with the built agent (`VIPR_BIN`, else
//! target/release/vipr), the real `vipr run` through each source (the test
//! API server, paging as a real one does, and a manifests directory): time
//! from start to the last kind listed, to the first sync written to the
//! kernel maps, and to /healthz 200; its RSS (current and peak); and the map
//! writes its log reports for one endpoint change.
//!
//! Usage: vipr-sync-bench [SERVICES,...] [ENDPOINTS]   (default 1000,10000 10)
//! Environment: VIPR_BENCH_SOURCES=api,manifests (default both);
//! VIPR_BENCH_AGENT_ONLY=1 skips the in-process rows; VIPR_BENCH_WRAP="cmd
//! args" runs the agent under a profiler (e.g. `heaptrack -o /tmp/ht`).

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use vipr_tests::apiserver::ApiServer;
use vipr_tests::apiserver::harness::{Harness, NODE, api_with, node, service, slice};

/// Addresses per Service's block of endpoint addresses (room for the shift).
const ENDPOINT_BLOCK: u32 = 32;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let counts: Vec<usize> = args
        .get(1)
        .map_or("1000,10000", String::as_str)
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("SERVICES: comma-separated numbers")?;
    let endpoints: usize = args.get(2).map_or(Ok(10), |e| e.parse())?;
    if endpoints as u32 >= ENDPOINT_BLOCK / 2 {
        bail!("ENDPOINTS: at most {}", ENDPOINT_BLOCK / 2 - 1);
    }
    if std::env::var_os("VIPR_BENCH_AGENT_ONLY").is_none() {
        println!(
            "| services × endpoints | initial sync (list + full) | one-endpoint-change sync: map writes | objects converted | services recomputed | sync time |"
        );
        println!("|---|---|---|---|---|---|");
        for &n in &counts {
            in_process(n, endpoints).await?;
        }
    }
    let bin = std::env::var_os("VIPR_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/vipr"),
        PathBuf::from,
    );
    if !bin.is_file() || !is_root() {
        println!(
            "\n(agent figures skipped: needs root and {})",
            bin.display()
        );
        return Ok(());
    }
    let sources = std::env::var("VIPR_BENCH_SOURCES").unwrap_or_else(|_| "api,manifests".into());
    println!(
        "\n| agent `vipr run` | source | start → listed | listed → maps written | first sync: model / plan / write | start → healthy | RSS | peak RSS | map writes, one endpoint change | name index (first write) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &n in &counts {
        for source in sources.split(',') {
            let source = match source {
                "api" => AgentSource::Api,
                "manifests" => AgentSource::Manifests,
                other => bail!("VIPR_BENCH_SOURCES: unknown source {other}"),
            };
            agent(&bin, source, n, endpoints).await?;
        }
    }
    Ok(())
}

/// Services `svc-i`, each with a one-port slice `svc-i-a`, as YAML.
fn objects(n: usize, endpoints: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        out.push_str(&service(&format!("svc-{i}"), &cluster_ip(i), &[80]));
        out.push_str(&slice_of(i, endpoints, 0));
    }
    out
}

/// 10.96.0.1 onwards: 100,000 Services fit below 10.98.
fn cluster_ip(i: usize) -> String {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + i as u32).to_string()
}

/// Service i's slice, its endpoints in a block of its own from 10.128.0.0;
/// `shift` moves its first endpoint to another address of the block.
fn slice_of(i: usize, endpoints: usize, shift: u32) -> String {
    let block = u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i as u32 * ENDPOINT_BLOCK;
    let ips: Vec<String> = (0..endpoints as u32)
        .map(|k| {
            let k = if k == 0 {
                k + shift * ENDPOINT_BLOCK / 2
            } else {
                k
            };
            Ipv4Addr::from(block + k + 1).to_string()
        })
        .collect();
    let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
    slice(&format!("svc-{i}-a"), &format!("svc-{i}"), 8080, &ips)
}

async fn in_process(n: usize, endpoints: usize) -> Result<()> {
    let api = api_with(&[objects(n, endpoints)]).await?;
    let start = Instant::now();
    let mut h = Harness::start(&api, Default::default()).await?;
    h.until("initial sync", |h| !h.reports.is_empty()).await?;
    let initial = start.elapsed();
    if h.table().len() != n {
        bail!(
            "initial sync programmed {} of {n} Services",
            h.table().len()
        );
    }
    let syncs = h.reports.len();
    api.apply(&slice_of(n / 2, endpoints, 1))?;
    h.until("one-endpoint sync", |h| h.reports.len() > syncs)
        .await?;
    let r = h.reports.last().cloned().unwrap_or_default();
    println!(
        "| {n} × {endpoints} | {:.0} ms | {} | {} | {} | {} µs |",
        initial.as_secs_f64() * 1e3,
        r.ops,
        r.converted,
        r.services_recomputed,
        r.elapsed.as_micros()
    );
    Ok(())
}

#[derive(Clone, Copy, Debug)]
enum AgentSource {
    Api,
    Manifests,
}

/// Where the agent reads from: the API server, or files it holds.
enum Feed {
    Api(ApiServer),
    Manifests(PathBuf),
}

impl Feed {
    fn change_one_endpoint(&self, n: usize, endpoints: usize) -> Result<()> {
        let changed = slice_of(n / 2, endpoints, 1);
        match self {
            Feed::Api(api) => api.apply(&changed),
            Feed::Manifests(dir) => Ok(std::fs::write(dir.join("a-changed.yaml"), changed)?),
        }
    }
}

async fn agent(bin: &Path, source: AgentSource, n: usize, endpoints: usize) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("vipr-sync-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests)?;
    let mut args: Vec<String> = Vec::new();
    let feed = match source {
        AgentSource::Api => {
            let api = api_with(&[objects(n, endpoints)]).await?;
            let kubeconfig = dir.join("kubeconfig");
            std::fs::write(&kubeconfig, api.kubeconfig())?;
            args.extend(["--kubeconfig".into(), kubeconfig.display().to_string()]);
            Feed::Api(api)
        }
        AgentSource::Manifests => {
            // The first file by name defines an object: "a-changed.yaml"
            // replaces the bulk's slice.
            std::fs::write(manifests.join("b-bulk.yaml"), objects(n, endpoints))?;
            std::fs::write(manifests.join("node.yaml"), node())?;
            args.extend(["--manifests".into(), manifests.display().to_string()]);
            Feed::Manifests(manifests.clone())
        }
    };
    let pins = PathBuf::from(format!(
        "/sys/fs/bpf/vipr-sync-bench-{}",
        std::process::id()
    ));
    // Room for every frontend, endpoint and slot at this scale.
    let room = |per_service: usize| (n * per_service).max(65_536).to_string();
    let healthz = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let wrap = std::env::var("VIPR_BENCH_WRAP").unwrap_or_default();
    let mut wrap = wrap.split_whitespace();
    let mut command = match wrap.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(wrap).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let start = Instant::now();
    let mut child = command
        .arg("run")
        .args(&args)
        .args(["--node-name", NODE, "--pod-interfaces", "vipr-bench-none*"])
        .arg("--bpffs")
        .arg(&pins)
        .arg("--state-dir")
        .arg(&dir)
        .args([
            "--max-services",
            &room(2),
            "--max-backends",
            &room(endpoints + 1),
        ])
        .args(["--max-slots", &room(endpoints + 1)])
        .args(["--healthz-bind-address", &healthz.to_string()])
        // The agent's own debug line says what the name index cost.
        .env("RUST_LOG", "info,vipr::agent=debug")
        .env("NO_COLOR", "1")
        .stderr(Stdio::null())
        .stdout(Stdio::piped())
        // Its own process group: a profiler wrapper's agent goes with it.
        .process_group(0)
        .spawn()?;
    let lines = log_lines(&mut child, start);
    let result = measure(&feed, &lines, healthz, start, n, endpoints, child.id()).await;
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&pins);
    let _ = std::fs::remove_dir_all(&dir);
    let m = result?;
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    println!(
        "| {n} × {endpoints} | {source:?} | {} | {} | {} | {} | {} | {} | {} | {} |",
        ms(m.listed),
        ms(m.written.saturating_sub(m.listed)),
        m.phases,
        ms(m.healthy),
        mib(m.rss_kib),
        mib(m.peak_kib),
        m.writes,
        m.names
    );
    Ok(())
}

/// The agent's log lines that matter here, with when they were read.
fn log_lines(
    child: &mut std::process::Child,
    start: Instant,
) -> mpsc::Receiver<(Duration, String)> {
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let wanted = line.contains("synced")
                    || line.contains(" listed")
                    || line.contains("name index written");
                if wanted && tx.send((start.elapsed(), line)).is_err() {
                    return;
                }
            }
        });
    }
    rx
}

struct Measured {
    /// Start to the last object kind listed (the manifests' first read:
    /// none, so zero).
    listed: Duration,
    /// Start to the first sync's log line (maps written).
    written: Duration,
    healthy: Duration,
    /// The first sync's own account of its time.
    phases: String,
    rss_kib: u64,
    peak_kib: u64,
    writes: String,
    /// The first name index's size and write time.
    names: String,
}

async fn measure(
    feed: &Feed,
    lines: &mpsc::Receiver<(Duration, String)>,
    healthz: std::net::SocketAddr,
    start: Instant,
    n: usize,
    endpoints: usize,
    pid: u32,
) -> Result<Measured> {
    loop {
        if healthz_ok(healthz) {
            break;
        }
        if start.elapsed() > Duration::from_secs(300) {
            bail!("agent not healthy after 5 minutes");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let healthy = start.elapsed();
    let mut listed = Duration::ZERO;
    let mut names = String::from("?");
    let mut note_names = |line: &str| {
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(name))
                .and_then(|v| v.parse::<f64>().ok())
        };
        if let (Some(bytes), Some(ms)) = (field("bytes="), field("took_ms=")) {
            names = format!("{:.1} MB in {ms:.0} ms", bytes / 1e6);
        }
    };
    let (written, phases) = loop {
        let (at, line) = lines.recv_timeout(Duration::from_secs(10))?;
        if line.contains(" listed") {
            listed = at;
            continue;
        }
        if line.contains("name index written") {
            note_names(&line);
            continue;
        }
        if !line.contains(&format!("frontends={n}")) {
            bail!("first sync did not program {n} frontends: {line}");
        }
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(name))
                .and_then(|us| us.parse::<f64>().ok())
                .map_or("?".to_string(), |us| format!("{:.0}", us / 1e3))
        };
        let phases = format!(
            "{} / {} / {} ms",
            field("model_us="),
            field("plan_us="),
            field("write_us=")
        );
        break (at, phases);
    };
    // Let the allocator settle before reading RSS.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("{name} in /proc/{pid}/status"))
    };
    let (rss_kib, peak_kib) = (field("VmRSS:")?, field("VmHWM:")?);
    while let Ok((_, line)) = lines.try_recv() {
        note_names(&line);
    }
    feed.change_one_endpoint(n, endpoints)?;
    let line = loop {
        let (_, line) = lines.recv_timeout(Duration::from_secs(10))?;
        if line.contains("synced") {
            break line;
        }
        note_names(&line);
    };
    let writes = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("map_writes="))
        .unwrap_or("?")
        .to_string();
    Ok(Measured {
        listed,
        written,
        healthy,
        phases,
        rss_kib,
        peak_kib,
        writes,
        names,
    })
}

fn healthz_ok(addr: std::net::SocketAddr) -> bool {
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let mut reply = String::new();
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .and_then(|()| stream.read_to_string(&mut reply))
        .is_ok()
        && reply.starts_with("HTTP/1.1 200")
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}
