use super::*;
use crate::HostPolicy;
use crate::model::Mode;

const T0: i64 = 1_750_000_000_000;
const TIMEOUT: u64 = 30_000;
const DEADLINE: i64 = T0 + 30_000;

fn previous(revision: u64) -> Previous {
    Previous {
        revision,
        policy: HostPolicy {
            mode: if revision.is_multiple_of(2) {
                Mode::Audit
            } else {
                Mode::Enforce
            },
            ..HostPolicy::default()
        },
    }
}

fn desired(revision: u64, in_force: Option<Previous>) -> Event {
    Event::Desired {
        revision,
        timeout_ms: TIMEOUT,
        in_force,
    }
}

fn pending(revision: u64, previous: Option<Previous>) -> PendingConfirm {
    PendingConfirm {
        revision,
        deadline_unix_ms: DEADLINE,
        previous,
    }
}

/// Revision 2 applied under a deadline over confirmed revision 1.
fn awaiting_2() -> CommitConfirm {
    let mut m = CommitConfirm::new();
    m.handle(desired(2, Some(previous(1))), T0);
    assert!(
        m.handle(Event::Applied { revision: 2 }, T0 + 100)
            .is_empty()
    );
    assert_eq!(
        m.phase(),
        &Phase::AwaitingConfirm(pending(2, Some(previous(1))))
    );
    m
}

fn revert_of(revision: u64, reason: &str, to: Option<Previous>) -> Action {
    let revert = Revert {
        revision,
        reason: reason.to_owned(),
        restored_revision: to.as_ref().map_or(0, |p| p.revision),
    };
    match to {
        Some(previous) => Action::ApplyPrevious { previous, revert },
        None => Action::RemoveTable { revert },
    }
}

fn reverting(revision: u64, reason: &str, to: Option<Previous>) -> Vec<Action> {
    vec![
        Action::Log(Note::Reverting {
            revision,
            reason: reason.to_owned(),
        }),
        revert_of(revision, reason, to),
    ]
}

fn report(revision: u64, restored_revision: u64, reason: &str) -> RevertedReport {
    RevertedReport {
        revision,
        restored_revision,
        reason: reason.to_owned(),
        hash: if restored_revision == 0 {
            String::new()
        } else {
            format!("hash-{restored_revision}")
        },
    }
}

fn is_ignored(actions: &[Action]) -> bool {
    matches!(actions, [Action::Log(Note::Ignored { .. })])
}

/// The revert action's outcome, as the driver reports it.
fn outcome(actions: &[Action], ok: bool) -> Event {
    let revert = actions
        .iter()
        .find_map(|a| match a {
            Action::ApplyPrevious { revert, .. } | Action::RemoveTable { revert } => {
                Some(revert.clone())
            }
            _ => None,
        })
        .expect("a revert action");
    let hash = if revert.restored_revision == 0 {
        String::new()
    } else {
        format!("hash-{}", revert.restored_revision)
    };
    if ok {
        revert.done(hash)
    } else {
        revert.failed()
    }
}

#[test]
fn desired_is_recorded_before_the_apply_and_confirm_clears_it() {
    let mut m = CommitConfirm::new();
    let actions = m.handle(desired(2, Some(previous(1))), T0);
    assert_eq!(
        actions,
        vec![
            Action::Persist(pending(2, Some(previous(1)))),
            Action::ArmTimer {
                at_unix_ms: DEADLINE
            },
            Action::Log(Note::Pending {
                revision: 2,
                deadline_unix_ms: DEADLINE
            }),
        ]
    );
    assert_eq!(m.awaiting(), Some(2));
    assert!(
        m.handle(Event::Applied { revision: 2 }, T0 + 100)
            .is_empty()
    );
    let actions = m.handle(Event::Confirm { revision: 2 }, T0 + 200);
    assert_eq!(
        actions,
        vec![
            Action::RemoveRecord,
            Action::Log(Note::Confirmed { revision: 2 })
        ]
    );
    assert_eq!(m.phase(), &Phase::Idle);
    assert_eq!(m.awaiting(), None);
}

