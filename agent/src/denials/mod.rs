//! The denial pipeline of `portcullis-agent run`: NFLOG reader → aggregator → durable
//! spool → session (acknowledged by the controller).
//!
//! ```text
//! reader thread (crate::nflog) ─events─▶ aggregator thread: every interval, one counted
//!   batch (+ the over-limit drop rule's counter for kernel_suppressed) ─▶ Spool (disk)
//!   ─▶ sender task: while connected, sends every spooled batch in order; DenialAck{seq}
//!   removes them. On reconnect everything unacknowledged is sent again (the controller
//!   de-duplicates by (epoch, seq)).
//! ```
//! Nothing is lost without being counted: reader drops, socket overruns/gaps, kernel
//! suppression, spool overflow and batches that could not be written all travel in the
//! batches. The reading thread never does disk or network I/O. The group read follows the
//! applied policy, and a pipeline that cannot start is reported and retried without
//! touching the session or the policy ([`supervisor`]).

mod spool;
mod supervisor;

pub use spool::{Spool, SpoolError};

use crate::Dataplane;
use crate::conditions::Conditions;
use crate::dataplane::KernelTable;
use crate::nflog::{self, Action};
use crate::session::Companion;
use crate::uplink::Uplink;
use portcullis_proto::v1;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{Notify, mpsc, watch};

/// How the pipeline runs.
#[derive(Debug, Clone)]
pub struct DenialConfig {
    pub host: String,
    /// NFLOG group read until a policy is applied (then the policy's `log.group`).
    pub group: u16,
    /// Aggregation interval (one batch per interval at most).
    pub interval: Duration,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    /// Where the over-limit drop counter is read ([`Dataplane::read_chain`]).
    pub dataplane: Arc<dyn Dataplane>,
}

/// The running pipeline; also the session [`Companion`] that sends and acknowledges.
pub struct Denials {
    /// `None` until the supervisor could open it.
    spool: Mutex<Option<Spool>>,
    notify: Notify,
    sent_upto: AtomicU64,
    uplink: Uplink,
    /// (oldest unacknowledged seq at the last connect, sessions in a row it survived)
    strikes: Mutex<(u64, u32)>,
    /// What the batches spooled so far counted (metrics).
    stats: crate::metrics::DenialStats,
}

/// Sessions in a row that may end without the oldest batch acknowledged before it is
/// given up as poison (e.g. refused by the controller as invalid) and counted as dropped.
const MAX_STRIKES: u32 = 5;

impl std::fmt::Debug for Denials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Denials")
    }
}

fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Interface names by index, read from `/sys/class/net` (this network namespace's view).
#[derive(Debug, Default)]
struct IfNames(HashMap<u32, String>);

impl IfNames {
    fn refresh(&mut self) {
        self.0.clear();
        if let Ok(rd) = std::fs::read_dir("/sys/class/net") {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(idx) = std::fs::read_to_string(e.path().join("ifindex"))
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                {
                    self.0.insert(idx, name);
                }
            }
        }
    }
    fn name(&mut self, idx: u32) -> String {
        if idx == 0 {
            return String::new();
        }
        if !self.0.contains_key(&idx) {
            self.refresh();
        }
        self.0
            .get(&idx)
            .cloned()
            .unwrap_or_else(|| format!("if{idx}"))
    }
}

/// [`to_wire`] with this network namespace's interface names: what the agent sends for an
/// aggregated batch (seq/epoch are set by the spool). For tests across crates.
pub fn wire_batch(b: nflog::DenialBatch) -> v1::DenialBatch {
    to_wire(b, &mut IfNames::default())
}

/// Wire form of an aggregated batch (seq/epoch are set by the spool).
fn to_wire(b: nflog::DenialBatch, names: &mut IfNames) -> v1::DenialBatch {
    v1::DenialBatch {
        seq: 0,
        interval_start_unix_ms: ms(b.interval_start),
        interval_end_unix_ms: ms(b.interval_end),
        entries: b
            .entries
            .into_iter()
            .map(|e| v1::DenialEntry {
                src: if e.overflow {
                    "(other)".into()
                } else {
                    e.src.to_string()
                },
                dst: e.dst.to_string(),
                proto: e.proto.into(),
                dport: e.dport.into(),
                sport: 0,
                ifname: e.ifname.unwrap_or_else(|| names.name(e.ifindex_in)),
                count: e.count,
                first_unix_ms: ms(e.first_seen),
                last_unix_ms: ms(e.last_seen),
                revision: e.revision.unwrap_or(0),
                audit: e.action == Action::Audit,
            })
            .collect(),
        seen: b.seen,
        sent: b.sent,
        dropped_by_agent: b.dropped_by_agent,
        socket_overruns: b.socket_overruns,
        has_kernel_suppressed: b.kernel_suppressed.is_some(),
        kernel_suppressed: b.kernel_suppressed.unwrap_or(0),
        spool_dropped: 0,
        socket_lost: b.socket_lost,
        epoch: 0,
    }
}

