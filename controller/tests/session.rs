//! Component tests of the controller against fake agents and admin clients over real
//! mutual TLS on loopback: sessions, apply, status, history, and authorization.

#![allow(clippy::unwrap_used)]

mod common;

use common::{TestController, apply_request, hello};
use portcullis_policy::{Facts, HostPolicy, compile};
use portcullis_proto::v1;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// A fake agent: says Hello, answers every Desired with Applied and the hash it compiles.
struct FakeAgent {
    tx: mpsc::Sender<v1::AgentMessage>,
    inbound: tonic::Streaming<v1::ControllerMessage>,
}

impl FakeAgent {
    async fn open(
        ctl: &TestController,
        cert_host: &str,
        hello_msg: v1::AgentMessage,
    ) -> Result<Self, tonic::Status> {
        let ch = ctl.agent_channel(cert_host).await;
        let mut client = v1::session_client::SessionClient::new(ch);
        let (tx, rx) = mpsc::channel(8);
        tx.send(hello_msg).await.unwrap();
        let inbound = client.open(ReceiverStream::new(rx)).await?.into_inner();
        Ok(Self { tx, inbound })
    }

    async fn next_desired(&mut self) -> v1::Desired {
        let msg = tokio::time::timeout(Duration::from_secs(5), self.inbound.next())
            .await
            .expect("no Desired within 5 s")
            .expect("stream ended")
            .expect("stream error");
        match msg.msg {
            Some(v1::controller_message::Msg::Desired(d)) => d,
            other => panic!("expected Desired, got {other:?}"),
        }
    }

    async fn apply(&mut self, host: &str) -> v1::Desired {
        let d = self.next_desired().await;
        let policy = HostPolicy::try_from(d.policy.as_ref().unwrap()).unwrap();
        let facts = Facts::try_from(&common_facts(host)).unwrap();
        let hash = compile(&policy, &facts, d.revision).unwrap().hash().0;
        self.tx
            .send(v1::AgentMessage {
                msg: Some(v1::agent_message::Msg::Applied(v1::Applied {
                    revision: d.revision,
                    ok: true,
                    hash,
                    error: String::new(),
                    duration_us: 1234,
                    changes: String::new(),
                    request_id: d.request_id,
                    need_full: false,
                })),
            })
            .await
            .unwrap();
        d
    }
}

fn common_facts(host: &str) -> v1::Facts {
    match hello(host).msg {
        Some(v1::agent_message::Msg::Hello(h)) => h.facts.unwrap(),
        _ => unreachable!(),
    }
}

async fn collect_results(
    stream: &mut tonic::Streaming<v1::ApplyEvent>,
    n: usize,
) -> Vec<v1::HostResult> {
    let mut out = Vec::new();
    while out.len() < n {
        let ev = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("apply stream stalled")
            .expect("apply stream ended")
            .unwrap();
        if let Some(v1::apply_event::Event::Host(h)) = ev.event
            && h.outcome != v1::HostOutcome::Disconnected as i32
        {
            out.push(h);
        }
    }
    out
}

