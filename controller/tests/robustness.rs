//! The controller under a hostile agent's strings and its own failures (issue 10, items 6
//! and 7): `portcullis status` shows an agent's terminal escapes escaped, and a store call
//! that panics leaves the store usable (its transaction rolled back) instead of poisoned.

#![allow(clippy::unwrap_used)]

mod common;

use common::TestController;
use portcullis_proto::v1;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
/// Clear screen, an OSC window title, cursor up + erase line, a C1 CSI, a bidi override.
const EVIL: &str = "1.0\x1b[2J\x1b]0;pwned\x07\x1b[1A\x1b[2K\u{9b}31m\u{202e}";

#[tokio::test]
async fn status_escapes_agent_controlled_text() {
    let ctl = TestController::start().await;
    let mut hello = common::hello("h1");
    if let Some(v1::agent_message::Msg::Hello(h)) = &mut hello.msg {
        h.agent_version = EVIL.into();
    }
    let ch = ctl.agent_channel("h1").await;
    let (tx, rx) = mpsc::channel(8);
    tx.send(hello).await.unwrap();
    let _stream = v1::session_client::SessionClient::new(ch)
        .open(ReceiverStream::new(rx))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let admin = ctl.pki.issue_admin("ops", true).unwrap();
    let out = tokio::process::Command::new(BIN)
        .arg("status")
        .env("PORTCULLIS_CONTROLLER", ctl.url())
        .env("PORTCULLIS_CA", ctl.pki.ca_cert())
        .env("PORTCULLIS_CERT", &admin.cert)
        .env("PORTCULLIS_KEY", &admin.key)
        .env("HOME", ctl.dir.path())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !stdout
            .chars()
            .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}'),
        "raw control characters reached the terminal: {stdout:?}"
    );
    assert!(
        stdout.contains("1.0\\u{1b}[2J\\u{1b}]0;pwned\\u{7}"),
        "{stdout}"
    );
}

#[test]
fn a_panicking_store_call_does_not_poison_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = portcullis_controller::store::Store::open(&dir.path().join("c.db")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut stores = vec![sqlite];
    if let Some(pg) = portcullis_testkit::require_postgres() {
        let url = pg.fresh_schema().unwrap();
        stores.push(
            rt.block_on(portcullis_controller::store::Store::open_postgres(
                &url, None,
            ))
            .unwrap(),
        );
    }
    for store in stores {
        store
            .call_sync(|c| c.batch("CREATE TABLE t (x BIGINT); INSERT INTO t VALUES (1);"))
            .unwrap();
        // Twice: on PostgreSQL the second would find a pooled connection still inside the
        // first's transaction if it went back to the pool.
        for _ in 0..2 {
            let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _ = store.call_sync(|c| -> anyhow::Result<()> {
                    c.batch("BEGIN; INSERT INTO t VALUES (2);")?;
                    panic!("a bug in a store call");
                });
            }));
            assert!(panicked.is_err());
        }
        let rows: Vec<i64> = store
            .call_sync(|c| {
                c.query(
                    "SELECT x FROM t ORDER BY x",
                    portcullis_controller::args![],
                    |r| r.get(0),
                )
            })
            .expect("the store still works after a panic");
        assert_eq!(
            rows,
            [1],
            "{store:?}: the panicked call's transaction was rolled back"
        );
    }
}

#[test]
fn cli_apply_refuses_an_alias_bomb_locally_with_one_error() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../policy/tests/fixtures");
    let site = format!("{fixtures}/alias-bomb.yml");
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args(["apply", "-i", &format!("{fixtures}/inventory.yml"), &site])
        .env("HOME", dir.path())
        .env("PORTCULLIS_CONTROLLER", "https://127.0.0.1:9")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            format!("{site}:9:12: too many alias expansions (limit 1000000)").as_str(),
            "error: 1 problem(s) found; nothing was applied"
        ]
    );
}