/// Packets counted by the unlogged deny rules of our `guard` chain (the low-port one and
/// those of restricted high ports): denied over the log rate limit (dropped or, in audit
/// mode, accepted) without being logged. `None` without a table, or when it cannot be
/// read (logged). Read once per interval on the aggregator thread: a hung nft may delay
/// a batch by a few seconds (the dataplane bounds the read; events queue meanwhile,
/// counted if they overflow), never more.
fn over_limit_counter(dataplane: &dyn Dataplane) -> Option<u64> {
    match dataplane.read_chain(GUARD_CHAIN) {
        Ok(guard) => guard.as_ref().and_then(over_limit_packets),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the over-limit counter");
            None
        }
    }
}

/// The chain whose unlogged denies count what passed over the log rate limit.
const GUARD_CHAIN: &str = "guard";

/// The sum (saturating: kernel counters) of the packets of `guard`'s over-limit denies;
/// `None` when it has none.
fn over_limit_packets(guard: &KernelTable) -> Option<u64> {
    let rules = &guard.ruleset.chains.get(GUARD_CHAIN)?.rules;
    let over_limit: Vec<u64> = guard
        .counters
        .iter()
        .filter(|c| c.chain == GUARD_CHAIN)
        .filter(|c| rules.get(c.index).is_some_and(|r| r.is_over_limit_deny()))
        .map(|c| c.packets)
        .collect();
    (!over_limit.is_empty()).then(|| over_limit.iter().fold(0u64, |a, p| a.saturating_add(*p)))
}

impl Denials {
    /// Starts the pipeline's supervisor thread (see [`supervisor`]): it binds the group
    /// the applied policy logs to (`group`, `config.group` until a policy is applied) in
    /// this thread's network namespace, aggregates and spools; failures are reported in
    /// `conditions` and retried, never returned. Sending happens through the session once
    /// this is added as a companion.
    pub fn start(
        config: DenialConfig,
        uplink: Uplink,
        group: watch::Receiver<Option<u16>>,
        conditions: Conditions,
    ) -> Arc<Self> {
        let me = Arc::new(Self {
            spool: Mutex::new(None),
            notify: Notify::new(),
            sent_upto: AtomicU64::new(0),
            uplink,
            strikes: Mutex::new((0, 0)),
            stats: crate::metrics::DenialStats::default(),
        });
        let sup = me.clone();
        let sup_conditions = conditions.clone();
        let spawned = std::thread::Builder::new()
            .name("pc-denials".into())
            .spawn(move || sup.supervise(config, group, sup_conditions));
        if let Err(e) = spawned {
            let text = format!("cannot start the denial pipeline thread: {e}");
            tracing::error!(%text);
            conditions.set(supervisor::CONDITION, text);
        }
        tokio::spawn(me.clone().send_loop());
        me
    }

    /// What the batches spooled so far counted (seen, lost by cause).
    pub fn stats(&self) -> &crate::metrics::DenialStats {
        &self.stats
    }

    /// Unacknowledged batches in the spool and their bytes (`None`: no spool open).
    pub fn spool_depth(&self) -> Option<(usize, u64)> {
        self.spool().as_ref().map(|s| (s.len(), s.bytes()))
    }

