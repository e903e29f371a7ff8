//! Commit-confirmed on the agent: the driver of
//! [`portcullis_policy::protocol::confirm`], which decides everything (what to record,
//! when to revert, to what, what to report). This module only turns I/O into its events
//! and its actions into I/O:
//!
//! - the records: `<state>/pending-confirm.json` (the revision, the wall-clock deadline
//!   and the policy and revision to go back to) and `<state>/reverted.json` (a `Reverted`
//!   report not sent yet), both written like last-known-good ([`crate::durable`]); when
//!   `pending-confirm.json` cannot be made durable the revision is not applied (reported
//!   as a failed apply). Both survive a restart, so an agent restarted inside the confirm
//!   window still reverts on time;
//! - the reverts, through [`Agent`] (re-apply the previous policy, or remove only our
//!   table when there was none: never opens the host);
//! - the `Reverted` reports, through the [`Uplink`];
//! - the timer: [`Confirmer::watch`] feeds `Tick` when the armed time comes.
//!
//! Events are handled one chain at a time (a revert never runs concurrently with the
//! handling of a `Desired`); sends happen outside that, so a stalled session does not
//! hold up the exchange.

use crate::Agent;
use crate::clock::now_ms;
use crate::durable::{self, DurableError};
use crate::uplink::Uplink;
use portcullis_policy::protocol::confirm::{
    Action, CommitConfirm, Event, Note, PendingConfirm, Previous, RevertedReport,
};
use portcullis_proto::v1;
use serde::Serialize;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;

const PENDING_FILE: &str = "pending-confirm.json";
const REVERTED_FILE: &str = "reverted.json";

/// The pending confirmation of this agent (at most one) and its unsent revert report.
#[derive(Debug)]
pub struct Confirmer {
    dir: PathBuf,
    agent: Agent,
    uplink: Uplink,
    machine: Mutex<CommitConfirm>,
    /// When to feed `Tick` (the last `ArmTimer`).
    timer: Mutex<Option<i64>>,
    changed: Notify,
    /// One event chain at a time (held across a revert).
    serial: tokio::sync::Mutex<()>,
}

fn read<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text)
        .inspect_err(
            |e| tracing::error!(path = %path.display(), error = %e, "unreadable record ignored"),
        )
        .ok()
}

