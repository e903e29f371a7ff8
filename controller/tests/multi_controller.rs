//! Two controllers on one PostgreSQL store: a revision applied through A reaches an agent
//! whose session B holds (published through the database), A follows its result from the
//! store, and both answer `status` and `logs` for the whole fleet. A rollout in waves
//! started on A drives hosts on both: commit-confirmed through B, drift gates through B,
//! a failed gate on B's host halts and rolls back through B, and B obeys only the
//! rollout's own controller for the rollout's hosts (forged notices change nothing), and
//! aborts it through the database. Runs against the test cluster
//! (`portcullis_testkit::postgres`; fails without one unless `PORTCULLIS_SKIP_POSTGRES=1`).

#![allow(clippy::unwrap_used)]

mod common;

use common::sim::{self, Behaviour, Log};
use common::{FakeAgent, TestController, apply_request};
use portcullis_controller::store::relay::{self, Step};
use portcullis_proto::v1;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt as _;

async fn desired(agent: &mut FakeAgent, within: Duration) -> v1::Desired {
    loop {
        let msg = tokio::time::timeout(within, agent.inbound.next())
            .await
            .expect("no Desired in time")
            .expect("session ended")
            .unwrap();
        if let Some(v1::controller_message::Msg::Desired(d)) = msg.msg {
            return d;
        }
    }
}

