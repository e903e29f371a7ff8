//! Drift checks against [`FakeDataplane`]: detection, heal vs report, the heal permit.

use super::*;
use crate::StateDir;
use crate::dataplane::FakeDataplane;
use crate::testing::facts;
use portcullis_policy::{AllowEntry, HostPolicy, PortRange, Proto};
use std::sync::Arc;

fn policy(drift: DriftMode) -> HostPolicy {
    HostPolicy {
        allow: vec![AllowEntry {
            proto: Proto::Tcp,
            ports: PortRange::single(25),
            from: Vec::new(),
            lists: Vec::new(),
            label: "smtp/tcp".into(),
        }],
        drift,
        ..HostPolicy::default()
    }
}

fn setup(drift: DriftMode) -> (Arc<FakeDataplane>, Agent, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = Arc::new(FakeDataplane::new());
    let agent = Agent::new(fake.clone(), StateDir::new(dir.path()));
    agent.reconcile(&policy(drift), &facts(), 3).expect("apply");
    (fake, agent, dir)
}

fn delete_guard_rules(fake: &FakeDataplane) {
    fake.tamper(|t| {
        if let Some(chain) = t.as_mut().and_then(|t| t.chains.get_mut("guard")) {
            chain.rules.clear();
        }
    });
}

#[test]
fn nothing_applied_is_never_drift() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = Agent::new(Arc::new(FakeDataplane::new()), StateDir::new(dir.path()));
    let c = agent.check_drift(Some(&facts())).expect("check");
    assert!(c.in_sync() && !c.found_drift() && c.revision.is_none());
}

#[test]
fn in_sync_then_heal_mode_heals_and_reports_what_it_found() {
    let (fake, agent, _d) = setup(DriftMode::Heal);
    let c = agent.check_drift(None).expect("check");
    assert!(c.in_sync() && !c.found_drift(), "{c:?}");
    let expected = c.expected_hash.clone();
    assert_eq!(c.kernel_hash, expected);

    delete_guard_rules(&fake);
    let seen = agent.check_drift(None).expect("check");
    assert!(
        seen.found_drift() && seen.wants_heal() && !seen.healed,
        "{seen:?}"
    );
    assert_ne!(seen.found_hash, expected);

    let healed = agent.check_drift(Some(&facts())).expect("heal");
    assert!(healed.healed && healed.in_sync(), "{healed:?}");
    assert_eq!(healed.diff, seen.diff, "reports what was found");
    assert_eq!(
        healed.kernel_hash, expected,
        "the kernel holds last-known-good again"
    );
    assert!(!agent.check_drift(None).expect("check").found_drift());
}

#[test]
fn report_mode_leaves_the_drift_in_place() {
    let (fake, agent, _d) = setup(DriftMode::Report);
    fake.tamper(|t| *t = None);
    let before = fake.transactions();
    let c = agent.check_drift(Some(&facts())).expect("check");
    assert!(
        c.found_drift() && !c.healed && !c.in_sync() && !c.wants_heal(),
        "{c:?}"
    );
    assert_eq!(c.diff, ["table inet portcullis is missing"]);
    assert!(c.kernel_hash.is_none());
    assert_eq!(fake.transactions(), before, "report mode never writes");
}

#[tokio::test]
async fn a_refused_permit_leaves_drift_for_later() {
    let (fake, agent, _d) = setup(DriftMode::Heal);
    delete_guard_rules(&fake);
    let before = fake.transactions();
    let c = agent.check_drift_async(|| false).await.expect("check");
    assert!(c.wants_heal() && !c.healed, "{c:?}");
    assert_eq!(fake.transactions(), before);
    // In sync: the permit is not even asked.
    let (_fake2, agent2, _d2) = setup(DriftMode::Heal);
    let c = agent2
        .check_drift_async(|| panic!("no drift, no permit"))
        .await
        .expect("check");
    assert!(!c.found_drift());
}

#[test]
fn a_failed_heal_is_reported_and_the_kernel_kept() {
    let (fake, agent, _d) = setup(DriftMode::Heal);
    delete_guard_rules(&fake);
    fake.fail_next_apply("kernel says no");
    let c = agent.check_drift(Some(&facts())).expect("check");
    assert!(
        !c.healed
            && c.heal_error
                .as_deref()
                .is_some_and(|e| e.contains("kernel says no"))
    );
    assert!(c.wants_heal());
}
