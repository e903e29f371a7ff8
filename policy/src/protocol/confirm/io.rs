//! What goes into the commit-confirm machine ([`Event`]) and what comes out ([`Action`],
//! [`Note`]).

use super::{PendingConfirm, Previous, RevertedReport};

/// A revert being carried out; the driver turns it into the event of its outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Revert {
    /// The unconfirmed revision being reverted.
    pub revision: u64,
    pub reason: String,
    pub restored_revision: u64,
}

impl Revert {
    /// The revert succeeded; `hash` is the kernel's hash after it (empty: table removed).
    pub fn done(self, hash: String) -> Event {
        Event::Reverted(RevertedReport {
            revision: self.revision,
            restored_revision: self.restored_revision,
            reason: self.reason,
            hash,
        })
    }

    /// The revert failed (the unconfirmed ruleset stays: never open on error).
    pub fn failed(self) -> Event {
        Event::RevertFailed {
            revision: self.revision,
        }
    }
}

/// What happened, as the driver saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A `Desired` under a deadline is about to be applied. `in_force` is the current
    /// last-known-good: what to go back to when nothing else is pending.
    Desired {
        revision: u64,
        timeout_ms: u64,
        in_force: Option<Previous>,
    },
    /// A `Desired` without deadline is about to be applied: it supersedes what is pending.
    Unconfirmed { revision: u64 },
    /// The revision was applied and verified.
    Applied { revision: u64 },
    /// The revision was not applied (record not durable, or the apply failed).
    NotApplied { revision: u64 },
    /// `Confirm` from the controller.
    Confirm { revision: u64 },
    /// `Revert` from the controller.
    Revert { revision: u64, reason: String },
    /// Time passed (the armed timer fired).
    Tick,
    /// A revert succeeded ([`Revert::done`]).
    Reverted(RevertedReport),
    /// A revert failed ([`Revert::failed`]).
    RevertFailed { revision: u64 },
    /// A session to the controller opened.
    Connected,
    /// The `Reverted` report of `revision` reached the session.
    ReportSent { revision: u64 },
}

/// What the driver does, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Write `pending-confirm.json` durably. After [`Event::Desired`] the revision may be
    /// applied only if this succeeded (else feed [`Event::NotApplied`]).
    Persist(PendingConfirm),
    /// Remove `pending-confirm.json`.
    RemoveRecord,
    /// Re-apply the previous confirmed policy; then feed [`Revert::done`] or
    /// [`Revert::failed`].
    ApplyPrevious { previous: Previous, revert: Revert },
    /// Remove our table (nothing was confirmed before); then feed the outcome as above.
    RemoveTable { revert: Revert },
    /// Write `reverted.json` durably (if it cannot be, the report is kept in memory).
    KeepReport(RevertedReport),
    /// Send the `Reverted` report if a session is up; feed [`Event::ReportSent`] if sent.
    SendReport(RevertedReport),
    /// Remove `reverted.json`.
    ForgetReport,
    /// Feed [`Event::Tick`] at this wall-clock time (replaces the timer armed before).
    ArmTimer { at_unix_ms: i64 },
    /// Something worth a log line.
    Log(Note),
}

/// The log lines of the exchange (the driver picks the level).
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    /// Applying `revision` under commit-confirmed.
    Pending {
        revision: u64,
        deadline_unix_ms: i64,
    },
    /// A pending revision found after a restart.
    Resumed {
        revision: u64,
        deadline_unix_ms: i64,
    },
    Confirmed {
        revision: u64,
    },
    /// A revision without deadline replaced the pending one.
    Superseded {
        pending: u64,
        by: u64,
    },
    Reverting {
        revision: u64,
        reason: String,
    },
    RevertRetry {
        revision: u64,
        at_unix_ms: i64,
    },
    /// A `Revert` during the apply: carried out when the apply finished.
    RevertDeferred {
        revision: u64,
    },
    /// The apply of `failed` changed nothing: `revision` is pending again.
    Restored {
        revision: u64,
        failed: u64,
    },
    /// An event that changes nothing, and why.
    Ignored {
        event: &'static str,
        revision: u64,
        why: &'static str,
    },
}