#[tokio::test]
async fn apply_reaches_connected_agent_and_offline_host_gets_it_on_connect() {
    let ctl = TestController::start().await;
    let mut h1 = FakeAgent::open(&ctl, "h1", hello("h1")).await.unwrap();
    // Wait for registration (the Hello is processed before open() returns).
    let mut admin = ctl.admin("ops").await;
    let mut stream = admin
        .apply(apply_request(common::SITE, ""))
        .await
        .unwrap()
        .into_inner();
    let accepted = match stream.next().await.unwrap().unwrap().event {
        Some(v1::apply_event::Event::Accepted(a)) => a,
        other => panic!("{other:?}"),
    };
    assert_eq!(accepted.revision, 1);
    assert_eq!(accepted.hosts, vec!["h1", "h2"]);
    assert_eq!(accepted.offline, vec!["h2"]);
    let d = h1.apply("h1").await;
    assert_eq!(d.revision, 1);
    assert!(
        !d.expected_hash.is_empty(),
        "controller computes the expected hash"
    );
    let results = collect_results(&mut stream, 1).await;
    assert_eq!(results[0].host, "h1");
    assert_eq!(
        results[0].outcome,
        v1::HostOutcome::Applied as i32,
        "{results:?}"
    );

    // h2 comes up later and gets revision 1 on connect; the apply stream reports it.
    let mut h2 = FakeAgent::open(&ctl, "h2", hello("h2")).await.unwrap();
    assert_eq!(h2.apply("h2").await.revision, 1);
    let results = collect_results(&mut stream, 1).await;
    assert_eq!(results[0].host, "h2");
    assert_eq!(results[0].outcome, v1::HostOutcome::Applied as i32);

    let status = admin
        .status(v1::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.hosts.len(), 2);
    for h in &status.hosts {
        assert!(h.connected && h.hash_match, "{h:?}");
        assert_eq!((h.desired_revision, h.applied_revision), (1, 1));
    }
    let history = admin
        .history(v1::HistoryRequest { limit: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.revisions.len(), 1);
    assert_eq!(history.revisions[0].author, "ops");
    assert_eq!(history.revisions[0].applied, 2);
}

#[tokio::test]
async fn agent_already_on_desired_revision_is_not_sent_it_again() {
    let ctl = TestController::start().await;
    let mut h1 = FakeAgent::open(&ctl, "h1", hello("h1")).await.unwrap();
    let mut admin = ctl.admin("ops").await;
    let mut stream = admin
        .apply(apply_request(common::SITE, "h1"))
        .await
        .unwrap()
        .into_inner();
    let d = h1.apply("h1").await;
    collect_results(&mut stream, 1).await;
    drop(h1);
    // Reconnect claiming revision 1 with the expected hash: nothing to send.
    let mut again = hello("h1");
    if let Some(v1::agent_message::Msg::Hello(h)) = &mut again.msg {
        h.applied_revision = 1;
        h.kernel_hash = d.expected_hash.clone();
    }
    let mut h1 = FakeAgent::open(&ctl, "h1", again).await.unwrap();
    let r = tokio::time::timeout(Duration::from_millis(500), h1.inbound.next()).await;
    assert!(r.is_err(), "nothing should be pushed, got {r:?}");
    // Reconnect with a drifted kernel hash: the revision is sent again.
    drop(h1);
    let mut h1 = FakeAgent::open(&ctl, "h1", hello("h1")).await.unwrap();
    assert_eq!(h1.next_desired().await.revision, 1);
}

#[tokio::test]
async fn invalid_site_is_refused_with_location_and_nothing_stored() {
    let ctl = TestController::start().await;
    let mut admin = ctl.admin("ops").await;
    let bad =
        "- name: web\n  hosts: web\n  policy:\n    allow:\n      - smtp/udp\n    colour: blue\n";
    let err = admin.apply(apply_request(bad, "")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("site.yml:5"), "{}", err.message());
    assert!(err.message().contains("site.yml:6"), "{}", err.message());
    let history = admin
        .history(v1::HistoryRequest { limit: 0 })
        .await
        .unwrap()
        .into_inner();
    assert!(history.revisions.is_empty());
}

#[tokio::test]
async fn hello_for_another_host_is_permission_denied() {
    let ctl = TestController::start().await;
    let err = FakeAgent::open(&ctl, "h1", hello("h2"))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("h1") && err.message().contains("h2"));
}

