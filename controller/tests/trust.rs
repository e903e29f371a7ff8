//! The client side of trust against a real controller: agents (through the same
//! `portcullis-trust` connector the agent uses) and the admin CLI refuse a revoked
//! controller certificate once they hold the CA-signed list; a CA rotation with a bundle
//! of old + new CA keeps every session working.

#![allow(clippy::unwrap_used)]

mod common;

use common::{TestController, hello};
use portcullis_controller::pki::Pki;
use portcullis_proto::v1;
use portcullis_trust::{Revocations, Update};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;

/// A session opened the way the agent opens it (our TLS, revocation list checked).
struct TrustingAgent {
    tx: mpsc::Sender<v1::AgentMessage>,
    inbound: tonic::Streaming<v1::ControllerMessage>,
}

async fn connect(
    ctl: &TestController,
    ca: &Path,
    pki: &Pki,
    host: &str,
    revoked: &Arc<Revocations>,
) -> Result<TrustingAgent, String> {
    let (cert, key) = pki.cert_paths(&portcullis_controller::identity::Role::Agent(host.into()));
    if !cert.exists() {
        pki.issue_agent(host, false).unwrap();
    }
    let tls = portcullis_trust::client_config(ca, &cert, &key, revoked.clone()).unwrap();
    let (endpoint, target) = portcullis_trust::endpoint(&ctl.url()).unwrap();
    let channel = portcullis_trust::connect(&endpoint, &target, tls)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let (tx, rx) = mpsc::channel(8);
    tx.send(hello(host)).await.unwrap();
    let inbound = v1::session_client::SessionClient::new(channel)
        .open(ReceiverStream::new(rx))
        .await
        .map_err(|e| format!("{e:?}"))?
        .into_inner();
    Ok(TrustingAgent { tx, inbound })
}

/// The next signed revocation list the controller sends on this session.
async fn next_list(a: &mut TrustingAgent) -> v1::SignedRevocations {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let m = a.inbound.next().await.unwrap().unwrap();
            if let Some(v1::controller_message::Msg::Revocations(r)) = m.msg {
                return r;
            }
        }
    })
    .await
    .expect("no SignedRevocations within 5 s")
}

#[tokio::test]
async fn an_agent_refuses_a_revoked_controller_certificate() {
    let ctl = TestController::start().await;
    let state = tempfile::tempdir().unwrap();
    let roots = portcullis_trust::list::read_roots(&ctl.pki.ca_cert()).unwrap();
    let kept = Arc::new(Revocations::open(
        state.path().join("revocations.signed"),
        roots,
    ));
    let mut agent = connect(&ctl, &ctl.pki.ca_cert(), &ctl.pki, "h1", &kept)
        .await
        .unwrap();

    let revoked = ctl.pki.revoke("controller").unwrap();
    assert!(revoked.written.iter().any(|p| p.ends_with("revoked.sig")));
    // The controller distributes the signed list on the open session.
    let list = next_list(&mut agent).await;
    assert_eq!(
        kept.update(&list.list, &list.signature).unwrap(),
        Update::Newer
    );
    let serial = &revoked.added[0].0;
    assert!(kept.is_revoked(serial));
    // A tampered list is refused.
    let mut forged = list.list.clone();
    forged.extend_from_slice(b"01\n");
    assert!(kept.update(&forged, &list.signature).is_err());
    drop(agent);

    // Reconnecting: the handshake is refused (the list survives a restart too).
    let roots = portcullis_trust::list::read_roots(&ctl.pki.ca_cert()).unwrap();
    let restarted = Arc::new(Revocations::open(
        state.path().join("revocations.signed"),
        roots,
    ));
    let Err(err) = connect(&ctl, &ctl.pki.ca_cert(), &ctl.pki, "h1", &restarted).await else {
        panic!("connected to a revoked controller");
    };
    assert!(err.contains("Revoked"), "{err}");

    // The admin CLI refuses it too (it reads revoked.txt + revoked.sig beside its CA).
    let admin = ctl.pki.issue_admin("ops", false).unwrap();
    let args = portcullis_controller::cli::connect::ConnectArgs {
        controller: Some(ctl.url()),
        cert: Some(admin.cert),
        key: Some(admin.key),
        ca: Some(ctl.pki.ca_cert()),
        config: Some(state.path().join("no-cli.toml")),
    };
    std::fs::write(state.path().join("no-cli.toml"), "").unwrap();
    let Err(err) = args.admin().await else {
        panic!("CLI connected to a revoked controller");
    };
    assert!(format!("{err:#}").contains("Revoked"), "{err:#}");
}

