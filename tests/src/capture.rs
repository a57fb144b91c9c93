//! A packet capture in a network namespace, in Rust (no tcpdump needed): an
//! `AF_PACKET` socket for every protocol on every interface of the
//! namespace, read on a thread of its own until stopped. Frames the
//! namespace only overhears (addressed to another host's MAC) are left out:
//! what is kept went through the node, in or out.
use std::{
    net::Ipv4Addr,
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use anyhow::{Context, Result};
use nix::sys::{
    socket::{
        AddressFamily, LinkAddr, SockFlag, SockProtocol, SockType, recvfrom, setsockopt, socket,
        sockopt::ReceiveTimeout,
    },
    time::TimeVal,
};

use crate::netns;

/// `sll_pkttype` of a frame to another host's MAC (`PACKET_OTHERHOST`).
const PACKET_OTHERHOST: u8 = 3;
/// `sll_pkttype` of a frame the namespace sent (`PACKET_OUTGOING`).
const PACKET_OUTGOING: u8 = 4;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const ETH_LEN: usize = 14;
/// Bytes kept of each frame: Ethernet, IPv4 with options, the L4 ports.
const SNAP_LEN: usize = 128;
/// How often the reader looks at its stop flag (100 ms).
const POLL_TIMEVAL: libc::timeval = libc::timeval {
    tv_sec: 0,
    tv_usec: 100_000,
};

/// One IPv4 frame seen in the namespace.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Whether the namespace sent it (else it received it).
    pub outgoing: bool,
    pub bytes: Vec<u8>,
}

impl Frame {
    fn ip(&self) -> &[u8] {
        &self.bytes[ETH_LEN..]
    }
    pub fn src(&self) -> Ipv4Addr {
        let ip = self.ip();
        Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15])
    }
    pub fn dst(&self) -> Ipv4Addr {
        let ip = self.ip();
        Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19])
    }
    pub fn proto(&self) -> u8 {
        self.ip()[9]
    }
    /// The IPv4 options, if any.
    pub fn ip_options(&self) -> &[u8] {
        let ihl = usize::from(self.ip()[0] & 0x0f) * 4;
        &self.ip()[20..ihl.max(20)]
    }
    fn l4(&self) -> &[u8] {
        &self.ip()[usize::from(self.ip()[0] & 0x0f) * 4..]
    }
    /// (source, destination) ports of a TCP or UDP frame.
    pub fn ports(&self) -> Option<(u16, u16)> {
        let l4 = self.l4();
        (l4.len() >= 4).then(|| {
            (
                u16::from_be_bytes([l4[0], l4[1]]),
                u16::from_be_bytes([l4[2], l4[3]]),
            )
        })
    }
}

/// A capture running in a namespace; [`Capture::stop`] returns its frames.
pub struct Capture {
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<Result<Vec<Frame>>>>,
}

impl Capture {
    /// Starts capturing in `netns`; returns once the socket is open.
    pub fn start(netns_name: &str) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let flag = stop.clone();
        let reader = netns::spawn_thread_in(netns_name, "capture", move || {
            let opened = socket(
                AddressFamily::Packet,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                SockProtocol::EthAll,
            )
            .context("AF_PACKET socket")
            .and_then(|fd| {
                setsockopt(&fd, ReceiveTimeout, &TimeVal::from(POLL_TIMEVAL))
                    .context("SO_RCVTIMEO")?;
                Ok(fd)
            });
            let fd = match opened {
                Ok(fd) => {
                    let _ = ready_tx.send(Ok(()));
                    fd
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::anyhow!("{e:#}")));
                    return Err(e);
                }
            };
            let mut frames = Vec::new();
            let mut buf = vec![0u8; 65_536];
            while !flag.load(Ordering::SeqCst) {
                let (len, from) = match recvfrom::<LinkAddr>(fd.as_raw_fd(), &mut buf) {
                    Ok(got) => got,
                    Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(e).context("recvfrom"),
                };
                let Some(from) = from else { continue };
                let frame = &buf[..len];
                if from.pkttype() == PACKET_OTHERHOST
                    || len < ETH_LEN + 20
                    || frame[12..14] != ETHERTYPE_IPV4
                {
                    continue;
                }
                frames.push(Frame {
                    outgoing: from.pkttype() == PACKET_OUTGOING,
                    bytes: frame[..len.min(SNAP_LEN)].to_vec(),
                });
            }
            Ok(frames)
        })?;
        ready_rx
            .recv()
            .context("capture thread ended before opening its socket")??;
        Ok(Self {
            stop,
            reader: Some(reader),
        })
    }

    /// Stops the capture; the frames it saw, in order.
    pub fn stop(mut self) -> Result<Vec<Frame>> {
        self.finish()
    }

    fn finish(&mut self) -> Result<Vec<Frame>> {
        self.stop.store(true, Ordering::SeqCst);
        match self.reader.take() {
            Some(reader) => reader
                .join()
                .map_err(|_| anyhow::anyhow!("capture thread panicked"))?,
            None => Ok(Vec::new()),
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}
