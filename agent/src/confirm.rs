//! Commit-confirmed on the agent.
//!
//! A `Desired` with a confirm deadline is recorded *before* it is applied
//! (`<state>/pending-confirm.json`: the revision, the wall-clock deadline and the policy
//! and revision to go back to). After `Applied` the session reconnects, so the stream to
//! the controller is re-established through the new rules; a `Confirm` for the revision
//! clears the record. If the deadline passes first (or the controller sends `Revert`),
//! the previous policy is re-applied by the agent on its own and a `Reverted` report is
//! kept in `<state>/reverted.json` until it could be sent. Both files survive a restart,
//! so an agent restarted inside the confirm window still reverts on time. Both are written
//! like last-known-good ([`crate::durable`]); when `pending-confirm.json` cannot be made
//! durable the revision is not applied (reported as a failed apply).
//! Never opens the host: with no previous policy the revert removes only our table,
//! which is exactly the state before the unconfirmed revision.

use crate::Agent;
use crate::durable::{self, DurableError};
use crate::session::Uplink;
use portcullis_policy::HostPolicy;
use portcullis_proto::v1;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};

const PENDING_FILE: &str = "pending-confirm.json";
const REVERTED_FILE: &str = "reverted.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Previous {
    revision: u64,
    policy: HostPolicy,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    revision: u64,
    deadline_unix_ms: i64,
    previous: Option<Previous>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RevertedRecord {
    revision: u64,
    restored_revision: u64,
    reason: String,
    hash: String,
}

