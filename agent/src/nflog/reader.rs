//! [`DenialReader`]: the dedicated thread that reads one NFLOG group and hands events to a
//! bounded channel, counting everything it could not hand over.
//!
//! The thread only receives, parses and `try_send`s: it never blocks on the consumer, never
//! does disk or network I/O, never logs per packet above TRACE. Counters are cumulative
//! atomics, published once per `recv`; see [`ReaderStats`] for their meaning.

use super::parse::parse_buffer;
use super::socket::{self, GroupConfig, NflogSocket, RecvError};
use super::{DenialEvent, NflogError};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

/// Receive buffer for one datagram: larger than the biggest kernel batch (128 KiB).
const RECV_BUF: usize = 256 * 1024;
/// Sequence number of our config request.
const CONFIG_SEQ: u32 = 1;
/// How long `start` waits for the kernel's answer to the config request.
const ACK_WAIT: Duration = Duration::from_secs(2);

/// How to read the group. [`ReaderConfig::default`] is what the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReaderConfig {
    /// The `log group` of the compiled ruleset.
    pub group: u16,
    /// Bounded channel capacity (events).
    pub capacity: usize,
    /// Bytes of each packet copied by the kernel (IP + transport headers).
    pub copy_range: u32,
    /// Kernel queue threshold (messages per batch) and flush timeout.
    pub qthresh: u32,
    pub flush_timeout: Duration,
    /// Kernel batch buffer size (4 KiB .. 128 KiB).
    pub nlbufsiz: u32,
    /// Socket receive buffer asked for (SO_RCVBUFFORCE; the kernel doubles it).
    pub rcvbuf: usize,
}

impl Default for ReaderConfig {
    fn default() -> Self {
        Self {
            group: 7,
            capacity: 65_536,
            copy_range: 128,
            qthresh: 100,
            flush_timeout: Duration::from_millis(100),
            nlbufsiz: 16 * 1024,
            rcvbuf: 8 * 1024 * 1024,
        }
    }
}

/// Cumulative reader counters. Invariant: `received == delivered + dropped_by_agent`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReaderStats {
    /// Logged packets read from the socket (parsed or not).
    pub received: u64,
    /// Events handed to the channel.
    pub delivered: u64,
    /// Received but not delivered: channel full, consumer gone, or unparseable.
    pub dropped_by_agent: u64,
    /// Of `dropped_by_agent`: unparseable.
    pub malformed: u64,
    /// ENOBUFS errors: the socket buffer overflowed (each one: one or more batches lost).
    pub socket_overruns: u64,
    /// Logged packets the kernel numbered but we never received (gaps in NFULA_SEQ): exact.
    pub socket_lost: u64,
    /// `recv` calls that returned data.
    pub batches: u64,
    /// Datagrams cut short (buffer too small) or with a broken netlink header.
    pub truncated: u64,
}

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    delivered: AtomicU64,
    dropped_by_agent: AtomicU64,
    malformed: AtomicU64,
    socket_overruns: AtomicU64,
    socket_lost: AtomicU64,
    batches: AtomicU64,
    truncated: AtomicU64,
}

impl Counters {
    fn add(&self, d: &ReaderStats) {
        let pairs = [
            (&self.received, d.received),
            (&self.delivered, d.delivered),
            (&self.dropped_by_agent, d.dropped_by_agent),
            (&self.malformed, d.malformed),
            (&self.socket_overruns, d.socket_overruns),
            (&self.socket_lost, d.socket_lost),
            (&self.batches, d.batches),
            (&self.truncated, d.truncated),
        ];
        for (counter, n) in pairs {
            if n != 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    fn snapshot(&self) -> ReaderStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ReaderStats {
            received: get(&self.received),
            delivered: get(&self.delivered),
            dropped_by_agent: get(&self.dropped_by_agent),
            malformed: get(&self.malformed),
            socket_overruns: get(&self.socket_overruns),
            socket_lost: get(&self.socket_lost),
            batches: get(&self.batches),
            truncated: get(&self.truncated),
        }
    }
}

/// Parses buffers, tracks NFULA_SEQ gaps, delivers events, counts.
struct Pump {
    tx: SyncSender<DenialEvent>,
    counters: Arc<Counters>,
    /// Next expected NFULA_SEQ (the kernel numbers a new group instance from 0).
    expected_seq: u32,
}

impl Pump {
    /// Handles one datagram; returns the ACK it contained, if any.
    fn handle(&mut self, data: &[u8], truncated: bool) -> Option<(u32, i32)> {
        let mut d = ReaderStats {
            batches: 1,
            truncated: u64::from(truncated),
            ..ReaderStats::default()
        };
        let now = SystemTime::now();
        let expected = &mut self.expected_seq;
        let tx = &self.tx;
        let out = parse_buffer(data, now, |seq, event| {
            if let Some(seq) = seq {
                let gap = seq.wrapping_sub(*expected);
                if gap < 1 << 31 {
                    d.socket_lost += u64::from(gap);
                    *expected = seq.wrapping_add(1);
                }
            }
            match event {
                Ok(ev) => match tx.try_send(ev) {
                    Ok(()) => d.delivered += 1,
                    Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                        d.dropped_by_agent += 1;
                    }
                },
                Err(_) => {
                    d.malformed += 1;
                    d.dropped_by_agent += 1;
                }
            }
        });
        d.received = out.packets;
        d.truncated += u64::from(out.truncated && !truncated);
        self.counters.add(&d);
        out.ack
    }