#[test]
fn the_deadline_reverts_to_the_previous_revision_and_keeps_the_report_until_sent() {
    let mut m = awaiting_2();
    let actions = m.handle(Event::Tick, DEADLINE + 5);
    assert_eq!(actions, reverting(2, DEADLINE_REASON, Some(previous(1))));
    assert_eq!(
        m.awaiting(),
        Some(2),
        "the record stays until the revert is done"
    );
    let done = outcome(&actions, true);
    let r = report(2, 1, DEADLINE_REASON);
    assert_eq!(
        m.handle(done, DEADLINE + 50),
        vec![
            Action::KeepReport(r.clone()),
            Action::RemoveRecord,
            Action::SendReport(r.clone()),
        ]
    );
    assert_eq!((m.awaiting(), m.unsent()), (None, Some(&r)));
    // Not sent (offline): the next session sends it.
    assert_eq!(
        m.handle(Event::Connected, DEADLINE + 60),
        vec![Action::SendReport(r.clone())]
    );
    assert_eq!(
        m.handle(Event::ReportSent { revision: 2 }, DEADLINE + 70),
        vec![Action::ForgetReport]
    );
    assert_eq!(m.unsent(), None);
    assert!(m.handle(Event::Connected, DEADLINE + 80).is_empty());
}

#[test]
fn with_nothing_confirmed_before_the_revert_removes_only_our_table() {
    let mut m = CommitConfirm::new();
    m.handle(desired(1, None), T0);
    m.handle(Event::Applied { revision: 1 }, T0 + 1);
    let actions = m.handle(Event::Tick, DEADLINE);
    assert_eq!(actions, reverting(1, DEADLINE_REASON, None));
    let actions = m.handle(outcome(&actions, true), DEADLINE + 1);
    assert_eq!(
        actions[0],
        Action::KeepReport(report(1, 0, DEADLINE_REASON))
    );
}

#[test]
fn the_deadline_is_exclusive_a_tick_before_rearms_a_tick_at_it_reverts() {
    let mut m = awaiting_2();
    assert_eq!(
        m.handle(Event::Tick, DEADLINE - 1),
        vec![Action::ArmTimer {
            at_unix_ms: DEADLINE
        }]
    );
    assert_eq!(m.awaiting(), Some(2));
    assert_eq!(
        m.handle(Event::Tick, DEADLINE),
        reverting(2, DEADLINE_REASON, Some(previous(1)))
    );
}

#[test]
fn a_confirm_one_millisecond_before_the_deadline_counts_one_at_it_does_not() {
    let mut m = awaiting_2();
    let actions = m.handle(Event::Confirm { revision: 2 }, DEADLINE - 1);
    assert_eq!(actions[0], Action::RemoveRecord);

    let mut m = awaiting_2();
    assert!(is_ignored(
        &m.handle(Event::Confirm { revision: 2 }, DEADLINE)
    ));
    assert_eq!(m.awaiting(), Some(2));
    assert_eq!(
        m.handle(Event::Tick, DEADLINE),
        reverting(2, DEADLINE_REASON, Some(previous(1)))
    );
}

#[test]
fn a_duplicate_confirm_changes_nothing() {
    let mut m = awaiting_2();
    m.handle(Event::Confirm { revision: 2 }, T0 + 200);
    let before = m.clone();
    assert!(is_ignored(
        &m.handle(Event::Confirm { revision: 2 }, T0 + 300)
    ));
    assert_eq!(m, before);
}

#[test]
fn a_confirm_for_another_revision_leaves_the_pending_one() {
    let mut m = awaiting_2();
    let before = m.clone();
    assert!(is_ignored(
        &m.handle(Event::Confirm { revision: 1 }, T0 + 200)
    ));
    assert!(is_ignored(
        &m.handle(Event::Confirm { revision: 3 }, T0 + 200)
    ));
    assert_eq!(m, before);
    assert_eq!(
        m.handle(Event::Tick, DEADLINE),
        reverting(2, DEADLINE_REASON, Some(previous(1)))
    );
}