/// A confirm record could not be made durable.
#[derive(Debug, thiserror::Error)]
pub enum ConfirmError {
    #[error("cannot persist the commit-confirm record: {0}")]
    Durable(#[from] DurableError),
    #[error("cannot create the state dir {}: {source}", dir.display())]
    Dir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Written like last-known-good ([`crate::durable::write_atomic`]).
fn write<T: Serialize>(path: &Path, value: &T) -> Result<(), ConfirmError> {
    let body = serde_json::to_vec_pretty(value).map_err(|e| DurableError {
        path: path.to_path_buf(),
        action: "serialize",
        source: std::io::Error::other(e),
    })?;
    Ok(durable::write_atomic(path, &body, 0o600)?)
}

/// Removing a record cannot fail in a way that matters: a stale `pending-confirm.json`
/// reverts to the policy in force, which is the confirmed one.
fn remove(path: &Path) {
    if let Err(e) = durable::remove(path) {
        tracing::error!(error = %e, "cannot remove the confirm record");
    }
}

impl Confirmer {
    /// Load what a previous run left (pending confirmation, unsent revert report) from
    /// the agent's state dir; reports go out through `uplink`.
    pub fn open(agent: &Agent, uplink: Uplink) -> Self {
        let dir = agent.state().path().to_path_buf();
        let pending = read::<PendingConfirm>(&dir.join(PENDING_FILE));
        let unsent = read::<RevertedReport>(&dir.join(REVERTED_FILE));
        let (machine, actions) = CommitConfirm::resume(pending, unsent);
        let confirmer = Self {
            dir,
            agent: agent.clone(),
            uplink,
            machine: Mutex::new(machine),
            timer: Mutex::new(None),
            changed: Notify::new(),
            serial: tokio::sync::Mutex::new(()),
        };
        for action in actions {
            confirmer.bookkeep(action);
        }
        confirmer
    }

    fn lock(&self) -> MutexGuard<'_, CommitConfirm> {
        self.machine.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn timer(&self) -> MutexGuard<'_, Option<i64>> {
        self.timer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The revision waiting for `Confirm` (or for its revert), if any.
    pub fn awaiting(&self) -> Option<u64> {
        self.lock().awaiting()
    }

    /// Before applying `revision` under a deadline. The record is durable when this
    /// returns `Ok`, so a crash at any point of the apply that follows still reverts; on
    /// error the caller must not apply (and nothing is pending any more).
    pub async fn begin(&self, revision: u64, timeout_ms: u64) -> Result<(), ConfirmError> {
        self.drive(|| {
            // What to go back to when nothing else is pending (else the machine keeps
            // the last confirmed one); read under the exchange's lock, after any revert.
            let in_force = match self.awaiting() {
                Some(_) => None,
                None => self
                    .agent
                    .last_known_good()
                    .ok()
                    .flatten()
                    .map(|l| Previous {
                        revision: l.revision,
                        policy: l.policy,
                    }),
            };
            Event::Desired {
                revision,
                timeout_ms,
                in_force,
            }
        })
        .await
    }

    /// The apply of a revision finished (`ok`: applied and verified; else nothing
    /// changed, and the revision pending before it, if any, is pending again).
    pub async fn applied(&self, revision: u64, ok: bool) {
        let event = if ok {
            Event::Applied { revision }
        } else {
            Event::NotApplied { revision }
        };
        self.feed(event).await;
    }

    /// A revision without deadline is about to be applied: it supersedes the pending one
    /// once applied ([`Confirmer::applied`]).
    pub async fn unconfirmed(&self, revision: u64) {
        self.feed(Event::Unconfirmed { revision }).await;
    }

    /// `Confirm` from the controller.
    pub async fn confirm(&self, revision: u64) {
        self.feed(Event::Confirm { revision }).await;
    }

    /// `Revert` from the controller: go back to the previous policy now.
    pub async fn revert(&self, revision: u64, reason: &str) {
        let reason = reason.to_owned();
        self.feed(Event::Revert { revision, reason }).await;
    }

    /// A session opened: send a `Reverted` report not sent yet.
    pub async fn connected(&self) {
        self.feed(Event::Connected).await;
    }

    /// Feed `Tick` at the armed time, forever (spawned by the session's `run`).
    pub async fn watch(self: Arc<Self>) {
        loop {
            let armed = *self.timer();
            let Some(at) = armed else {
                self.changed.notified().await;
                continue;
            };
            let left = at.saturating_sub(now_ms());
            if left > 0 {
                let wait = Duration::from_millis(u64::try_from(left).unwrap_or(u64::MAX));
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = self.changed.notified() => {}
                }
                continue;
            }
            {
                let mut timer = self.timer();
                if *timer == Some(at) {
                    *timer = None;
                }
            }
            self.feed(Event::Tick).await;
        }
    }

    /// An event whose chain cannot fail in a way the caller handles (only a `Desired`,
    /// through [`Confirmer::begin`], persists a record).
    async fn feed(&self, event: Event) {
        let _ = self.drive(move || event).await;
    }

    /// Handles the event `first` makes (under the exchange's lock) and every event its
    /// actions lead to; sends happen after the lock is released. The error: the record of
    /// a `Desired` could not be made durable.
    async fn drive(&self, first: impl FnOnce() -> Event) -> Result<(), ConfirmError> {
        let mut result = Ok(());
        let mut events = {
            let _serial = self.serial.lock().await;
            self.run(VecDeque::from([first()]), &mut result).await
        };
        while !events.is_empty() {
            events = {
                let _serial = self.serial.lock().await;
                self.run(events, &mut result).await
            };
        }
        result
    }

    /// Runs the queue of events; returns the events of the reports sent meanwhile.
    async fn run(
        &self,
        mut queue: VecDeque<Event>,
        result: &mut Result<(), ConfirmError>,
    ) -> VecDeque<Event> {
        let mut sends = Vec::new();
        while let Some(event) = queue.pop_front() {
            let actions = self.lock().handle(event, now_ms());
            for action in actions {
                match action {
                    Action::Persist(p) => {
                        if let Err(e) = self.persist(&p) {
                            // Not applied: the rest of this event's actions is moot.
                            queue.push_back(Event::NotApplied {
                                revision: p.revision,
                            });
                            *result = Err(e);
                            break;
                        }
                    }
                    Action::ApplyPrevious { previous, revert } => {
                        match self
                            .agent
                            .apply_policy(&previous.policy, previous.revision)
                            .await
                        {
                            Ok(r) => queue.push_back(revert.done(r.hash.0)),
                            Err(e) => {
                                // The new ruleset stays (never open on error).
                                tracing::error!(error = %e, revision = revert.revision,
                                    "revert failed; retrying");
                                queue.push_back(revert.failed());
                            }
                        }
                    }
                    Action::RemoveTable { revert } => {
                        let agent = self.agent.clone();
                        match tokio::task::spawn_blocking(move || agent.remove(true)).await {
                            Ok(Ok(_)) => queue.push_back(revert.done(String::new())),
                            other => {
                                tracing::error!(result = ?other.map(|r| r.map_err(|e| e.to_string())),
                                    revision = revert.revision, "revert (remove) failed; retrying");
                                queue.push_back(revert.failed());
                            }
                        }
                    }
                    Action::SendReport(r) => sends.push(r),
                    other => self.bookkeep(other),
                }
            }
        }
        let mut sent = VecDeque::new();
        for report in sends {
            let revision = report.revision;
            if self.send(report).await {
                sent.push_back(Event::ReportSent { revision });
            }
        }
        sent
    }

    /// The actions that only touch the records, the timer and the log.
    fn bookkeep(&self, action: Action) {
        match action {
            Action::RemoveRecord => remove(&self.dir.join(PENDING_FILE)),
            Action::KeepReport(r) => {
                // The revert is done; if its report cannot be kept it is still sent (and
                // kept in memory until it was).
                if let Err(e) = write(&self.dir.join(REVERTED_FILE), &r) {
                    tracing::error!(error = %e, "the Reverted report is kept in memory only");
                }
            }
            Action::ForgetReport => remove(&self.dir.join(REVERTED_FILE)),
            Action::ArmTimer { at_unix_ms } => {
                *self.timer() = Some(at_unix_ms);
                self.changed.notify_one();
            }
            Action::Log(note) => log(&note),
            Action::Persist(_)
            | Action::ApplyPrevious { .. }
            | Action::RemoveTable { .. }
            | Action::SendReport(_) => {
                tracing::error!(?action, "commit-confirm action out of place; ignored");
            }
        }
    }

    fn persist(&self, p: &PendingConfirm) -> Result<(), ConfirmError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| ConfirmError::Dir {
            dir: self.dir.clone(),
            source,
        })?;
        write(&self.dir.join(PENDING_FILE), p)
    }

    /// Sends `report` if a session is up; `true` when it reached the session.
    async fn send(&self, report: RevertedReport) -> bool {
        let tx = self.uplink.borrow().clone();
        match tx {
            Some(tx) => tx.send(reverted_message(report)).await.is_ok(),
            None => false,
        }
    }
}