    fn overrun(&self) {
        self.counters
            .socket_overruns
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// A running NFLOG reader; stops its thread on drop.
pub struct DenialReader {
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    rcvbuf: usize,
    group: u16,
}

impl std::fmt::Debug for DenialReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DenialReader")
            .field("group", &self.group)
            .field("rcvbuf", &self.rcvbuf)
            .field("stats", &self.stats())
            .finish()
    }
}

impl DenialReader {
    /// [`DenialReader::start_with`] with the default config for `group` and `capacity`.
    pub fn start(
        group: u16,
        capacity: usize,
    ) -> Result<(DenialReader, Receiver<DenialEvent>), NflogError> {
        Self::start_with(ReaderConfig {
            group,
            capacity,
            ..ReaderConfig::default()
        })
    }

    /// Opens the socket in the calling thread's network namespace, binds the group, waits
    /// for the kernel's ACK (so EBUSY/EPERM are reported here), then reads on a thread.
    pub fn start_with(
        cfg: ReaderConfig,
    ) -> Result<(DenialReader, Receiver<DenialEvent>), NflogError> {
        let sock = NflogSocket::open(cfg.rcvbuf)?;
        let group = GroupConfig {
            group: cfg.group,
            copy_range: cfg.copy_range,
            qthresh: cfg.qthresh,
            timeout: cfg.flush_timeout,
            nlbufsiz: cfg.nlbufsiz,
        };
        sock.send_config(&group, CONFIG_SEQ)?;
        let (tx, rx) = sync_channel(cfg.capacity);
        let counters = Arc::new(Counters::default());
        let mut pump = Pump {
            tx,
            counters: Arc::clone(&counters),
            expected_seq: 0,
        };
        let mut buf = vec![0u8; RECV_BUF];
        wait_for_ack(&sock, &mut pump, &mut buf, cfg.group)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let rcvbuf = sock.rcvbuf;
        let thread = std::thread::Builder::new()
            .name(format!("nflog-{}", cfg.group))
            .spawn(move || read_loop(&sock, &mut pump, &mut buf, &thread_stop))
            .map_err(NflogError::Spawn)?;
        tracing::info!(group = cfg.group, rcvbuf, "NFLOG reader started");
        Ok((
            DenialReader {
                counters,
                stop,
                thread: Some(thread),
                rcvbuf,
                group: cfg.group,
            },
            rx,
        ))
    }

    /// Cumulative counters since `start`.
    pub fn stats(&self) -> ReaderStats {
        self.counters.snapshot()
    }

    /// The socket receive buffer the kernel granted, in bytes.
    pub fn rcvbuf(&self) -> usize {
        self.rcvbuf
    }

    /// Whether the reading thread is still running (it exits on a fatal socket error).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the thread (within ~100 ms) and returns the final counters.
    pub fn stop(mut self) -> ReaderStats {
        self.shutdown();
        self.stats()
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for DenialReader {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn wait_for_ack(
    sock: &NflogSocket,
    pump: &mut Pump,
    buf: &mut [u8],
    group: u16,
) -> Result<(), NflogError> {
    let deadline = std::time::Instant::now() + ACK_WAIT;
    while std::time::Instant::now() < deadline {
        match sock.recv(buf) {
            Ok(n) => {
                let len = n.min(buf.len());
                if let Some((seq, errno)) = pump.handle(&buf[..len], n > buf.len())
                    && seq == CONFIG_SEQ
                {
                    if errno == 0 {
                        return Ok(());
                    }
                    return Err(NflogError::Refused {
                        group,
                        source: std::io::Error::from_raw_os_error(errno),
                    });
                }
            }
            Err(e) => match socket::classify(&e) {
                RecvError::Overrun => pump.overrun(),
                RecvError::Again => {}
                RecvError::Fatal => return Err(NflogError::Recv { group, source: e }),
            },
        }
    }
    Err(NflogError::NoAck { group })
}

fn read_loop(sock: &NflogSocket, pump: &mut Pump, buf: &mut [u8], stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match sock.recv(buf) {
            Ok(n) => {
                let len = n.min(buf.len());
                pump.handle(&buf[..len], n > buf.len());
            }
            Err(e) => match socket::classify(&e) {
                RecvError::Overrun => pump.overrun(),
                RecvError::Again => {}
                RecvError::Fatal => {
                    tracing::error!(error = %e, "NFLOG socket failed; reader stopped");
                    return;
                }
            },
        }
    }
}