#[tokio::test]
async fn a_ca_rotation_with_a_bundle_keeps_every_session_working() {
    let ctl = TestController::start().await;
    let bundle = ctl.pki.ca_cert();
    let empty = || {
        Arc::new(Revocations::empty(
            portcullis_trust::list::read_roots(&bundle).unwrap(),
        ))
    };
    // h1 (old CA) is connected throughout.
    let mut h1 = connect(&ctl, &bundle, &ctl.pki, "h1", &empty())
        .await
        .unwrap();

    // 1. A new CA; every party's ca.crt becomes the bundle old + new.
    let new_dir = tempfile::tempdir().unwrap();
    let new = Pki::new(new_dir.path().join("pki"));
    Pki::init(new.dir(), false).unwrap();
    let old_pem = std::fs::read_to_string(&bundle).unwrap();
    let new_pem = std::fs::read_to_string(new.ca_cert()).unwrap();
    std::fs::write(&bundle, format!("{old_pem}{new_pem}")).unwrap();
    std::fs::copy(&bundle, new.ca_cert()).unwrap();

    // 2. The controller gets a certificate from the new CA (reloaded without a restart).
    let issued = new
        .issue_controller(&["127.0.0.1".into(), "localhost".into()], false)
        .unwrap();
    let (cert, key) = ctl
        .pki
        .cert_paths(&portcullis_controller::identity::Role::Controller);
    std::fs::copy(&issued.key, &key).unwrap();
    std::fs::copy(&issued.cert, &cert).unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // 3. Agents with old and new certificates connect, trusting the bundle.
    let _h2_old = connect(&ctl, &bundle, &ctl.pki, "h2", &empty())
        .await
        .unwrap();
    let mut h3_new = connect(&ctl, &bundle, &new, "h3", &empty()).await.unwrap();
    // The controller now presents the new CA's certificate: a client trusting only the
    // new CA gets in (the last step of a rotation drops the old CA from the bundle).
    let new_only = new_dir.path().join("new-only.crt");
    std::fs::write(&new_only, &new_pem).unwrap();
    let only = Arc::new(Revocations::empty(
        portcullis_trust::list::read_roots(&new_only).unwrap(),
    ));
    let _h4 = connect(&ctl, &new_only, &new, "h4", &only).await.unwrap();
    let mut admin = ctl.admin("ops").await;
    let status = admin
        .status(v1::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let connected: Vec<&str> = status
        .hosts
        .iter()
        .filter(|h| h.connected)
        .map(|h| h.host.as_str())
        .collect();
    assert_eq!(connected, ["h1", "h2", "h3", "h4"], "{status:?}");

    // h1's session from before the rotation still carries traffic both ways.
    for agent in [&mut h1, &mut h3_new] {
        let beat = v1::AgentMessage {
            msg: Some(v1::agent_message::Msg::Heartbeat(v1::Heartbeat::default())),
        };
        agent.tx.send(beat).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(300), agent.inbound.next())
                .await
                .is_err(),
            "the session ended during the rotation"
        );
    }
    let drift = admin
        .drift(v1::DriftRequest {
            pattern: "h1".into(),
            timeout_ms: 200,
        })
        .await
        .unwrap()
        .into_inner();
    // h1 is reachable (asked), it just does not answer in this test.
    assert!(drift.hosts[0].error.contains("no answer"), "{drift:?}");
}
