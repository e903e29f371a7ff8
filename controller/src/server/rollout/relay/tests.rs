use super::*;
use portcullis_policy::protocol::outcome::HostState;

fn lease(controller: &str, status: &str, lease_ms: i64) -> Lease {
    Lease {
        id: 4,
        revision: 9,
        controller: controller.into(),
        status: status.parse().unwrap(),
        lease_ms,
        confirm_timeout_ms: 20_000,
    }
}

fn notice(step: Step, revision: u64, hosts: &[&str]) -> Notice {
    Notice {
        rollout: 4,
        step,
        revision,
        hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
    }
}

fn target(state: HostState, previous: u64, desired: u64) -> Target {
    Target {
        state,
        detail: String::new(),
        previous_revision: previous,
        desired_revision: desired,
    }
}

#[test]
fn notices_parse_or_are_refused() {
    assert_eq!(
        Notice::parse("4 send 9 h1,h2"),
        Some(notice(Step::Send, 9, &["h1", "h2"]))
    );
    assert_eq!(Notice::parse("4 done 0"), Some(notice(Step::Done, 0, &[])));
    for bad in [
        "",
        "4",
        "4 send",
        "4 send 9",
        "4 send 9 ",
        "4 send 9 h1,,h2",
        "x send 9 h1",
        "4 sends 9 h1",
        "4 send -9 h1",
    ] {
        assert_eq!(Notice::parse(bad), None, "{bad:?}");
    }
}

#[test]
fn only_the_lease_holder_of_a_running_rollout_is_obeyed() {
    let now = 1_000_000;
    let live = lease("ca", "running", now + 5_000);
    let send = notice(Step::Send, 9, &["h1"]);
    assert_eq!(check(Some(&live), "ca", &send, now), Ok(()));
    let why = check(None, "ca", &send, now).unwrap_err();
    assert!(why.contains("unknown"), "{why}");
    let why = check(Some(&live), "cb", &send, now).unwrap_err();
    assert!(why.contains("run by controller ca, not cb"), "{why}");
    let why = check(Some(&lease("ca", "running", now - 1)), "ca", &send, now).unwrap_err();
    assert!(why.contains("lease expired"), "{why}");
    let why = check(
        Some(&lease("ca", "interrupted", now + 5_000)),
        "ca",
        &send,
        now,
    )
    .unwrap_err();
    assert!(why.contains("interrupted"), "{why}");
    let why = check(Some(&live), "ca", &notice(Step::Send, 8, &["h1"]), now).unwrap_err();
    assert!(why.contains("not r8"), "{why}");
    // `done` comes with the rollout's end: from its controller, whatever its state.
    let done = notice(Step::Done, 0, &[]);
    assert_eq!(
        check(Some(&lease("ca", "succeeded", 0)), "ca", &done, now),
        Ok(())
    );
    assert!(check(Some(&lease("ca", "succeeded", 0)), "cb", &done, now).is_err());
}

#[test]
fn hosts_must_be_the_rollouts_and_in_the_right_state() {
    assert!(check_host(Step::Send, 9, None).is_err(), "not a host of it");
    assert_eq!(
        check_host(Step::Send, 9, Some(&target(HostState::Sent, 8, 9))),
        Ok(())
    );
    assert!(
        check_host(Step::Send, 9, Some(&target(HostState::Sent, 8, 8))).is_err(),
        "not staged"
    );
    assert!(check_host(Step::Send, 9, Some(&target(HostState::Confirmed, 8, 9))).is_err());
    assert_eq!(
        check_host(Step::Confirm, 9, Some(&target(HostState::Applied, 8, 9))),
        Ok(())
    );
    assert!(check_host(Step::Confirm, 9, Some(&target(HostState::Reverted, 8, 8))).is_err());
    assert_eq!(
        check_host(Step::Rollback, 9, Some(&target(HostState::Confirmed, 8, 8))),
        Ok(())
    );
    assert!(check_host(Step::Rollback, 9, Some(&target(HostState::Confirmed, 8, 9))).is_err());
    assert!(check_host(Step::Rollback, 9, Some(&target(HostState::Confirmed, 0, 0))).is_err());
    assert_eq!(
        check_host(Step::Revert, 9, Some(&target(HostState::Unconfirmed, 8, 8))),
        Ok(())
    );
}
