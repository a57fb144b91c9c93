//! A packet capture in a network namespace, in Rust (no tcpdump needed): an
//! `AF_PACKET` socket for every protocol on every interface of the
//! namespace, read on a thread of its own until stopped. Frames the
//! namespace only overhears (addressed to another host's MAC) are left out:
//! what is kept went through the node, in or out. IPv4 frames by default;
//! [`Capture::start_ipv6`] keeps IPv6 ones instead.
use std::{
    net::{Ipv4Addr, Ipv6Addr},
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
const ETHERTYPE_IPV6: [u8; 2] = [0x86, 0xdd];
const ETH_LEN: usize = 14;
const IPV4_MIN_LEN: usize = 20;
const IPV6_LEN: usize = 40;
/// IPv6 extension headers counted in 8-byte units past the first 8:
/// hop-by-hop, routing, destination options.
const IPV6_EXT_8: [u8; 3] = [0, 43, 60];
const IPV6_DEST_OPTIONS: u8 = 60;
/// Extension headers walked to the L4 header.
const IPV6_EXT_MAX: usize = 4;
/// Bytes kept of each frame: Ethernet, IPv4 with options (or IPv6 with a
/// few extension headers), the L4 ports.
const SNAP_LEN: usize = 128;
/// How often the reader looks at its stop flag (100 ms).
const POLL_TIMEVAL: libc::timeval = libc::timeval {
    tv_sec: 0,
    tv_usec: 100_000,
};

/// One IPv4 (or, from [`Capture::start_ipv6`], IPv6) frame seen in the
/// namespace. The IPv4 accessors read IPv4 frames, the `*6` ones IPv6.
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
        ports_of(self.l4())
    }

    pub fn src6(&self) -> Ipv6Addr {
        addr6(&self.ip()[8..24])
    }
    pub fn dst6(&self) -> Ipv6Addr {
        addr6(&self.ip()[24..40])
    }
    /// The upper-layer protocol and where its header starts in the IPv6
    /// packet, past the extension headers (as far as the snapshot goes).
    fn l4_6(&self) -> (u8, usize) {
        let ip = self.ip();
        let (mut next, mut off) = (ip[6], IPV6_LEN);
        for _ in 0..IPV6_EXT_MAX {
            if !IPV6_EXT_8.contains(&next) || ip.len() < off + 2 {
                break;
            }
            (next, off) = (ip[off], off + (usize::from(ip[off + 1]) + 1) * 8);
        }
        (next, off)
    }
    /// The upper-layer protocol of an IPv6 frame.
    pub fn proto6(&self) -> u8 {
        self.l4_6().0
    }
    /// (source, destination) ports of an IPv6 TCP or UDP frame.
    pub fn ports6(&self) -> Option<(u16, u16)> {
        let (_, off) = self.l4_6();
        self.ip().get(off..).and_then(ports_of)
    }
    /// The destination options header right after the fixed IPv6 header,
    /// whole, if there is one.
    pub fn dest_options6(&self) -> Option<&[u8]> {
        let ip = self.ip();
        if ip[6] != IPV6_DEST_OPTIONS || ip.len() < IPV6_LEN + 2 {
            return None;
        }
        let len = (usize::from(ip[IPV6_LEN + 1]) + 1) * 8;
        ip.get(IPV6_LEN..IPV6_LEN + len)
    }
}

fn ports_of(l4: &[u8]) -> Option<(u16, u16)> {
    (l4.len() >= 4).then(|| {
        (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        )
    })
}

fn addr6(bytes: &[u8]) -> Ipv6Addr {
    let octets: [u8; 16] = bytes.try_into().expect("16 bytes");
    Ipv6Addr::from(octets)
}

/// A capture running in a namespace; [`Capture::stop`] returns its frames.
pub struct Capture {
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<Result<Vec<Frame>>>>,
}

impl Capture {
    /// Starts capturing IPv4 frames in `netns`; returns once the socket is open.
    pub fn start(netns_name: &str) -> Result<Self> {
        Self::start_for(netns_name, ETHERTYPE_IPV4, ETH_LEN + IPV4_MIN_LEN)
    }

    /// As [`Capture::start`], for IPv6 frames.
    pub fn start_ipv6(netns_name: &str) -> Result<Self> {
        Self::start_for(netns_name, ETHERTYPE_IPV6, ETH_LEN + IPV6_LEN)
    }

    /// Frames of `ethertype`, at least `min_len` bytes long.
    fn start_for(netns_name: &str, ethertype: [u8; 2], min_len: usize) -> Result<Self> {
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
                if from.pkttype() == PACKET_OTHERHOST || len < min_len || frame[12..14] != ethertype
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