#[test]
fn a_reconnect_and_confirm_before_the_apply_finished_prove_nothing() {
    let mut m = CommitConfirm::new();
    m.handle(desired(2, Some(previous(1))), T0);
    assert!(m.handle(Event::Connected, T0 + 10).is_empty());
    assert!(is_ignored(
        &m.handle(Event::Confirm { revision: 2 }, T0 + 20)
    ));
    assert!(matches!(m.phase(), Phase::Applying { .. }));
    // The apply finishes: a fresh Confirm is needed.
    m.handle(Event::Applied { revision: 2 }, T0 + 30);
    assert_eq!(m.awaiting(), Some(2));
    assert_eq!(
        m.handle(Event::Confirm { revision: 2 }, T0 + 40)[0],
        Action::RemoveRecord
    );
}

#[test]
fn the_deadline_passing_during_the_apply_reverts_at_the_late_applied() {
    let mut m = CommitConfirm::new();
    m.handle(desired(2, Some(previous(1))), T0);
    // Never concurrently with the apply in flight.
    assert!(m.handle(Event::Tick, DEADLINE + 1).is_empty());
    assert!(matches!(m.phase(), Phase::Applying { .. }));
    assert_eq!(
        m.handle(Event::Applied { revision: 2 }, DEADLINE + 2),
        reverting(2, DEADLINE_REASON, Some(previous(1)))
    );
}

#[test]
fn an_applied_for_a_revision_not_being_applied_is_ignored() {
    let mut m = awaiting_2();
    let before = m.clone();
    assert!(is_ignored(
        &m.handle(Event::Applied { revision: 2 }, T0 + 500)
    ));
    assert!(is_ignored(
        &m.handle(Event::Applied { revision: 7 }, T0 + 500)
    ));
    assert_eq!(m, before);
    let mut m = CommitConfirm::new();
    m.handle(desired(3, Some(previous(1))), T0);
    assert!(is_ignored(
        &m.handle(Event::Applied { revision: 2 }, T0 + 1)
    ));
    assert!(matches!(m.phase(), Phase::Applying { .. }));
}

#[test]
fn a_revision_not_applied_clears_the_record() {
    let mut m = CommitConfirm::new();
    m.handle(desired(2, Some(previous(1))), T0);
    assert_eq!(
        m.handle(Event::NotApplied { revision: 2 }, T0 + 1),
        vec![Action::RemoveRecord]
    );
    assert_eq!(m.phase(), &Phase::Idle);
    // Reported once more by the session: nothing left to do.
    assert!(is_ignored(
        &m.handle(Event::NotApplied { revision: 2 }, T0 + 2)
    ));
}

#[test]
fn a_revert_from_the_controller_reverts_with_its_reason() {
    let mut m = awaiting_2();
    let actions = m.handle(
        Event::Revert {
            revision: 2,
            reason: "gate failed".to_owned(),
        },
        T0 + 500,
    );
    assert_eq!(actions, reverting(2, "gate failed", Some(previous(1))));
    let actions = m.handle(outcome(&actions, true), T0 + 600);
    assert_eq!(actions[0], Action::KeepReport(report(2, 1, "gate failed")));
    assert_eq!(m.phase(), &Phase::Idle);
}

#[test]
fn a_revert_after_confirm_or_for_another_revision_is_ignored() {
    let mut m = awaiting_2();
    let revert = |revision| Event::Revert {
        revision,
        reason: "r".to_owned(),
    };
    assert!(is_ignored(&m.handle(revert(1), T0 + 150)));
    assert_eq!(m.awaiting(), Some(2));
    m.handle(Event::Confirm { revision: 2 }, T0 + 200);
    assert!(is_ignored(&m.handle(revert(2), T0 + 300)));
    assert_eq!(m, CommitConfirm::new());
}

#[test]
fn a_revert_during_the_apply_is_carried_out_when_it_finished() {
    let mut m = CommitConfirm::new();
    m.handle(desired(2, Some(previous(1))), T0);
    let revert = Event::Revert {
        revision: 2,
        reason: "operator".to_owned(),
    };
    assert_eq!(
        m.handle(revert.clone(), T0 + 1),
        vec![Action::Log(Note::RevertDeferred { revision: 2 })]
    );
    assert_eq!(
        m.handle(Event::Applied { revision: 2 }, T0 + 2),
        reverting(2, "operator", Some(previous(1)))
    );
    // An apply that failed changed nothing: nothing to revert.
    let mut m = CommitConfirm::new();
    m.handle(desired(2, Some(previous(1))), T0);
    m.handle(revert, T0 + 1);
    assert_eq!(
        m.handle(Event::NotApplied { revision: 2 }, T0 + 2),
        vec![Action::RemoveRecord]
    );
}

