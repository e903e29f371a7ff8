//! One host's steps within a wave, as a pure state machine: `Desired` was sent (with a
//! confirm deadline, or without), then `Applied`, then — under commit-confirmed — the host
//! back on a new session through its new rules, then `Confirm`. No I/O, no clock: the
//! engine turns what it sees into [`Event`]s (its own sessions' events, or the reports
//! another controller stored for a host whose session it holds) and carries out the
//! [`Action`]s, so both kinds of host follow exactly the same rules.
//!
//! `Confirm` is settled only once it was handed to the host's session ([`Event::ConfirmSent`]:
//! at once for a session of this controller, when the other controller reports it for a
//! remote one); until then a host may still come back again, or time out.

use portcullis_proto::v1;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `Desired` sent; waiting for `Applied`.
    Applying,
    /// Applied under commit-confirmed; waiting for the host on a new session.
    AwaitReconnect,
    /// Back through the new rules; `Confirm` asked for, not known to be sent yet.
    Confirming,
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
    /// The controller's give-up time (80% of the confirm deadline, or the apply timeout).
    Deadline,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `Confirm` for the revision.
    Confirm,
    /// Send `Revert` for the revision, with why.
    Revert(String),
    /// Record an intermediate host state (`state`, `detail`).
    Record(&'static str, &'static str),
    /// The host is done in this wave.
    Settle(v1::HostOutcome, String),
}

#[derive(Debug, Clone)]
pub struct Exchange {
    revision: u64,
    /// The kernel hash the host must report ("" when it could not be computed).
    expected: String,
    /// How long the controller waits for the confirmation (zero: no commit-confirmed).
    confirm_window: Duration,
    phase: Phase,
}

