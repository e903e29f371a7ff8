//! Two controllers on one PostgreSQL store: a revision applied through A reaches an agent
//! whose session B holds (published through the database), A follows its result from the
//! store, and both answer `status` and `logs` for the whole fleet. Runs against the test
//! cluster (`portcullis_testkit::postgres`; fails without one unless
//! `PORTCULLIS_SKIP_POSTGRES=1`).

#![allow(clippy::unwrap_used)]

mod common;

use common::{FakeAgent, TestController, apply_request};
use portcullis_proto::v1;
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
