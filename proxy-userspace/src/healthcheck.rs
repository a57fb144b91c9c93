//! Health-check node ports of Services with externalTrafficPolicy Local, as
//! kube-proxy answers them: 200 with the number of local endpoints when this
//! node has any, 503 when it has none, so load balancers send traffic only to
//! nodes that can serve it without leaving the node.
//!
//! Hand-written minimal HTTP/1.1 on std sockets, like `/healthz`: one fixed
//! answer per port does not justify an HTTP server stack.
use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use tracing::{info, warn};

use crate::model::{Model, ObjectRef};

/// What one health-check port reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub service: ObjectRef,
    pub local_endpoints: usize,
}

/// The health checks the model asks for: port → service and local endpoint count.
pub fn desired(model: &Model) -> BTreeMap<u16, HealthCheck> {
    let mut out: BTreeMap<u16, HealthCheck> = BTreeMap::new();
    for fe in model.frontends.values() {
        let Some(port) = fe.policy.health_check_node_port else {
            continue;
        };
        // Ready ones only, as kube-proxy counts: a node whose local endpoints
        // all terminate fails the check, so the balancer moves away.
        let local = fe
            .backends
            .iter()
            .filter(|b| b.local && b.conditions.ready)
            .count();
        let entry = out.entry(port).or_insert(HealthCheck {
            service: fe.service.clone(),
            local_endpoints: 0,
        });
        // Several ports of one Service share the check; count its endpoints once.
        entry.local_endpoints = entry.local_endpoints.max(local);
    }
    out
}

/// Status code and body for one check.
pub fn response(check: &HealthCheck) -> (u16, String) {
    let code = if check.local_endpoints > 0 { 200 } else { 503 };
    let body = format!(
        r#"{{"service": {{"namespace": "{}", "name": "{}"}}, "localEndpoints": {}, "serviceProxyHealthy": true}}"#,
        check.service.namespace, check.service.name, check.local_endpoints
    );
    (code, body)
}

struct Server {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// Listeners for the current set of checks; `reconcile` opens and closes them.
#[derive(Default)]
pub struct HealthChecks {
    state: Arc<Mutex<BTreeMap<u16, HealthCheck>>>,
    servers: BTreeMap<u16, Server>,
}

impl HealthChecks {
    /// Returns false while some port could not be opened (call again).
    pub fn reconcile(&mut self, model: &Model) -> bool {
        let desired = desired(model);
        if let Ok(mut state) = self.state.lock() {
            *state = desired.clone();
        }
        let gone: Vec<u16> = self
            .servers
            .keys()
            .filter(|p| !desired.contains_key(p))
            .copied()
            .collect();
        for port in gone {
            if let Some(server) = self.servers.remove(&port) {
                server.stop.store(true, Ordering::Relaxed);
                // Wake the blocking accept.
                let _ = TcpStream::connect_timeout(
                    &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                    Duration::from_millis(100),
                );
                let _ = server.thread.join();
                info!(port, "health-check port closed");
            }
        }
        let mut all_open = true;
        for port in desired.keys() {
            if self.servers.contains_key(port) {
                continue;
            }
            match bind_both_families(*port) {
                Ok(listener) => {
                    let stop = Arc::new(AtomicBool::new(false));
                    let (flag, state, port) = (stop.clone(), self.state.clone(), *port);
                    let thread = std::thread::spawn(move || serve(listener, port, &flag, &state));
                    self.servers.insert(port, Server { stop, thread });
                    info!(port, "health-check port open");
                }
                Err(error) => {
                    warn!(port, %error, "cannot open health-check port; will retry");
                    all_open = false;
                }
            }
        }
        all_open
    }
}

/// A listener on `port` of every address of both families (one IPv6 socket
/// that takes IPv4 too), as kube-proxy's health checks answer dual-stack
/// load balancers; IPv4 alone where the node has no IPv6.
fn bind_both_families(port: u16) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let dual = (|| {
        let socket = Socket::new(Domain::IPV6, Type::STREAM, None)?;
        socket.set_only_v6(false)?;
        socket.set_reuse_address(true)?;
        socket.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)).into())?;
        socket.listen(LISTEN_BACKLOG)?;
        Ok::<_, std::io::Error>(TcpListener::from(socket))
    })();
    dual.or_else(|_| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
}

const LISTEN_BACKLOG: i32 = 128;

fn serve(
    listener: TcpListener,
    port: u16,
    stop: &AtomicBool,
    state: &Mutex<BTreeMap<u16, HealthCheck>>,
) {
    while !stop.load(Ordering::Relaxed) {
        let Ok((mut stream, _)) = listener.accept() else {
            continue;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut request = [0u8; 1024];
        let _ = stream.read(&mut request);
        let check = state.lock().ok().and_then(|s| s.get(&port).cloned());
        let (code, body) = match &check {
            Some(check) => response(check),
            None => (503, String::from("{}")),
        };
        let reason = if code == 200 {
            "OK"
        } else {
            "Service Unavailable"
        };
        let reply = format!(
            "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(reply.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Kind, ObjectRef};

    fn check(n: usize) -> HealthCheck {
        HealthCheck {
            service: ObjectRef {
                kind: Kind::Service,
                namespace: "demo".into(),
                name: "web".into(),
            },
            local_endpoints: n,
        }
    }

    #[test]
    fn answers_like_kube_proxy() {
        let (code, body) = response(&check(2));
        assert_eq!(code, 200);
        assert!(body.contains(r#""localEndpoints": 2"#), "{body}");
        assert!(body.contains(r#""name": "web""#), "{body}");
        assert_eq!(response(&check(0)).0, 503);
    }

    #[test]
    fn the_health_check_port_takes_both_families() {
        let listener = bind_both_families(0).expect("bind an ephemeral port");
        let port = listener.local_addr().expect("bound").port();
        for client in [
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
        ] {
            TcpStream::connect_timeout(&client, Duration::from_secs(1))
                .unwrap_or_else(|e| panic!("connect {client}: {e}"));
            listener.accept().expect("accepted");
        }
    }
}
