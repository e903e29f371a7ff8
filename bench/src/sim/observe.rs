//! What a simulated agent's real session did, seen through the session's companion
//! hooks ([`Companion`]): counters for `STATS`, the storm clock's re-opened sessions and
//! connection attempts, and the first session open (or failed) for `READY`.
//!
//! Plus [`VerifyAnswer`], the companion that answers `VerifyNow` (a rollout's drift gate,
//! `portcullis drift`) with a `DriftReport` of the agent's own readback
//! ([`Agent::verify`]); the agent's drift loop is not run (it would also report on every
//! connect and heal, which the simulated fleet does not measure).

use super::counters::Counters;
use crate::storm::StormClock;
use portcullis_agent::session::Companion;
use portcullis_agent::{Agent, VerifyStatus};
use portcullis_proto::v1;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Watches one simulated agent's session.
pub(super) struct Observer {
    pub(super) index: usize,
    pub(super) counters: Arc<Counters>,
    pub(super) clock: Arc<StormClock>,
    /// Told once: the first session opened (`Ok`) or the first attempt failed.
    pub(super) first: Mutex<Option<mpsc::Sender<anyhow::Result<()>>>>,
    /// A session was open before (what follows is a reconnect).
    pub(super) was_open: AtomicBool,
    /// The last `Desired` carried a confirm deadline.
    pub(super) confirming: AtomicBool,
    /// The session closed to be confirmed: the next open is that reconnect.
    pub(super) reopening_for_confirm: AtomicBool,
    /// Failed attempts since the session was last open.
    pub(super) failed: AtomicU32,
}

impl Observer {
    pub(super) fn new(
        index: usize,
        counters: Arc<Counters>,
        clock: Arc<StormClock>,
        first: mpsc::Sender<anyhow::Result<()>>,
    ) -> Self {
        Self {
            index,
            counters,
            clock,
            first: Mutex::new(Some(first)),
            was_open: AtomicBool::new(false),
            confirming: AtomicBool::new(false),
            reopening_for_confirm: AtomicBool::new(false),
            failed: AtomicU32::new(0),
        }
    }

    async fn tell_first(&self, r: anyhow::Result<()>) {
        let tx = self
            .first
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(tx) = tx {
            let _ = tx.send(r).await;
        }
    }
}

#[tonic::async_trait]
impl Companion for Observer {
    async fn on_connect(&self, _tx: &mpsc::Sender<v1::AgentMessage>) {
        let failed = self.failed.swap(0, Ordering::Relaxed);
        if !self.was_open.swap(true, Ordering::Relaxed) {
            self.tell_first(Ok(())).await;
            return;
        }
        if self.reopening_for_confirm.swap(false, Ordering::Relaxed) {
            self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
        } else {
            // A session ended (controller restarted, connection died): timed by a storm.
            self.clock.attempts.fetch_add(1, Ordering::Relaxed);
            self.clock.reopened(self.index, failed);
        }
    }

    async fn on_connect_failed(&self, error: &anyhow::Error) {
        if !self.was_open.load(Ordering::Relaxed) {
            self.tell_first(Err(anyhow::anyhow!("{error:#}"))).await;
            return;
        }
        self.failed.fetch_add(1, Ordering::Relaxed);
        if self.reopening_for_confirm.load(Ordering::Relaxed) {
            if self
                .counters
                .reconnect_errors
                .fetch_add(1, Ordering::Relaxed)
                < 3
            {
                eprintln!("sim: agent {}: reconnect failed: {error:#}", self.index);
            }
        } else {
            self.clock.attempts.fetch_add(1, Ordering::Relaxed);
            self.clock.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn on_received(&self, msg: &v1::controller_message::Msg) {
        let c = &self.counters;
        match msg {
            v1::controller_message::Msg::Desired(d) => {
                self.confirming
                    .store(d.confirm_timeout_ms > 0, Ordering::Relaxed);
                if let Some(p) = &d.policy {
                    let deltas = p.lists.iter().filter(|l| !l.base_digest.is_empty()).count();
                    let (deltas, full) = (deltas as u64, (p.lists.len() - deltas) as u64);
                    c.lists_delta.fetch_add(deltas, Ordering::Relaxed);
                    c.lists_full.fetch_add(full, Ordering::Relaxed);
                }
            }
            v1::controller_message::Msg::Confirm(_) => {
                c.confirmed.fetch_add(1, Ordering::Relaxed);
            }
            v1::controller_message::Msg::Revert(_) => {
                c.reverts.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    async fn on_answered(&self, applied: &v1::Applied) {
        let c = &self.counters;
        c.answered.fetch_add(1, Ordering::Relaxed);
        if applied.need_full {
            c.need_full.fetch_add(1, Ordering::Relaxed);
        } else if !applied.ok {
            c.failed.fetch_add(1, Ordering::Relaxed);
        }
        // The agent closes the session after an applied revision under a deadline and
        // comes back at once to be confirmed.
        if applied.ok && self.confirming.load(Ordering::Relaxed) {
            self.reopening_for_confirm.store(true, Ordering::Relaxed);
        }
    }
}

/// Answers `VerifyNow` with the agent's own readback against its last-known-good.
pub(super) struct VerifyAnswer {
    pub(super) agent: Agent,
    pub(super) counters: Arc<Counters>,
}

#[tonic::async_trait]
impl Companion for VerifyAnswer {
    async fn on_message(
        &self,
        msg: &v1::controller_message::Msg,
        tx: &mpsc::Sender<v1::AgentMessage>,
    ) {
        let v1::controller_message::Msg::Verify(v) = msg else {
            return;
        };
        let report = match self.agent.verify() {
            Ok(r) => v1::DriftReport {
                revision: r.revision.unwrap_or(0),
                in_sync: r.status == VerifyStatus::InSync,
                expected_hash: r.expected_hash.map(|h| h.0).unwrap_or_default(),
                kernel_hash: r.actual_hash.map(|h| h.0).unwrap_or_default(),
                diff: r.diff,
                trigger: "request".into(),
                request_id: v.request_id,
                ..Default::default()
            },
            Err(e) => v1::DriftReport {
                diff: vec![format!("cannot verify the kernel: {e}")],
                trigger: "request".into(),
                request_id: v.request_id,
                ..Default::default()
            },
        };
        let msg = v1::AgentMessage {
            msg: Some(v1::agent_message::Msg::Drift(report)),
        };
        if tx.send(msg).await.is_ok() {
            self.counters.verified.fetch_add(1, Ordering::Relaxed);
        }
    }
}
