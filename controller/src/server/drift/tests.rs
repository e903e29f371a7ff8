//! The controller's drift verdicts and request bookkeeping (no network).

use super::*;

fn report(in_sync: bool, diff: &[&str], hash: &str) -> v1::DriftReport {
    v1::DriftReport {
        revision: 2,
        in_sync,
        kernel_hash: hash.to_owned(),
        diff: diff.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

fn state(d: &v1::HostDrift) -> v1::DriftState {
    v1::DriftState::try_from(d.state).unwrap()
}

#[test]
fn verdicts() {
    let ok = classify("h", &report(true, &[], "abc"), "abc", 2);
    assert_eq!(state(&ok), v1::DriftState::InSync);
    assert!(ok.error.is_empty());

    let left = classify("h", &report(false, &["rule added"], "xyz"), "abc", 2);
    assert_eq!(state(&left), v1::DriftState::Drifted);
    assert_eq!(left.diff, ["rule added"]);

    let mut r = report(true, &["table inet portcullis is missing"], "abc");
    r.healed = true;
    assert_eq!(state(&classify("h", &r, "abc", 2)), v1::DriftState::Healed);

    // The agent says in sync, the controller computed something else: drift.
    let lie = classify("h", &report(true, &[], "xyz"), "abc", 2);
    assert_eq!(state(&lie), v1::DriftState::Drifted);
    assert!(lie.diff[0].contains("not the expected"), "{:?}", lie.diff);

    // In sync with an older revision: not drift, but said.
    let old = classify("h", &report(true, &[], "abc"), "abc", 3);
    assert_eq!(state(&old), v1::DriftState::InSync);
    assert!(old.error.contains("desired r3"), "{}", old.error);

    let mut none = report(true, &[], "");
    none.revision = 0;
    assert_eq!(state(&classify("h", &none, "", 1)), v1::DriftState::Drifted);
    assert_eq!(state(&classify("h", &none, "", 0)), v1::DriftState::InSync);
}

#[test]
fn answers_reach_only_their_request_from_the_asked_host() {
    let st = VerifyRequests::default();
    let (id, mut rx) = st.register("h1");
    let (other, _rx9) = st.register("h9");
    assert_ne!(id.wrapping_add(1), other, "ids are not sequential");
    let mut r = report(true, &[], "abc");
    r.request_id = id.wrapping_add(1000);
    assert!(!st.answer("h1", &r), "unknown id");
    r.request_id = 0;
    assert!(!st.answer("h1", &r), "spontaneous report");
    r.request_id = id;
    assert!(!st.answer("h9", &r), "another host answering h1's id");
    assert!(st.answer("h1", &r));
    assert_eq!(rx.try_recv().unwrap().request_id, id);
    assert!(!st.answer("h1", &r), "answered once");
    assert_eq!(st.outstanding(), 1);
}

#[test]
fn coexistence_round_trips_through_the_store_json() {
    let f = v1::CoexistenceFinding {
        family: "ip".into(),
        table: "filter".into(),
        chain: "INPUT".into(),
        hook: "input".into(),
        priority: 0,
        policy: "accept".into(),
        rules: 3,
        has_drop: true,
        note: "runs after portcullis".into(),
    };
    let back = coexistence_from_json(&coexistence_json(std::slice::from_ref(&f)));
    assert_eq!(back, vec![f]);
    assert!(coexistence_from_json("garbage").is_empty());
}
