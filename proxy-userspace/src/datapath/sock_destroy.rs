//! Closing connected UDP sockets whose backend is gone. connect() chose the
//! backend once; unlike a TC-translated flow, such a socket never asks
//! again and would send into the void (Cilium #12859, Calico #4509).
//! Destroying it makes the application's next call fail with ECONNABORTED,
//! and a resolver that reconnects goes through connect4 to a live backend.
//! A socket is stale when the frontend it asked for (the hooks' reverse map,
//! keyed by the socket cookie sock_diag reports) no longer has its backend
//! in its slots: removed, not serving, or the Service gone.
//!
//! The kernel's `bpf_sock_destroy` is a kfunc, which aya 0.14 cannot
//! relocate; vipr uses netlink SOCK_DESTROY (`CONFIG_INET_DIAG_DESTROY`).
//! Both act on the sockets of one network namespace: the agent's.
//! IPv6 sockets are swept too: their IPv6 peers through the IPv6 reverse
//! map, their v4-mapped peers (dual-stack sockets) through the IPv4 one.
use std::net::IpAddr;

use aya::maps::{HashMap, MapData};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NetlinkSerializable,
};
use netlink_packet_sock_diag::{
    AF_INET, AF_INET6, IPPROTO_UDP, SockDiagMessage,
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
    message::SockDiagDestroy,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};
use proxy_common::{
    Addr6, Service6Key, ServiceKey, SockRev6Key, SockRev6Value, SockRevKey, SockRevValue, maps,
    wire_addr, wire_addr6,
};

use super::{Datapath, DatapathError};
use crate::plan::maps::MapContents;

/// A connected UDP socket is in TCP_ESTABLISHED as far as sock_diag says.
const UDP_CONNECTED: u8 = 1;
/// Room for one batch of dump answers.
const ANSWER_BUFFER: usize = 64 * 1024;

fn fail(message: String) -> DatapathError {
    DatapathError::SockDiag(message)
}

/// The socket hooks' reverse maps: which frontend each socket asked for.
pub struct SocketRevNat {
    v4: HashMap<MapData, SockRevKey, SockRevValue>,
    v6: HashMap<MapData, SockRev6Key, SockRev6Value>,
}

/// Whether a frontend still sends new connections to an endpoint: the
/// frontend, the endpoint's address and port, wire order.
pub trait Serves {
    fn serves(&self, frontend: &ServiceKey, addr: u32, port: u16) -> bool;
    fn serves6(&self, frontend: &Service6Key, addr: Addr6, port: u16) -> bool;
}

/// What the planner applied is what the datapath serves.
impl Serves for MapContents {
    fn serves(&self, frontend: &ServiceKey, addr: u32, port: u16) -> bool {
        MapContents::serves(self, frontend, addr, port)
    }
    fn serves6(&self, frontend: &Service6Key, addr: Addr6, port: u16) -> bool {
        MapContents::serves6(self, frontend, addr, port)
    }
}

impl SocketRevNat {
    pub fn take(datapath: &mut Datapath) -> Result<Self, DatapathError> {
        Ok(Self {
            v4: super::kernel::take(datapath, maps::SOCK_REVNAT)?,
            v6: super::kernel::take(datapath, maps::SOCK_REVNAT6)?,
        })
    }

    /// Destroys the connected UDP sockets of this network namespace, of
    /// both families, that the socket hooks sent to a backend their
    /// frontend no longer serves.
    pub fn destroy_stale_udp_sockets(&self, serves: &impl Serves) -> Result<usize, DatapathError> {
        let socket = open()?;
        let mut destroyed = 0;
        for family in [AF_INET, AF_INET6] {
            for id in connected_udp_sockets(&socket, family)? {
                let cookie = u64::from_ne_bytes(id.cookie);
                let port = id.destination_port.to_be();
                // Sockets the hooks never translated are not vipr's business.
                let stale = match id.destination_address {
                    IpAddr::V4(peer) => self.stale4(serves, cookie, wire_addr(peer), port),
                    IpAddr::V6(peer) => match peer.to_ipv4_mapped() {
                        Some(peer) => self.stale4(serves, cookie, wire_addr(peer), port),
                        None => {
                            let key = SockRev6Key {
                                cookie,
                                addr: wire_addr6(peer),
                                port,
                                _pad: [0; 6],
                            };
                            self.v6
                                .get(&key, 0)
                                .is_ok_and(|e| !serves.serves6(&e.frontend(), key.addr, port))
                        }
                    },
                };
                if !stale {
                    continue;
                }
                match destroy(&socket, family, id) {
                    Ok(()) => destroyed += 1,
                    // Closed by its owner in the meantime.
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => return Err(fail(format!("SOCK_DESTROY: {e}"))),
                }
            }
        }
        Ok(destroyed)
    }

