//! [`Aggregator`]: folds [`DenialEvent`]s per (src, proto, dport) per interval into counted
//! [`DenialBatch`]es.
//!
//! Pure: no clock (every call that needs time takes `now`), no I/O, deterministic output
//! (entries sorted by key, the overflow entry last). Counters from the reader and the
//! kernel are cumulative readings; the aggregator turns them into per-batch increases.
//! A reading lower than the previous one means the counter restarted (reader restarted,
//! ruleset replaced): the new reading is taken as the increase, a lower bound.

use super::reader::ReaderStats;
use super::{Action, DenialEvent};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

/// One (src, proto, dport) over one interval. The overflow entry (`overflow: true`) has
/// unspecified addresses and port 0 and counts every event past the key cap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DenialEntry {
    pub src: IpAddr,
    pub proto: u8,
    pub dport: u16,
    /// Destination, input interface, revision and action of the first event.
    pub dst: IpAddr,
    pub ifindex_in: u32,
    pub ifname: Option<String>,
    pub revision: Option<u64>,
    pub action: Action,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
    pub count: u64,
    #[serde(default)]
    pub overflow: bool,
}

/// What one host reports for one interval. Invariant: `seen == sent + dropped_by_agent`
/// and `sent == sum(entries.count)`; losses before the agent saw an event are in
/// `socket_lost` / `socket_overruns` / `kernel_suppressed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DenialBatch {
    /// Per-aggregator sequence number, +1 per batch emitted.
    pub seq: u64,
    pub host: String,
    pub interval_start: SystemTime,
    pub interval_end: SystemTime,
    pub entries: Vec<DenialEntry>,
    /// Logged packets the agent received in the interval.
    pub seen: u64,
    /// Events folded into `entries`.
    pub sent: u64,
    /// Received but not aggregated (channel full, unparseable).
    pub dropped_by_agent: u64,
    /// ENOBUFS errors on the NFLOG socket.
    pub socket_overruns: u64,
    /// Logged packets lost in the socket (exact, from NFLOG sequence gaps).
    #[serde(default)]
    pub socket_lost: u64,
    /// Increase of the over-limit drop rule's counter: denied, not logged (rate limit).
    /// `None` until two readings are known.
    pub kernel_suppressed: Option<u64>,
}

impl DenialBatch {
    /// The accounting invariants hold (for receivers that must reject forged batches).
    pub fn is_consistent(&self) -> bool {
        let sum = self
            .entries
            .iter()
            .try_fold(0u64, |acc, e| acc.checked_add(e.count));
        sum == Some(self.sent)
            && self.sent.checked_add(self.dropped_by_agent) == Some(self.seen)
            && self.interval_start <= self.interval_end
    }
}

type Key = (IpAddr, u8, u16);

/// Folds events into batches; see the module docs.
#[derive(Debug)]
pub struct Aggregator {
    host: String,
    interval: Duration,
    max_entries: usize,
    next_seq: u64,
    interval_start: Option<SystemTime>,
    entries: BTreeMap<Key, DenialEntry>,
    overflow: Option<DenialEntry>,
    pushed: u64,
    last_reader: ReaderStats,
    last_kernel: Option<u64>,
}

impl Aggregator {
    /// Distinct keys per batch before events go to the overflow entry.
    pub const DEFAULT_MAX_ENTRIES: usize = 10_000;

    pub fn new(host: impl Into<String>, interval: Duration) -> Self {
        Self {
            host: host.into(),
            interval,
            max_entries: Self::DEFAULT_MAX_ENTRIES,
            next_seq: 0,
            interval_start: None,
            entries: BTreeMap::new(),
            overflow: None,
            pushed: 0,
            last_reader: ReaderStats::default(),
            last_kernel: None,
        }
    }

    /// Caps distinct keys per batch (at least 1).
    pub fn with_max_entries(mut self, max: usize) -> Self {
        self.max_entries = max.max(1);
        self
    }

    /// Continues a batch numbering (e.g. after the spool's last sequence number).
    pub fn with_next_seq(mut self, seq: u64) -> Self {
        self.next_seq = seq;
        self
    }