#[test]
fn a_failed_revert_keeps_the_record_and_is_retried_with_the_same_reason() {
    let mut m = awaiting_2();
    let actions = m.handle(
        Event::Revert {
            revision: 2,
            reason: "gate failed".to_owned(),
        },
        T0 + 500,
    );
    let at = T0 + 600 + REVERT_RETRY_MS;
    assert_eq!(
        m.handle(outcome(&actions, false), T0 + 600),
        vec![
            Action::Log(Note::RevertRetry {
                revision: 2,
                at_unix_ms: at
            }),
            Action::ArmTimer { at_unix_ms: at },
        ]
    );
    assert_eq!(m.awaiting(), Some(2));
    assert!(is_ignored(
        &m.handle(Event::Confirm { revision: 2 }, at - 10)
    ));
    assert_eq!(
        m.handle(Event::Tick, at - 1),
        vec![Action::ArmTimer { at_unix_ms: at }]
    );
    let actions = m.handle(Event::Tick, at);
    assert_eq!(actions, reverting(2, "gate failed", Some(previous(1))));
    // Fails again, then succeeds.
    m.handle(outcome(&actions, false), at + 1);
    let actions = m.handle(Event::Tick, at + 1 + REVERT_RETRY_MS);
    let actions = m.handle(outcome(&actions, true), at + 2 + REVERT_RETRY_MS);
    assert_eq!(actions[1], Action::RemoveRecord);
    assert_eq!(m.unsent(), Some(&report(2, 1, "gate failed")));
}

#[test]
fn a_revert_request_while_a_retry_is_due_retries_now() {
    let mut m = awaiting_2();
    let actions = m.handle(Event::Tick, DEADLINE);
    m.handle(outcome(&actions, false), DEADLINE + 1);
    let actions = m.handle(
        Event::Revert {
            revision: 2,
            reason: "operator".to_owned(),
        },
        DEADLINE + 2,
    );
    assert_eq!(actions, reverting(2, "operator", Some(previous(1))));
    // While in flight, another Revert or a stale failure changes nothing.
    let before = m.clone();
    let again = Event::Revert {
        revision: 2,
        reason: "operator".to_owned(),
    };
    assert!(is_ignored(&m.handle(again, DEADLINE + 3)));
    assert!(is_ignored(
        &m.handle(Event::RevertFailed { revision: 1 }, DEADLINE + 3)
    ));
    assert!(m.handle(Event::Tick, DEADLINE + 4).is_empty());
    assert_eq!(m, before);
}

#[test]
fn a_newer_desired_while_pending_goes_back_to_the_last_confirmed_revision() {
    let mut m = awaiting_2();
    // Last-known-good is now the unconfirmed revision 2: not what to go back to.
    let actions = m.handle(desired(3, Some(previous(2))), T0 + 1_000);
    let expected = PendingConfirm {
        revision: 3,
        deadline_unix_ms: T0 + 1_000 + 30_000,
        previous: Some(previous(1)),
    };
    assert_eq!(actions[0], Action::Persist(expected.clone()));
    // Revision 2's Confirm is stale now.
    m.handle(Event::Applied { revision: 3 }, T0 + 1_100);
    assert!(is_ignored(
        &m.handle(Event::Confirm { revision: 2 }, T0 + 1_200)
    ));
    assert_eq!(
        m.handle(Event::Tick, expected.deadline_unix_ms),
        reverting(3, DEADLINE_REASON, Some(previous(1)))
    );
}

#[test]
fn a_newer_desired_while_nothing_was_confirmed_still_removes_the_table_on_timeout() {
    let mut m = CommitConfirm::new();
    m.handle(desired(1, None), T0);
    m.handle(Event::Applied { revision: 1 }, T0 + 1);
    let actions = m.handle(desired(2, Some(previous(1))), T0 + 2);
    assert!(matches!(&actions[0], Action::Persist(p) if p.previous.is_none()));
}