    /// Whether a socket the IPv4 map knows sits on an endpoint its frontend left.
    fn stale4(&self, serves: &impl Serves, cookie: u64, addr: u32, port: u16) -> bool {
        let key = SockRevKey {
            cookie,
            addr,
            port,
            _pad: 0,
        };
        self.v4
            .get(&key, 0)
            .is_ok_and(|e| !serves.serves(&e.frontend(), addr, port))
    }
}

/// Whether this kernel destroys sockets on request: destroys a socket of
/// its own making.
pub fn probe_sock_destroy() -> Result<(), String> {
    let victim = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    victim
        .connect("127.0.0.1:9")
        .map_err(|e| format!("loopback: {e}"))?;
    let local = victim.local_addr().map_err(|e| e.to_string())?;
    let socket = open().map_err(|e| e.to_string())?;
    let id = connected_udp_sockets(&socket, AF_INET)
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|id| id.source_port == local.port() && id.source_address == local.ip())
        .ok_or("the probe socket is not listed")?;
    destroy(&socket, AF_INET, id).map_err(|e| format!("SOCK_DESTROY: {e}"))
}

fn open() -> Result<Socket, DatapathError> {
    let socket = Socket::new(NETLINK_SOCK_DIAG).map_err(|e| fail(e.to_string()))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(|e| fail(e.to_string()))?;
    Ok(socket)
}

fn udp_request(family: u8, socket_id: SocketId) -> SockDiagMessage {
    SockDiagMessage::InetRequest(InetRequest {
        family,
        protocol: IPPROTO_UDP,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::all(),
        socket_id,
    })
}

fn send<T: NetlinkSerializable>(socket: &Socket, payload: T, flags: u16) -> std::io::Result<()>
where
    NetlinkPayload<T>: From<T>,
{
    let mut message = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(payload));
    message.header.flags = flags;
    message.header.sequence_number = 1;
    message.finalize();
    let mut bytes = vec![0; message.buffer_len()];
    message.serialize(&mut bytes);
    socket.send(&bytes, 0).map(|_| ())
}

/// Every connected UDP socket of `family` (`AF_INET`, `AF_INET6`) of
/// this network namespace.
fn connected_udp_sockets(socket: &Socket, family: u8) -> Result<Vec<SocketId>, DatapathError> {
    let any = if family == AF_INET6 {
        SocketId::new_v6()
    } else {
        SocketId::new_v4()
    };
    send(socket, udp_request(family, any), NLM_F_REQUEST | NLM_F_DUMP)
        .map_err(|e| fail(format!("dump request: {e}")))?;
    let mut found = Vec::new();
    loop {
        let mut answer = Vec::with_capacity(ANSWER_BUFFER);
        socket
            .recv(&mut answer, 0)
            .map_err(|e| fail(format!("dump: {e}")))?;
        let mut offset = 0;
        while offset < answer.len() {
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(&answer[offset..])
                .map_err(|e| fail(format!("dump answer: {e}")))?;
            offset += message.header.length as usize;
            match message.payload {
                NetlinkPayload::Done(_) => return Ok(found),
                NetlinkPayload::Error(e) => return Err(fail(format!("dump: {}", e.to_io()))),
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r))
                    if r.header.state == UDP_CONNECTED =>
                {
                    found.push(r.header.socket_id)
                }
                _ => {}
            }
            if message.header.length == 0 {
                return Err(fail("zero-length message".into()));
            }
        }
    }
}

/// Destroys the one socket of `family` `id` names (its cookie included).
fn destroy(socket: &Socket, family: u8, id: SocketId) -> std::io::Result<()> {
    send(
        socket,
        SockDiagDestroy::new(udp_request(family, id)),
        NLM_F_REQUEST | NLM_F_ACK,
    )?;
    let mut answer = Vec::with_capacity(ANSWER_BUFFER);
    socket.recv(&mut answer, 0)?;
    let message = NetlinkMessage::<SockDiagDestroy>::deserialize(&answer)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    match message.payload {
        NetlinkPayload::Error(e) if e.code.is_some() => Err(e.to_io()),
        _ => Ok(()),
    }
}
