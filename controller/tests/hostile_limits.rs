//! Budgets and limits under a misbehaving peer (issue 10, items 4 and 6), over real mutual
//! TLS: message floods end that session with RESOURCE_EXHAUSTED while others are served,
//! an alias bomb through `Apply` is refused at once with one error, an inventory larger
//! than tonic's 4 MiB default is accepted, a `logs --follow` that does not read is dropped
//! with a final status, and concurrent applies store hashes for their own revision.

#![allow(clippy::unwrap_used)]

mod common;

use common::{FakeAgent, TestController, apply_request, hello};
use portcullis_policy::{Facts, HostPolicy};
use portcullis_proto::v1;
use std::time::Duration;
use tokio_stream::StreamExt as _;
use tonic::Code;

/// A fake agent whose waits give up after 10 s.
async fn open(ctl: &TestController, host: &str) -> FakeAgent {
    FakeAgent::open(ctl, host)
        .await
        .within(Duration::from_secs(10))
}

fn heartbeat() -> v1::AgentMessage {
    v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::Heartbeat(v1::Heartbeat::default())),
    }
}

#[tokio::test]
async fn a_heartbeat_flood_ends_that_session_only() {
    let ctl = TestController::start().await;
    let mut evil = open(&ctl, "evil").await;
    let _good = open(&ctl, "good").await;
    let flood = {
        let tx = evil.tx.clone();
        tokio::spawn(async move {
            for _ in 0..10_000 {
                if tx.send(heartbeat()).await.is_err() {
                    return;
                }
            }
        })
    };
    let end = evil.end().await;
    assert_eq!(end.code(), Code::ResourceExhausted, "{end:?}");
    assert!(
        end.message().contains("too many Heartbeat messages"),
        "{end:?}"
    );
    flood.abort();
    // The controller still answers everyone else, and the flooder may reconnect.
    let mut admin = ctl.admin("ops").await;
    let status = tokio::time::timeout(
        Duration::from_secs(5),
        admin.status(v1::StatusRequest::default()),
    )
    .await
    .expect("status answered")
    .unwrap()
    .into_inner();
    assert!(status.hosts.iter().any(|h| h.host == "good"));
    let _again = open(&ctl, "evil").await;
}

#[tokio::test]
async fn a_drift_report_flood_is_refused_too() {
    let ctl = TestController::start().await;
    let mut evil = open(&ctl, "evil").await;
    for _ in 0..2_000 {
        let msg = v1::AgentMessage {
            msg: Some(v1::agent_message::Msg::Drift(v1::DriftReport::default())),
        };
        if evil.tx.send(msg).await.is_err() {
            break;
        }
    }
    let end = evil.end().await;
    assert_eq!(end.code(), Code::ResourceExhausted, "{end:?}");
    assert!(end.message().contains("DriftReport"), "{end:?}");
}

#[tokio::test]
async fn apply_refuses_an_alias_bomb_with_one_error() {
    let ctl = TestController::start().await;
    let bomb = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../policy/tests/fixtures/alias-bomb.yml"
    ))
    .unwrap();
    let mut admin = ctl.admin("ops").await;
    let started = std::time::Instant::now();
    let err = admin
        .apply(apply_request(&bomb, ""))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "invalid policy:\nsite.yml:9:12: too many alias expansions (limit 1000000)"
    );
    // Not a performance figure: a bomb that expanded would take seconds and gigabytes.
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn an_inventory_over_the_default_4_mib_is_accepted() {
    let ctl = TestController::start().await;
    let mut inventory = String::from("all:\n  children:\n    web:\n      hosts:\n");
    for n in 0..90_000 {
        inventory.push_str(&format!(
            "        web{n:05}.example.org: {{ansible_host: 10.{}.{}.{}, rack: r{}}}\n",
            n >> 16,
            (n >> 8) & 255,
            n & 255,
            n % 40
        ));
    }
    assert!(inventory.len() > 5 << 20, "{}", inventory.len());
    let mut req = apply_request(common::SITE, "web00001.example.org");
    req.inventory_yaml = inventory;
    let mut admin = ctl.admin("ops").await;
    let mut stream = admin.apply(req).await.unwrap().into_inner();
    let first = stream.next().await.unwrap().unwrap();
    let Some(v1::apply_event::Event::Accepted(a)) = first.event else {
        panic!("expected Accepted, got {first:?}");
    };
    assert_eq!(a.hosts, ["web00001.example.org"]);
}