#[test]
fn a_desired_while_reverting_keeps_the_new_record_when_the_old_revert_finishes() {
    let mut m = awaiting_2();
    let actions = m.handle(Event::Tick, DEADLINE);
    m.handle(desired(3, Some(previous(2))), DEADLINE + 1);
    let after = m.handle(outcome(&actions, true), DEADLINE + 2);
    let r = report(2, 1, DEADLINE_REASON);
    assert_eq!(
        after,
        vec![Action::KeepReport(r.clone()), Action::SendReport(r)]
    );
    assert_eq!(m.awaiting(), Some(3));
    assert_eq!(
        m.pending().and_then(|p| p.previous.clone()),
        Some(previous(1))
    );
    // A failure of the old revert is the new record's business now.
    let mut m = awaiting_2();
    let actions = m.handle(Event::Tick, DEADLINE);
    m.handle(desired(3, Some(previous(2))), DEADLINE + 1);
    assert!(is_ignored(
        &m.handle(outcome(&actions, false), DEADLINE + 2)
    ));
    assert!(matches!(m.phase(), Phase::Applying { .. }));
}

#[test]
fn a_revision_without_deadline_supersedes_the_pending_one() {
    let mut m = awaiting_2();
    assert!(
        m.handle(Event::Unconfirmed { revision: 3 }, T0 + 500)
            .is_empty()
    );
    // Until it is applied the pending one stands: no revert while the apply runs.
    assert_eq!(m.awaiting(), Some(2));
    assert!(m.handle(Event::Tick, DEADLINE).is_empty());
    assert_eq!(
        m.handle(Event::Applied { revision: 3 }, DEADLINE + 1),
        vec![
            Action::RemoveRecord,
            Action::Log(Note::Superseded { pending: 2, by: 3 })
        ]
    );
    assert_eq!(m.phase(), &Phase::Idle);
    assert!(m.handle(Event::Tick, DEADLINE).is_empty());
    assert!(
        m.handle(Event::Unconfirmed { revision: 4 }, DEADLINE)
            .is_empty()
    );
}

#[test]
fn a_restart_mid_exchange_resumes_from_the_record() {
    let record = pending(2, Some(previous(1)));
    let (mut m, actions) = CommitConfirm::resume(Some(record.clone()), None);
    assert_eq!(
        actions,
        vec![
            Action::Log(Note::Resumed {
                revision: 2,
                deadline_unix_ms: DEADLINE
            }),
            Action::ArmTimer {
                at_unix_ms: DEADLINE
            },
        ]
    );
    assert_eq!(m.phase(), &Phase::AwaitingConfirm(record.clone()));
    // The controller confirms after the agent came back ...
    assert_eq!(
        m.handle(Event::Confirm { revision: 2 }, T0 + 10_000)[0],
        Action::RemoveRecord
    );
    // ... or the deadline passed while the agent was down: revert at once.
    let (mut m, _) = CommitConfirm::resume(Some(record), None);
    assert_eq!(
        m.handle(Event::Tick, DEADLINE + 60_000),
        reverting(2, DEADLINE_REASON, Some(previous(1)))
    );
}

#[test]
fn a_restart_with_an_unsent_report_sends_it_at_the_next_session() {
    let r = report(2, 1, DEADLINE_REASON);
    let (mut m, actions) = CommitConfirm::resume(None, Some(r.clone()));
    assert!(actions.is_empty());
    assert_eq!(m.phase(), &Phase::Idle);
    assert_eq!(
        m.handle(Event::Connected, T0),
        vec![Action::SendReport(r.clone())]
    );
    assert!(is_ignored(&m.handle(Event::ReportSent { revision: 9 }, T0)));
    assert_eq!(m.unsent(), Some(&r));
}

#[test]
fn a_newer_report_replaces_the_unsent_one() {
    let (mut m, _) = CommitConfirm::resume(None, Some(report(1, 0, "old")));
    m.handle(desired(2, Some(previous(1))), T0);
    m.handle(Event::Applied { revision: 2 }, T0 + 1);
    let actions = m.handle(Event::Tick, DEADLINE);
    m.handle(outcome(&actions, true), DEADLINE + 1);
    assert_eq!(m.unsent(), Some(&report(2, 1, DEADLINE_REASON)));
    assert!(is_ignored(&m.handle(Event::ReportSent { revision: 1 }, T0)));
}

