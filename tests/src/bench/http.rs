//! A real workload beside the home-made load: nginx in every backend pod
//! and `wrk` in the client pod, HTTP/1.1 with a new connection per request
//! (`Connection: close`) and with keep-alive.
use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use super::cpu::{CpuTimes, ticks_to_us};
use crate::netns::{self, ChildGuard};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum HttpMode {
    /// `Connection: close`: a new connection per request.
    Close,
    KeepAlive,
}

impl HttpMode {
    pub const ALL: [HttpMode; 2] = [HttpMode::Close, HttpMode::KeepAlive];
    pub fn name(self) -> &'static str {
        match self {
            HttpMode::Close => "close",
            HttpMode::KeepAlive => "keep-alive",
        }
    }
}

/// One nginx in one pod's netns, from a config of its own in `dir`; stopped
/// (and its directory removed) on drop.
pub struct Nginx {
    child: ChildGuard,
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx in `netns` on `port` and waits until it accepts.
    pub fn start(netns: &str, port: u16, dir: &Path) -> Result<Self> {
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir)?;
        let conf = dir.join("nginx.conf");
        fs::write(&conf, nginx_conf(dir, port))?;
        let log = dir.join("error.log");
        // One process (no master): SIGTERM or SIGKILL leaves no worker
        // behind. pdeathsig: gone with the bench, however it ends.
        let mut cmd = netns::command_in(netns, "setpriv");
        cmd.args(["--pdeathsig", "KILL", "--", "nginx", "-p"])
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            // The log nginx opens before it reads the config.
            .arg("-e")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("stderr"))?);
        let mut nginx = Self {
            child: ChildGuard::spawn(&mut cmd)?,
            dir: dir.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let probe = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        loop {
            let up = netns::run_in(netns, || {
                TcpStream::connect_timeout(&probe, Duration::from_millis(100)).is_ok()
            })?;
            if up {
                return Ok(nginx);
            }
            let exited = nginx.child.try_wait()?;
            if exited.is_some() || Instant::now() > deadline {
                bail!(
                    "nginx did not start in {netns} ({exited:?}): {} {}",
                    fs::read_to_string(dir.join("stderr")).unwrap_or_default(),
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.terminate();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// No system config: everything nginx writes goes to `dir`.
fn nginx_conf(dir: &Path, port: u16) -> String {
    format!(
        "daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  # Keep-alive connections stay up for the whole run.
  keepalive_requests 100000000;
  server {{
    listen {port} backlog=4096;
    location / {{ return 200 \"ok\\n\"; }}
  }}
}}
",
        d = dir.display()
    )
}

/// What one wrk run measured.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct WrkResult {
    pub requests: u64,
    pub seconds: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Socket errors (connect, read, write, timeout) and non-2xx responses.
    pub errors: u64,
}

impl WrkResult {
    pub fn req_per_s(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

/// One wrk run with the machine's CPU over it, per request.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HttpSample {
    pub mode: HttpMode,
    #[serde(flatten)]
    pub wrk: WrkResult,
    pub req_per_s: f64,
    pub busy_us_per_req: f64,
    pub system_softirq_us_per_req: f64,
}

impl HttpSample {
    pub fn new(mode: HttpMode, wrk: WrkResult, cpu: &CpuTimes) -> Self {
        let n = wrk.requests.max(1) as f64;
        Self {
            mode,
            req_per_s: wrk.req_per_s(),
            busy_us_per_req: ticks_to_us(cpu.busy()) / n,
            system_softirq_us_per_req: ticks_to_us(cpu.system_softirq()) / n,
            wrk,
        }
    }
}

/// How wrk is run.
#[derive(Clone, Copy, Debug)]
pub struct WrkLoad {
    pub threads: usize,
    pub connections: usize,
    pub duration: Duration,
}

/// One line of figures, written by the script's `done` with full precision
/// (wrk's own summary rounds and picks units).
const RESULT_TAG: &str = "vipr-bench-wrk:";

/// wrk connects all of a thread's connections to one address
/// (`thread.addr`), so with several `targets` (`direct`) each thread picks
/// one at random, and in `Close` mode picks again after each response:
/// every new connection goes to a random pod, as a Service spreads them.
/// (Threads pinned to pods pair each wrk thread with one nginx, which alone
/// moved the rate by a third on two cores.) A Service is one target, so
/// the pick changes nothing there, at the same cost.
fn wrk_script(targets: &[SocketAddr], mode: HttpMode) -> String {
    let list: Vec<String> = targets
        .iter()
        .map(|t| format!("{{\"{}\", \"{}\"}}", t.ip(), t.port()))
        .collect();
    let repick = match mode {
        HttpMode::Close => {
            "function response(status, headers, body)
  wrk.thread.addr = addrs[math.random(#addrs)]
end
"
        }
        HttpMode::KeepAlive => "",
    };
    format!(
        "local targets = {{ {list} }}
local addrs = {{}}
for i, t in ipairs(targets) do addrs[i] = wrk.lookup(t[1], t[2])[1] end
math.randomseed(os.time())
function setup(thread)
  thread.addr = addrs[math.random(#addrs)]
  -- Each thread's own sequence (they all load this script in the same second).
  thread:set(\"seed\", math.random(1000000000))
end
function init(args)
  math.randomseed(seed)
end
{repick}function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(\"{RESULT_TAG} requests=%d duration_us=%d p50_us=%d p99_us=%d \"
    .. \"connect=%d read=%d write=%d status=%d timeout=%d\\n\",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
",
        list = list.join(", ")
    )
}

/// Parses the script's line out of wrk's output.
pub fn parse_wrk(output: &str) -> Result<WrkResult> {
    let line = output
        .lines()
        .find_map(|l| l.trim().strip_prefix(RESULT_TAG))
        .with_context(|| format!("no `{RESULT_TAG}` line in wrk's output:\n{output}"))?;
    let field = |name: &str| -> Result<u64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .with_context(|| format!("no {name} in {line:?}"))?
            .parse()
            .with_context(|| format!("bad {name} in {line:?}"))
    };
    let seconds = field("duration_us")? as f64 / 1e6;
    ensure!(seconds > 0.0, "wrk ran for no time: {line:?}");
    Ok(WrkResult {
        requests: field("requests")?,
        seconds,
        p50_us: field("p50_us")? as f64,
        p99_us: field("p99_us")? as f64,
        errors: ["connect", "read", "write", "status", "timeout"]
            .iter()
            .map(|n| field(n))
            .sum::<Result<u64>>()?,
    })
}

/// Runs wrk in `netns` against `targets` (the first is the URL's host);
/// `dir` holds the script and output. Also returns the machine's CPU over
/// the run. wrk is killed if it overruns by 10 s, or on any error.
pub fn wrk(
    netns: &str,
    targets: &[SocketAddr],
    mode: HttpMode,
    load: WrkLoad,
    dir: &Path,
) -> Result<(WrkResult, CpuTimes)> {
    let first = targets.first().context("no target")?;
    fs::create_dir_all(dir)?;
    let script = dir.join(format!("wrk-{}.lua", mode.name()));
    fs::write(&script, wrk_script(targets, mode))?;
    let out = dir.join(format!("wrk-{}.out", mode.name()));
    let err = dir.join(format!("wrk-{}.err", mode.name()));
    let mut cmd = netns::command_in(netns, "setpriv");
    cmd.args(["--pdeathsig", "KILL", "--", "wrk", "--latency", "-t"])
        .arg(load.threads.to_string())
        .arg("-c")
        .arg(load.connections.to_string())
        .arg("-d")
        // wrk takes whole seconds (no "ms" unit).
        .arg(format!("{}s", load.duration.as_secs().max(1)))
        .arg("-s")
        .arg(&script);
    if mode == HttpMode::Close {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(format!("http://{first}/"))
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out)?)
        .stderr(fs::File::create(&err)?);
    let before = CpuTimes::now()?;
    let mut child = ChildGuard::spawn(&mut cmd)?;
    let deadline = Instant::now() + load.duration + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            child.kill()?;
            bail!(
                "wrk ({}) did not end within 10 s of its duration",
                mode.name()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let cpu = CpuTimes::now()?.since(&before);
    let output = fs::read_to_string(&out).unwrap_or_default();
    ensure!(
        status.success(),
        "wrk ({}) failed ({status}): {output}{}",
        mode.name(),
        fs::read_to_string(&err).unwrap_or_default()
    );
    Ok((parse_wrk(&output)?, cpu))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "Running 2s test @ http://10.96.0.10:80/
  4 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.02ms    1.49ms  21.35ms   91.16%
    Req/Sec     2.91k   281.73     3.62k    71.25%
  Latency Distribution
     50%  612.00us
     75%    0.97ms
     90%    2.09ms
     99%    7.66ms
  23222 requests in 2.00s, 3.37MB read
  Socket errors: connect 0, read 3, write 0, timeout 0
Requests/sec:  11604.69
Transfer/sec:      1.68MB
vipr-bench-wrk: requests=23222 duration_us=2001104 p50_us=612 p99_us=7660 connect=0 read=3 write=0 status=1 timeout=0
";

    #[test]
    fn the_script_line_gives_rate_percentiles_and_all_errors() {
        let r = parse_wrk(OUTPUT).unwrap();
        assert_eq!(r.requests, 23_222);
        assert_eq!((r.p50_us, r.p99_us), (612.0, 7_660.0));
        assert_eq!(r.errors, 4, "read errors and the non-2xx response");
        assert!((r.req_per_s() - 11_604.7).abs() < 1.0, "{}", r.req_per_s());
    }

    #[test]
    fn output_without_the_script_line_or_with_a_bad_field_is_an_error() {
        assert!(parse_wrk("Requests/sec:  11604.69\n").is_err());
        let broken = OUTPUT.replace("p99_us=7660", "p99_us=7.6ms");
        assert!(parse_wrk(&broken).is_err());
        let zero = OUTPUT.replace("duration_us=2001104", "duration_us=0");
        assert!(parse_wrk(&zero).is_err());
    }

    #[test]
    fn script_spreads_threads_over_the_targets_and_config_stays_in_its_dir() {
        let targets = [
            SocketAddr::from(([10, 244, 1, 11], 8080)),
            SocketAddr::from(([10, 244, 1, 12], 8080)),
        ];
        let script = wrk_script(&targets, HttpMode::Close);
        assert!(
            script.contains(r#"{"10.244.1.11", "8080"}, {"10.244.1.12", "8080"}"#),
            "{script}"
        );
        let conf = nginx_conf(Path::new("/tmp/x"), 8080);
        assert!(conf.contains("listen 8080 backlog=4096;"), "{conf}");
        assert!(conf.contains("return 200 \"ok\\n\";"), "{conf}");
        for line in conf
            .lines()
            .filter(|l| l.contains("path") || l.contains("pid"))
        {
            assert!(line.contains("/tmp/x/"), "{line}");
        }
    }
}
