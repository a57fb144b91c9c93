//! `cargo xtask bench-sync`: what a sync costs at scale, against the test
//! API server with N Services × E endpoints (one EndpointSlice each).
//!
//! Per N, in process (vipr's kube source + model + planner + in-memory maps):
//! the initial sync (list + full sync), then one endpoint changed in one
//! slice — the map writes, objects converted and Services recomputed of that
//! sync. Then, as root with the built agent (`VIPR_BIN`, else
//! target/release/vipr): the real `vipr run --kubeconfig` — time until
//! /healthz turns 200 (first sync applied to the kernel maps), its RSS, and
//! the map writes its log reports for one endpoint change.
//!
//! Usage: vipr-sync-bench [SERVICES,...] [ENDPOINTS]   (default 1000,10000 10)

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use vipr_tests::apiserver::ApiServer;
use vipr_tests::apiserver::harness::{Harness, NODE, api_with, service, slice};

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
    println!(
        "| services × endpoints | initial sync (list + full) | one-endpoint-change sync: map writes | objects converted | services recomputed | sync time |"
    );
    println!("|---|---|---|---|---|---|");
    for &n in &counts {
        in_process(n, endpoints).await?;
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
    println!(
        "\n| agent `vipr run --kubeconfig` | time to healthy | RSS | map writes, one endpoint change |"
    );
    println!("|---|---|---|---|");
    for &n in &counts {
        agent(&bin, n, endpoints).await?;
    }
    Ok(())
}

/// Services `svc-i` with cluster IP 10.96.x.y, slices `svc-i-a` with
/// endpoints 10.(64+x).y.k, as one YAML text.
fn objects(n: usize, endpoints: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        out.push_str(&service(&format!("svc-{i}"), &cluster_ip(i), &[80]));
        out.push_str(&slice_of(i, endpoints, 0));
    }
    out
}

fn cluster_ip(i: usize) -> String {
    format!("10.96.{}.{}", i / 250, i % 250 + 1)
}

/// Service i's slice; `shift` moves its first endpoint to another address.
fn slice_of(i: usize, endpoints: usize, shift: usize) -> String {
    let ips: Vec<String> = (0..endpoints)
        .map(|k| {
            let k = if k == 0 { k + shift * 100 } else { k };
            format!("10.{}.{}.{}", 64 + i / 250, i % 250, k + 1)
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

async fn agent(bin: &PathBuf, n: usize, endpoints: usize) -> Result<()> {
    let api = api_with(&[objects(n, endpoints)]).await?;
    let dir = std::env::temp_dir().join(format!("vipr-sync-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig())?;
    let pins = PathBuf::from(format!(
        "/sys/fs/bpf/vipr-sync-bench-{}",
        std::process::id()
    ));
    let healthz = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let start = Instant::now();
    let mut child = Command::new(bin)
        .arg("run")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--node-name", NODE, "--pod-interfaces", "vipr-bench-none*"])
        .arg("--bpffs")
        .arg(&pins)
        .args(["--healthz-bind-address", &healthz.to_string()])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    let lines = log_lines(&mut child);
    let result = measure(&api, &lines, healthz, start, n, endpoints, child.id()).await;
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&pins);
    let _ = std::fs::remove_dir_all(&dir);
    let (healthy, rss_kib, writes) = result?;
    println!(
        "| {n} × {endpoints} | {:.0} ms | {:.1} MiB | {writes} |",
        healthy.as_secs_f64() * 1e3,
        rss_kib as f64 / 1024.0
    );
    Ok(())
}

/// The agent's "synced" log lines (tracing writes to stdout).
fn log_lines(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.contains("synced") && tx.send(line).is_err() {
                    return;
                }
            }
        });
    }
    rx
}

async fn measure(
    api: &ApiServer,
    lines: &mpsc::Receiver<String>,
    healthz: std::net::SocketAddr,
    start: Instant,
    n: usize,
    endpoints: usize,
    pid: u32,
) -> Result<(Duration, u64, String)> {
    loop {
        if healthz_ok(healthz) {
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("agent not healthy after 2 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let healthy = start.elapsed();
    let first = lines.recv_timeout(Duration::from_secs(5))?;
    if !first.contains(&format!("frontends={n}")) {
        bail!("first sync did not program {n} frontends: {first}");
    }
    // Let the allocator settle before reading RSS.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")?;
    while lines.try_recv().is_ok() {}
    api.apply(&slice_of(n / 2, endpoints, 1))?;
    let line = lines.recv_timeout(Duration::from_secs(10))?;
    let writes = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("map_writes="))
        .unwrap_or("?")
        .to_string();
    Ok((healthy, rss, writes))
}

fn healthz_ok(addr: std::net::SocketAddr) -> bool {
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let mut reply = String::new();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
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
