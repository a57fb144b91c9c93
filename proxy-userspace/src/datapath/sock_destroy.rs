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
use std::net::IpAddr;

use aya::maps::{HashMap, MapData};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NetlinkSerializable,
};
use netlink_packet_sock_diag::{
    AF_INET, IPPROTO_UDP, SockDiagMessage,
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
    message::SockDiagDestroy,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};
use proxy_common::{ServiceKey, SockRevKey, SockRevValue, maps, wire_addr};

use super::{Datapath, DatapathError};

/// A connected UDP socket is in TCP_ESTABLISHED as far as sock_diag says.
const UDP_CONNECTED: u8 = 1;
/// Room for one batch of dump answers.
const ANSWER_BUFFER: usize = 64 * 1024;

fn fail(message: String) -> DatapathError {
    DatapathError::SockDiag(message)
}

/// The socket hooks' reverse map: which frontend each socket asked for.
pub struct SocketRevNat(HashMap<MapData, SockRevKey, SockRevValue>);

impl SocketRevNat {
    pub fn take(datapath: &mut Datapath) -> Result<Self, DatapathError> {
        super::kernel::take(datapath, maps::SOCK_REVNAT).map(Self)
    }

    /// Destroys the connected UDP sockets of this network namespace that the
    /// socket hooks sent to a backend their frontend no longer serves:
    /// `serves(frontend, backend address, backend port)`, wire order.
    pub fn destroy_stale_udp_sockets(
        &self,
        serves: impl Fn(&ServiceKey, u32, u16) -> bool,
    ) -> Result<usize, DatapathError> {
        let socket = open()?;
        let mut destroyed = 0;
        for id in connected_udp_sockets(&socket)? {
            let IpAddr::V4(peer) = id.destination_address else {
                continue;
            };
            let key = SockRevKey {
                cookie: u64::from_ne_bytes(id.cookie),
                addr: wire_addr(peer),
                port: id.destination_port.to_be(),
                _pad: 0,
            };
            // Sockets the hooks never translated are not vipr's business.
            let Ok(entry) = self.0.get(&key, 0) else {
                continue;
            };
            if serves(&entry.frontend(), key.addr, key.port) {
                continue;
            }
            match destroy(&socket, id) {
                Ok(()) => destroyed += 1,
                // Closed by its owner in the meantime.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(fail(format!("SOCK_DESTROY: {e}"))),
            }
        }
        Ok(destroyed)
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
    let id = connected_udp_sockets(&socket)
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|id| id.source_port == local.port() && id.source_address == local.ip())
        .ok_or("the probe socket is not listed")?;
    destroy(&socket, id).map_err(|e| format!("SOCK_DESTROY: {e}"))
}

fn open() -> Result<Socket, DatapathError> {
    let socket = Socket::new(NETLINK_SOCK_DIAG).map_err(|e| fail(e.to_string()))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(|e| fail(e.to_string()))?;
    Ok(socket)
}

fn udp_request(socket_id: SocketId) -> SockDiagMessage {
    SockDiagMessage::InetRequest(InetRequest {
        family: AF_INET,
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

/// Every connected IPv4 UDP socket of this network namespace.
fn connected_udp_sockets(socket: &Socket) -> Result<Vec<SocketId>, DatapathError> {
    send(
        socket,
        udp_request(SocketId::new_v4()),
        NLM_F_REQUEST | NLM_F_DUMP,
    )
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

/// Destroys the one socket `id` names (its cookie included).
fn destroy(socket: &Socket, id: SocketId) -> std::io::Result<()> {
    send(
        socket,
        SockDiagDestroy::new(udp_request(id)),
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