#[tokio::test]
async fn old_protocol_version_gets_a_clear_refusal() {
    let ctl = TestController::start().await;
    let mut h = hello("h1");
    if let Some(v1::agent_message::Msg::Hello(x)) = &mut h.msg {
        x.protocol_version = 0;
    }
    let err = FakeAgent::open(&ctl, "h1", h).await.err().unwrap();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("upgrade the agent"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn agent_certificate_cannot_call_admin() {
    let ctl = TestController::start().await;
    let ch = ctl.agent_channel("h1").await;
    let mut admin = v1::admin_client::AdminClient::new(ch);
    let err = admin.status(v1::StatusRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn admin_certificate_cannot_open_a_session() {
    let ctl = TestController::start().await;
    let issued = ctl.pki.issue_admin("ops", true).unwrap();
    let ch = ctl
        .channel_with(ctl.pki.ca_cert(), issued.cert, issued.key)
        .await;
    let mut client = v1::session_client::SessionClient::new(ch);
    let (tx, rx) = mpsc::channel(1);
    tx.send(hello("ops")).await.unwrap();
    let err = client.open(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn revoked_certificates_are_refused() {
    let ctl = TestController::start().await;
    let ch = ctl.agent_channel("h1").await;
    ctl.pki.revoke("agent/h1").unwrap();
    let mut client = v1::session_client::SessionClient::new(ch);
    let (tx, rx) = mpsc::channel(1);
    tx.send(hello("h1")).await.unwrap();
    // Refused per call (PermissionDenied) or the connection is already cut.
    let err = client.open(ReceiverStream::new(rx)).await.unwrap_err();
    assert!(
        err.code() != Code::PermissionDenied || err.message().contains("revoked"),
        "{err:?}"
    );

    let mut admin = ctl.admin("ops").await;
    ctl.pki.revoke("admin/ops").unwrap();
    assert!(admin.status(v1::StatusRequest {}).await.is_err());
    // And a new connection with a revoked certificate gets nothing either.
    let issued = ctl
        .pki
        .cert_paths(&portcullis_controller::identity::Role::Admin("ops".into()));
    let tls =
        portcullis_controller::pki::tls::client_tls(&ctl.pki.ca_cert(), &issued.0, &issued.1, None)
            .unwrap();
    let again = async {
        let ch = tonic::transport::Endpoint::from_shared(ctl.url())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        v1::admin_client::AdminClient::new(ch)
            .status(v1::StatusRequest {})
            .await
    }
    .await;
    assert!(again.is_err(), "revoked admin reconnected: {again:?}");
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused_at_first_call() {
    let ctl = TestController::start().await;
    let other = tempfile::tempdir().unwrap();
    let foreign = portcullis_controller::pki::Pki::new(other.path().join("pki"));
    portcullis_controller::pki::Pki::init(foreign.dir(), false).unwrap();
    let issued = foreign.issue_admin("mallory", false).unwrap();
    // Trusts the real CA (so the server is verified) but presents a foreign client cert.
    let tls = portcullis_controller::pki::tls::client_tls(
        &ctl.pki.ca_cert(),
        &issued.cert,
        &issued.key,
        None,
    )
    .unwrap();
    let result = async {
        let ch = tonic::transport::Endpoint::from_shared(ctl.url())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        v1::admin_client::AdminClient::new(ch)
            .status(v1::StatusRequest {})
            .await
    }
    .await;
    assert!(result.is_err(), "foreign CA must be refused");
}

#[tokio::test]
async fn store_survives_a_controller_restart() {
    let mut ctl = TestController::start().await;
    let mut h1 = FakeAgent::open(&ctl, "h1", hello("h1")).await.unwrap();
    let mut admin = ctl.admin("ops").await;
    let mut stream = admin
        .apply(apply_request(common::SITE, "h1"))
        .await
        .unwrap()
        .into_inner();
    h1.apply("h1").await;
    collect_results(&mut stream, 1).await;
    drop((h1, stream, admin));
    ctl.stop().await;
    ctl.serve().await;
    let mut admin = ctl.admin("ops").await;
    let history = admin
        .history(v1::HistoryRequest { limit: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.revisions.len(), 1);
    let status = admin
        .status(v1::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let h1 = status.hosts.iter().find(|h| h.host == "h1").unwrap();
    assert_eq!(h1.applied_revision, 1);
    assert!(!h1.connected);
}