    /// Records the counters' starting point and opens the first interval at `now`, so the
    /// first batch reports increases from here (call once after starting the reader).
    pub fn baseline(
        &mut self,
        now: SystemTime,
        reader: &ReaderStats,
        kernel_drop_counter: Option<u64>,
    ) {
        self.interval_start = Some(now);
        self.last_reader = *reader;
        self.last_kernel = kernel_drop_counter;
    }

    /// Adds one event to the current interval.
    pub fn push(&mut self, ev: DenialEvent) {
        self.pushed += 1;
        let key = (ev.src, ev.proto, ev.dport);
        if let Some(e) = self.entries.get_mut(&key) {
            bump(e, ev.ts);
        } else if self.entries.len() < self.max_entries {
            self.entries.insert(key, entry_from(ev, false));
        } else if let Some(o) = self.overflow.as_mut() {
            bump(o, ev.ts);
        } else {
            let mut o = entry_from(ev, true);
            o.src = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
            o.dst = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
            (o.proto, o.dport, o.revision, o.ifname) = (0, 0, None, None);
            self.overflow = Some(o);
        }
    }

    /// Events pushed since the last batch.
    pub fn pending(&self) -> u64 {
        self.pushed
    }

    /// When the interval that started at the last flush is over (`now >= start +
    /// interval`), closes it: a batch if anything happened, else `None`. Before that, `None`.
    pub fn flush(
        &mut self,
        now: SystemTime,
        reader: &ReaderStats,
        kernel_drop_counter: Option<u64>,
    ) -> Option<DenialBatch> {
        let start = *self.interval_start.get_or_insert(now);
        let due = now.duration_since(start).is_ok_and(|d| d >= self.interval);
        if !due {
            return None;
        }
        self.drain(now, reader, kernel_drop_counter)
    }

    /// Closes the current interval now, due or not (shutdown, tests).
    pub fn drain(
        &mut self,
        now: SystemTime,
        reader: &ReaderStats,
        kernel_drop_counter: Option<u64>,
    ) -> Option<DenialBatch> {
        let start = self.interval_start.unwrap_or(now);
        let dropped = increase(reader.dropped_by_agent, self.last_reader.dropped_by_agent);
        let overruns = increase(reader.socket_overruns, self.last_reader.socket_overruns);
        let lost = increase(reader.socket_lost, self.last_reader.socket_lost);
        let suppressed = match (kernel_drop_counter, self.last_kernel) {
            (Some(cur), Some(last)) => Some(increase(cur, last)),
            _ => None,
        };
        self.last_reader = *reader;
        if kernel_drop_counter.is_some() {
            self.last_kernel = kernel_drop_counter;
        }
        self.interval_start = Some(now);
        let quiet = self.pushed == 0
            && dropped == 0
            && overruns == 0
            && lost == 0
            && suppressed.unwrap_or(0) == 0;
        if quiet {
            return None;
        }
        let mut entries: Vec<DenialEntry> =
            std::mem::take(&mut self.entries).into_values().collect();
        entries.extend(self.overflow.take());
        let sent = std::mem::take(&mut self.pushed);
        let seq = self.next_seq;
        self.next_seq += 1;
        Some(DenialBatch {
            seq,
            host: self.host.clone(),
            interval_start: start.min(now),
            interval_end: now,
            entries,
            seen: sent + dropped,
            sent,
            dropped_by_agent: dropped,
            socket_overruns: overruns,
            socket_lost: lost,
            kernel_suppressed: suppressed,
        })
    }
}

/// Increase of a cumulative counter; a lower reading means it restarted from 0.
pub fn increase(current: u64, previous: u64) -> u64 {
    current.checked_sub(previous).unwrap_or(current)
}

fn bump(e: &mut DenialEntry, ts: SystemTime) {
    e.count += 1;
    e.first_seen = e.first_seen.min(ts);
    e.last_seen = e.last_seen.max(ts);
}

fn entry_from(ev: DenialEvent, overflow: bool) -> DenialEntry {
    DenialEntry {
        src: ev.src,
        proto: ev.proto,
        dport: ev.dport,
        dst: ev.dst,
        ifindex_in: ev.ifindex_in,
        ifname: ev.ifname,
        revision: ev.revision,
        action: ev.action,
        first_seen: ev.ts,
        last_seen: ev.ts,
        count: 1,
        overflow,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "aggregate_tests.rs"]
mod tests;
