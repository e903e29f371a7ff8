//! Unit tests of the reconcile logic against [`FakeDataplane`] (no root, no nft).

use super::*;
use crate::dataplane::FakeDataplane;
use crate::report::VerifyStatus;
use crate::testing::facts;
use portcullis_policy::ruleset::{Element, Rule};
use portcullis_policy::{AllowEntry, InterfaceSel, PortRange, Proto};

fn allow(proto: Proto, port: u16, label: &str) -> AllowEntry {
    AllowEntry {
        proto,
        ports: PortRange::single(port),
        from: Vec::new(),
        lists: Vec::new(),
        label: label.to_owned(),
    }
}

fn seed() -> HostPolicy {
    HostPolicy {
        allow: vec![
            allow(Proto::Tcp, 25, "smtp/tcp"),
            allow(Proto::Tcp, 80, "http/tcp"),
            allow(Proto::Udp, 53, "domain/udp"),
        ],
        ..HostPolicy::default()
    }
}

struct Setup {
    fake: Arc<FakeDataplane>,
    agent: Agent,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = Arc::new(FakeDataplane::new());
    let agent = Agent::new(fake.clone(), StateDir::new(dir.path()));
    Setup {
        fake,
        agent,
        _dir: dir,
    }
}

#[test]
fn fresh_apply_creates_verifies_and_records() {
    let s = setup();
    let report = s.agent.reconcile(&seed(), &facts(), 1).expect("apply");
    assert!(report.changed);
    assert_eq!(report.previous_hash, None);
    let compiled = compile(&seed(), &facts(), 1).expect("compile");
    assert_eq!(report.hash, compiled.hash());
    assert_eq!(s.fake.table(), Some(compiled.clone()));
    assert_eq!(s.fake.transactions(), 1);
    let lkg = s.agent.last_known_good().expect("lkg").expect("some");
    assert_eq!(
        (lkg.revision, &lkg.hash, &lkg.policy),
        (1, &report.hash, &seed())
    );
    assert_eq!(lkg.ruleset, compiled);
}

#[test]
fn reapplying_the_same_revision_runs_no_transaction() {
    let s = setup();
    let first = s.agent.reconcile(&seed(), &facts(), 1).expect("apply");
    let again = s.agent.reconcile(&seed(), &facts(), 1).expect("again");
    assert!(!again.changed);
    assert!(again.diff.is_empty());
    assert_eq!(again.hash, first.hash);
    assert_eq!(s.fake.transactions(), 1);
}

#[test]
fn a_changed_policy_is_replaced_with_a_diff() {
    let s = setup();
    s.agent.reconcile(&seed(), &facts(), 1).expect("apply");
    let mut more = seed();
    more.allow.push(allow(Proto::Tcp, 443, "https/tcp"));
    let report = s.agent.reconcile(&more, &facts(), 2).expect("apply 2");
    assert!(report.changed);
    assert!(!report.diff.is_empty());
    assert!(
        report.diff.iter().any(|l| l.contains("443")),
        "{:?}",
        report.diff
    );
    assert_eq!(s.fake.transactions(), 2);
    assert_eq!(
        s.agent.last_known_good().expect("lkg").map(|l| l.revision),
        Some(2)
    );
}

#[test]
fn a_rejected_transaction_changes_nothing() {
    let s = setup();
    let first = s.agent.reconcile(&seed(), &facts(), 1).expect("apply");
    s.fake.fail_next_apply("Error: Could not process rule");
    let mut more = seed();
    more.allow.push(allow(Proto::Tcp, 443, "https/tcp"));
    let err = s.agent.reconcile(&more, &facts(), 2).expect_err("rejected");
    assert!(matches!(err, AgentError::Dataplane(_)), "{err}");
    assert_eq!(s.fake.table().map(|t| t.hash()), Some(first.hash.clone()));
    let lkg = s.agent.last_known_good().expect("lkg").expect("some");
    assert_eq!((lkg.revision, lkg.hash), (1, first.hash));
    assert_no_prepared_record(&s);
}

/// The record prepared during an apply is gone when the apply or its verification failed.
fn assert_no_prepared_record(s: &Setup) {
    let tmp = s.agent.state().path().join("last-known-good.json.tmp");
    assert!(!tmp.exists(), "{} left behind", tmp.display());
}