/// The pending confirmation of this agent (at most one).
#[derive(Debug)]
pub struct Confirmer {
    dir: PathBuf,
    pending: Mutex<Option<Pending>>,
    changed: Notify,
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

fn remove(path: &Path) {
    if let Err(e) = durable::remove(path) {
        tracing::error!(error = %e, "cannot remove the confirm record");
    }
}

impl Confirmer {
    /// Load what a previous run left (pending confirmation, unsent revert report).
    pub fn open(state_dir: &Path) -> Self {
        let pending = read::<Pending>(&state_dir.join(PENDING_FILE));
        if let Some(p) = &pending {
            tracing::warn!(
                revision = p.revision,
                deadline_unix_ms = p.deadline_unix_ms,
                "an unconfirmed revision is pending from before the restart"
            );
        }
        Self {
            dir: state_dir.to_path_buf(),
            pending: Mutex::new(pending),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `p` durably, then in memory. On error nothing changed in memory.
    fn set(&self, p: Option<Pending>) -> Result<(), ConfirmError> {
        let path = self.dir.join(PENDING_FILE);
        match &p {
            Some(p) => {
                std::fs::create_dir_all(&self.dir).map_err(|source| ConfirmError::Dir {
                    dir: self.dir.clone(),
                    source,
                })?;
                write(&path, p)?;
            }
            None => remove(&path),
        }
        *self.lock() = p;
        self.changed.notify_one();
        Ok(())
    }

    /// The revision waiting for `Confirm`, if any.
    pub fn awaiting(&self) -> Option<u64> {
        self.lock().as_ref().map(|p| p.revision)
    }

    /// Before applying `revision` under a deadline: remember what to go back to (the last
    /// *confirmed* policy when one is already pending). The record is durable when this
    /// returns `Ok`, so a crash at any point of the apply that follows still reverts; on
    /// error the caller must not apply.
    pub fn begin(&self, agent: &Agent, revision: u64, timeout_ms: u64) -> Result<(), ConfirmError> {
        let previous = match self.lock().as_ref() {
            Some(p) => p.previous.clone(),
            None => agent.last_known_good().ok().flatten().map(|l| Previous {
                revision: l.revision,
                policy: l.policy,
            }),
        };
        let timeout = i64::try_from(timeout_ms).unwrap_or(i64::MAX);
        self.set(Some(Pending {
            revision,
            deadline_unix_ms: crate::session::now_ms().saturating_add(timeout),
            previous,
        }))?;
        tracing::info!(revision, timeout_ms, "applying under commit-confirmed");
        Ok(())
    }

    /// The apply failed (nothing changed) or a revision without deadline superseded it.
    pub fn cancel(&self) {
        if self.awaiting().is_some() {
            self.clear();
        }
    }

    /// No revision pending any more (removing a record cannot fail in a way that matters:
    /// a stale record reverts to the policy in force, which is the confirmed one).
    fn clear(&self) {
        let _ = self.set(None);
    }

    /// `Confirm` from the controller.
    pub fn confirm(&self, revision: u64) {
        if self.awaiting() == Some(revision) {
            self.clear();
            tracing::info!(revision, "revision confirmed by the controller");
        } else {
            tracing::debug!(revision, "Confirm for a revision not pending; ignored");
        }
    }

    /// Go back to the previous policy now (deadline passed, or `Revert`).
    pub async fn revert(&self, agent: &Agent, revision: u64, reason: &str, uplink: &Uplink) {
        let Some(p) = self.lock().clone().filter(|p| p.revision == revision) else {
            return;
        };
        tracing::warn!(revision, %reason, "reverting the unconfirmed revision");
        let (restored, hash) = match &p.previous {
            Some(prev) => match agent.apply_policy(&prev.policy, prev.revision).await {
                Ok(r) => (prev.revision, r.hash.0),
                Err(e) => {
                    // The new ruleset stays (never open on error); keep trying at next tick.
                    tracing::error!(error = %e, "revert failed; retrying");
                    return;
                }
            },
            None => {
                let a = agent.clone();
                match tokio::task::spawn_blocking(move || a.remove(true)).await {
                    Ok(Ok(_)) => (0, String::new()),
                    other => {
                        tracing::error!(result = ?other.map(|r| r.map_err(|e| e.to_string())), "revert (remove) failed; retrying");
                        return;
                    }
                }
            }
        };
        let record = RevertedRecord {
            revision,
            restored_revision: restored,
            reason: reason.to_string(),
            hash,
        };
        // The revert is done; if its report cannot be kept it is still sent now (and only
        // lost if no session is up either).
        let kept = write(&self.dir.join(REVERTED_FILE), &record)
            .inspect_err(
                |e| tracing::error!(error = %e, "the Reverted report is kept in memory only"),
            )
            .is_ok();
        self.clear();
        let tx = uplink.borrow().clone();
        match (tx, kept) {
            (Some(tx), true) => self.flush(&tx).await,
            (Some(tx), false) => {
                let _ = tx.send(reverted_message(record)).await;
            }
            (None, _) => {}
        }
    }

    /// Send a `Reverted` report not sent yet (at connect, or right after a revert).
    pub async fn flush(&self, tx: &mpsc::Sender<v1::AgentMessage>) {
        let path = self.dir.join(REVERTED_FILE);
        let Some(r) = read::<RevertedRecord>(&path) else {
            return;
        };
        if tx.send(reverted_message(r)).await.is_ok() {
            remove(&path);
        }
    }

    /// Revert at the deadline, forever (spawned by the session's `run`).
    pub async fn watch(self: Arc<Self>, agent: Agent, uplink: Uplink) {
        loop {
            let next = self
                .lock()
                .as_ref()
                .map(|p| (p.revision, p.deadline_unix_ms));
            match next {
                None => self.changed.notified().await,
                Some((revision, deadline)) => {
                    let left = deadline.saturating_sub(crate::session::now_ms());
                    if left <= 0 {
                        let reason = "no Confirm from the controller before the deadline \
                                      (could the agent reach it through the new rules?)";
                        self.revert(&agent, revision, reason, &uplink).await;
                        // A failed revert is retried shortly.
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                    let wait = Duration::from_millis(u64::try_from(left).unwrap_or(0));
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = self.changed.notified() => {}
                    }
                }
            }
        }
    }
}

fn reverted_message(r: RevertedRecord) -> v1::AgentMessage {
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
mod tests {
    use super::*;
    use crate::{FakeDataplane, StateDir};
    use portcullis_policy::{AllowEntry, Facts, PortRange, Proto};

    fn policy(port: u16) -> HostPolicy {
        HostPolicy {
            allow: vec![AllowEntry {
                proto: Proto::Tcp,
                ports: PortRange::single(port),
                from: Vec::new(),
                lists: Vec::new(),
                label: format!("{port}/tcp"),
            }],
            ..HostPolicy::default()
        }
    }

    fn agent(dir: &Path) -> Agent {
        Agent::new(Arc::new(FakeDataplane::new()), StateDir::new(dir))
    }

    #[test]
    fn a_record_that_cannot_be_written_refuses_the_apply() {
        let dir = tempfile::tempdir().unwrap();
        let agent = agent(dir.path());
        let confirmer = Confirmer::open(dir.path());
        std::fs::create_dir(durable::tmp_path(&dir.path().join(PENDING_FILE))).unwrap();
        let err = confirmer.begin(&agent, 2, 5_000).unwrap_err();
        assert!(
            err.to_string().contains("pending-confirm.json.tmp"),
            "{err}"
        );
        assert_eq!(confirmer.awaiting(), None);
    }

    #[test]
    fn a_crash_after_the_apply_finds_the_record_and_reverts() {
        let dir = tempfile::tempdir().unwrap();
        let agent = agent(dir.path());
        agent.reconcile(&policy(25), &Facts::default(), 1).unwrap();
        {
            let confirmer = Confirmer::open(dir.path());
            confirmer.begin(&agent, 2, 0).unwrap();
            agent.reconcile(&policy(80), &Facts::default(), 2).unwrap();
            // Crash: the process ends here, nothing else runs.
        }
        assert_eq!(agent.last_known_good().unwrap().unwrap().revision, 2);
        let restarted = Confirmer::open(dir.path());
        assert_eq!(restarted.awaiting(), Some(2));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (_link, uplink) = tokio::sync::watch::channel(None);
        runtime.block_on(restarted.revert(&agent, 2, "deadline", &uplink));
        assert_eq!(restarted.awaiting(), None);
        let lkg = agent.last_known_good().unwrap().unwrap();
        assert_eq!((lkg.revision, lkg.policy), (1, policy(25)));
        let report: RevertedRecord = read(&dir.path().join(REVERTED_FILE)).unwrap();
        assert_eq!((report.revision, report.restored_revision), (2, 1));
        assert!(!dir.path().join(PENDING_FILE).exists());
    }
}
