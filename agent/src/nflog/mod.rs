//! Denial logs, agent side: read the ruleset's NFLOG group straight from netlink, parse each
//! logged packet to a [`DenialEvent`], and fold events into counted [`DenialBatch`]es.
//!
//! ```text
//!  kernel: log rule ──NFLOG group 7──▶ netlink socket (8 MiB rcvbuf, ENOBUFS on)
//!                                          │ dedicated thread, blocking recv,
//!                                          │ parse in place (no alloc but the prefix)
//!                                          ▼
//!                        bounded channel ── try_send, full ⇒ dropped_by_agent += 1
//!                                          ▼
//!          session code: Aggregator::push(ev) … Aggregator::flush(now, stats, counter)
//!                                          ▼
//!                                     DenialBatch (serde) → spool / gRPC (other code)
//! ```
//!
//! Public API:
//! - [`DenialReader::start`]`(ReaderConfig) -> Result<(DenialReader, Receiver<DenialEvent>)>`
//!   binds the group (copy mode `packet`, small copy range, queue threshold, flush timeout,
//!   per-instance sequence numbers), sets a large receive buffer with `SO_RCVBUFFORCE` and
//!   reads on its own thread. [`DenialReader::stats`] returns cumulative [`ReaderStats`].
//!   The socket lives in the network namespace of the thread that calls `start`.
//! - [`Aggregator::new`]`(host, interval)`, [`Aggregator::push`]`(ev)`,
//!   [`Aggregator::flush`]`(now, &stats, kernel_drop_counter) -> Option<DenialBatch>`:
//!   pure (no clock, no I/O), per (src, proto, dport), capped at
//!   [`Aggregator::DEFAULT_MAX_ENTRIES`] keys with an overflow entry.
//! - [`parse_buffer`]: one `recv` buffer → events (pure; used by the reader and benchmarks);
//!   [`wire::encode_packet`] builds kernel-shaped NFLOG messages for tests and benchmarks.
//!
//! Accounting (nothing is lost without being counted), per batch:
//! `seen == sum(entry.count) + dropped_by_agent`; losses before the agent saw an event are
//! reported beside it: `socket_lost` (exact, from gaps in the kernel's NFULA_SEQ numbers),
//! `socket_overruns` (ENOBUFS errors, one per burst of lost netlink messages) and
//! `kernel_suppressed` (increase of the over-limit drop rule's counter: packets denied but
//! not logged because of the log rule's rate limit).
//!
//! This module must not: do disk or network I/O or block on the reading thread, set
//! `NETLINK_NO_ENOBUFS` (losses must be visible), read the clock inside the aggregator, or
//! touch anything but its own NFLOG group.

mod aggregate;
mod parse;
mod reader;
mod socket;
pub mod wire;

pub use aggregate::{Aggregator, DenialBatch, DenialEntry};
pub use parse::{ParseError, ParseOutcome, parse_buffer, parse_prefix};
pub use reader::{DenialReader, ReaderConfig, ReaderStats};

use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::time::SystemTime;

/// What the log rule did with the packet, from the prefix `pc r<rev> deny ` / `pc r<rev> audit `.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Dropped by the policy (also used for prefixes that are not ours).
    Deny,
    /// Would have been dropped; accepted because the host is in audit mode.
    Audit,
}

/// One logged packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DenialEvent {
    /// NFULA_TIMESTAMP when the kernel sent one, else the time the agent received it.
    pub ts: SystemTime,
    /// Input interface index (0 when the kernel gave none, e.g. locally generated).
    pub ifindex_in: u32,
    /// Interface name: `None` from the parser; resolved from `ifindex_in` by the caller.
    pub ifname: Option<String>,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number (6 TCP, 17 UDP; others are passed through with ports 0).
    pub proto: u8,
    /// Transport ports; 0 when absent (non-first fragment, ICMP, truncated copy).
    pub sport: u16,
    pub dport: u16,
    /// The log prefix as the kernel sent it (trailing NUL removed).
    pub prefix: String,
    /// `<rev>` from `pc r<rev> ...`; `None` for a prefix that is not ours.
    pub revision: Option<u64>,
    pub action: Action,
}

/// Why the NFLOG reader could not start.
#[derive(Debug, thiserror::Error)]
pub enum NflogError {
    #[error("cannot open the NETLINK_NETFILTER socket: {0}")]
    Open(#[source] std::io::Error),
    #[error("cannot set socket option {option}: {source}")]
    SockOpt {
        option: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot send the NFLOG config request for group {group}: {source}")]
    Send {
        group: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot receive the NFLOG config answer for group {group}: {source}")]
    Recv {
        group: u16,
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused the config (EBUSY: another process, e.g. ulogd, holds the group;
    /// EPERM: not root / no CAP_NET_ADMIN in this namespace).
    #[error("kernel refused to bind NFLOG group {group}: {source}")]
    Refused {
        group: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("no answer from the kernel to the NFLOG config request for group {group}")]
    NoAck { group: u16 },
    #[error("cannot spawn the NFLOG reader thread: {0}")]
    Spawn(#[source] std::io::Error),
}
