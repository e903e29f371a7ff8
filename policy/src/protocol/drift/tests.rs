//! Every path of the three drift readers.

use super::*;

fn diff(lines: &[&str]) -> Vec<String> {
    lines.iter().map(|s| (*s).to_owned()).collect()
}

fn report<'a>(in_sync: bool, diff: &'a [String], hash: &'a str) -> Report<'a> {
    Report {
        revision: 2,
        in_sync,
        kernel_hash: hash,
        diff,
        ..Report::default()
    }
}

#[test]
fn spellings_round_trip() {
    for v in DriftVerdict::ALL {
        assert_eq!(v.as_str().parse::<DriftVerdict>(), Ok(*v));
    }
    assert_eq!(DriftVerdict::HealSuppressed.as_str(), "heal_suppressed");
    assert!("in-sync".parse::<DriftVerdict>().is_err());
    assert!(
        "".parse::<DriftVerdict>().is_err(),
        "no report is None, not a verdict"
    );
}

#[test]
fn the_agents_word() {
    let none = diff(&[]);
    let found = diff(&["rule added"]);
    assert_eq!(reported(&report(true, &none, "abc")), DriftVerdict::InSync);
    assert_eq!(reported(&report(false, &found, "x")), DriftVerdict::Drifted);
    // A check that could not read the kernel: not in sync, no diff.
    assert_eq!(reported(&report(false, &none, "")), DriftVerdict::Drifted);
    // Claims in sync with a diff: the diff wins.
    assert_eq!(
        reported(&report(true, &found, "abc")),
        DriftVerdict::Drifted
    );
    let healed = Report {
        healed: true,
        ..report(true, &found, "abc")
    };
    assert_eq!(reported(&healed), DriftVerdict::Healed);
    let held = Report {
        heal_suppressed: true,
        ..report(false, &found, "x")
    };
    assert_eq!(reported(&held), DriftVerdict::HealSuppressed);
    let failed = Report {
        heal_error: "nft said no",
        ..report(false, &found, "x")
    };
    assert_eq!(reported(&failed), DriftVerdict::Drifted);
}

#[test]
fn the_controllers_verdict() {
    let none = diff(&[]);
    let found = diff(&["rule added"]);
    let ok = attest(&report(true, &none, "abc"), "abc", 2);
    assert_eq!(ok.verdict, DriftVerdict::InSync);
    assert!(ok.notes.is_empty() && ok.diff.is_empty());

    let left = attest(&report(false, &found, "xyz"), "abc", 2);
    assert_eq!(left.verdict, DriftVerdict::Drifted);
    assert_eq!(left.diff, ["rule added"]);

    let healed = Report {
        healed: true,
        ..report(true, &found, "abc")
    };
    assert_eq!(attest(&healed, "abc", 2).verdict, DriftVerdict::Healed);

    // The agent says in sync, the controller computed something else: drift.
    let lie = attest(&report(true, &none, "xyz"), "abc", 2);
    assert_eq!(lie.verdict, DriftVerdict::Drifted);
    assert_eq!(lie.diff, ["kernel hash xyz is not the expected abc for r2"]);
    let gone = attest(&report(true, &none, ""), "abc", 2);
    assert_eq!(
        gone.diff,
        ["kernel hash (no table) is not the expected abc for r2"]
    );
    // No expected hash known: the agent's word stands.
    assert_eq!(
        attest(&report(true, &none, "xyz"), "", 2).verdict,
        DriftVerdict::InSync
    );

    // In sync with an older revision: not drift, but said.
    let old = attest(&report(true, &none, "abc"), "abc", 3);
    assert_eq!(old.verdict, DriftVerdict::InSync);
    assert_eq!(old.notes, ["enforces r2, desired r3 (not applied yet)"]);

    let nothing = Report {
        revision: 0,
        ..report(true, &none, "")
    };
    let a = attest(&nothing, "", 1);
    assert_eq!(a.verdict, DriftVerdict::Drifted);
    assert_eq!(a.diff, ["nothing applied, desired revision r1"]);
    assert!(a.notes.is_empty(), "drift: no revision note");
    assert_eq!(attest(&nothing, "", 0).verdict, DriftVerdict::InSync);
}

#[test]
fn held_back_and_failed_heals_are_drift_with_a_note() {
    let found = diff(&["rule added"]);
    let held = Report {
        heal_suppressed: true,
        ..report(false, &found, "x")
    };
    let a = attest(&held, "abc", 3);
    assert_eq!(a.verdict, DriftVerdict::HealSuppressed);
    assert!(a.verdict.is_drift());
    assert_eq!(a.notes, ["heal storm: backing off, left drifted for now"]);
    let failed = Report {
        heal_error: "nft said no",
        ..report(false, &found, "x")
    };
    let a = attest(&failed, "abc", 2);
    assert_eq!(a.verdict, DriftVerdict::Drifted);
    assert_eq!(a.notes, ["heal failed: nft said no"]);
}

#[test]
fn status_sees_a_mismatch_even_if_the_agent_is_silent() {
    let mut a = Attestation {
        desired_revision: 2,
        applied_revision: 2,
        expected_hash: "abc",
        reported_hash: "abc",
        last_report: None,
    };
    assert!(!status_drifted(&a));
    a.reported_hash = "";
    assert!(status_drifted(&a), "table absent");
    a.reported_hash = "abc";
    a.last_report = Some(DriftVerdict::Drifted);
    assert!(status_drifted(&a), "report mode: agent reports drift");
    a.last_report = Some(DriftVerdict::HealSuppressed);
    assert!(status_drifted(&a), "heal storm");
    a.last_report = Some(DriftVerdict::Healed);
    assert!(!status_drifted(&a));
    // Rollout in progress: not drift.
    a.applied_revision = 1;
    a.reported_hash = "old";
    assert!(!status_drifted(&a));
    // Nothing desired, or no expected hash: only the agent's word.
    a.desired_revision = 0;
    assert!(!status_drifted(&a));
}

#[test]
fn verdict_predicates() {
    use DriftVerdict::*;
    let of = |f: fn(DriftVerdict) -> bool| {
        DriftVerdict::ALL
            .iter()
            .copied()
            .filter(|v| f(*v))
            .collect::<Vec<_>>()
    };
    assert_eq!(of(DriftVerdict::is_drift), [Drifted, HealSuppressed]);
    assert_eq!(of(DriftVerdict::in_sync), [InSync, Healed]);
    assert_eq!(
        of(DriftVerdict::found_drift),
        [Drifted, HealSuppressed, Healed]
    );
}