#[test]
fn a_kernel_that_reads_back_differently_is_an_error_and_not_recorded() {
    let s = setup();
    let mut wrong = compile(&seed(), &facts(), 1).expect("compile");
    if let Some(set) = wrong.sets.get_mut("allow_tcp") {
        std::sync::Arc::make_mut(&mut set.elements).insert(Element::Port(PortRange::single(23)));
    }
    s.fake.mangle_next_apply(wrong);
    let err = s
        .agent
        .reconcile(&seed(), &facts(), 1)
        .expect_err("mismatch");
    match err {
        AgentError::Mismatch { diff } => assert!(diff.iter().any(|l| l.contains("23"))),
        other => panic!("expected Mismatch, got {other}"),
    }
    assert_eq!(s.agent.last_known_good().expect("lkg"), None);
    assert_no_prepared_record(&s);
}

#[test]
fn a_compile_error_applies_nothing() {
    let s = setup();
    let policy = HostPolicy {
        interface: InterfaceSel::Default,
        ..seed()
    };
    let err = s
        .agent
        .reconcile(&policy, &facts(), 1)
        .expect_err("no default route");
    assert!(matches!(err, AgentError::Compile(_)), "{err}");
    assert_eq!(s.fake.transactions(), 0);
    assert_eq!(s.fake.table(), None);
}

#[test]
fn verify_reports_nothing_applied_in_sync_and_drift() {
    let s = setup();
    let v = s.agent.verify().expect("verify");
    assert_eq!(v.status, VerifyStatus::NothingApplied);

    let applied = s.agent.reconcile(&seed(), &facts(), 3).expect("apply");
    let v = s.agent.verify().expect("verify");
    assert_eq!(v.status, VerifyStatus::InSync);
    assert_eq!(v.actual_hash, Some(applied.hash.clone()));

    // A hand-made `nft add element inet portcullis allow_tcp { 23 }`.
    s.fake.tamper(|t| {
        if let Some(set) = t.as_mut().and_then(|t| t.sets.get_mut("allow_tcp")) {
            std::sync::Arc::make_mut(&mut set.elements)
                .insert(Element::Port(PortRange::single(23)));
        }
    });
    let v = s.agent.verify().expect("verify");
    assert_eq!(v.status, VerifyStatus::Drifted);
    assert_eq!(v.expected_hash, Some(applied.hash));
    assert!(v.diff.iter().any(|l| l.contains("23")), "{:?}", v.diff);

    s.fake.tamper(|t| *t = None);
    let v = s.agent.verify().expect("verify");
    assert_eq!(v.status, VerifyStatus::Drifted);
    assert_eq!(v.actual_hash, None);
    assert!(v.diff.iter().any(|l| l.contains("missing")), "{:?}", v.diff);
}

#[test]
fn reconcile_heals_drift() {
    let s = setup();
    s.agent.reconcile(&seed(), &facts(), 1).expect("apply");
    s.fake.tamper(|t| {
        if let Some(chain) = t.as_mut().and_then(|t| t.chains.get_mut("guard")) {
            chain.rules.clear();
        }
    });
    let report = s.agent.reconcile(&seed(), &facts(), 1).expect("heal");
    assert!(report.changed);
    assert_eq!(
        s.agent.verify().expect("verify").status,
        VerifyStatus::InSync
    );
}

#[test]
fn show_reports_counters_sets_and_deny_packets() {
    let s = setup();
    let report = s.agent.show().expect("show");
    assert!(!report.table_present);
    assert_eq!(report.in_sync, None);

    s.agent.reconcile(&seed(), &facts(), 1).expect("apply");
    let table = s.fake.table().expect("table");
    let guard = &table.chains["guard"];
    let deny: Vec<usize> = guard
        .rules
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r, Rule::LogLimited { .. } | Rule::Counted { .. }))
        .map(|(i, _)| i)
        .collect();
    assert!(!deny.is_empty());
    for (n, i) in deny.iter().enumerate() {
        s.fake.hit("guard", *i, 3 + n as u64, 180);
    }
    let report = s.agent.show().expect("show");
    assert!(report.table_present);
    assert_eq!(report.in_sync, Some(true));
    assert_eq!(report.mode.as_deref(), Some("enforce"));
    let expected: u64 = (0..deny.len()).map(|n| 3 + n as u64).sum();
    assert_eq!(report.deny_packets, expected);
    assert_eq!(report.sets.get("allow_tcp"), Some(&2));
    assert_eq!(report.sets.get("allow_udp"), Some(&1));
    assert_eq!(report.chains["guard"][deny[0]].packets, 3);
    assert_eq!(report.kernel_hash, Some(table.hash()));
}

