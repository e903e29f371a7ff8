//! Hostile peers against a real controller over real mutual TLS on loopback: idle and
//! never-finishing connections, an agent answering another host's questions, revoked
//! agents and admins with open streams, a second session for the same host.
//!
//! A second source address is 127.0.0.2 (all of 127/8 is local on Linux loopback).

#![allow(clippy::unwrap_used)]

mod common;

use common::{FakeAgent, TestController, hello};
use portcullis_controller::server::incoming::PreAuth;
use portcullis_proto::v1;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;

/// A TCP connection from `source` that never sends anything.
async fn idle_from(source: &str, to: std::net::SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

fn drift_report(request_id: u64, in_sync: bool, diff: &[&str]) -> v1::AgentMessage {
    v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::Drift(v1::DriftReport {
            in_sync,
            diff: diff.iter().map(|d| (*d).to_owned()).collect(),
            trigger: "request".into(),
            request_id,
            ..Default::default()
        })),
    }
}

#[tokio::test]
async fn idle_sockets_from_one_source_do_not_lock_out_status() {
    let ctl = TestController::start_with_limits(100, PreAuth::default()).await;
    // 150 plain TCP connections from one source, sending nothing (held open).
    let mut idle = Vec::new();
    for _ in 0..150 {
        idle.push(idle_from("127.0.0.2", ctl.addr).await);
    }
    // An operator and an agent from another source still get in.
    let mut admin = ctl.admin("ops").await;
    let status = admin
        .status(v1::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let counters = status.counters.unwrap();
    assert!(
        counters.refused_connections >= 150 - 16,
        "per-source limit: {counters:?}"
    );
    let _agent = FakeAgent::open(&ctl, "h1").await;
    // Beyond the per-source limit the surplus was closed at once.
    let mut closed = 0;
    for s in &mut idle {
        let mut b = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(20), s.read(&mut b)).await
        {
            closed += 1;
        }
    }
    assert!(closed >= 150 - 16, "only {closed} surplus sockets closed");
}

#[tokio::test]
async fn a_handshake_that_never_finishes_is_closed_after_the_deadline() {
    let pre_auth = PreAuth {
        handshake_timeout: Duration::from_secs(1),
        ..PreAuth::default()
    };
    let ctl = TestController::start_with_limits(100, pre_auth).await;
    let mut s = idle_from("127.0.0.2", ctl.addr).await;
    let started = Instant::now();
    let mut b = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
        .await
        .expect("still open 10 s after a 1 s handshake deadline");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before the deadline"
    );
    let mut admin = ctl.admin("ops").await;
    let c = admin
        .status(v1::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .counters
        .unwrap();
    assert_eq!(c.handshake_timeouts, 1, "{c:?}");
}

