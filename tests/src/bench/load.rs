//! Load for the benchmarks: blocking servers with a few accept threads, and
//! client threads that open a new connection per request (connect, request,
//! response, close with RST so no TIME_WAIT skews later rounds), for a
//! duration or a fixed number of connections.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{echo::set_linger_zero, netns};

const REQUEST: &[u8] = b"x\n";
const RESPONSE: &[u8] = b"y\n";
const IO_TIMEOUT: Duration = Duration::from_secs(1);

/// TCP and UDP servers in one pod; they stop (and their threads end) on drop.
pub struct LoadServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    wake: Vec<SocketAddr>,
    netns: String,
}

impl LoadServer {
    pub fn start(netns: &str, port: u16, accept_threads: usize) -> Result<Self> {
        let (listener, udp) = netns::run_in(netns, move || -> Result<_> {
            Ok((
                TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?,
                UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))?,
            ))
        })??;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for _ in 0..accept_threads {
            let listener = listener.try_clone()?;
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((stream, _)) = listener.accept() {
                        serve(stream);
                    }
                }
            }));
        }
        udp.set_read_timeout(Some(Duration::from_millis(200)))?;
        let udp_stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !udp_stop.load(Ordering::Relaxed) {
                if let Ok((_, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(RESPONSE, from);
                }
            }
        }));
        Ok(Self {
            stop,
            threads,
            wake: vec![SocketAddr::from((Ipv4Addr::LOCALHOST, port)); accept_threads],
            netns: netns.to_owned(),
        })
    }
}

fn serve(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let mut buf = [0u8; 64];
    if matches!(stream.read(&mut buf), Ok(n) if n > 0) {
        let _ = stream.write_all(RESPONSE);
        // Wait for the client's close so the server never holds TIME_WAIT.
        let _ = stream.read(&mut buf);
    }
}

impl Drop for LoadServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Blocked accept() calls return once a connection arrives.
        let wake = std::mem::take(&mut self.wake);
        let _ = netns::run_in(&self.netns, move || {
            for addr in wake {
                let _ = TcpStream::connect_timeout(&addr, Duration::from_millis(100));
            }
        });
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// What a load run measured.
#[derive(Clone, Debug, Default)]
pub struct LoadResult {
    pub completed: u64,
    pub failed: u64,
    pub seconds: f64,
    /// Per-request latencies in microseconds, sorted.
    pub latencies_us: Vec<u32>,
}

impl LoadResult {
    pub fn rate(&self) -> f64 {
        self.completed as f64 / self.seconds
    }
    pub fn percentile_us(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        self.latencies_us[i] as f64
    }
}

/// Opens a new TCP connection per request from `threads` threads in
/// `netns`, taking `targets` in turn, for `duration`.
pub fn tcp_connections(
    netns: &str,
    targets: &[SocketAddr],
    threads: usize,
    duration: Duration,
) -> Result<LoadResult> {
    let until = Until::Deadline(Instant::now() + duration);
    run_threads(netns, threads, until, tcp_worker(targets))
}

/// As [`tcp_connections`], but exactly `count` connection attempts: the
/// CPU figures divide by a known number of connections, whatever the rate.
pub fn tcp_connection_count(
    netns: &str,
    targets: &[SocketAddr],
    threads: usize,
    count: u64,
) -> Result<LoadResult> {
    let until = Until::Count(Arc::new(AtomicU64::new(count)));
    run_threads(netns, threads, until, tcp_worker(targets))
}

fn tcp_worker(
    targets: &[SocketAddr],
) -> impl Fn(usize, &Until) -> LoadResult + Send + Sync + Clone + 'static {
    let targets = targets.to_vec();
    move |thread, until| {
        let mut r = LoadResult::default();
        let mut buf = [0u8; 8];
        let mut turn = thread;
        while until.more() {
            let target = targets[turn % targets.len()];
            turn += 1;
            let start = Instant::now();
            let ok = (|| -> std::io::Result<()> {
                let mut s = TcpStream::connect_timeout(&target, IO_TIMEOUT)?;
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                s.write_all(REQUEST)?;
                let n = s.read(&mut buf)?;
                set_linger_zero(&s)?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                Ok(())
            })();
            match ok {
                Ok(()) => {
                    r.completed += 1;
                    r.latencies_us.push(start.elapsed().as_micros() as u32);
                }
                Err(_) => r.failed += 1,
            }
        }
        r
    }
}

/// UDP request/response on one connected socket per thread, thread `i`
/// talking to `targets[i % len]`.
pub fn udp_requests(
    netns: &str,
    targets: &[SocketAddr],
    threads: usize,
    duration: Duration,
) -> Result<LoadResult> {
    let targets = targets.to_vec();
    let until = Until::Deadline(Instant::now() + duration);
    run_threads(netns, threads, until, move |thread, until| {
        let target = targets[thread % targets.len()];
        let mut r = LoadResult::default();
        let Ok(sock) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) else {
            r.failed += 1;
            return r;
        };
        let _ = sock.set_read_timeout(Some(IO_TIMEOUT));
        if sock.connect(target).is_err() {
            r.failed += 1;
            return r;
        }
        let mut buf = [0u8; 8];
        while until.more() {
            let start = Instant::now();
            match sock.send(REQUEST).and_then(|_| sock.recv(&mut buf)) {
                Ok(_) => {
                    r.completed += 1;
                    r.latencies_us.push(start.elapsed().as_micros() as u32);
                }
                Err(_) => r.failed += 1,
            }
        }
        r
    })
}

/// When a load ends: at a deadline, or once `count` attempts are claimed.
#[derive(Clone)]
enum Until {
    Deadline(Instant),
    Count(Arc<AtomicU64>),
}

impl Until {
    /// Whether to make one more attempt (claims it when counting).
    fn more(&self) -> bool {
        match self {
            Until::Deadline(deadline) => Instant::now() < *deadline,
            Until::Count(left) => left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
        }
    }
}

fn run_threads(
    netns: &str,
    threads: usize,
    until: Until,
    work: impl Fn(usize, &Until) -> LoadResult + Send + Sync + Clone + 'static,
) -> Result<LoadResult> {
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (work, until) = (work.clone(), until.clone());
            netns::spawn_thread_in(netns, &format!("load-{i}"), move || work(i, &until))
        })
        .collect::<Result<_>>()?;
    let mut total = LoadResult::default();
    for h in handles {
        let r = h
            .join()
            .map_err(|_| anyhow::anyhow!("load thread panicked"))?;
        total.completed += r.completed;
        total.failed += r.failed;
        total.latencies_us.extend(r.latencies_us);
    }
    total.seconds = start.elapsed().as_secs_f64();
    total.latencies_us.sort_unstable();
    Ok(total)
}