#[tokio::test]
async fn a_follow_that_does_not_read_is_dropped_with_a_final_status() {
    let ctl = TestController::start().await;
    let issued = ctl.pki.issue_admin("slow", true).unwrap();
    let tls = portcullis_controller::pki::tls::client_tls(
        &ctl.pki.ca_cert(),
        &issued.cert,
        &issued.key,
        None,
    )
    .unwrap();
    // A small receive window: the server's buffers fill as they would behind `| less`.
    let ch = tonic::transport::Endpoint::from_shared(ctl.url())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .initial_stream_window_size(Some(16 << 10))
        .initial_connection_window_size(Some(16 << 10))
        .connect()
        .await
        .unwrap();
    let mut admin = v1::admin_client::AdminClient::new(ch);
    let req = v1::LogsRequest {
        follow: true,
        ..Default::default()
    };
    let mut follow = admin.logs(req).await.unwrap().into_inner();

    let mut agent = open(&ctl, "h1").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let batches = portcullis_controller::server::logs::LIVE_DEPTH * 2 + 100;
    for seq in 1..=batches as u64 {
        let entries = (0..100u32)
            .map(|i| v1::DenialEntry {
                src: format!("10.{}.{}.{}", seq % 250, i / 250, i % 250),
                dst: "10.0.0.1".into(),
                proto: 6,
                dport: 22,
                ifname: "eth0".into(),
                count: 1,
                first_unix_ms: now,
                last_unix_ms: now,
                ..Default::default()
            })
            .collect();
        let batch = v1::DenialBatch {
            seq,
            epoch: 1,
            entries,
            seen: 100,
            sent: 100,
            ..Default::default()
        };
        let msg = v1::AgentMessage {
            msg: Some(v1::agent_message::Msg::Denials(batch)),
        };
        agent.tx.send(msg).await.unwrap();
        // Wait for the acknowledgement: stored (and broadcast) before the next one.
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), agent.inbound.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if matches!(m.msg, Some(v1::controller_message::Msg::DenialAck(_))) {
                break;
            }
        }
    }
    // Now read: what was buffered, then the status that says why it stopped.
    let end = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(e) = follow.next().await {
            if let Err(s) = e {
                return Some(s);
            }
        }
        None
    })
    .await
    .expect("the follow stream ended");
    let end = end.expect("ended with an error status, not silently");
    assert_eq!(end.code(), Code::ResourceExhausted, "{end:?}");
    assert!(end.message().contains("fell behind"), "{end:?}");
}

#[tokio::test]
async fn concurrent_applies_store_hashes_for_their_own_revision() {
    let ctl = TestController::start().await;
    // h1 is known (facts), so Apply compiles and stores its expected hash.
    let _h1 = open(&ctl, "h1").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sites = [
        "- name: a\n  hosts: h1\n  policy:\n    allow: [http/tcp]\n",
        "- name: b\n  hosts: h1\n  policy:\n    allow: [smtp/tcp]\n",
    ];
    for _ in 0..8 {
        let mut calls = Vec::new();
        for site in sites {
            let mut admin = ctl.admin("ops").await;
            calls.push(tokio::spawn(async move {
                admin.apply(apply_request(site, "h1")).await.map(|_| ())
            }));
        }
        for c in calls {
            c.await.unwrap().unwrap();
        }
    }
    // Every stored revision's expected hash is the one compiled for that revision.
    let store =
        portcullis_controller::store::Store::open(&ctl.dir.path().join("controller.db")).unwrap();
    let rows: Vec<(u64, String, String)> = store
        .call_sync(|c| {
            c.query(
                "SELECT rh.revision, p.json, rh.expected_hash FROM revision_hosts rh
                   JOIN policies p ON p.id = rh.policy_id WHERE rh.host = 'h1'",
                portcullis_controller::args![],
                |r| Ok((r.get::<i64>(0)? as u64, r.get(1)?, r.get(2)?)),
            )
        })
        .unwrap();
    assert_eq!(rows.len(), 16);
    let facts = Facts::try_from(match &hello("h1").msg {
        Some(v1::agent_message::Msg::Hello(h)) => h.facts.as_ref().unwrap(),
        _ => unreachable!(),
    })
    .unwrap();
    for (rev, json, stored) in rows {
        let policy: HostPolicy = serde_json::from_str(&json).unwrap();
        let want = portcullis_controller::server::expected_hash(&policy, &facts, rev);
        assert_eq!(stored, want, "revision {rev}");
    }
}
