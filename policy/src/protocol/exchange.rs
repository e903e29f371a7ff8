//! The controller's steps with one host within a wave, as a pure state machine: `Desired`
//! was sent (with a confirm deadline, or without), then `Applied`, then — under
//! commit-confirmed — the host back on a new session through its new rules, then
//! `Confirm`; the controller gives up at its own time (80% of the confirm deadline, or
//! the apply timeout) and reverts whatever is pending.
//!
//! No I/O, no clock: the engine turns what it sees into [`Event`]s (its own sessions'
//! events, or the reports another controller stored for a host whose session it holds),
//! passes the time in, and carries out the [`Action`]s, so every kind of host follows
//! exactly the same rules. The give-up time belongs to the machine: any event handled at
//! or after it ([`Event::Tick`] included) settles the host as timed out — except the news
//! that an asked-for `Confirm` was handed over, which the agent already has.
//!
//! `Confirm` is settled only once it was handed to the host's session
//! ([`Event::ConfirmSent`]: at once for a session of this controller, when the other
//! controller reports it for a remote one); until then a host may still come back again,
//! or time out. A controller that restarts mid-exchange rebuilds it from the stored host
//! state ([`Exchange::resume`]).

use super::outcome::{HostOutcome, HostState};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `Desired` sent; waiting for `Applied`.
    Applying,
    /// Applied under commit-confirmed; waiting for the host on a new session.
    AwaitReconnect,
    /// Back through the new rules; `Confirm` asked for, not known to be sent yet.
    Confirming,
    /// Settled: every further event is ignored.
    Done,
}

/// What was seen of the host (for this rollout's revision or another).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Applied {
        revision: u64,
        ok: bool,
        hash: String,
        error: String,
    },
    /// On a session newer than the one `Desired` went to, attesting (revision, kernel hash).
    Back { revision: u64, hash: String },
    /// The agent reverted the revision by itself (its deadline, or a `Revert`).
    Reverted { revision: u64, reason: String },
    /// `Confirm` was handed to the host's session.
    ConfirmSent,
    /// Nothing seen; time passed (the give-up time may have come).
    Tick,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `Confirm` for the revision.
    Confirm,
    /// Send `Revert` for the revision, with why.
    Revert(String),
    /// Record an intermediate host state, with a detail.
    Record(HostState, &'static str),
    /// The host is done in this wave.
    Settle(HostOutcome, String),
}

#[derive(Debug, Clone)]
pub struct Exchange {
    revision: u64,
    /// The kernel hash the host must report ("" when it could not be computed).
    expected: String,
    /// How long the controller waits for the confirmation (zero: no commit-confirmed).
    confirm_window: Duration,
    /// When the controller gives up on the host.
    give_up_at: Instant,
    phase: Phase,
}

impl Exchange {
    /// `Desired` for `revision` was sent. `confirm_window`: the controller's share of the
    /// confirm deadline (zero when no confirmation is asked for); `give_up_at`: when the
    /// controller stops waiting (the wave's deadline).
    pub fn sent(
        revision: u64,
        expected: String,
        confirm_window: Duration,
        give_up_at: Instant,
    ) -> Self {
        Self {
            revision,
            expected,
            confirm_window,
            give_up_at,
            phase: Phase::Applying,
        }
    }

    /// The exchange of a host whose stored state is `state`, for a controller that
    /// (re)starts following it: `sent` waits for `Applied`, `applied` (under
    /// commit-confirmed) for the host back. `None` for a host no wave drives (not sent
    /// yet, or settled).
    pub fn resume(
        state: HostState,
        revision: u64,
        expected: String,
        confirm_window: Duration,
        give_up_at: Instant,
    ) -> Option<Self> {
        let phase = match state {
            HostState::Sent => Phase::Applying,
            HostState::Applied if !confirm_window.is_zero() => Phase::AwaitReconnect,
            _ => return None,
        };
        Some(Self {
            phase,
            ..Self::sent(revision, expected, confirm_window, give_up_at)
        })
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn give_up_at(&self) -> Instant {
        self.give_up_at
    }

    fn confirming(&self) -> bool {
        !self.confirm_window.is_zero()
    }

    fn hash_ok(&self, hash: &str) -> bool {
        self.expected.is_empty() || hash == self.expected
    }

    /// What to do on `event` seen at `now`; after a [`Action::Settle`] the exchange is
    /// over ([`Phase::Done`]).
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        if self.phase == Phase::Done {
            return Vec::new();
        }
        // A `Confirm` handed over is a fact about the past: the agent has it, whenever it
        // is reported (a remote controller's report is read a poll later).
        let handed_over = matches!(event, Event::ConfirmSent) && self.phase == Phase::Confirming;
        let actions = if now >= self.give_up_at && !handed_over {
            self.give_up()
        } else {
            self.on(event)
        };
        if actions.iter().any(|a| matches!(a, Action::Settle(..))) {
            self.phase = Phase::Done;
        }
        actions
    }

    fn on(&mut self, event: Event) -> Vec<Action> {
        let rev = self.revision;
        match event {
            Event::Applied {
                revision,
                ok,
                hash,
                error,
            } if revision == rev && self.phase == Phase::Applying => {
                if !ok {
                    vec![Action::Settle(HostOutcome::Failed, error)]
                } else if !self.hash_ok(&hash) {
                    let why = format!("kernel hash {hash} != expected {}", self.expected);
                    vec![
                        Action::Revert("hash mismatch".into()),
                        Action::Settle(HostOutcome::HashMismatch, why),
                    ]
                } else if !self.confirming() {
                    vec![Action::Settle(HostOutcome::Applied, String::new())]
                } else {
                    self.phase = Phase::AwaitReconnect;
                    vec![Action::Record(
                        HostState::Applied,
                        "waiting for the reconnect",
                    )]
                }
            }
            Event::Back { revision, hash } if self.confirming() => {
                if revision == rev && self.hash_ok(&hash) {
                    // Through the new rules (its Hello attests them): confirm. Asked again
                    // if it comes back again before the first one was handed over.
                    self.phase = Phase::Confirming;
                    vec![Action::Confirm]
                } else if self.phase == Phase::Applying {
                    // Not applied yet (a reconnect in between): keep waiting.
                    Vec::new()
                } else {
                    vec![Action::Settle(
                        HostOutcome::Reverted,
                        format!("came back on r{revision} (kernel hash {hash}), not r{rev}"),
                    )]
                }
            }
            Event::ConfirmSent if self.phase == Phase::Confirming => {
                vec![Action::Settle(HostOutcome::Confirmed, String::new())]
            }
            Event::Reverted { revision, reason } if revision == rev => {
                vec![Action::Settle(HostOutcome::Reverted, reason)]
            }
            _ => Vec::new(),
        }
    }

    /// The give-up time came: revert whatever is pending.
    fn give_up(&self) -> Vec<Action> {
        let rev = self.revision;
        let window = self.confirm_window.as_millis();
        let (outcome, why) = match self.phase {
            Phase::Applying => (
                HostOutcome::Failed,
                format!("no Applied for r{rev} in time"),
            ),
            Phase::AwaitReconnect => (
                HostOutcome::Unconfirmed,
                format!("did not come back through the new rules within {window} ms"),
            ),
            Phase::Confirming | Phase::Done => (
                HostOutcome::Unconfirmed,
                format!("came back, but no Confirm reached its session within {window} ms"),
            ),
        };
        vec![Action::Revert(why.clone()), Action::Settle(outcome, why)]
    }
}

#[cfg(test)]
mod tests;
