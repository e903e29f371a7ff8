//! Unit tests of the fail-closed policy and records (no root, no nft).

#![allow(clippy::unwrap_used)]

use super::*;
use portcullis_policy::{Proto, compile};

#[test]
fn minimal_policy_keeps_management_and_nothing_else() {
    let management = [
        "tcp/22 from 10.0.0.0/8".to_owned(),
        "udp/161".to_owned(),
        "tcp/x".to_owned(),
    ];
    let (policy, errors) = minimal_policy(&management, 9);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("tcp/x"), "{errors:?}");
    assert_eq!(policy.replies, Replies::Stateful);
    assert_eq!(policy.interface, InterfaceSel::All);
    assert_eq!((policy.mode, policy.log_group), (Mode::Enforce, 9));
    let ssh = policy.allow.iter().find(|a| a.proto == Proto::Tcp).unwrap();
    assert_eq!(ssh.from, vec!["10.0.0.0/8".parse().unwrap()]);
    let snmp = policy.allow.iter().find(|a| a.proto == Proto::Udp).unwrap();
    assert!(
        snmp.from.is_empty(),
        "from anywhere, both families: {snmp:?}"
    );
    assert_eq!(policy.allow.len(), 2);
    // It compiles without any facts (no interface, no route).
    compile(&policy, &Facts::default(), 0).unwrap();
}

#[test]
fn fail_closed_record_round_trip_and_clear() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::new(dir.path());
    assert_eq!(fail_closed(&state), None);
    let record = FailClosed {
        reason: "no last-known-good record".into(),
        since: "2026-01-01T00:00:00Z".into(),
        management: vec!["tcp/22".into()],
    };
    let body = serde_json::to_vec(&record).unwrap();
    durable::write_atomic(&marker_path(&state), &body, 0o600).unwrap();
    assert_eq!(fail_closed(&state), Some(record.clone()));
    assert!(record.to_string().contains("management kept: tcp/22"));
    clear_fail_closed(&state).unwrap();
    assert_eq!(fail_closed(&state), None);
}