#[test]
fn remove_deletes_the_table_and_optionally_the_record() {
    let s = setup();
    s.agent.reconcile(&seed(), &facts(), 1).expect("apply");
    assert!(s.agent.remove(false).expect("remove"));
    assert_eq!(s.fake.table(), None);
    assert_eq!(
        s.agent.verify().expect("verify").status,
        VerifyStatus::Drifted
    );
    assert!(!s.agent.remove(true).expect("remove again"));
    assert_eq!(
        s.agent.verify().expect("verify").status,
        VerifyStatus::NothingApplied
    );
}

fn listed(nets: &[&str]) -> HostPolicy {
    let list = portcullis_policy::AddrList::from_nets(nets.iter().map(|s| s.parse().expect("net")));
    let mut p = seed();
    p.deny.push(portcullis_policy::DenyEntry {
        proto: None,
        ports: None,
        from: Vec::new(),
        lists: vec!["blocked.txt".into()],
        label: "deny".into(),
    });
    p.lists.insert("blocked.txt".into(), Arc::new(list));
    p
}

#[test]
fn a_list_only_change_is_an_element_delta_then_drift_forces_a_full_apply() {
    let s = setup();
    s.agent
        .reconcile(&listed(&["192.0.2.1/32", "10.0.0.0/8"]), &facts(), 1)
        .expect("r1");
    let full = s.fake.transactions();
    let r2 = listed(&["192.0.2.2/32", "10.0.0.0/8"]);
    let report = s.agent.reconcile(&r2, &facts(), 2).expect("r2");
    assert!(report.changed);
    assert!(
        report.diff.iter().all(|l| l.contains("list delta")),
        "{:?}",
        report.diff
    );
    assert_eq!(s.fake.transactions(), full + 1, "one element transaction");
    let compiled = compile(&r2, &facts(), 2).expect("compile");
    let kernel = s.fake.table().expect("table");
    assert_eq!(kernel.sets, compiled.sets);
    assert_eq!(
        report.hash,
        compiled.hash(),
        "the controller's expected hash"
    );
    let lkg = s.agent.last_known_good().expect("lkg").expect("some");
    assert_eq!((lkg.revision, &lkg.policy), (2, &r2));
    assert_eq!(
        s.agent.verify().expect("verify").status,
        VerifyStatus::InSync
    );

    // Someone edits the table: the next list change is a full replace, which heals it.
    s.fake.tamper(|t| {
        if let Some(t) = t {
            t.chains.get_mut("guard").expect("guard").rules.clear();
        }
    });
    let r3 = listed(&["192.0.2.3/32", "10.0.0.0/8"]);
    let report = s.agent.reconcile(&r3, &facts(), 3).expect("r3");
    assert!(
        !report.diff.iter().any(|l| l.contains("list delta")),
        "{:?}",
        report.diff
    );
    let compiled = compile(&r3, &facts(), 3).expect("compile");
    assert_eq!(s.fake.table().expect("table"), compiled);
}

#[tokio::test]
async fn async_applies_compile_with_the_agents_fact_source() {
    let s = setup();
    let agent = s
        .agent
        .clone()
        .with_facts(Arc::new(crate::facts::FixedFacts(facts())));
    let report = agent.apply_policy(&seed(), 1).await.expect("apply");
    let compiled = compile(&seed(), &facts(), 1).expect("compile");
    assert_eq!(report.hash, compiled.hash());
    assert_eq!(s.fake.table(), Some(compiled));
    assert_eq!(agent.facts().gather().await.expect("facts").hostname, "h1");
}
