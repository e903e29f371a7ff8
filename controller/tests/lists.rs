//! Address-list files (`from: { file }`) over the admin API: sent with the apply, parsed
//! with the site, their networks in each host's policy; bad lines refused at list
//! file:line:column with nothing stored.

#![allow(clippy::unwrap_used)]

mod common;

use common::{TestController, apply_request, hello};
use portcullis_policy::HostPolicy;
use portcullis_proto::v1;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const SITE: &str = "\
- name: web
  hosts: web
  policy:
    allow:
      - { port: 22, proto: tcp, from: [10.77.9.0/24, { file: lists/admins.txt }] }
";

fn list(name: &str, content: &str) -> v1::ListFile {
    v1::ListFile {
        name: name.into(),
        content: content.into(),
    }
}

async fn history_len(
    admin: &mut v1::admin_client::AdminClient<tonic::transport::Channel>,
) -> usize {
    admin
        .history(v1::HistoryRequest { limit: 0 })
        .await
        .unwrap()
        .into_inner()
        .revisions
        .len()
}

#[tokio::test]
async fn list_file_networks_reach_the_agent_in_its_policy() {
    let ctl = TestController::start().await;
    let ch = ctl.agent_channel("h1").await;
    let mut client = v1::session_client::SessionClient::new(ch);
    let (tx, rx) = mpsc::channel(8);
    tx.send(hello("h1")).await.unwrap();
    let mut inbound = client
        .open(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut admin = ctl.admin("ops").await;
    let mut req = apply_request(SITE, "h1");
    req.lists = vec![list("lists/admins.txt", "# admins\n10.77.1.5\nfd77::7\n\n")];
    let mut stream = admin.apply(req).await.unwrap().into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert!(
        matches!(first.event, Some(v1::apply_event::Event::Accepted(_))),
        "{first:?}"
    );
    let msg = tokio::time::timeout(Duration::from_secs(5), inbound.next())
        .await
        .expect("no Desired within 5 s")
        .expect("stream ended")
        .expect("stream error");
    let Some(v1::controller_message::Msg::Desired(d)) = msg.msg else {
        panic!("expected Desired, got {msg:?}");
    };
    let policy = HostPolicy::try_from(d.policy.as_ref().unwrap()).unwrap();
    let from: Vec<String> = policy.allow[0].from.iter().map(|n| n.to_string()).collect();
    assert_eq!(from, ["10.77.9.0/24"]);
    assert_eq!(policy.allow[0].lists, ["lists/admins.txt"]);
    // The list travels once, packed, beside the entries that name it.
    let nets: Vec<String> = policy.lists["lists/admins.txt"]
        .nets()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(nets, ["10.77.1.5/32", "fd77::7/128"]);
    assert_eq!(d.policy.as_ref().unwrap().lists[0].v4.len(), 5);
}

#[tokio::test]
async fn a_bad_list_line_is_refused_at_its_location_and_nothing_is_stored() {
    let ctl = TestController::start().await;
    let mut admin = ctl.admin("ops").await;
    let mut req = apply_request(SITE, "");
    req.lists = vec![list("lists/admins.txt", "10.77.1.5\n  10.77.1.0/16\n")];
    let err = admin.apply(req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("lists/admins.txt:2:3: `10.77.1.0/16` has host bits set"),
        "{}",
        err.message()
    );
    assert_eq!(history_len(&mut admin).await, 0);
}

#[tokio::test]
async fn a_list_file_not_sent_is_refused_at_the_site_line() {
    let ctl = TestController::start().await;
    let mut admin = ctl.admin("ops").await;
    let err = admin.apply(apply_request(SITE, "")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("site.yml:5:"), "{}", err.message());
    assert!(
        err.message().contains("`lists/admins.txt` was not read"),
        "{}",
        err.message()
    );
    let mut req = apply_request(SITE, "");
    req.lists = vec![list("../admins.txt", "10.77.1.5\n")];
    let err = admin.apply(req).await.unwrap_err();
    assert!(err.message().contains("relative path"), "{}", err.message());
    assert_eq!(history_len(&mut admin).await, 0);
}

#[tokio::test]
async fn a_300k_entry_list_fits_one_desired_now_that_lists_are_packed() {
    // 300,000 networks were refused as too big for a 4 MiB session message when lists
    // travelled as strings; packed they are 1.5 MB (the refusal of a policy over one
    // `Desired` is unit-tested in server/admin.rs).
    let ctl = TestController::start().await;
    let mut admin = ctl.admin("ops").await;
    let mut text = String::with_capacity(300_000 * 14);
    for n in 0u32..300_000 {
        text.push_str(&format!(
            "10.{}.{}.{}\n",
            78 + (n >> 16),
            (n >> 8) & 255,
            n & 255
        ));
    }
    let mut req = apply_request(SITE, "");
    req.lists = vec![list("lists/admins.txt", &text)];
    let mut stream = admin.apply(req).await.unwrap().into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert!(
        matches!(first.event, Some(v1::apply_event::Event::Accepted(_))),
        "{first:?}"
    );
    assert_eq!(history_len(&mut admin).await, 1);
}

/// An agent that announces `list-parts` gets a big list as parts of at most
/// `PART_BYTES` (slices of the shared list), then the `Desired` without the bytes; put
/// back together it is exactly the list. One that does not gets the whole message.
#[tokio::test]
async fn a_big_list_goes_in_bounded_parts_to_an_agent_that_takes_them() {
    let ctl = TestController::start().await;
    let mut text = String::new();
    for n in 0u32..30_000 {
        text.push_str(&format!(
            "10.{}.{}.{}\n",
            78 + (n >> 16),
            (n >> 8) & 255,
            n & 255
        ));
    }
    text.push_str("fd77::7\n2001:db8::/32\n");
    for (host, parts) in [("h1", true), ("h2", false)] {
        let ch = ctl.agent_channel(host).await;
        let mut client = v1::session_client::SessionClient::new(ch);
        let (tx, rx) = mpsc::channel(8);
        let mut h = hello(host);
        if parts {
            h.msg = match h.msg {
                Some(v1::agent_message::Msg::Hello(mut hello)) => {
                    hello
                        .capabilities
                        .push(portcullis_proto::CAPABILITY_LIST_PARTS.into());
                    Some(v1::agent_message::Msg::Hello(hello))
                }
                other => other,
            };
        }
        tx.send(h).await.unwrap();
        let mut inbound = client
            .open(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let mut admin = ctl.admin("ops").await;
        let mut req = apply_request(SITE, host);
        req.lists = vec![list("lists/admins.txt", &text)];
        let mut stream = admin.apply(req).await.unwrap().into_inner();
        let first = stream.next().await.unwrap().unwrap();
        assert!(
            matches!(first.event, Some(v1::apply_event::Event::Accepted(_))),
            "{first:?}"
        );
        let mut reassembly = portcullis_proto::parts::Reassembly::new(64 << 20);
        let mut seen = 0;
        let mut d = loop {
            let msg = tokio::time::timeout(Duration::from_secs(5), inbound.next())
                .await
                .expect("nothing within 5 s")
                .expect("stream ended")
                .expect("stream error");
            match msg.msg {
                Some(v1::controller_message::Msg::ListPart(p)) => {
                    assert!(parts, "{host}: a part for an agent that did not ask");
                    assert!(p.data.len() <= portcullis_proto::parts::PART_BYTES);
                    seen += 1;
                    reassembly.part(p).unwrap();
                }
                Some(v1::controller_message::Msg::Desired(d)) => break d,
                other => panic!("{host}: unexpected {other:?}"),
            }
        };
        if parts {
            // The v4 field in parts, and the two v6 entries (34 bytes) in one.
            let v4_parts = (30_000 * 5usize).div_ceil(portcullis_proto::parts::PART_BYTES);
            assert_eq!(seen, v4_parts + 1);
            assert!(d.policy.as_ref().unwrap().lists[0].in_parts);
            assert_eq!(reassembly.complete(&mut d), Ok(0));
        } else {
            assert_eq!(seen, 0);
        }
        let policy = HostPolicy::try_from(d.policy.as_ref().unwrap()).unwrap();
        assert_eq!(policy.lists["lists/admins.txt"].len(), 30_002, "{host}");
    }
}

/// `portcullis apply` with the site and its list in a temporary directory; no controller
/// runs: local validation refuses before connecting.
fn cli_apply(list: Option<&str>) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("lists")).unwrap();
    std::fs::write(dir.path().join("site.yml"), SITE).unwrap();
    std::fs::write(dir.path().join("inv.yml"), common::INVENTORY).unwrap();
    if let Some(text) = list {
        std::fs::write(dir.path().join("lists/admins.txt"), text).unwrap();
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("apply")
        .arg("-i")
        .arg(dir.path().join("inv.yml"))
        .arg(dir.path().join("site.yml"))
        .env("HOME", dir.path())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_refuses_a_bad_or_missing_list_file_before_contacting_anyone() {
    let (code, stderr) = cli_apply(Some("10.77.1.5\n10.77.1.300\n"));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("lists/admins.txt:2:1: `10.77.1.300` is not an IP network"),
        "{stderr}"
    );
    // A good list passes local validation: the CLI goes on to connect, and fails only
    // there (no controller configured).
    let (_, stderr) = cli_apply(Some("# admins\n10.77.1.5\n"));
    assert!(stderr.contains("no --controller given"), "{stderr}");
    assert!(!stderr.contains("admins.txt"), "{stderr}");
    let (code, stderr) = cli_apply(None);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("reading list file `lists/admins.txt`"),
        "{stderr}"
    );
}
