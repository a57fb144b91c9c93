//! Traffic that runs while agents restart or endpoints churn: new TCP
//! connections without pause, and long-lived TCP connections and UDP flows
//! that must stay on the backend they started on. Every failure is counted
//! and the first few are kept with what they were.
use std::{
    io::{self, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow};

use crate::{
    echo::{ClientError, TcpSession, set_linger_zero},
    netns,
};

const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How many failures keep their description.
const KEPT_ERRORS: usize = 20;
/// Pause between two rounds over the long-lived flows.
const ROUND_PAUSE: Duration = Duration::from_millis(200);

/// Outcomes of one kind of traffic.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub completed: u64,
    pub failed: u64,
    /// Failures that were a RST (reset or refused).
    pub resets: u64,
    /// Long-lived flows answered by another backend than their first.
    pub moved: u64,
    pub errors: Vec<String>,
}

impl Tally {
    fn fail(&mut self, what: String, reset: bool) {
        self.failed += 1;
        self.resets += u64::from(reset);
        if self.errors.len() < KEPT_ERRORS {
            self.errors.push(what);
        }
    }

    fn add(&mut self, other: Tally) {
        self.completed += other.completed;
        self.failed += other.failed;
        self.resets += other.resets;
        self.moved += other.moved;
        let room = KEPT_ERRORS.saturating_sub(self.errors.len());
        self.errors.extend(other.errors.into_iter().take(room));
    }
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
    )
}

/// A new connection per request, `threads` per (netns, target), until
/// [`NewConnections::finish`]. `served` is told each answering backend's
/// name and may reject it (the churn test: a removed endpoint).
pub struct NewConnections {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Tally>>,
    started: Instant,
}

pub type ServedCheck = Arc<dyn Fn(&str, Instant) -> Result<(), String> + Send + Sync>;

impl NewConnections {
    pub fn start(
        sources: &[(String, SocketAddr)],
        threads: usize,
        served: Option<ServedCheck>,
    ) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        let began = Instant::now();
        for (netns, target) in sources {
            for i in 0..threads {
                let (stop, target, served) = (stop.clone(), *target, served.clone());
                handles.push(netns::spawn_thread_in(
                    netns,
                    &format!("conn-{i}"),
                    move || {
                        let mut tally = Tally::default();
                        while !stop.load(Ordering::Relaxed) {
                            let started = Instant::now();
                            match one_connection(target) {
                                Ok(name) => {
                                    match served.as_ref().map(|check| check(&name, started)) {
                                        Some(Err(why)) => {
                                            tally.fail(format!("{target}: {why}"), false)
                                        }
                                        _ => tally.completed += 1,
                                    }
                                }
                                Err(e) => {
                                    let at = started.duration_since(began).as_secs_f64();
                                    tally.fail(format!("{target} at {at:.2} s: {e}"), is_reset(&e))
                                }
                            }
                        }
                        tally
                    },
                )?);
            }
        }
        Ok(Self {
            stop,
            threads: handles,
            started: began,
        })
    }

    /// Stops the threads; their tally and how long they ran.
    pub fn finish(self) -> (Tally, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Tally::default();
        for t in self.threads {
            match t.join() {
                Ok(tally) => total.add(tally),
                Err(_) => total.fail("a load thread panicked".into(), false),
            }
        }
        (total, self.started.elapsed())
    }
}

/// Connect, one request line, the backend's name back, close with a RST
/// (no TIME_WAIT piling up at a thousand connections a second).
fn one_connection(target: SocketAddr) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&target, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(b"who\n")?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 64];
    while !reply.ends_with(b"\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        reply.extend_from_slice(&buf[..n]);
    }
    set_linger_zero(&stream)?;
    Ok(String::from_utf8_lossy(&reply).trim_end().to_owned())
}

/// A UDP flow: one socket, one target, the backend that answered first.
struct UdpFlow {
    socket: UdpSocket,
    target: SocketAddr,
    backend: String,
}

impl UdpFlow {
    fn open(netns: &str, target: SocketAddr) -> Result<Self> {
        let socket = netns::run_in(netns, || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))??;
        socket.set_read_timeout(Some(IO_TIMEOUT))?;
        let mut flow = Self {
            socket,
            target,
            backend: String::new(),
        };
        flow.backend = flow
            .ask()
            .map_err(|e| anyhow!("first datagram to {target}: {e}"))?;
        Ok(flow)
    }

    fn ask(&self) -> io::Result<String> {
        self.socket.send_to(b"who", self.target)?;
        let mut buf = [0u8; 256];
        let (n, from) = self.socket.recv_from(&mut buf)?;
        if from != self.target {
            return Err(io::Error::other(format!("answer from {from}")));
        }
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

/// Long-lived TCP connections and UDP flows, each asked again every round
/// in one thread, and expected to keep its first backend.
pub struct LongLived {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Tally>>,
    pub tcp: usize,
    pub udp: usize,
    /// Backends the flows started on, for the report.
    pub spread: Vec<String>,
}

impl LongLived {
    pub fn start(tcp: &[(String, SocketAddr)], udp: &[(String, SocketAddr)]) -> Result<Self> {
        let mut sessions = Vec::new();
        for (netns, target) in tcp {
            let mut session = TcpSession::connect(netns, *target, IO_TIMEOUT)
                .map_err(|e| anyhow!("long-lived connection to {target}: {e}"))?;
            let backend = session.request().map_err(|e| anyhow!("{target}: {e}"))?;
            sessions.push((session, *target, backend));
        }
        let flows = udp
            .iter()
            .map(|(netns, target)| UdpFlow::open(netns, *target))
            .collect::<Result<Vec<_>>>()?;
        let spread = sessions
            .iter()
            .map(|s| s.2.clone())
            .chain(flows.iter().map(|f| f.backend.clone()))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let (counts, flag) = ((sessions.len(), flows.len()), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut tally = Tally::default();
            while !flag.load(Ordering::Relaxed) {
                for (session, target, backend) in &mut sessions {
                    check(
                        &mut tally,
                        &format!("tcp {target}"),
                        backend,
                        session.request(),
                    );
                }
                for flow in &flows {
                    let answer = flow.ask().map_err(ClientError::from);
                    check(
                        &mut tally,
                        &format!("udp {}", flow.target),
                        &flow.backend,
                        answer,
                    );
                }
                std::thread::sleep(ROUND_PAUSE);
            }
            tally
        });
        Ok(Self {
            stop,
            thread: Some(thread),
            tcp: counts.0,
            udp: counts.1,
            spread,
        })
    }

    pub fn finish(mut self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut tally = Tally::default();
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(t)) => tally = t,
            _ => tally.fail("the long-lived flows' thread panicked".into(), false),
        }
        tally
    }
}

impl Drop for LongLived {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn check(tally: &mut Tally, what: &str, backend: &str, answer: Result<String, ClientError>) {
    match answer {
        Ok(name) if name == backend => tally.completed += 1,
        Ok(name) => {
            tally.moved += 1;
            tally.fail(format!("{what}: moved from {backend} to {name}"), false);
        }
        Err(e) => {
            let reset = matches!(e, ClientError::Refused | ClientError::Closed);
            tally.fail(format!("{what}: {e}"), reset);
        }
    }
}