#[tokio::test]
async fn another_hosts_answers_are_ignored_and_drift_reports_the_real_state() {
    let ctl = TestController::start().await;
    let mut h1 = FakeAgent::open(&ctl, "h1").await;
    let mut h9 = FakeAgent::open(&ctl, "h9").await;
    // h1 answers honestly, late: its table was flushed.
    let h1_task = tokio::spawn(async move {
        while let Some(Ok(m)) = h1.inbound.next().await {
            if let Some(v1::controller_message::Msg::Verify(v)) = m.msg {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let r = drift_report(
                    v.request_id,
                    false,
                    &["nft flush chain inet portcullis guard"],
                );
                h1.tx.send(r).await.unwrap();
            }
        }
    });
    // h9 answers at once every id around its own, and a few more, all "in sync".
    let h9_task = tokio::spawn(async move {
        while let Some(Ok(m)) = h9.inbound.next().await {
            if let Some(v1::controller_message::Msg::Verify(v)) = m.msg {
                let mut ids: Vec<u64> = (1..=20).collect();
                ids.extend((0..20).map(|d| v.request_id.wrapping_add(d).wrapping_sub(10)));
                for id in ids.into_iter().filter(|id| *id != v.request_id) {
                    h9.tx.send(drift_report(id, true, &[])).await.unwrap();
                }
                h9.tx
                    .send(drift_report(v.request_id, true, &[]))
                    .await
                    .unwrap();
            }
        }
    });
    let mut admin = ctl.admin("ops").await;
    for _ in 0..3 {
        let r = admin
            .drift(v1::DriftRequest {
                pattern: String::new(),
                timeout_ms: 3000,
            })
            .await
            .unwrap()
            .into_inner();
        let state = |h: &str| {
            let d = r.hosts.iter().find(|d| d.host == h).unwrap();
            (v1::DriftState::try_from(d.state).unwrap(), d.diff.clone())
        };
        let (s1, diff1) = state("h1");
        assert_eq!(s1, v1::DriftState::Drifted, "{r:?}");
        assert!(diff1.iter().any(|d| d.contains("flush")), "{diff1:?}");
        assert_eq!(state("h9").0, v1::DriftState::InSync);
    }
    let c = admin
        .status(v1::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .counters
        .unwrap();
    assert_eq!(c.ignored_answers, 3 * 39, "{c:?}");
    h1_task.abort();
    h9_task.abort();
}

#[tokio::test]
async fn revoking_an_agent_closes_its_open_session_and_it_cannot_reconnect() {
    let ctl = TestController::start().await;
    let mut h1 = FakeAgent::open(&ctl, "h1").await;
    let mut h2 = FakeAgent::open(&ctl, "h2").await;
    ctl.pki.revoke("agent/h1").unwrap();
    h1.ends_within(Duration::from_secs(3)).await;
    // The other host's session stays up (it is sent the new signed list, nothing ends).
    let h2_end = tokio::time::timeout(Duration::from_millis(1500), async {
        loop {
            match h2.inbound.next().await {
                Some(Ok(_)) => continue,
                other => return other,
            }
        }
    })
    .await;
    assert!(h2_end.is_err(), "h2's session ended too: {h2_end:?}");
    // Reconnecting with the revoked certificate fails.
    let (cert, key) = ctl
        .pki
        .cert_paths(&portcullis_controller::identity::Role::Agent("h1".into()));
    let tls =
        portcullis_controller::pki::tls::client_tls(&ctl.pki.ca_cert(), &cert, &key, None).unwrap();
    let again = async {
        let ch = tonic::transport::Endpoint::from_shared(ctl.url())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let (tx, rx) = mpsc::channel(1);
        tx.send(hello("h1")).await.unwrap();
        v1::session_client::SessionClient::new(ch)
            .open(ReceiverStream::new(rx))
            .await
            .map(|_| ())
    }
    .await;
    assert!(again.is_err(), "revoked agent reconnected");
}

#[tokio::test]
async fn revoking_an_admin_ends_its_logs_follow_stream() {
    let ctl = TestController::start().await;
    let mut admin = ctl.admin("eve").await;
    let mut follow = admin
        .logs(v1::LogsRequest {
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Still streaming a second later (nothing to send is not an end).
    match tokio::time::timeout(Duration::from_secs(1), follow.next()).await {
        Err(_) | Ok(Some(Ok(_))) => {}
        other => panic!("follow ended before the revocation: {other:?}"),
    }
    ctl.pki.revoke("admin/eve").unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match follow.next().await {
                Some(Ok(_)) => continue,
                other => return other,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "logs --follow still streaming 3 s after revoke"
    );
}

#[tokio::test]
async fn a_second_session_for_the_same_host_closes_the_first() {
    let ctl = TestController::start().await;
    let mut first = FakeAgent::open(&ctl, "h1").await;
    let _second = FakeAgent::open(&ctl, "h1").await;
    let status = first.ends_within(Duration::from_secs(3)).await;
    let status = status.expect("ended with a status");
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    // Reports sent on the old stream are not written for the host any more.
    let stale = v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::Heartbeat(v1::Heartbeat {
            applied_revision: 0,
            kernel_hash: "stale-session".into(),
            ..Default::default()
        })),
    };
    let _ = first.tx.send(stale).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut admin = ctl.admin("ops").await;
    let status = admin
        .status(v1::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let h1 = status.hosts.iter().find(|h| h.host == "h1").unwrap();
    assert!(h1.connected, "the newer session is the registered one");
    assert_ne!(
        h1.reported_hash, "stale-session",
        "the replaced session wrote a report"
    );
}

#[tokio::test]
async fn applied_and_reverted_that_answer_nothing_are_ignored() {
    let ctl = TestController::start().await;
    let h1 = FakeAgent::open(&ctl, "h1").await;
    // An Applied for a revision h1 was never sent, and a Reverted of no rollout.
    let forged = [
        v1::agent_message::Msg::Applied(v1::Applied {
            revision: 5,
            ok: true,
            hash: "forged".into(),
            request_id: 0x1234_5678,
            ..Default::default()
        }),
        v1::agent_message::Msg::Reverted(v1::Reverted {
            revision: 5,
            restored_revision: 4,
            reason: "forged".into(),
            hash: "forged".into(),
        }),
    ];
    for msg in forged {
        h1.tx
            .send(v1::AgentMessage { msg: Some(msg) })
            .await
            .unwrap();
    }
    let mut admin = ctl.admin("ops").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        let s = admin
            .status(v1::StatusRequest {})
            .await
            .unwrap()
            .into_inner();
        if s.counters.as_ref().unwrap().ignored_answers >= 2 || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        status.counters.as_ref().unwrap().ignored_answers,
        2,
        "{status:?}"
    );
    let h = status.hosts.iter().find(|h| h.host == "h1").unwrap();
    assert_ne!(h.applied_revision, 5, "{h:?}");
    assert_ne!(h.reported_hash, "forged", "{h:?}");
}

#[tokio::test]
async fn one_certificate_cannot_hold_more_than_its_share_of_connections() {
    let pre_auth = PreAuth {
        max_per_identity: 2,
        ..PreAuth::default()
    };
    let ctl = TestController::start_with_limits(100, pre_auth).await;
    // One stolen admin key, many connections: the first two are served, the rest closed
    // right after the handshake (TLS 1.3: the client learns it at its first call).
    let eve = ctl.pki.issue_admin("eve", true).unwrap();
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..5 {
        let ch = ctl
            .channel_with(ctl.pki.ca_cert(), eve.cert.clone(), eve.key.clone())
            .await;
        let mut c = v1::admin_client::AdminClient::new(ch);
        match c.status(v1::StatusRequest {}).await {
            Ok(_) => held.push(c),
            Err(_) => refused += 1,
        }
    }
    assert_eq!(held.len(), 2, "connections served for one certificate");
    assert_eq!(refused, 3);
    // The held ones keep working, and another identity is not affected.
    for c in &mut held {
        c.status(v1::StatusRequest {}).await.unwrap();
    }
    let mut ops = ctl.admin("ops").await;
    let counters = ops
        .status(v1::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .counters
        .unwrap();
    assert!(counters.refused_connections >= 3, "{counters:?}");
    // A slot freed is a slot for the same certificate again.
    drop(held.pop());
    let mut again = None;
    for _ in 0..50 {
        let ch = ctl
            .channel_with(ctl.pki.ca_cert(), eve.cert.clone(), eve.key.clone())
            .await;
        let mut c = v1::admin_client::AdminClient::new(ch);
        if c.status(v1::StatusRequest {}).await.is_ok() {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(again.is_some(), "the freed slot was not given back");
}
