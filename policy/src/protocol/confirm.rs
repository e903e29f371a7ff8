//! The agent's side of commit-confirmed, as a state machine without I/O.
//!
//! A `Desired` under a deadline is recorded ([`Action::Persist`]) *before* it is applied;
//! once applied the session reconnects through the new rules and a `Confirm` for the
//! revision clears the record. If the deadline passes first, or the controller sends
//! `Revert`, the agent goes back on its own to the last *confirmed* revision (or removes
//! its table when there was none, which is exactly the state before) and keeps a
//! [`RevertedReport`] until it was sent. The deadline is wall-clock unix milliseconds
//! because it survives a restart: [`CommitConfirm::resume`] rebuilds the machine from the
//! persisted [`PendingConfirm`].
//!
//! Decisions a reader would ask about:
//! - **The deadline is exclusive**: at `now_ms == deadline_unix_ms` the revision is no
//!   longer confirmable; a `Confirm` handled then is ignored and the next [`Event::Tick`]
//!   reverts.
//! - **Nothing is reverted while an apply is in flight** ([`Phase::Applying`]): a deadline
//!   that passes or a `Revert` that arrives meanwhile is acted on at [`Event::Applied`]
//!   (a late `Applied`), never concurrently with the apply.
//! - A `Confirm` before [`Event::Applied`] proves nothing (the rules it should have come
//!   through are not in force yet) and is ignored.
//! - A newer `Desired` while one is pending goes back, if it times out, to the last
//!   confirmed revision, not to the unconfirmed one it replaces.
//! - A revision that was not applied (its record could not be made durable, or the apply
//!   failed) changed nothing in the kernel: the revision pending before it, if any, is
//!   pending again with its own deadline ([`Note::Restored`]), else the record goes.
//! - A revision without deadline supersedes the pending one once it is applied (the
//!   record goes at its `Applied`); until then, and if its apply fails, the pending one
//!   stands ([`Phase::Superseding`]).
//! - A failed revert keeps the record and is retried [`REVERT_RETRY_MS`] later.
//!
//! The serde shapes of [`PendingConfirm`] and [`RevertedReport`] are the on-disk format of
//! `pending-confirm.json` and `reverted.json`: an upgraded agent reads what the previous
//! version wrote, so they do not change.

mod io;
mod record;

pub use io::{Action, Event, Note, Revert};
pub use record::{PendingConfirm, Previous, RevertedReport};

/// How long after a failed revert it is tried again.
pub const REVERT_RETRY_MS: i64 = 500;

/// The `reason` of a revert at the deadline.
pub const DEADLINE_REASON: &str = "no Confirm from the controller before the deadline \
                                   (could the agent reach it through the new rules?)";

/// The action that reverts `pending` (re-apply its previous revision, or remove our table).
fn revert_action(pending: &PendingConfirm, reason: &str) -> Action {
    let revert = Revert {
        revision: pending.revision,
        reason: reason.to_owned(),
        restored_revision: pending.previous.as_ref().map_or(0, |p| p.revision),
    };
    match &pending.previous {
        Some(previous) => Action::ApplyPrevious {
            previous: previous.clone(),
            revert,
        },
        None => Action::RemoveTable { revert },
    }
}

/// Where the pending revision is.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// No revision waits for `Confirm`.
    Idle,
    /// Recorded; the apply is in flight. `revert` is a `Revert` reason received meanwhile;
    /// `replaced` the phase of the revision pending before, back if this apply fails.
    Applying {
        pending: PendingConfirm,
        revert: Option<String>,
        replaced: Option<Box<Phase>>,
    },
    /// A revision without deadline is being applied over the pending one (`replaced`),
    /// which it supersedes when applied and which stands if the apply fails.
    Superseding { revision: u64, replaced: Box<Phase> },
    /// Applied (or found after a restart): waiting for `Confirm` until the deadline.
    AwaitingConfirm(PendingConfirm),
    /// The revert is in flight.
    Reverting {
        pending: PendingConfirm,
        reason: String,
    },
    /// A revert to do at `at_unix_ms` (a retry, or one deferred until the apply finished).
    RevertDue {
        pending: PendingConfirm,
        reason: String,
        at_unix_ms: i64,
    },
}

