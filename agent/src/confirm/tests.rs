use super::*;
use crate::{FakeDataplane, StateDir};
use portcullis_policy::{AllowEntry, Facts, HostPolicy, PortRange, Proto};

fn policy(port: u16) -> HostPolicy {
    HostPolicy {
        allow: vec![AllowEntry {
            proto: Proto::Tcp,
            ports: PortRange::single(port),
            from: Vec::new(),
            lists: Vec::new(),
            label: format!("{port}/tcp"),
        }],
        ..HostPolicy::default()
    }
}

fn agent(dir: &Path) -> Agent {
    Agent::new(Arc::new(FakeDataplane::new()), StateDir::new(dir))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn offline() -> Uplink {
    tokio::sync::watch::channel(None).1
}

#[test]
fn a_record_that_cannot_be_written_refuses_the_apply() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path());
    let confirmer = Confirmer::open(&agent, offline());
    std::fs::create_dir(durable::tmp_path(&dir.path().join(PENDING_FILE))).unwrap();
    let err = runtime().block_on(confirmer.begin(2, 5_000)).unwrap_err();
    assert!(
        err.to_string().contains("pending-confirm.json.tmp"),
        "{err}"
    );
    assert_eq!(confirmer.awaiting(), None);
}

#[test]
fn a_crash_after_the_apply_finds_the_record_and_reverts() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path());
    agent.reconcile(&policy(25), &Facts::default(), 1).unwrap();
    let runtime = runtime();
    {
        let confirmer = Confirmer::open(&agent, offline());
        runtime.block_on(confirmer.begin(2, 0)).unwrap();
        agent.reconcile(&policy(80), &Facts::default(), 2).unwrap();
        // Crash: the process ends here, nothing else runs.
    }
    assert_eq!(agent.last_known_good().unwrap().unwrap().revision, 2);
    let restarted = Confirmer::open(&agent, offline());
    assert_eq!(restarted.awaiting(), Some(2));
    runtime.block_on(restarted.revert(2, "deadline"));
    assert_eq!(restarted.awaiting(), None);
    let lkg = agent.last_known_good().unwrap().unwrap();
    assert_eq!((lkg.revision, lkg.policy), (1, policy(25)));
    let report: RevertedReport = read(&dir.path().join(REVERTED_FILE)).unwrap();
    assert_eq!((report.revision, report.restored_revision), (2, 1));
    assert!(!dir.path().join(PENDING_FILE).exists());
}

#[test]
fn the_deadline_reverts_on_its_own_and_the_report_goes_out_at_the_next_session() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path());
    agent.reconcile(&policy(25), &Facts::default(), 1).unwrap();
    let (link, uplink) = tokio::sync::watch::channel(None);
    let confirmer = Arc::new(Confirmer::open(&agent, uplink));
    runtime().block_on(async {
        let _watch = WatchGuard(tokio::spawn(confirmer.clone().watch()));
        confirmer.begin(2, 200).await.unwrap();
        agent.reconcile(&policy(80), &Facts::default(), 2).unwrap();
        confirmer.applied(2, true).await;
        assert!(dir.path().join(PENDING_FILE).exists());
        // Offline at the deadline: reverted anyway, the report kept.
        tokio::time::timeout(Duration::from_secs(10), async {
            while confirmer.awaiting().is_some() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!(agent.last_known_good().unwrap().unwrap().revision, 1);
        assert!(dir.path().join(REVERTED_FILE).exists());
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        link.send_replace(Some(tx));
        confirmer.connected().await;
        let Some(v1::agent_message::Msg::Reverted(r)) = rx.recv().await.unwrap().msg else {
            panic!("not a Reverted report");
        };
        assert_eq!((r.revision, r.restored_revision), (2, 1));
        assert!(!dir.path().join(REVERTED_FILE).exists());
        confirmer.connected().await;
        assert!(rx.try_recv().is_err(), "sent once");
    });
}

#[test]
fn confirm_clears_the_record_and_a_late_revert_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path());
    agent.reconcile(&policy(25), &Facts::default(), 1).unwrap();
    let confirmer = Confirmer::open(&agent, offline());
    runtime().block_on(async {
        confirmer.begin(2, 60_000).await.unwrap();
        agent.reconcile(&policy(80), &Facts::default(), 2).unwrap();
        confirmer.applied(2, true).await;
        confirmer.confirm(2).await;
        assert_eq!(confirmer.awaiting(), None);
        assert!(!dir.path().join(PENDING_FILE).exists());
        confirmer.revert(2, "too late").await;
    });
    assert_eq!(agent.last_known_good().unwrap().unwrap().revision, 2);
    assert!(!dir.path().join(REVERTED_FILE).exists());
}