    fn spool(&self) -> std::sync::MutexGuard<'_, Option<Spool>> {
        self.spool.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn send_loop(self: Arc<Self>) {
        let mut uplink = self.uplink.clone();
        loop {
            let tx = uplink.borrow_and_update().clone();
            let Some(tx) = tx else {
                if uplink.changed().await.is_err() {
                    return;
                }
                continue;
            };
            let after = self.sent_upto.load(Ordering::Acquire);
            let read = self.spool().as_ref().map(|s| s.read_after(after, 64));
            let batches = match read.unwrap_or(Ok(Vec::new())) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "reading the denial spool");
                    Vec::new()
                }
            };
            if batches.is_empty() {
                tokio::select! {
                    () = self.notify.notified() => {},
                    r = uplink.changed() => if r.is_err() { return },
                }
                continue;
            }
            for b in batches {
                let seq = b.seq;
                let msg = v1::AgentMessage {
                    msg: Some(v1::agent_message::Msg::Denials(b)),
                };
                if tx.send(msg).await.is_err() {
                    break;
                }
                self.sent_upto.fetch_max(seq, Ordering::AcqRel);
            }
        }
    }
}

#[tonic::async_trait]
impl Companion for Denials {
    async fn on_connect(&self, _tx: &mpsc::Sender<v1::AgentMessage>) {
        // A batch that stays the oldest across many sessions is poison: drop it, counted.
        if let Some(spool) = self.spool().as_mut() {
            let mut strikes = self.strikes.lock().unwrap_or_else(|p| p.into_inner());
            match spool.oldest() {
                Some(seq) if seq == strikes.0 => {
                    strikes.1 += 1;
                    if strikes.1 >= MAX_STRIKES {
                        match spool.drop_oldest() {
                            Ok(Some(seq)) => tracing::error!(
                                seq,
                                "a denial batch was never acknowledged in {MAX_STRIKES} sessions; dropped and counted"
                            ),
                            Ok(None) => {}
                            Err(e) => tracing::error!(error = %e, "dropping a poison denial batch"),
                        }
                        *strikes = (spool.oldest().unwrap_or(0), 0);
                    }
                }
                Some(seq) => *strikes = (seq, 0),
                None => *strikes = (0, 0),
            }
        }
        // Everything not acknowledged goes again, in order.
        self.sent_upto.store(0, Ordering::Release);
        self.notify.notify_one();
    }

    async fn on_message(
        &self,
        msg: &v1::controller_message::Msg,
        _tx: &mpsc::Sender<v1::AgentMessage>,
    ) {
        if let v1::controller_message::Msg::DenialAck(ack) = msg
            && let Some(spool) = self.spool().as_mut()
        {
            spool.ack(ack.seq);
            if let Err(e) = spool.sync_dir() {
                tracing::warn!(error = %e, "syncing the spool directory");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::FakeDataplane;
    use crate::dataplane::Dataplane as _;
    use crate::testing::facts;
    use portcullis_policy::{HostPolicy, compile};

    #[test]
    fn the_over_limit_counter_sums_the_guard_chains_unlogged_denies() {
        let fake = FakeDataplane::new();
        assert_eq!(over_limit_counter(&fake), None, "no table, no counter");
        let ruleset = compile(&HostPolicy::default(), &facts(), 1).unwrap();
        fake.replace(&ruleset).unwrap();
        let guard = &ruleset.chains[GUARD_CHAIN].rules;
        let over: Vec<usize> = (0..guard.len())
            .filter(|i| guard[*i].is_over_limit_deny())
            .collect();
        let logged: Vec<usize> = (0..guard.len())
            .filter(|i| guard[*i].is_deny() && !guard[*i].is_over_limit_deny())
            .collect();
        assert!(!over.is_empty(), "{guard:?}");
        assert_eq!(over_limit_counter(&fake), Some(0));
        for (n, i) in over.iter().enumerate() {
            fake.hit(GUARD_CHAIN, *i, 10 + n as u64, 600);
        }
        // Logged denies are not over the limit.
        for i in &logged {
            fake.hit(GUARD_CHAIN, *i, 1000, 60_000);
        }
        let want: u64 = (0..over.len() as u64).map(|n| 10 + n).sum();
        assert_eq!(over_limit_counter(&fake), Some(want));
        // The chain read holds only that chain and its counters.
        let chain = fake.read_chain(GUARD_CHAIN).unwrap().unwrap();
        assert_eq!(
            chain.ruleset.chains.keys().collect::<Vec<_>>(),
            [GUARD_CHAIN]
        );
        assert!(chain.ruleset.sets.is_empty());
        assert!(chain.counters.iter().all(|c| c.chain == GUARD_CHAIN));
        assert_eq!(fake.read_chain("no-such-chain").unwrap(), None);
    }
}