/// The commit-confirm exchange of one agent (at most one revision pending) and the
/// `Reverted` report not sent yet.
#[derive(Debug, Clone, PartialEq)]
pub struct CommitConfirm {
    phase: Phase,
    unsent: Option<RevertedReport>,
}

impl Default for CommitConfirm {
    fn default() -> Self {
        Self::new()
    }
}

impl CommitConfirm {
    /// Nothing pending, nothing to report.
    pub fn new() -> Self {
        Self {
            phase: Phase::Idle,
            unsent: None,
        }
    }

    /// After a restart, from the persisted records. A pending revision waits for its
    /// `Confirm` again (whether its apply finished or not, reverting is safe).
    pub fn resume(
        pending: Option<PendingConfirm>,
        unsent: Option<RevertedReport>,
    ) -> (Self, Vec<Action>) {
        let mut actions = Vec::new();
        let phase = match pending {
            None => Phase::Idle,
            Some(p) => {
                actions.push(Action::Log(Note::Resumed {
                    revision: p.revision,
                    deadline_unix_ms: p.deadline_unix_ms,
                }));
                actions.push(Action::ArmTimer {
                    at_unix_ms: p.deadline_unix_ms,
                });
                Phase::AwaitingConfirm(p)
            }
        };
        (Self { phase, unsent }, actions)
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// The pending record, in any phase but [`Phase::Idle`].
    pub fn pending(&self) -> Option<&PendingConfirm> {
        Self::pending_of(&self.phase)
    }

    fn pending_of(phase: &Phase) -> Option<&PendingConfirm> {
        match phase {
            Phase::Idle => None,
            Phase::Superseding { replaced, .. } => Self::pending_of(replaced),
            Phase::Applying { pending, .. }
            | Phase::AwaitingConfirm(pending)
            | Phase::Reverting { pending, .. }
            | Phase::RevertDue { pending, .. } => Some(pending),
        }
    }

    /// The revision waiting for `Confirm` (or for its revert), if any.
    pub fn awaiting(&self) -> Option<u64> {
        self.pending().map(|p| p.revision)
    }

    /// The `Reverted` report not sent yet.
    pub fn unsent(&self) -> Option<&RevertedReport> {
        self.unsent.as_ref()
    }

    pub fn handle(&mut self, event: Event, now_ms: i64) -> Vec<Action> {
        match event {
            Event::Desired {
                revision,
                timeout_ms,
                in_force,
            } => self.on_desired(revision, timeout_ms, in_force, now_ms),
            Event::Unconfirmed { revision } => self.on_unconfirmed(revision),
            Event::Applied { revision } => self.on_applied(revision, now_ms),
            Event::NotApplied { revision } => self.on_not_applied(revision),
            Event::Confirm { revision } => self.on_confirm(revision, now_ms),
            Event::Revert { revision, reason } => self.on_revert(revision, reason),
            Event::Tick => self.on_tick(now_ms),
            Event::Reverted(report) => self.on_reverted(report),
            Event::RevertFailed { revision } => self.on_revert_failed(revision, now_ms),
            Event::Connected => self
                .unsent
                .iter()
                .cloned()
                .map(Action::SendReport)
                .collect(),
            Event::ReportSent { revision } => self.on_report_sent(revision),
        }
    }

    fn on_desired(
        &mut self,
        revision: u64,
        timeout_ms: u64,
        in_force: Option<Previous>,
        now_ms: i64,
    ) -> Vec<Action> {
        // Back to the last confirmed revision, not to an unconfirmed one being replaced.
        let previous = match self.pending() {
            Some(p) => p.previous.clone(),
            None => in_force,
        };
        let replaced = self.standing();
        let timeout = i64::try_from(timeout_ms).unwrap_or(i64::MAX);
        let pending = PendingConfirm {
            revision,
            deadline_unix_ms: now_ms.saturating_add(timeout),
            previous,
        };
        let actions = vec![
            Action::Persist(pending.clone()),
            Action::ArmTimer {
                at_unix_ms: pending.deadline_unix_ms,
            },
            Action::Log(Note::Pending {
                revision,
                deadline_unix_ms: pending.deadline_unix_ms,
            }),
        ];
        self.phase = Phase::Applying {
            pending,
            revert: None,
            replaced,
        };
        actions
    }

    /// The phase of a revision pending with no apply or revert in flight (what a new
    /// apply replaces, and what stands again if that apply fails).
    fn standing(&self) -> Option<Box<Phase>> {
        match &self.phase {
            p @ (Phase::AwaitingConfirm(_) | Phase::RevertDue { .. }) => Some(Box::new(p.clone())),
            Phase::Superseding { replaced, .. } => Some(replaced.clone()),
            Phase::Idle | Phase::Applying { .. } | Phase::Reverting { .. } => None,
        }
    }

    /// Back to `replaced` after an apply that changed nothing.
    fn restore(&mut self, replaced: Phase, failed: u64, persist: bool) -> Vec<Action> {
        let mut actions = Vec::new();
        let (revision, at_unix_ms) = match &replaced {
            Phase::AwaitingConfirm(p) => (p.revision, p.deadline_unix_ms),
            Phase::RevertDue {
                pending,
                at_unix_ms,
                ..
            } => (pending.revision, *at_unix_ms),
            _ => unreachable!("only a standing phase is restored"),
        };
        if persist && let Some(p) = Self::pending_of(&replaced) {
            actions.push(Action::Persist(p.clone()));
        }
        actions.push(Action::ArmTimer { at_unix_ms });
        actions.push(Action::Log(Note::Restored { revision, failed }));
        self.phase = replaced;
        actions
    }

    fn on_unconfirmed(&mut self, revision: u64) -> Vec<Action> {
        if let Some(replaced) = self.standing() {
            self.phase = Phase::Superseding { revision, replaced };
            return Vec::new();
        }
        match self.awaiting() {
            None => Vec::new(),
            Some(pending) => {
                self.phase = Phase::Idle;
                vec![
                    Action::RemoveRecord,
                    Action::Log(Note::Superseded {
                        pending,
                        by: revision,
                    }),
                ]
            }
        }
    }

    fn on_applied(&mut self, revision: u64, now_ms: i64) -> Vec<Action> {
        if let Phase::Superseding {
            revision: by,
            replaced,
        } = &self.phase
            && *by == revision
        {
            let pending = Self::pending_of(replaced).map_or(0, |p| p.revision);
            self.phase = Phase::Idle;
            return vec![
                Action::RemoveRecord,
                Action::Log(Note::Superseded {
                    pending,
                    by: revision,
                }),
            ];
        }
        let Phase::Applying {
            pending, revert, ..
        } = &self.phase
        else {
            return ignored("Applied", revision, "not being applied");
        };
        if pending.revision != revision {
            return ignored("Applied", revision, "another revision is pending");
        }
        let pending = pending.clone();
        match revert.clone() {
            // A `Revert` came during the apply: do it now.
            Some(reason) => self.start_revert(pending, reason),
            None if now_ms >= pending.deadline_unix_ms => {
                self.start_revert(pending, DEADLINE_REASON.to_owned())
            }
            None => {
                self.phase = Phase::AwaitingConfirm(pending);
                Vec::new()
            }
        }
    }

    fn on_not_applied(&mut self, revision: u64) -> Vec<Action> {
        match &self.phase {
            Phase::Applying {
                pending, replaced, ..
            } if pending.revision == revision => match replaced.clone() {
                // Its record replaced the one of the revision still in force: put it back.
                Some(replaced) => self.restore(*replaced, revision, true),
                None => {
                    self.phase = Phase::Idle;
                    vec![Action::RemoveRecord]
                }
            },
            Phase::Superseding {
                revision: by,
                replaced,
            } if *by == revision => {
                let replaced = (**replaced).clone();
                self.restore(replaced, revision, false)
            }
            _ => ignored("NotApplied", revision, "not being applied"),
        }
    }

    fn on_confirm(&mut self, revision: u64, now_ms: i64) -> Vec<Action> {
        match &self.phase {
            Phase::AwaitingConfirm(p) if p.revision == revision => {
                if now_ms >= p.deadline_unix_ms {
                    return ignored("Confirm", revision, "after the deadline; reverting");
                }
                self.phase = Phase::Idle;
                vec![
                    Action::RemoveRecord,
                    Action::Log(Note::Confirmed { revision }),
                ]
            }
            Phase::Applying { pending, .. } if pending.revision == revision => {
                ignored("Confirm", revision, "before the revision was applied")
            }
            Phase::Reverting { pending, .. } | Phase::RevertDue { pending, .. }
                if pending.revision == revision =>
            {
                ignored("Confirm", revision, "already being reverted")
            }
            Phase::Superseding { .. } => ignored(
                "Confirm",
                revision,
                "a revision without deadline is being applied",
            ),
            _ => ignored("Confirm", revision, "not pending"),
        }
    }

    fn on_revert(&mut self, revision: u64, reason: String) -> Vec<Action> {
        match &mut self.phase {
            Phase::Applying {
                pending, revert, ..
            } if pending.revision == revision => {
                *revert = Some(reason);
                vec![Action::Log(Note::RevertDeferred { revision })]
            }
            Phase::AwaitingConfirm(p) | Phase::RevertDue { pending: p, .. }
                if p.revision == revision =>
            {
                let p = p.clone();
                self.start_revert(p, reason)
            }
            Phase::Reverting { pending, .. } if pending.revision == revision => {
                ignored("Revert", revision, "already being reverted")
            }
            Phase::Superseding { .. } => ignored(
                "Revert",
                revision,
                "a revision without deadline is being applied",
            ),
            _ => ignored("Revert", revision, "not pending"),
        }
    }

    fn on_tick(&mut self, now_ms: i64) -> Vec<Action> {
        match &self.phase {
            Phase::AwaitingConfirm(p) => {
                if now_ms >= p.deadline_unix_ms {
                    let p = p.clone();
                    self.start_revert(p, DEADLINE_REASON.to_owned())
                } else {
                    vec![Action::ArmTimer {
                        at_unix_ms: p.deadline_unix_ms,
                    }]
                }
            }
            Phase::RevertDue {
                pending,
                reason,
                at_unix_ms,
            } => {
                if now_ms >= *at_unix_ms {
                    let (p, r) = (pending.clone(), reason.clone());
                    self.start_revert(p, r)
                } else {
                    vec![Action::ArmTimer {
                        at_unix_ms: *at_unix_ms,
                    }]
                }
            }
            // Applying, Superseding: decided when the apply finished. Reverting: the
            // outcome decides.
            Phase::Idle
            | Phase::Applying { .. }
            | Phase::Superseding { .. }
            | Phase::Reverting { .. } => Vec::new(),
        }
    }

    fn start_revert(&mut self, pending: PendingConfirm, reason: String) -> Vec<Action> {
        let actions = vec![
            Action::Log(Note::Reverting {
                revision: pending.revision,
                reason: reason.clone(),
            }),
            revert_action(&pending, &reason),
        ];
        self.phase = Phase::Reverting { pending, reason };
        actions
    }

    fn on_reverted(&mut self, report: RevertedReport) -> Vec<Action> {
        // The report first: a crash between the two leaves the record and reverts again.
        let mut actions = vec![Action::KeepReport(report.clone())];
        if matches!(&self.phase, Phase::Reverting { pending, .. } if pending.revision == report.revision)
        {
            self.phase = Phase::Idle;
            actions.push(Action::RemoveRecord);
        }
        actions.push(Action::SendReport(report.clone()));
        self.unsent = Some(report);
        actions
    }

    fn on_revert_failed(&mut self, revision: u64, now_ms: i64) -> Vec<Action> {
        let Phase::Reverting { pending, reason } = &self.phase else {
            return ignored("RevertFailed", revision, "no revert in flight");
        };
        if pending.revision != revision {
            return ignored("RevertFailed", revision, "another revision is pending");
        }
        let at_unix_ms = now_ms.saturating_add(REVERT_RETRY_MS);
        self.phase = Phase::RevertDue {
            pending: pending.clone(),
            reason: reason.clone(),
            at_unix_ms,
        };
        vec![
            Action::Log(Note::RevertRetry {
                revision,
                at_unix_ms,
            }),
            Action::ArmTimer { at_unix_ms },
        ]
    }

    fn on_report_sent(&mut self, revision: u64) -> Vec<Action> {
        match &self.unsent {
            Some(r) if r.revision == revision => {
                self.unsent = None;
                vec![Action::ForgetReport]
            }
            _ => ignored("ReportSent", revision, "not the report kept"),
        }
    }
}

fn ignored(event: &'static str, revision: u64, why: &'static str) -> Vec<Action> {
    vec![Action::Log(Note::Ignored {
        event,
        revision,
        why,
    })]
}

#[cfg(test)]
mod tests;
