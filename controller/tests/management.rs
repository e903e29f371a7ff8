//! The site's `management:` entries reach the agent with every `Desired`, whichever path
//! sends it: a rollout wave and the push on (re)connect, not only a plain apply (the
//! agent keeps them for its fail-closed policy).

#![allow(clippy::unwrap_used)]

mod common;

use common::{FakeAgent, TestController, apply_request};
use portcullis_proto::v1;
use std::time::Duration;
use tokio_stream::StreamExt as _;

const SITE: &str = "- name: web\n  hosts: web\n  management: [tcp/22 from 10.0.0.0/8]\n  policy:\n    allow: [ssh/tcp, http/tcp]\n";

/// The next `Desired` the controller sends this agent.
async fn desired(agent: &mut FakeAgent) -> v1::Desired {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), agent.inbound.next())
            .await
            .expect("no Desired within 10 s")
            .expect("session ended")
            .unwrap();
        if let Some(v1::controller_message::Msg::Desired(d)) = msg.msg {
            return d;
        }
    }
}

fn entries(d: &v1::Desired) -> Vec<String> {
    d.management
        .as_ref()
        .map(|m| m.entries.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_rollout_wave_carries_the_management_entries() {
    let ctl = TestController::start().await;
    let mut h1 = FakeAgent::open(&ctl, "h1").await;
    let _h2 = FakeAgent::open(&ctl, "h2").await;
    // Both registered (their facts known) before the rollout starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut admin = ctl.admin("ops").await;
    let mut req = apply_request(SITE, "");
    req.serial = "1".into();
    let _events = admin.apply(req).await.unwrap().into_inner();
    let d = desired(&mut h1).await;
    assert_eq!(entries(&d), ["tcp/22 from 10.0.0.0/8"], "{d:?}");
}

#[tokio::test]
async fn the_push_on_connect_carries_the_management_entries() {
    let ctl = TestController::start().await;
    let mut admin = ctl.admin("ops").await;
    // Nobody connected: stored (the first event says so), sent when h1 comes.
    let mut events = admin
        .apply(apply_request(SITE, ""))
        .await
        .unwrap()
        .into_inner();
    let first = events.next().await.unwrap().unwrap();
    assert!(
        matches!(first.event, Some(v1::apply_event::Event::Accepted(_))),
        "{first:?}"
    );
    let mut h1 = FakeAgent::open(&ctl, "h1").await;
    let d = desired(&mut h1).await;
    assert_eq!(entries(&d), ["tcp/22 from 10.0.0.0/8"], "{d:?}");
}
