//! A simulated agent for controller tests, driven like the real one: it applies every
//! `Desired` (its kernel hash is the expected one), and under commit-confirmed ends its
//! session after `Applied` and opens a new one whose `Hello` attests the new revision; it
//! answers `VerifyNow` (in sync, or drifted on a chosen revision), takes `Confirm`, and on
//! `Revert` goes back to the revision it had and reports `Reverted`. What it received goes
//! into one [`Log`] shared by the hosts of a test, so the order across hosts shows.

#![allow(clippy::unwrap_used)]

use super::TestController;
use portcullis_proto::v1;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// What the hosts of a test received, in order: `"<host> <what> r<revision>"`.
#[derive(Debug, Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }

    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Position of the first line equal to `line`.
    pub fn find(&self, line: &str) -> Option<usize> {
        self.lines().iter().position(|l| l == line)
    }

    /// Waits until `line` is logged (panics after `within`).
    pub async fn wait_for(&self, line: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.find(line).is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{line:?} not logged within {within:?}: {:#?}",
                self.lines()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// How a simulated agent misbehaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct Behaviour {
    /// Report drift whenever asked to verify while on this revision.
    pub drift_on: Option<u64>,
    /// Never answer a `Desired` for this revision.
    pub mute_on: Option<u64>,
}

/// A running simulated agent (stopped on drop).
pub struct SimAgent(tokio::task::JoinHandle<()>);

impl Drop for SimAgent {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn hello(host: &str, applied: &(u64, String)) -> v1::AgentMessage {
    let mut m = super::hello(host);
    if let Some(v1::agent_message::Msg::Hello(h)) = &mut m.msg {
        h.applied_revision = applied.0;
        h.applied_hash = applied.1.clone();
        h.kernel_hash = applied.1.clone();
    }
    m
}

fn msg(m: v1::agent_message::Msg) -> v1::AgentMessage {
    v1::AgentMessage { msg: Some(m) }
}

/// Start `host`'s simulated agent with its sessions on `ctl`.
pub async fn spawn(ctl: &TestController, host: &str, log: &Log, behaviour: Behaviour) -> SimAgent {
    let channel = ctl.agent_channel(host).await;
    SimAgent(tokio::spawn(run(
        channel,
        host.to_owned(),
        log.clone(),
        behaviour,
    )))
}

async fn run(channel: Channel, host: String, log: Log, behaviour: Behaviour) {
    // (revision, kernel hash) enforced, and the one before (what a revert restores).
    let mut applied: (u64, String) = (0, String::new());
    let mut previous: (u64, String) = (0, String::new());
    loop {
        let (tx, rx) = mpsc::channel(64);
        tx.send(hello(&host, &applied)).await.unwrap();
        let mut client = v1::session_client::SessionClient::new(channel.clone());
        let Ok(inbound) = client.open(ReceiverStream::new(rx)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut inbound = inbound.into_inner();
        while let Some(Ok(m)) = inbound.next().await {
            match m.msg {
                Some(v1::controller_message::Msg::Desired(d)) => {
                    let confirm = d.confirm_timeout_ms > 0;
                    let how = if confirm {
                        "desired-confirm"
                    } else {
                        "desired"
                    };
                    log.push(format!("{host} {how} r{}", d.revision));
                    if behaviour.mute_on == Some(d.revision) {
                        continue;
                    }
                    previous =
                        std::mem::replace(&mut applied, (d.revision, d.expected_hash.clone()));
                    let a = v1::Applied {
                        revision: d.revision,
                        ok: true,
                        hash: d.expected_hash.clone(),
                        request_id: d.request_id,
                        ..Default::default()
                    };
                    tx.send(msg(v1::agent_message::Msg::Applied(a)))
                        .await
                        .unwrap();
                    if confirm {
                        // As the real agent: end our side, let the controller end its
                        // (it read Applied), come back through the new rules.
                        drop(tx);
                        let drained = async { while let Some(Ok(_)) = inbound.next().await {} };
                        let _ = tokio::time::timeout(Duration::from_millis(500), drained).await;
                        break;
                    }
                }
                Some(v1::controller_message::Msg::Confirm(c)) => {
                    log.push(format!("{host} confirm r{}", c.revision));
                }
                Some(v1::controller_message::Msg::Revert(r)) => {
                    log.push(format!("{host} revert r{}", r.revision));
                    if applied.0 == r.revision {
                        let restored = std::mem::replace(&mut applied, previous.clone());
                        let rv = v1::Reverted {
                            revision: restored.0,
                            restored_revision: applied.0,
                            reason: r.reason.clone(),
                            ..Default::default()
                        };
                        let _ = tx.send(msg(v1::agent_message::Msg::Reverted(rv))).await;
                    }
                }
                Some(v1::controller_message::Msg::Verify(v)) => {
                    log.push(format!("{host} verify r{}", applied.0));
                    let drifted = behaviour.drift_on == Some(applied.0);
                    let report = v1::DriftReport {
                        revision: applied.0,
                        in_sync: !drifted,
                        expected_hash: applied.1.clone(),
                        kernel_hash: applied.1.clone(),
                        diff: if drifted {
                            vec!["+ rule added by someone".into()]
                        } else {
                            Vec::new()
                        },
                        trigger: "request".into(),
                        request_id: v.request_id,
                        ..Default::default()
                    };
                    let _ = tx.send(msg(v1::agent_message::Msg::Drift(report))).await;
                }
                _ => {}
            }
        }
    }
}