impl Exchange {
    /// `Desired` for `revision` was sent. `confirm_window`: the controller's share of the
    /// confirm deadline (zero when no confirmation is asked for).
    pub fn sent(revision: u64, expected: String, confirm_window: Duration) -> Self {
        Self {
            revision,
            expected,
            confirm_window,
            phase: Phase::Applying,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    fn confirming(&self) -> bool {
        !self.confirm_window.is_zero()
    }

    fn hash_ok(&self, hash: &str) -> bool {
        self.expected.is_empty() || hash == self.expected
    }

    /// What to do on `event`; after a [`Action::Settle`] the exchange is over.
    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        let rev = self.revision;
        match event {
            Event::Applied {
                revision,
                ok,
                hash,
                error,
            } if revision == rev && self.phase == Phase::Applying => {
                if !ok {
                    vec![Action::Settle(v1::HostOutcome::Failed, error)]
                } else if !self.hash_ok(&hash) {
                    let why = format!("kernel hash {hash} != expected {}", self.expected);
                    vec![
                        Action::Revert("hash mismatch".into()),
                        Action::Settle(v1::HostOutcome::HashMismatch, why),
                    ]
                } else if !self.confirming() {
                    vec![Action::Settle(v1::HostOutcome::Applied, String::new())]
                } else {
                    self.phase = Phase::AwaitReconnect;
                    vec![Action::Record("applied", "waiting for the reconnect")]
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
                        v1::HostOutcome::Reverted,
                        format!("came back on r{revision} (kernel hash {hash}), not r{rev}"),
                    )]
                }
            }
            Event::ConfirmSent if self.phase == Phase::Confirming => {
                vec![Action::Settle(v1::HostOutcome::Confirmed, String::new())]
            }
            Event::Reverted { revision, reason } if revision == rev => {
                vec![Action::Settle(v1::HostOutcome::Reverted, reason)]
            }
            Event::Deadline => {
                let (outcome, why) = match self.phase {
                    Phase::Applying => (
                        v1::HostOutcome::Failed,
                        format!("no Applied for r{rev} in time"),
                    ),
                    Phase::AwaitReconnect => (
                        v1::HostOutcome::Unconfirmed,
                        format!(
                            "did not come back through the new rules within {} ms",
                            self.confirm_window.as_millis()
                        ),
                    ),
                    Phase::Confirming => (
                        v1::HostOutcome::Unconfirmed,
                        format!(
                            "came back, but no Confirm reached its session within {} ms",
                            self.confirm_window.as_millis()
                        ),
                    ),
                };
                vec![Action::Revert(why.clone()), Action::Settle(outcome, why)]
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use v1::HostOutcome as O;

    const W: Duration = Duration::from_millis(8000);

    fn applied(revision: u64, hash: &str) -> Event {
        Event::Applied {
            revision,
            ok: true,
            hash: hash.into(),
            error: String::new(),
        }
    }

    fn back(revision: u64, hash: &str) -> Event {
        Event::Back {
            revision,
            hash: hash.into(),
        }
    }

    fn settled(actions: &[Action]) -> Option<O> {
        actions.iter().find_map(|a| match a {
            Action::Settle(o, _) => Some(*o),
            _ => None,
        })
    }

    #[test]
    fn commit_confirmed_host_is_confirmed_once_back_and_confirm_handed_over() {
        let mut x = Exchange::sent(7, "h7".into(), W);
        assert_eq!(
            x.handle(applied(7, "h7")),
            [Action::Record("applied", "waiting for the reconnect")]
        );
        assert_eq!(x.phase(), Phase::AwaitReconnect);
        assert_eq!(x.handle(back(7, "h7")), [Action::Confirm]);
        // Back once more before the first Confirm was handed over: asked again.
        assert_eq!(x.handle(back(7, "h7")), [Action::Confirm]);
        assert_eq!(settled(&x.handle(Event::ConfirmSent)), Some(O::Confirmed));
    }

    #[test]
    fn without_confirmation_applied_settles() {
        let mut x = Exchange::sent(7, "h7".into(), Duration::ZERO);
        assert!(x.handle(back(7, "h7")).is_empty(), "no reconnect expected");
        assert_eq!(settled(&x.handle(applied(7, "h7"))), Some(O::Applied));
    }

    #[test]
    fn other_revisions_and_early_events_are_ignored() {
        let mut x = Exchange::sent(7, "h7".into(), W);
        assert!(x.handle(applied(6, "h6")).is_empty());
        assert!(x.handle(Event::ConfirmSent).is_empty(), "not asked");
        assert!(
            x.handle(Event::Reverted {
                revision: 6,
                reason: "x".into()
            })
            .is_empty()
        );
        // A reconnect before the apply, on the old revision: still waiting for Applied.
        assert!(x.handle(back(6, "h6")).is_empty());
        assert_eq!(x.phase(), Phase::Applying);
    }

    #[test]
    fn back_before_applied_with_the_new_rules_confirms() {
        // The Applied was missed (or the session broke after it): its Hello attests r7.
        let mut x = Exchange::sent(7, "h7".into(), W);
        assert_eq!(x.handle(back(7, "h7")), [Action::Confirm]);
    }

    #[test]
    fn back_on_the_old_revision_after_applying_is_a_revert() {
        let mut x = Exchange::sent(7, "h7".into(), W);
        x.handle(applied(7, "h7"));
        let a = x.handle(back(6, "h6"));
        assert_eq!(settled(&a), Some(O::Reverted), "{a:?}");
        // A wrong hash on the right revision too.
        let mut x = Exchange::sent(7, "h7".into(), W);
        x.handle(applied(7, "h7"));
        assert_eq!(settled(&x.handle(back(7, "other"))), Some(O::Reverted));
    }

    #[test]
    fn failures_mismatch_and_reverts_settle() {
        let mut x = Exchange::sent(7, "h7".into(), W);
        let a = x.handle(Event::Applied {
            revision: 7,
            ok: false,
            hash: String::new(),
            error: "nft said no".into(),
        });
        assert_eq!(a, [Action::Settle(O::Failed, "nft said no".into())]);

        let mut x = Exchange::sent(7, "h7".into(), W);
        let a = x.handle(applied(7, "bad"));
        assert_eq!(a[0], Action::Revert("hash mismatch".into()));
        assert_eq!(settled(&a), Some(O::HashMismatch));

        // No expected hash known: any hash is taken.
        let mut x = Exchange::sent(7, String::new(), Duration::ZERO);
        assert_eq!(settled(&x.handle(applied(7, "any"))), Some(O::Applied));

        let mut x = Exchange::sent(7, "h7".into(), W);
        x.handle(applied(7, "h7"));
        let a = x.handle(Event::Reverted {
            revision: 7,
            reason: "deadline".into(),
        });
        assert_eq!(a, [Action::Settle(O::Reverted, "deadline".into())]);
    }

    #[test]
    fn the_deadline_reverts_whatever_is_pending() {
        for (steps, outcome, says) in [
            (vec![], O::Failed, "no Applied for r7"),
            (vec![applied(7, "h7")], O::Unconfirmed, "did not come back"),
            (
                vec![applied(7, "h7"), back(7, "h7")],
                O::Unconfirmed,
                "no Confirm reached",
            ),
        ] {
            let mut x = Exchange::sent(7, "h7".into(), W);
            for s in steps {
                x.handle(s);
            }
            let a = x.handle(Event::Deadline);
            let Action::Revert(why) = &a[0] else {
                panic!("{a:?}")
            };
            assert!(why.contains(says), "{why}");
            assert_eq!(settled(&a), Some(outcome));
        }
    }
}