fn shared_db() -> Option<portcullis_controller::store::DbSpec> {
    // (Both controllers on it, and the tests' own connection.)
    let cluster = portcullis_testkit::require_postgres()?;
    let url = cluster.fresh_database().unwrap();
    Some(portcullis_controller::store::DbSpec::Postgres(url))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_through_one_controller_reaches_agents_on_another() {
    let Some(db) = shared_db() else { return };
    let a = TestController::start_on(db).await;
    let b = a.peer().await;
    let mut h1 = FakeAgent::open(&b, "h1").await;
    // Registered on B (Hello stored) before the apply.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut admin_a = a.admin("ops").await;
    let started = Instant::now();
    let mut events = admin_a
        .apply(apply_request(common::SITE, "h1"))
        .await
        .unwrap()
        .into_inner();
    let first = events.next().await.unwrap().unwrap();
    let Some(v1::apply_event::Event::Accepted(acc)) = first.event else {
        panic!("{first:?}")
    };
    assert_eq!(acc.hosts, ["h1"]);
    assert!(acc.offline.is_empty(), "h1 is connected (to B): {acc:?}");

    let d = desired(&mut h1, Duration::from_secs(2)).await;
    let reached = started.elapsed();
    assert_eq!(d.revision, acc.revision);
    assert!(
        reached < Duration::from_secs(1),
        "published to B in {reached:?}"
    );
    h1.tx
        .send(v1::AgentMessage {
            msg: Some(v1::agent_message::Msg::Applied(v1::Applied {
                revision: d.revision,
                ok: true,
                hash: d.expected_hash.clone(),
                request_id: d.request_id,
                ..Default::default()
            })),
        })
        .await
        .unwrap();
    // A follows the host through the store.
    let result = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("no result on A")
        .unwrap()
        .unwrap();
    let Some(v1::apply_event::Event::Host(r)) = result.event else {
        panic!("{result:?}")
    };
    assert_eq!(
        (r.host.as_str(), r.outcome),
        ("h1", v1::HostOutcome::Applied as i32)
    );

    // Both controllers answer for the whole fleet.
    for ctl in [&a, &b] {
        let status = ctl
            .admin("ops")
            .await
            .status(v1::StatusRequest::default())
            .await
            .unwrap()
            .into_inner();
        let h = status.hosts.iter().find(|h| h.host == "h1").unwrap();
        assert!(h.connected, "{h:?}");
        assert_eq!(h.applied_revision, d.revision);
        assert!(h.hash_match, "{h:?}");
    }

    // A denial batch stored through B is in A's logs, and reaches a `--follow` on A.
    let mut follow = admin_a
        .logs(v1::LogsRequest {
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let backlog = follow.next().await.unwrap().unwrap();
    assert!(backlog.rows.is_empty(), "{backlog:?}");
    h1.store(v1::DenialBatch {
        seq: 1,
        epoch: 7,
        seen: 1,
        sent: 1,
        entries: vec![v1::DenialEntry {
            src: "192.0.2.9".into(),
            dst: "10.0.0.1".into(),
            proto: 6,
            dport: 23,
            ifname: "eth0".into(),
            count: 1,
            first_unix_ms: common::now_ms(),
            last_unix_ms: common::now_ms(),
            revision: d.revision,
            ..Default::default()
        }],
        ..Default::default()
    })
    .await;
    let mut logs = admin_a
        .logs(v1::LogsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = logs.next().await.unwrap().unwrap();
    assert_eq!(first.rows.len(), 1, "{first:?}");
    assert_eq!(first.rows[0].src, "192.0.2.9");
    let live = tokio::time::timeout(Duration::from_secs(3), follow.next())
        .await
        .expect("the followed row did not arrive on A")
        .unwrap()
        .unwrap();
    assert_eq!(live.rows.len(), 1, "{live:?}");
    assert_eq!(live.rows[0].src, "192.0.2.9");

    // `drift` on A reaches h1 through B: B asks it to verify, A reads the answer.
    let mut admin = a.admin("ops").await;
    let ask = tokio::spawn(async move {
        admin
            .drift(v1::DriftRequest {
                pattern: "h1".into(),
                timeout_ms: 5_000,
            })
            .await
            .map(tonic::Response::into_inner)
    });
    let verify = loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), h1.inbound.next())
            .await
            .expect("no VerifyNow through B")
            .unwrap()
            .unwrap();
        if let Some(v1::controller_message::Msg::Verify(v)) = msg.msg {
            break v;
        }
    };
    h1.tx
        .send(v1::AgentMessage {
            msg: Some(v1::agent_message::Msg::Drift(v1::DriftReport {
                revision: d.revision,
                in_sync: true,
                expected_hash: d.expected_hash.clone(),
                kernel_hash: d.expected_hash.clone(),
                trigger: "request".into(),
                request_id: verify.request_id,
                ..Default::default()
            })),
        })
        .await
        .unwrap();
    let drift = ask.await.unwrap().unwrap();
    let h = drift.hosts.iter().find(|h| h.host == "h1").unwrap();
    assert_eq!(h.state, v1::DriftState::InSync as i32, "{h:?}");
    assert_eq!(h.revision, d.revision);
}

const INVENTORY3: &str = "all:\n  hosts:\n    h1:\n    h2:\n    h3:\n";

fn site(allow: &str) -> String {
    format!("- name: all\n  hosts: all\n  policy:\n    allow: [{allow}]\n")
}

/// An apply of `site` to h1-h3; with `serial` a rollout (commit-confirmed for
/// `confirm_ms` > 0).
fn request(site: &str, serial: &str, max_fail: &str, confirm_ms: u64) -> v1::ApplyRequest {
    v1::ApplyRequest {
        site_name: "site.yml".into(),
        site_yaml: site.into(),
        inventory_name: "inventory.yml".into(),
        inventory_yaml: INVENTORY3.into(),
        serial: serial.into(),
        max_fail: max_fail.into(),
        confirm_timeout_ms: confirm_ms,
        ..Default::default()
    }
}

/// Every event of the apply through `ctl` until its stream ends (60 s at most).
async fn run_apply(ctl: &TestController, req: v1::ApplyRequest) -> Vec<v1::apply_event::Event> {
    let mut stream = ctl
        .admin("ops")
        .await
        .apply(req)
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(ev) = stream.next().await {
            events.push(ev.unwrap().event.unwrap());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the apply did not end within 60 s: {events:#?}"));
    events
}

fn accepted(events: &[v1::apply_event::Event]) -> &v1::ApplyAccepted {
    events
        .iter()
        .find_map(|e| match e {
            v1::apply_event::Event::Accepted(a) => Some(a),
            _ => None,
        })
        .unwrap()
}

fn finished(events: &[v1::apply_event::Event]) -> &v1::RolloutFinished {
    events
        .iter()
        .find_map(|e| match e {
            v1::apply_event::Event::Finished(f) => Some(f),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Finished: {events:#?}"))
}

/// Each host's first result (its wave's outcome).
fn outcomes(events: &[v1::apply_event::Event]) -> BTreeMap<String, (v1::HostOutcome, u32)> {
    let mut out = BTreeMap::new();
    for e in events {
        if let v1::apply_event::Event::Host(r) = e {
            out.entry(r.host.clone()).or_insert((r.outcome(), r.wave));
        }
    }
    out
}

/// Waits until `ctl`'s `status` shows `hosts` connected (to it or to the other one).
async fn wait_connected(ctl: &TestController, hosts: &[&str]) {
    let mut admin = ctl.admin("ops").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = admin
            .status(v1::StatusRequest::default())
            .await
            .unwrap()
            .into_inner();
        let up = |h: &&str| st.hosts.iter().any(|x| x.host == *h && x.connected);
        if hosts.iter().all(up) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not all of {hosts:?} connected: {st:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn rollouts(ctl: &TestController) -> v1::RolloutsResponse {
    ctl.admin("ops")
        .await
        .rollouts(v1::RolloutsRequest::default())
        .await
        .unwrap()
        .into_inner()
}

/// (host, wave, state) of the latest rollout.
fn host_states(r: &v1::RolloutsResponse) -> Vec<(String, u32, String)> {
    r.rollouts[0]
        .hosts
        .iter()
        .map(|h| (h.host.clone(), h.wave, h.state.clone()))
        .collect()
}

fn triples(v: &[(&str, u32, &str)]) -> Vec<(String, u32, String)> {
    v.iter()
        .map(|(h, w, s)| ((*h).to_owned(), *w, (*s).to_owned()))
        .collect()
}

/// r1 through A, a plain apply: every host on it (those on B through B).
async fn first_revision(a: &TestController) {
    let ev = run_apply(a, request(&site("http/tcp"), "", "", 0)).await;
    let got = outcomes(&ev);
    assert_eq!(got.len(), 3, "{ev:#?}");
    assert!(
        got.values().all(|(o, _)| *o == v1::HostOutcome::Applied),
        "{ev:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_through_one_controller_drives_hosts_on_both_in_waves() {
    let Some(db) = shared_db() else { return };
    let a = TestController::start_on(db).await;
    let b = a.peer().await;
    let log = Log::default();
    let _h1 = sim::spawn(&a, "h1", &log, Behaviour::default()).await;
    let _h2 = sim::spawn(&b, "h2", &log, Behaviour::default()).await;
    let _h3 = sim::spawn(&b, "h3", &log, Behaviour::default()).await;
    wait_connected(&a, &["h1", "h2", "h3"]).await;
    first_revision(&a).await;

    // r2 in two waves, commit-confirmed: h1 (on A), then h2 and h3 (on B).
    let ev = run_apply(&a, request(&site("smtp/tcp"), "1,2", "", 10_000)).await;
    let acc = accepted(&ev);
    assert_eq!(acc.revision, 2);
    assert!(
        acc.offline.is_empty(),
        "h2, h3 are connected (to B): {acc:?}"
    );
    let f = finished(&ev);
    assert_eq!(f.status, "succeeded", "{ev:#?}\n{:#?}", log.lines());
    use v1::HostOutcome::Confirmed;
    let want: BTreeMap<String, (v1::HostOutcome, u32)> = [
        ("h1".to_string(), (Confirmed, 0)),
        ("h2".to_string(), (Confirmed, 1)),
        ("h3".to_string(), (Confirmed, 1)),
    ]
    .into();
    assert_eq!(outcomes(&ev), want, "{ev:#?}");

    // Each host of B was sent r2 with its deadline through B, came back on a new session
    // and was confirmed through B, then verified for the drift gate through B.
    let at = |l: &str| {
        log.find(l)
            .unwrap_or_else(|| panic!("{l:?} not seen: {:#?}", log.lines()))
    };
    for h in ["h1", "h2", "h3"] {
        assert!(at(&format!("{h} desired-confirm r2")) < at(&format!("{h} confirm r2")));
        assert!(at(&format!("{h} confirm r2")) < at(&format!("{h} verify r2")));
    }
    // Waves in order: wave 2 only after h1 was confirmed and passed its gate.
    for h in ["h2", "h3"] {
        assert!(
            at("h1 verify r2") < at(&format!("{h} desired-confirm r2")),
            "{:#?}",
            log.lines()
        );
    }

    // B shows the same rollout (per-host results) and history, and the hosts on r2.
    let (ra, rb) = (rollouts(&a).await, rollouts(&b).await);
    assert_eq!(ra, rb);
    assert_eq!(rb.rollouts[0].status, "succeeded");
    assert_eq!(
        host_states(&rb),
        triples(&[
            ("h1", 0, "confirmed"),
            ("h2", 1, "confirmed"),
            ("h3", 1, "confirmed")
        ])
    );
    let history = b
        .admin("ops")
        .await
        .history(v1::HistoryRequest::default())
        .await
        .unwrap()
        .into_inner();
    let revs: Vec<u64> = history.revisions.iter().map(|r| r.revision).collect();
    assert_eq!(revs, [2, 1]);
    let st = b
        .admin("ops")
        .await
        .status(v1::StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    for h in &st.hosts {
        assert_eq!((h.desired_revision, h.applied_revision), (2, 2), "{h:?}");
        assert!(h.hash_match && h.connected, "{h:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_gate_on_a_host_of_the_other_controller_rolls_back_through_it() {
    let Some(db) = shared_db() else { return };
    let a = TestController::start_on(db).await;
    let b = a.peer().await;
    let log = Log::default();
    let drifts = Behaviour {
        drift_on: Some(2),
        ..Behaviour::default()
    };
    let _h1 = sim::spawn(&a, "h1", &log, Behaviour::default()).await;
    let _h2 = sim::spawn(&b, "h2", &log, drifts).await;
    let _h3 = sim::spawn(&a, "h3", &log, Behaviour::default()).await;
    wait_connected(&a, &["h1", "h2", "h3"]).await;
    first_revision(&a).await;

    // Waves h1 | h2 | h3: h2 (on B) drifts on r2, its drift gate (through B) fails.
    let ev = run_apply(&a, request(&site("smtp/tcp"), "1", "", 10_000)).await;
    let f = finished(&ev);
    assert_eq!(f.status, "rolled_back", "{ev:#?}\n{:#?}", log.lines());
    assert_eq!(f.rolled_back, ["h1", "h2"], "{f:?}");
    assert!(f.rollback_failed.is_empty(), "{f:?}");
    assert!(f.reason.contains("h2: drift gate"), "{f:?}");
    // h2 got r1 back through B (no deadline), after its failed verification; h3 never r2.
    log.wait_for("h2 desired r1", Duration::from_secs(1)).await;
    let lines = log.lines();
    let at = |l: &str| lines.iter().rposition(|x| x == l).unwrap();
    assert!(at("h2 verify r2") < at("h2 desired r1"), "{lines:#?}");
    assert!(at("h1 verify r2") < at("h1 desired r1"), "{lines:#?}");
    assert!(
        !lines.iter().any(|l| l.starts_with("h3 desired-confirm")),
        "{lines:#?}"
    );

    let (ra, rb) = (rollouts(&a).await, rollouts(&b).await);
    assert_eq!(ra, rb);
    assert_eq!(rb.rollouts[0].status, "rolled_back");
    assert_eq!(
        host_states(&rb),
        triples(&[
            ("h1", 0, "rolled_back"),
            ("h2", 1, "rolled_back"),
            ("h3", 2, "pending")
        ])
    );
    let st = b
        .admin("ops")
        .await
        .status(v1::StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    for h in &st.hosts {
        assert_eq!((h.desired_revision, h.applied_revision), (1, 1), "{h:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_rollout_notices_change_nothing_and_an_abort_through_the_other_controller_stops_it()
{
    let Some(db) = shared_db() else { return };
    let a = TestController::start_on(db.clone()).await;
    let b = a.peer().await;
    let log = Log::default();
    let mute = Behaviour {
        mute_on: Some(2),
        ..Behaviour::default()
    };
    let _h1 = sim::spawn(&a, "h1", &log, mute).await;
    let _h2 = sim::spawn(&b, "h2", &log, Behaviour::default()).await;
    let _h3 = sim::spawn(&a, "h3", &log, Behaviour::default()).await;
    wait_connected(&a, &["h1", "h2", "h3"]).await;
    first_revision(&a).await;

    // Waves h1 | h2 | h3; h1 never answers r2, so wave 1 runs until A gives up (6.4 s).
    let apply = {
        let a_addr = a.admin("ops").await;
        tokio::spawn(async move {
            let mut admin = a_addr;
            let mut stream = admin
                .apply(request(&site("smtp/tcp"), "1", "1", 8_000))
                .await
                .unwrap()
                .into_inner();
            let mut events = Vec::new();
            while let Some(ev) = stream.next().await {
                events.push(ev.unwrap().event.unwrap());
            }
            events
        })
    };
    log.wait_for("h1 desired-confirm r2", Duration::from_secs(5))
        .await;
    let running = rollouts(&b).await;
    assert_eq!(running.rollouts[0].status, "running");
    let id = running.rollouts[0].id;

    // Notices on the rollout channel, as anyone with database access could send them.
    let store = portcullis_controller::store::Store::connect(&db, None)
        .await
        .unwrap();
    let owner = store
        .call(move |c| relay::lease(c, id))
        .await
        .unwrap()
        .unwrap()
        .controller;
    let h2 = vec!["h2".to_string()];
    let forged: Vec<(String, u64, Step, u64, Vec<String>)> = vec![
        // An unknown rollout.
        ("forger".into(), 999, Step::Send, 2, h2.clone()),
        // Not the controller holding the lease.
        ("forger".into(), id, Step::Send, 2, h2.clone()),
        ("forger".into(), id, Step::Rollback, 2, h2.clone()),
        // The rollout's controller, but h2's wave has not started (not staged).
        (owner.clone(), id, Step::Send, 2, h2.clone()),
        (owner.clone(), id, Step::Confirm, 2, h2.clone()),
        // Another revision than the rollout's.
        (owner.clone(), id, Step::Send, 1, h2.clone()),
        // Not a host of the rollout.
        (owner.clone(), id, Step::Confirm, 2, vec!["h9".to_string()]),
    ];
    store
        .call(move |c| {
            for (from, id, step, rev, hosts) in &forged {
                relay::publish_rollout(c, from, *id, *step, *rev, hosts)?;
            }
            c.execute(
                "SELECT pg_notify('portcullis_publish', 'x rollout 1 nonsense')",
                &[],
            )?;
            Ok(())
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let h2_lines: Vec<String> = log
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("h2 ") && l != "h2 desired r1")
        .collect();
    assert!(
        h2_lines.is_empty(),
        "B acted on a forged notice: {h2_lines:?}"
    );

    // While A's rollout holds its lease, B refuses another apply.
    let refused = b
        .admin("ops")
        .await
        .apply(request(&site("ssh/tcp"), "", "", 0))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused
            .message()
            .contains(&format!("rollout {id} is running on controller {owner}")),
        "{refused:?}"
    );

    // `rollout abort` through B stops A's rollout after its wave.
    let aborted = b
        .admin("ops")
        .await
        .rollout_abort(v1::RolloutAbortRequest { rollout_id: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(aborted.rollout_id, id);
    let ev = tokio::time::timeout(Duration::from_secs(20), apply)
        .await
        .unwrap()
        .unwrap();
    let f = finished(&ev);
    assert_eq!(f.status, "aborted", "{ev:#?}");
    assert_eq!(rollouts(&b).await.rollouts[0].status, "aborted");
    assert!(
        !log.lines()
            .iter()
            .any(|l| l.starts_with("h2 desired-confirm")),
        "{:#?}",
        log.lines()
    );
}
