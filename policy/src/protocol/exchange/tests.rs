//! The wave exchange's paths, one test per edge case.

use super::*;
use HostOutcome as O;

const W: Duration = Duration::from_millis(8000);

/// A fixed start and the give-up time `W` later; events happen at `at(ms)`.
struct Clock(Instant);

impl Clock {
    fn new() -> Self {
        Self(Instant::now())
    }
    fn at(&self, ms: u64) -> Instant {
        self.0 + Duration::from_millis(ms)
    }
    fn deadline(&self) -> Instant {
        self.0 + W
    }
    fn sent(&self, expected: &str, window: Duration) -> Exchange {
        Exchange::sent(7, expected.into(), window, self.deadline())
    }
}

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

fn reverted(revision: u64, reason: &str) -> Event {
    Event::Reverted {
        revision,
        reason: reason.into(),
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
    let t = Clock::new();
    let mut x = t.sent("h7", W);
    assert_eq!(
        x.handle(applied(7, "h7"), t.at(10)),
        [Action::Record(
            HostState::Applied,
            "waiting for the reconnect"
        )]
    );
    assert_eq!(x.phase(), Phase::AwaitReconnect);
    assert_eq!(x.handle(back(7, "h7"), t.at(20)), [Action::Confirm]);
    assert_eq!(x.phase(), Phase::Confirming);
    assert_eq!(
        settled(&x.handle(Event::ConfirmSent, t.at(21))),
        Some(O::Confirmed)
    );
    assert_eq!(x.phase(), Phase::Done);
}

#[test]
fn without_confirmation_applied_settles() {
    let t = Clock::new();
    let mut x = t.sent("h7", Duration::ZERO);
    assert!(
        x.handle(back(7, "h7"), t.at(1)).is_empty(),
        "no reconnect expected"
    );
    assert!(
        x.handle(Event::ConfirmSent, t.at(1)).is_empty(),
        "nothing asked"
    );
    assert_eq!(
        settled(&x.handle(applied(7, "h7"), t.at(2))),
        Some(O::Applied)
    );
}

#[test]
fn other_revisions_and_early_events_are_ignored() {
    let t = Clock::new();
    let mut x = t.sent("h7", W);
    assert!(x.handle(applied(6, "h6"), t.at(1)).is_empty());
    assert!(
        x.handle(Event::ConfirmSent, t.at(1)).is_empty(),
        "not asked"
    );
    assert!(x.handle(reverted(6, "x"), t.at(1)).is_empty());
    assert!(
        x.handle(Event::Tick, t.at(1)).is_empty(),
        "before the give-up time"
    );
    assert_eq!(x.phase(), Phase::Applying);
}

#[test]
fn reconnect_before_the_apply_finished_keeps_waiting() {
    // Back on the old revision while the apply is still running: not a revert.
    let t = Clock::new();
    let mut x = t.sent("h7", W);
    assert!(x.handle(back(6, "h6"), t.at(1)).is_empty());
    assert_eq!(x.phase(), Phase::Applying);
    // Then the apply reports, and the host comes back through the new rules.
    x.handle(applied(7, "h7"), t.at(2));
    assert_eq!(x.handle(back(7, "h7"), t.at(3)), [Action::Confirm]);
}

#[test]
fn back_before_applied_with_the_new_rules_confirms() {
    // The Applied was missed (or the session broke after it): its Hello attests r7.
    let t = Clock::new();
    let mut x = t.sent("h7", W);
    assert_eq!(x.handle(back(7, "h7"), t.at(1)), [Action::Confirm]);
    // The Applied arriving late, once confirming, changes nothing.
    assert!(x.handle(applied(7, "h7"), t.at(2)).is_empty());
    assert_eq!(
        settled(&x.handle(Event::ConfirmSent, t.at(3))),
        Some(O::Confirmed)
    );
}

#[test]
fn a_late_applied_is_ignored_after_the_host_moved_on() {
    let t = Clock::new();
    let mut x = t.sent("h7", W);
    x.handle(applied(7, "h7"), t.at(1));
    // A duplicate (or delayed) Applied while waiting for the reconnect.
    assert!(x.handle(applied(7, "h7"), t.at(2)).is_empty());
    assert!(
        x.handle(applied(7, "bad"), t.at(2)).is_empty(),
        "judged once"
    );
    assert_eq!(x.phase(), Phase::AwaitReconnect);
    // And after the host settled.
    let mut x = t.sent("h7", Duration::ZERO);
    x.handle(applied(7, "h7"), t.at(1));
    assert!(x.handle(applied(7, "h7"), t.at(2)).is_empty());
}

#[test]
fn duplicate_back_and_confirm_are_asked_and_settled_once() {
    let t = Clock::new();
    let mut x = t.sent("h7", W);
    x.handle(applied(7, "h7"), t.at(1));
    assert_eq!(x.handle(back(7, "h7"), t.at(2)), [Action::Confirm]);
    // Back once more before the first Confirm was handed over: asked again.
    assert_eq!(x.handle(back(7, "h7"), t.at(3)), [Action::Confirm]);
    assert_eq!(
        settled(&x.handle(Event::ConfirmSent, t.at(4))),
        Some(O::Confirmed)
    );
    // Both Confirms handed over, a third reconnect, a revert: all after the settle.
    assert!(x.handle(Event::ConfirmSent, t.at(5)).is_empty());
    assert!(x.handle(back(7, "h7"), t.at(5)).is_empty());
    assert!(x.handle(reverted(7, "late"), t.at(5)).is_empty());
    assert!(
        x.handle(Event::Tick, t.at(9000)).is_empty(),
        "no give-up once settled"
    );
}

#[test]
fn back_on_the_old_revision_after_applying_is_a_revert() {
    let t = Clock::new();
    let mut x = t.sent("h7", W);
    x.handle(applied(7, "h7"), t.at(1));
    let a = x.handle(back(6, "h6"), t.at(2));
    assert_eq!(settled(&a), Some(O::Reverted), "{a:?}");
    let Action::Settle(_, why) = &a[0] else {
        panic!("{a:?}")
    };
    assert_eq!(why, "came back on r6 (kernel hash h6), not r7");
    // A wrong hash on the right revision too, also while confirming.
    let mut x = t.sent("h7", W);
    x.handle(applied(7, "h7"), t.at(1));
    assert_eq!(
        settled(&x.handle(back(7, "other"), t.at(2))),
        Some(O::Reverted)
    );
    let mut x = t.sent("h7", W);
    x.handle(back(7, "h7"), t.at(1));
    assert_eq!(
        settled(&x.handle(back(6, "h6"), t.at(2))),
        Some(O::Reverted)
    );
}

#[test]
fn failures_mismatch_and_reverts_settle() {
    let t = Clock::new();
    let mut x = t.sent("h7", W);
    let a = x.handle(
        Event::Applied {
            revision: 7,
            ok: false,
            hash: String::new(),
            error: "nft said no".into(),
        },
        t.at(1),
    );
    assert_eq!(a, [Action::Settle(O::Failed, "nft said no".into())]);

    let mut x = t.sent("h7", W);
    let a = x.handle(applied(7, "bad"), t.at(1));
    assert_eq!(a[0], Action::Revert("hash mismatch".into()));
    assert_eq!(
        a[1],
        Action::Settle(O::HashMismatch, "kernel hash bad != expected h7".into())
    );

    // No expected hash known: any hash is taken.
    let mut x = t.sent("", Duration::ZERO);
    assert_eq!(
        settled(&x.handle(applied(7, "any"), t.at(1))),
        Some(O::Applied)
    );

    // The agent reverted by itself, in each phase.
    for steps in [
        vec![],
        vec![applied(7, "h7")],
        vec![applied(7, "h7"), back(7, "h7")],
    ] {
        let mut x = t.sent("h7", W);
        for s in steps {
            x.handle(s, t.at(1));
        }
        let a = x.handle(reverted(7, "deadline"), t.at(2));
        assert_eq!(a, [Action::Settle(O::Reverted, "deadline".into())]);
    }
}

#[test]
fn the_give_up_time_reverts_whatever_is_pending() {
    let t = Clock::new();
    for (steps, window, outcome, says) in [
        (vec![], W, O::Failed, "no Applied for r7 in time"),
        (
            vec![],
            Duration::ZERO,
            O::Failed,
            "no Applied for r7 in time",
        ),
        (
            vec![applied(7, "h7")],
            W,
            O::Unconfirmed,
            "did not come back through the new rules within 8000 ms",
        ),
        (
            vec![applied(7, "h7"), back(7, "h7")],
            W,
            O::Unconfirmed,
            "came back, but no Confirm reached its session within 8000 ms",
        ),
    ] {
        let mut x = t.sent("h7", window);
        for s in steps {
            x.handle(s, t.at(1));
        }
        let a = x.handle(Event::Tick, t.deadline());
        assert_eq!(
            a,
            [
                Action::Revert(says.into()),
                Action::Settle(outcome, says.into())
            ]
        );
        assert_eq!(x.phase(), Phase::Done);
    }
}

#[test]
fn the_give_up_time_is_inclusive() {
    let t = Clock::new();
    let just_before = t.deadline() - Duration::from_nanos(1);
    // An answer a moment before the give-up time counts.
    let mut x = t.sent("h7", W);
    x.handle(applied(7, "h7"), t.at(1));
    assert_eq!(x.handle(back(7, "h7"), just_before), [Action::Confirm]);
    assert_eq!(
        settled(&x.handle(Event::ConfirmSent, just_before)),
        Some(O::Confirmed)
    );
    // The same answer at the give-up time is too late: the host is reverted.
    let mut x = t.sent("h7", W);
    x.handle(applied(7, "h7"), t.at(1));
    let a = x.handle(back(7, "h7"), t.deadline());
    assert_eq!(settled(&a), Some(O::Unconfirmed), "{a:?}");
    assert!(matches!(a[0], Action::Revert(_)));
    // A Confirm asked for before it, reported handed over after it (a remote
    // controller's report, read a poll later): the agent has it, the host is confirmed.
    let mut x = t.sent("h7", W);
    x.handle(applied(7, "h7"), t.at(1));
    assert_eq!(x.handle(back(7, "h7"), just_before), [Action::Confirm]);
    let a = x.handle(Event::ConfirmSent, t.at(8250));
    assert_eq!(a, [Action::Settle(O::Confirmed, String::new())]);
    // But not one never asked for.
    let mut x = t.sent("h7", W);
    x.handle(applied(7, "h7"), t.at(1));
    assert_eq!(
        settled(&x.handle(Event::ConfirmSent, t.deadline())),
        Some(O::Unconfirmed)
    );
    // A late Applied after it: the host already failed, nothing more.
    let mut x = t.sent("h7", Duration::ZERO);
    let a = x.handle(applied(7, "h7"), t.at(8001));
    assert_eq!(settled(&a), Some(O::Failed));
    assert!(x.handle(applied(7, "h7"), t.at(8002)).is_empty());
}

#[test]
fn a_restarted_controller_resumes_from_the_stored_state() {
    let t = Clock::new();
    let resume = |state, window| Exchange::resume(state, 7, "h7".into(), window, t.deadline());
    // Sent: still waiting for Applied.
    let mut x = resume(HostState::Sent, W).unwrap();
    assert_eq!(x.phase(), Phase::Applying);
    x.handle(applied(7, "h7"), t.at(1));
    assert_eq!(x.handle(back(7, "h7"), t.at(2)), [Action::Confirm]);
    // Applied under commit-confirmed: waiting for the host back; a second Applied (the
    // one already stored, reported again) is not judged twice.
    let mut x = resume(HostState::Applied, W).unwrap();
    assert_eq!(x.phase(), Phase::AwaitReconnect);
    assert!(x.handle(applied(7, "h7"), t.at(1)).is_empty());
    assert_eq!(x.handle(back(7, "h7"), t.at(2)), [Action::Confirm]);
    // Its give-up time still holds.
    let mut x = resume(HostState::Applied, W).unwrap();
    assert_eq!(
        settled(&x.handle(Event::Tick, t.deadline())),
        Some(O::Unconfirmed)
    );
    // Nothing to drive: not sent yet, settled, or `applied` without confirmation.
    for state in HostState::ALL {
        let driven = matches!(state, HostState::Sent | HostState::Applied);
        assert_eq!(resume(*state, W).is_some(), driven, "{state}");
        assert_eq!(state.in_flight(), driven, "{state}");
    }
    assert!(resume(HostState::Applied, Duration::ZERO).is_none());
}
