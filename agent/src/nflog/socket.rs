//! The NETLINK_NETFILTER socket for one NFLOG group: open, size the receive buffer, send
//! the group config (built with `netlink-packet-netfilter`), receive.
//!
//! Must not set `NETLINK_NO_ENOBUFS` (ENOBUFS is how the kernel tells us it dropped
//! messages) and must not make the socket non-blocking (the reader thread blocks in recv,
//! woken at least every `RECV_TIMEOUT` to check for shutdown).

use super::NflogError;
use netlink_packet_netfilter::NetfilterProtoFamily;
use netlink_packet_netfilter::nflog::{
    ConfigCmd, ConfigFlags, ConfigMode, ConfigNla, Timeout, config_request,
};
use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};
use nix::sys::socket::{getsockopt, setsockopt, sockopt};
use nix::sys::time::TimeVal;
use std::time::Duration;

/// How often a blocked `recv` returns to check the stop flag.
pub const RECV_TIMEOUT: Duration = Duration::from_millis(100);

/// The group parameters sent to the kernel.
#[derive(Debug, Clone, Copy)]
pub struct GroupConfig {
    pub group: u16,
    /// Bytes of each packet copied (from the L3 header).
    pub copy_range: u32,
    /// Flush the group's queue to us after this many messages.
    pub qthresh: u32,
    /// ... or after this long (1/100 s resolution).
    pub timeout: Duration,
    /// Size of the kernel's per-group batch buffer (4 KiB .. 128 KiB).
    pub nlbufsiz: u32,
}

/// An open, bound NETLINK_NETFILTER socket.
pub struct NflogSocket {
    sock: Socket,
    /// The receive buffer the kernel actually granted (it doubles the asked size).
    pub rcvbuf: usize,
}

impl NflogSocket {
    /// Opens the socket and sets the receive buffer to `rcvbuf` bytes: `SO_RCVBUFFORCE`
    /// (needs CAP_NET_ADMIN, ignores `rmem_max`), falling back to `SO_RCVBUF`.
    pub fn open(rcvbuf: usize) -> Result<Self, NflogError> {
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(NflogError::Open)?;
        sock.bind_auto().map_err(NflogError::Open)?;
        if setsockopt(&sock, sockopt::RcvBufForce, &rcvbuf).is_err() {
            setsockopt(&sock, sockopt::RcvBuf, &rcvbuf).map_err(|e| NflogError::SockOpt {
                option: "SO_RCVBUF",
                source: e.into(),
            })?;
        }
        let timeout = TimeVal::new(
            0,
            i64::try_from(RECV_TIMEOUT.as_micros()).unwrap_or(100_000),
        );
        setsockopt(&sock, sockopt::ReceiveTimeout, &timeout).map_err(|e| NflogError::SockOpt {
            option: "SO_RCVTIMEO",
            source: e.into(),
        })?;
        let granted = getsockopt(&sock, sockopt::RcvBuf).unwrap_or(0);
        Ok(Self {
            sock,
            rcvbuf: granted,
        })
    }

    /// Sends one request: bind `cfg.group`, copy mode `packet` with `copy_range`, flush
    /// timeout, queue threshold, batch buffer size, and per-group sequence numbers
    /// (NFULA_SEQ, so lost messages show up as gaps). Asks for an ACK with sequence `seq`.
    pub fn send_config(&self, cfg: &GroupConfig, seq: u32) -> Result<(), NflogError> {
        let mut msg = config_request(
            NetfilterProtoFamily::Unspec,
            cfg.group,
            vec![
                ConfigCmd::Bind.into(),
                ConfigMode::new_packet(cfg.copy_range).into(),
                Timeout::from(cfg.timeout).into(),
                ConfigNla::QThresh(cfg.qthresh),
                ConfigNla::NlBufSiz(cfg.nlbufsiz),
                ConfigFlags::SEQ.into(),
            ],
        );
        msg.header.sequence_number = seq;
        let mut buf = vec![0; msg.header.length as usize];
        msg.serialize(&mut buf);
        self.sock
            .send(&buf, 0)
            .map(drop)
            .map_err(|source| NflogError::Send {
                group: cfg.group,
                source,
            })
    }

    /// Blocking receive of one datagram (one kernel batch) into `buf`; the length, which
    /// may exceed `buf.len()` if the datagram was truncated.
    pub fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut view = buf;
        self.sock.recv(&mut view, 0)
    }
}

/// What a receive error means for the reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvError {
    /// ENOBUFS: the socket buffer overflowed and the kernel dropped messages.
    Overrun,
    /// Timeout or signal: check the stop flag and receive again.
    Again,
    /// Anything else: the socket is unusable.
    Fatal,
}

/// Classifies a `recv` error.
pub fn classify(e: &std::io::Error) -> RecvError {
    match e.raw_os_error().map(nix::errno::Errno::from_raw) {
        Some(nix::errno::Errno::ENOBUFS) => RecvError::Overrun,
        Some(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => RecvError::Again,
        _ => RecvError::Fatal,
    }
}