fn log(note: &Note) {
    match note {
        Note::Pending {
            revision,
            deadline_unix_ms,
        } => tracing::info!(
            revision,
            deadline_unix_ms,
            "applying under commit-confirmed"
        ),
        Note::Resumed {
            revision,
            deadline_unix_ms,
        } => tracing::warn!(
            revision,
            deadline_unix_ms,
            "an unconfirmed revision is pending from before the restart"
        ),
        Note::Confirmed { revision } => {
            tracing::info!(revision, "revision confirmed by the controller");
        }
        Note::Superseded { pending, by } => tracing::info!(
            pending,
            by,
            "a revision without deadline supersedes the unconfirmed one"
        ),
        Note::Reverting { revision, reason } => {
            tracing::warn!(revision, %reason, "reverting the unconfirmed revision");
        }
        Note::RevertRetry {
            revision,
            at_unix_ms,
        } => tracing::warn!(revision, at_unix_ms, "the revert is retried"),
        Note::RevertDeferred { revision } => {
            tracing::info!(
                revision,
                "Revert received during the apply; reverting after it"
            );
        }
        Note::Restored { revision, failed } => tracing::warn!(
            revision,
            failed,
            "the revision applied over the pending one was not applied: still pending"
        ),
        Note::Ignored {
            event,
            revision,
            why,
        } => tracing::debug!(event, revision, why, "commit-confirm event ignored"),
    }
}

fn reverted_message(r: RevertedReport) -> v1::AgentMessage {
    v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::Reverted(v1::Reverted {
            revision: r.revision,
            restored_revision: r.restored_revision,
            reason: r.reason,
            hash: r.hash,
        })),
    }
}

/// Aborts the watcher task when the session's `run` returns.
#[derive(Debug)]
pub struct WatchGuard(pub tokio::task::JoinHandle<()>);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
