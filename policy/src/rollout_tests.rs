use super::*;
use proptest::prelude::*;

fn hosts(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("h{i:03}")).collect()
}

fn sizes(w: &[Vec<String>]) -> Vec<usize> {
    w.iter().map(Vec::len).collect()
}

#[test]
fn serial_parses_and_displays() {
    let s: Serial = "1, 10%,50%".parse().expect("parse");
    assert_eq!(
        s.0,
        vec![
            BatchSize::Count(1),
            BatchSize::Percent(10),
            BatchSize::Percent(50)
        ]
    );
    assert_eq!(s.to_string(), "1,10%,50%");
    for bad in ["", "0", "0%", "101%", "x", "1,,2", "-1"] {
        assert!(bad.parse::<Serial>().is_err(), "{bad:?} accepted");
    }
}

#[test]
fn waves_follow_ansible_serial() {
    let s: Serial = "1,50%".parse().expect("parse");
    assert_eq!(sizes(&s.waves(&hosts(4))), vec![1, 2, 1]);
    let s: Serial = "1,10%,50%".parse().expect("parse");
    assert_eq!(sizes(&s.waves(&hosts(100))), vec![1, 10, 50, 39]);
    // Percentages round down but a wave has at least one host.
    let s: Serial = "10%".parse().expect("parse");
    assert_eq!(sizes(&s.waves(&hosts(5))), vec![1; 5]);
    assert_eq!(sizes(&Serial::default().waves(&hosts(7))), vec![7]);
    assert!(Serial::default().waves(&[]).is_empty());
}

#[test]
fn max_fail_counts_and_percentages() {
    let zero = MaxFail::default();
    assert!(!zero.exceeded(0, 0, 3));
    assert!(zero.exceeded(1, 1, 3));
    let two: MaxFail = "2".parse().expect("parse");
    assert!(!two.exceeded(2, 1, 3));
    assert!(two.exceeded(3, 1, 3));
    let pct: MaxFail = "50%".parse().expect("parse");
    assert!(!pct.exceeded(9, 1, 2));
    assert!(pct.exceeded(2, 2, 3));
    assert!("x%".parse::<MaxFail>().is_err());
}

#[test]
fn rollout_runs_waves_in_order_and_succeeds() {
    let waves = "1,50%".parse::<Serial>().expect("parse").waves(&hosts(4));
    let mut r = Rollout::new(waves, MaxFail::default());
    let mut order = Vec::new();
    loop {
        match r.advance() {
            Step::StartWave { hosts, .. } => {
                for h in &hosts {
                    r.record(h, HostResult::Confirmed);
                }
                order.push(hosts);
            }
            Step::Finished(s) => {
                assert_eq!(s, RolloutStatus::Succeeded);
                break;
            }
            Step::Halt { .. } => panic!("halted"),
        }
    }
    assert_eq!(
        order,
        vec![hosts(1), hosts(3)[1..].to_vec(), vec!["h003".into()]]
    );
    assert_eq!(r.changed(), hosts(4));
}

#[test]
fn failure_halts_and_names_the_changed_hosts() {
    let waves = "1,50%".parse::<Serial>().expect("parse").waves(&hosts(4));
    let mut r = Rollout::new(waves, MaxFail::default());
    assert!(matches!(r.advance(), Step::StartWave { index: 0, .. }));
    r.record("h000", HostResult::Confirmed);
    assert!(matches!(r.advance(), Step::StartWave { index: 1, .. }));
    r.record("h001", HostResult::Confirmed);
    r.record("h002", HostResult::Failed("apply failed".into()));
    match r.advance() {
        Step::Halt { rollback, reason } => {
            assert_eq!(rollback, vec!["h000".to_string(), "h001".to_string()]);
            assert!(reason.contains("wave 2 of 3"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r.rolled_back(true), RolloutStatus::RolledBack);
    assert_eq!(r.advance(), Step::Finished(RolloutStatus::RolledBack));
}

#[test]
fn abort_stops_before_the_next_wave() {
    let mut r = Rollout::new(vec![hosts(1), vec!["x".into()]], MaxFail::default());
    assert!(matches!(r.advance(), Step::StartWave { index: 0, .. }));
    r.abort();
    r.record("h000", HostResult::Confirmed);
    assert_eq!(r.advance(), Step::Finished(RolloutStatus::Aborted));
    assert_eq!(
        RolloutStatus::parse("aborted"),
        Some(RolloutStatus::Aborted)
    );
}

#[test]
fn a_failed_gate_halts_whatever_max_fail_allows_and_rolls_its_hosts_back() {
    let waves = "1,50%".parse::<Serial>().expect("parse").waves(&hosts(4));
    let mut r = Rollout::new(waves, "100%".parse().expect("max-fail"));
    assert!(matches!(r.advance(), Step::StartWave { index: 0, .. }));
    r.record("h000", HostResult::Confirmed);
    assert!(matches!(r.advance(), Step::StartWave { index: 1, .. }));
    r.record("h001", HostResult::Confirmed);
    r.record("h002", HostResult::Confirmed);
    r.gate_failed("h002: denial rate 40/s".into(), vec!["h002".into()]);
    match r.advance() {
        Step::Halt { rollback, reason } => {
            assert_eq!(rollback, ["h000", "h001", "h002"]);
            assert!(reason.contains("health gate failed: h002"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn skipped_hosts_of_an_aborted_wave_are_not_failures() {
    let mut r = Rollout::new(vec![hosts(3), vec!["x".into()]], MaxFail::default());
    assert!(matches!(r.advance(), Step::StartWave { index: 0, .. }));
    r.abort();
    r.record("h000", HostResult::Confirmed);
    r.record("h001", HostResult::Skipped);
    r.record("h002", HostResult::Skipped);
    assert_eq!(r.advance(), Step::Finished(RolloutStatus::Aborted));
    assert_eq!(r.changed(), ["h000"]);
}

proptest! {
    #[test]
    fn waves_partition_hosts_in_order(n in 0usize..300, spec in prop::collection::vec((1u32..40, any::<bool>()), 1..5)) {
        let serial = Serial(spec.iter().map(|&(v, pct)| if pct {
            BatchSize::Percent(u8::try_from(v.min(100)).unwrap_or(100))
        } else {
            BatchSize::Count(v)
        }).collect());
        let hs = hosts(n);
        let waves = serial.waves(&hs);
        prop_assert_eq!(waves.concat(), hs);
        prop_assert!(waves.iter().all(|w| !w.is_empty()));
        let reparsed: Serial = serial.to_string().parse().expect("round trip");
        prop_assert_eq!(reparsed, serial);
    }
}
