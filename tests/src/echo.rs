//! In-process echo-name servers and clients bound inside network namespaces.
//!
//! A server answers every line it receives over TCP, and every UDP datagram,
//! with the name of its pod, so a client learns which backend served it.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::socket::{setsockopt, sockopt};

use crate::netns;

const POLL: Duration = Duration::from_millis(50);
/// A request the server answers only once told to (`EchoServer::release_held`).
const HOLD_REQUEST: &[u8] = b"hold\n";

#[derive(Debug, Default)]
struct Stats {
    /// Held requests (`hold` lines) are answered once this is set.
    release_held: AtomicBool,
    tcp_connections: AtomicUsize,
    tcp_requests: AtomicUsize,
    udp_requests: AtomicUsize,
    peers: Mutex<Vec<SocketAddr>>,
}

/// A TCP and/or UDP echo-name server running inside a netns. Stops when dropped.
#[derive(Debug)]
pub struct EchoServer {
    name: String,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    threads: Vec<JoinHandle<()>>,
    conn_threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl EchoServer {
    /// Starts a server named `name` in `netns`, listening on TCP `tcp_port` and
    /// UDP `udp_port` (on 0.0.0.0) where given.
    pub fn start(
        netns: &str,
        name: &str,
        tcp_port: Option<u16>,
        udp_port: Option<u16>,
    ) -> Result<Self> {
        Self::start_on(
            netns,
            name,
            Ipv4Addr::UNSPECIFIED.into(),
            tcp_port,
            udp_port,
        )
    }

    /// [`EchoServer::start`] on the address `ip` (e.g. a pod's IPv6
    /// address, beside a server on 0.0.0.0 with the same ports).
    pub fn start_on(
        netns: &str,
        name: &str,
        ip: std::net::IpAddr,
        tcp_port: Option<u16>,
        udp_port: Option<u16>,
    ) -> Result<Self> {
        let (listener, udp) = netns::run_in(netns, || -> Result<_> {
            let listener = tcp_port
                .map(|p| TcpListener::bind((ip, p)))
                .transpose()
                .context("bind tcp")?;
            let udp = udp_port
                .map(|p| UdpSocket::bind((ip, p)))
                .transpose()
                .context("bind udp")?;
            Ok((listener, udp))
        })??;
        let mut server = Self {
            name: name.to_owned(),
            stop: Arc::new(AtomicBool::new(false)),
            stats: Arc::new(Stats::default()),
            threads: Vec::new(),
            conn_threads: Arc::new(Mutex::new(Vec::new())),
        };
        if let Some(listener) = listener {
            listener.set_nonblocking(true)?;
            let (stop, stats, conns) = (
                server.stop.clone(),
                server.stats.clone(),
                server.conn_threads.clone(),
            );
            let reply = format!("{name}\n").into_bytes();
            server.threads.push(
                thread::Builder::new()
                    .name(format!("tcp-{name}"))
                    .spawn(move || tcp_accept_loop(&listener, &stop, &stats, &conns, &reply))?,
            );
        }
        if let Some(udp) = udp {
            udp.set_read_timeout(Some(POLL))?;
            let (stop, stats) = (server.stop.clone(), server.stats.clone());
            let reply = name.as_bytes().to_vec();
            server.threads.push(
                thread::Builder::new()
                    .name(format!("udp-{name}"))
                    .spawn(move || udp_loop(&udp, &stop, &stats, &reply))?,
            );
        }
        Ok(server)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// TCP connections accepted so far.
    pub fn tcp_connections(&self) -> usize {
        self.stats.tcp_connections.load(Ordering::SeqCst)
    }

    /// TCP request lines answered so far.
    pub fn tcp_requests(&self) -> usize {
        self.stats.tcp_requests.load(Ordering::SeqCst)
    }

    /// UDP datagrams answered so far.
    pub fn udp_requests(&self) -> usize {
        self.stats.udp_requests.load(Ordering::SeqCst)
    }

    /// Answers every `hold` request received so far and from now on: the
    /// server speaks first on connections idle since they sent one.
    pub fn release_held(&self) {
        self.stats.release_held.store(true, Ordering::SeqCst);
    }

    /// Source addresses of TCP connections and UDP datagrams, as the server saw them.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.stats
            .peers
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default()
    }

    /// Stops the server and waits for its threads (also done on drop).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let conns: Vec<_> = self
            .conn_threads
            .lock()
            .map(|mut c| c.drain(..).collect())
            .unwrap_or_default();
        for t in conns {
            let _ = t.join();
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn record_peer(stats: &Stats, peer: SocketAddr) {
    if let Ok(mut p) = stats.peers.lock() {
        p.push(peer);
    }
}

fn tcp_accept_loop(
    listener: &TcpListener,
    stop: &Arc<AtomicBool>,
    stats: &Arc<Stats>,
    conns: &Mutex<Vec<JoinHandle<()>>>,
    reply: &[u8],
) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, peer)) => {
                stats.tcp_connections.fetch_add(1, Ordering::SeqCst);
                record_peer(stats, peer);
                let (stop, stats, reply) = (stop.clone(), stats.clone(), reply.to_vec());
                let handle = thread::spawn(move || serve_tcp(stream, &stop, &stats, &reply));
                if let Ok(mut c) = conns.lock() {
                    c.retain(|h| !h.is_finished());
                    c.push(handle);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(5))
            }
            Err(_) => thread::sleep(POLL),
        }
    }
}

