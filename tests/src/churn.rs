//! Endpoint churn: servers that answer with the address they were reached
//! at (one pod stands for many endpoints), and the record of when each
//! endpoint was in the Service, to judge where connections landed.
use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{echo::set_linger_zero, netns};

const ACCEPT_PAUSE: Duration = Duration::from_millis(1);
/// Clock ticks per second in /proc: fixed at 100 on Linux whatever the kernel's HZ.
const USER_HZ: u64 = 100;

/// Answers each TCP connection's first line with the local address the
/// connection came in on: the endpoint the proxy chose.
pub struct AddressServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AddressServer {
    pub fn start(netns: &str, port: u16) -> Result<Self> {
        let listener = netns::run_in(netns, || TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))??;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                        let mut buf = [0u8; 64];
                        if matches!(stream.read(&mut buf), Ok(n) if n > 0)
                            && let Ok(local) = stream.local_addr()
                        {
                            let _ = stream.write_all(format!("{}\n", local.ip()).as_bytes());
                            // The client closes; wait for it, so no TIME_WAIT here.
                            let _ = stream.read(&mut buf);
                        }
                        let _ = set_linger_zero(&stream);
                    }
                    Err(_) => std::thread::sleep(ACCEPT_PAUSE),
                }
            }
        });
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for AddressServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// When each endpoint was in the Service: (added, removed) spans.
#[derive(Default)]
pub struct Membership {
    spans: BTreeMap<Ipv4Addr, Vec<(Instant, Option<Instant>)>>,
}

/// Where one connection landed, against the record.
#[derive(Debug, PartialEq)]
pub enum Landing {
    /// On an endpoint in the Service when the connection started.
    Current,
    /// On one removed this long before the connection started.
    Removed(Duration),
    /// On an address that never was an endpoint.
    Unknown,
}

impl Membership {
    pub fn add(&mut self, ip: Ipv4Addr, at: Instant) {
        self.spans.entry(ip).or_default().push((at, None));
    }

    pub fn remove(&mut self, ip: Ipv4Addr, at: Instant) {
        if let Some((_, end @ None)) = self.spans.get_mut(&ip).and_then(|s| s.last_mut()) {
            *end = Some(at);
        }
    }

    /// Judges a connection that started at `started`, was answered at
    /// `answered` and landed on `ip`.
    pub fn landing(&self, ip: Ipv4Addr, started: Instant, answered: Instant) -> Landing {
        let Some(spans) = self.spans.get(&ip) else {
            return Landing::Unknown;
        };
        let mut removed_since = None;
        for &(added, removed) in spans {
            match removed {
                _ if added > answered => {}
                None => return Landing::Current,
                Some(end) if end >= started => return Landing::Current,
                Some(end) => removed_since = Some(started - end),
            }
        }
        removed_since.map_or(Landing::Unknown, Landing::Removed)
    }
}

/// Shared record plus the judgement of every landing, for the load threads.
pub type SharedMembership = Arc<Mutex<Membership>>;

/// Parses a server's answer (`a.b.c.d`).
pub fn endpoint_of(answer: &str) -> Option<Ipv4Addr> {
    answer.trim().parse().ok()
}

/// The endpoint a rolling update step adds and removes: a window of
/// `size` consecutive addresses sliding over `pool` one step at a time.
pub fn window(pool: &[Ipv4Addr], step: usize, size: usize) -> Vec<Ipv4Addr> {
    (0..size).map(|i| pool[(step + i) % pool.len()]).collect()
}

/// An EndpointSlice of `service` (port `http` → `port`) with `ips` ready on `node`.
pub fn slice_yaml(service: &str, port: u16, node: &str, ips: &[Ipv4Addr]) -> String {
    let endpoints: Vec<String> = ips
        .iter()
        .map(|ip| format!("{{addresses: [{ip}], nodeName: {node}, conditions: {{ready: true}}}}"))
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {service}-churn, namespace: default, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: IPv4\nports: [{{name: http, port: {port}, protocol: TCP}}]\nendpoints: [{}]\n",
        endpoints.join(", ")
    )
}

/// CPU time (user + system) a process has used, from /proc.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which sits in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).unwrap_or(&"0").parse::<u64>()?
        + fields.get(12).unwrap_or(&"0").parse::<u64>()?;
    Ok(Duration::from_millis(ticks * 1000 / USER_HZ))
}

/// The `elapsed_us` of every `synced` line in an agent's log.
pub fn sync_times_us(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains(" synced "))
        .filter_map(|l| {
            l.split("elapsed_us=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// `p` (0–1) of sorted `values`.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn landings_are_judged_by_the_spans() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let ip = Ipv4Addr::new(10, 0, 0, 1);
        let mut m = Membership::default();
        m.add(ip, s(1));
        m.remove(ip, s(3));
        m.add(ip, s(10));
        assert_eq!(m.landing(ip, s(2), s(2)), Landing::Current);
        assert_eq!(
            m.landing(ip, s(5), s(5)),
            Landing::Removed(Duration::from_secs(2))
        );
        assert_eq!(m.landing(ip, s(11), s(11)), Landing::Current);
        assert_eq!(
            m.landing(ip, s(9), s(10)),
            Landing::Current,
            "added while connecting"
        );
        assert_eq!(
            m.landing(Ipv4Addr::new(10, 0, 0, 2), s(2), s(2)),
            Landing::Unknown
        );
        let pool: Vec<_> = (1..=5).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
        assert_eq!(window(&pool, 4, 2), vec![pool[4], pool[0]]);
    }
}