#[test]
fn a_huge_timeout_saturates_the_deadline() {
    let mut m = CommitConfirm::new();
    m.handle(
        Event::Desired {
            revision: 2,
            timeout_ms: u64::MAX,
            in_force: None,
        },
        T0,
    );
    assert_eq!(m.pending().map(|p| p.deadline_unix_ms), Some(i64::MAX));
    m.handle(Event::Applied { revision: 2 }, T0 + 1);
    assert!(
        !m.handle(Event::Tick, i64::MAX - 1)
            .iter()
            .any(|a| matches!(a, Action::RemoveTable { .. }))
    );
}

#[test]
fn the_records_keep_their_on_disk_shape() {
    // As written by agents before the state machine (field names and nesting).
    let policy = serde_json::to_value(HostPolicy::default()).unwrap();
    let pending_json = serde_json::json!({
        "revision": 2,
        "deadline_unix_ms": DEADLINE,
        "previous": { "revision": 1, "policy": policy },
    });
    let read: PendingConfirm = serde_json::from_value(pending_json.clone()).unwrap();
    assert_eq!(
        read,
        PendingConfirm {
            revision: 2,
            deadline_unix_ms: DEADLINE,
            previous: Some(Previous {
                revision: 1,
                policy: HostPolicy::default()
            }),
        }
    );
    assert_eq!(serde_json::to_value(&read).unwrap(), pending_json);
    let none: PendingConfirm =
        serde_json::from_str(r#"{"revision":1,"deadline_unix_ms":5,"previous":null}"#).unwrap();
    assert_eq!(none.previous, None);
    let report_json = serde_json::json!({
        "revision": 2, "restored_revision": 1, "reason": "r", "hash": "h",
    });
    let r: RevertedReport = serde_json::from_value(report_json.clone()).unwrap();
    assert_eq!(serde_json::to_value(&r).unwrap(), report_json);
}

#[test]
fn a_revision_without_deadline_that_fails_leaves_the_pending_one_to_revert() {
    let mut m = awaiting_2();
    m.handle(Event::Unconfirmed { revision: 3 }, T0 + 500);
    assert_eq!(
        m.handle(Event::NotApplied { revision: 3 }, T0 + 600),
        vec![
            Action::ArmTimer {
                at_unix_ms: DEADLINE
            },
            Action::Log(Note::Restored {
                revision: 2,
                failed: 3
            })
        ]
    );
    assert_eq!(
        m.phase(),
        &Phase::AwaitingConfirm(pending(2, Some(previous(1))))
    );
    // Revision 2 is still unconfirmed in the kernel: it reverts at its deadline.
    assert_eq!(
        m.handle(Event::Tick, DEADLINE),
        reverting(2, DEADLINE_REASON, Some(previous(1)))
    );
}

#[test]
fn a_failed_apply_over_a_pending_revision_puts_its_record_back() {
    let mut m = awaiting_2();
    m.handle(desired(3, Some(previous(2))), T0 + 500);
    assert_eq!(m.awaiting(), Some(3));
    // The kernel still holds 2, unconfirmed: its record (with its deadline and its
    // confirmed previous) is written again and watched.
    let record = pending(2, Some(previous(1)));
    assert_eq!(
        m.handle(Event::NotApplied { revision: 3 }, T0 + 600),
        vec![
            Action::Persist(record.clone()),
            Action::ArmTimer {
                at_unix_ms: DEADLINE
            },
            Action::Log(Note::Restored {
                revision: 2,
                failed: 3
            })
        ]
    );
    assert_eq!(m.phase(), &Phase::AwaitingConfirm(record));
    // And a Confirm of 2 still confirms it.
    assert_eq!(
        m.handle(Event::Confirm { revision: 2 }, T0 + 700),
        vec![
            Action::RemoveRecord,
            Action::Log(Note::Confirmed { revision: 2 })
        ]
    );
}