fn serve_tcp(mut stream: TcpStream, stop: &AtomicBool, stats: &Stats, reply: &[u8]) {
    if stream.set_nonblocking(false).is_err() || stream.set_read_timeout(Some(POLL)).is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    let mut held = 0;
    while !stop.load(Ordering::SeqCst) {
        if held > 0 && stats.release_held.load(Ordering::SeqCst) {
            for _ in 0..std::mem::take(&mut held) {
                if stream.write_all(reply).is_err() {
                    return;
                }
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => return,
            // A whole `hold` line: answered when released, not now.
            Ok(n) if buf[..n] == *HOLD_REQUEST && !stats.release_held.load(Ordering::SeqCst) => {
                held += 1;
            }
            Ok(n) => {
                for _ in buf[..n].iter().filter(|&&b| b == b'\n') {
                    if stream.write_all(reply).is_err() {
                        return;
                    }
                    stats.tcp_requests.fetch_add(1, Ordering::SeqCst);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
    let _ = set_linger_zero(&stream);
}

fn udp_loop(sock: &UdpSocket, stop: &AtomicBool, stats: &Stats, reply: &[u8]) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::SeqCst) {
        // Errors are read timeouts (to look at `stop`) or transient.
        if let Ok((_, peer)) = sock.recv_from(&mut buf) {
            record_peer(stats, peer);
            if sock.send_to(reply, peer).is_ok() {
                stats.udp_requests.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

/// Why a client request failed.
#[derive(Debug)]
pub enum ClientError {
    /// TCP RST on connect, or ICMP unreachable on a connected UDP socket (ECONNREFUSED).
    Refused,
    /// No answer within the timeout.
    Timeout,
    /// The peer closed the connection before answering.
    Closed,
    /// Any other error.
    Io(io::Error),
    /// Setting up the thread in the namespace failed.
    Setup(anyhow::Error),
}

impl ClientError {
    pub fn is_refused(&self) -> bool {
        matches!(self, Self::Refused)
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout)
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused => write!(f, "connection refused"),
            Self::Timeout => write!(f, "timed out"),
            Self::Closed => write!(f, "connection closed before a reply"),
            Self::Io(e) => write!(f, "{e}"),
            Self::Setup(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => Self::Refused,
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Self::Timeout,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof => Self::Closed,
            _ => Self::Io(e),
        }
    }
}

fn in_netns<T: Send>(
    netns: &str,
    f: impl FnOnce() -> Result<T, ClientError> + Send,
) -> Result<T, ClientError> {
    netns::run_in(netns, f).map_err(ClientError::Setup)?
}

/// Sets SO_LINGER to 0 so that closing sends a RST and leaves no TIME_WAIT.
pub fn set_linger_zero(stream: &TcpStream) -> io::Result<()> {
    setsockopt(
        stream,
        sockopt::Linger,
        &nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )
    .map_err(io::Error::from)
}

/// Reads one `\n`-terminated line (without the newline), byte by byte, until `deadline`.
fn read_line(stream: &mut TcpStream, deadline: Instant) -> Result<String, ClientError> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClientError::Timeout);
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut byte)? {
            0 => return Err(ClientError::Closed),
            _ if byte[0] == b'\n' => return Ok(String::from_utf8_lossy(&line).into_owned()),
            _ => line.push(byte[0]),
        }
    }
}

/// A reply to a TCP request.
#[derive(Debug, Clone)]
pub struct TcpReply {
    /// Name of the pod that answered.
    pub name: String,
    /// The connection's local address.
    pub local: SocketAddr,
    /// The connection's peer address (what the client sees as the server).
    pub peer: SocketAddr,
}

/// Connects from `netns` to `addr`, sends one request line, returns the reply and
/// closes with a RST (SO_LINGER 0).
pub fn tcp_request_full(
    netns: &str,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TcpReply, ClientError> {
    let mut session = TcpSession::connect(netns, addr, timeout)?;
    let name = session.request()?;
    Ok(TcpReply {
        name,
        local: session.local_addr(),
        peer: session.peer_addr(),
    })
}

/// Like [`tcp_request_full`], returning only the name of the pod that answered.
pub fn tcp_request(
    netns: &str,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<String, ClientError> {
    tcp_request_full(netns, addr, timeout).map(|r| r.name)
}

/// A long-lived TCP connection (created in a netns) that can send many requests.
#[derive(Debug)]
pub struct TcpSession {
    stream: TcpStream,
    local: SocketAddr,
    peer: SocketAddr,
    timeout: Duration,
}

impl TcpSession {
    /// Connects from `netns` to `addr`; `timeout` applies to the connect and to every request.
    pub fn connect(netns: &str, addr: SocketAddr, timeout: Duration) -> Result<Self, ClientError> {
        let stream = in_netns(netns, || Ok(TcpStream::connect_timeout(&addr, timeout)?))?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Self {
            local: stream.local_addr()?,
            peer: stream.peer_addr()?,
            stream,
            timeout,
        })
    }

    /// Sends one request line and returns the name of the pod that answered.
    pub fn request(&mut self) -> Result<String, ClientError> {
        let deadline = Instant::now() + self.timeout;
        self.stream.write_all(b"who\n")?;
        read_line(&mut self.stream, deadline)
    }

    /// Sends a request the server answers only when released, so that the
    /// server speaks first after the connection has been idle.
    pub fn hold(&mut self) -> Result<(), ClientError> {
        Ok(self.stream.write_all(HOLD_REQUEST)?)
    }

    /// Waits for the answer to a held request.
    pub fn held_reply(&mut self) -> Result<String, ClientError> {
        read_line(&mut self.stream, Instant::now() + self.timeout)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// getpeername() asked now (the address can change under socket hooks).
    pub fn current_peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream.peer_addr()
    }
}

impl Drop for TcpSession {
    fn drop(&mut self) {
        let _ = set_linger_zero(&self.stream);
    }
}

/// A client socket in `netns` of `to`'s family.
fn udp_socket(netns: &str, to: SocketAddr) -> Result<UdpSocket, ClientError> {
    in_netns(netns, || {
        let any: SocketAddr = if to.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0).into()
        };
        Ok(UdpSocket::bind(any)?)
    })
}

/// Sends one datagram from an unconnected socket in `netns` to `addr`; returns the
/// name in the reply and the reply's source address.
pub fn udp_request(
    netns: &str,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(String, SocketAddr), ClientError> {
    let sock = udp_socket(netns, addr)?;
    sock.set_read_timeout(Some(timeout))?;
    sock.send_to(b"who", addr)?;
    let mut buf = [0u8; 2048];
    let (n, from) = sock.recv_from(&mut buf)?;
    Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
}

/// Sends one datagram from a socket connected to `addr`, so that an ICMP port
/// unreachable shows up as [`ClientError::Refused`]. Returns the name in the reply.
pub fn udp_connected_request(
    netns: &str,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<String, ClientError> {
    let sock = udp_socket(netns, addr)?;
    sock.connect(addr)?;
    sock.set_read_timeout(Some(timeout))?;
    sock.send(b"who")?;
    let mut buf = [0u8; 2048];
    let n = sock.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}
