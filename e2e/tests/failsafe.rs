//! End to end, issue 11 items 4, 6, 7 and issue 10 item 6: what keeps the agent
//! enforcing and telling the truth when things around it fail.
//!
//! - A policy's non-default `log.group` is what the agent reads: its denials reach
//!   `portcullis logs`.
//! - An NFLOG group held by another program, or a spool that cannot be opened, is shown by
//!   `portcullis status` and retried; the session and the policy stay up; once the
//!   obstacle is gone, denials flow.
//! - A hung `nft` is killed at `--nft-timeout`: the apply fails, the session lives on.
//!
//! The SIGKILL right after an unconfirmed apply is in `confirm_crash.rs`.

#![allow(clippy::unwrap_used)]

mod common;

use common::Fleet;
use portcullis_testkit::{TcpOutcome, TcpServer, probe, require_root_netns};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const INVENTORY: &str = "all:\n  hosts:\n    h1:\n";

fn site_group(group: u16) -> String {
    format!(
        "- name: seed\n  hosts: all\n  management: [tcp/22 from 10.77.0.0/24]\n  policy:\n    interface: default\n    allow: [smtp/tcp, ssh/tcp]\n    log: {{ rate: 1000/second, burst: 1000, group: {group} }}\n"
    )
}

/// Stored denial count of h1 on `port` (any protocol).
fn stored(fleet: &Fleet, port: u16) -> u64 {
    let out = fleet.cli_json(&[
        "logs",
        "--json",
        "--host",
        "h1",
        "--port",
        &port.to_string(),
        "--limit",
        "100000",
    ]);
    out["rows"]
        .as_array()
        .map(|rows| rows.iter().map(|r| r["count"].as_u64().unwrap_or(0)).sum())
        .unwrap_or(0)
}

fn wait_until(fleet: &Fleet, what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "{what}:\n{}", fleet.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `text` without ANSI colour sequences (the agents' logs are coloured).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn conditions(h: &serde_json::Value) -> String {
    h["conditions"].to_string()
}

fn tcp_from_outside(fleet: &Fleet, port: u16, wait: Duration) -> TcpOutcome {
    let dst = SocketAddr::new(fleet.hosts["h1"].v4, port);
    probe::tcp_connect(&fleet.outside.ns, dst, wait).unwrap()
}

#[test]
fn a_non_default_log_group_reaches_logs() {
    if !require_root_netns() {
        return;
    }
    let mut fleet = Fleet::new(&["h1"]).unwrap();
    let inv = fleet.write("inventory.yml", INVENTORY);
    let site = fleet.write("site.yml", &site_group(9));
    fleet.start_controller().unwrap();
    // The agent's --nflog-group stays at its default (7): the policy says 9.
    fleet.start_agent("h1").unwrap();
    fleet.wait_status(&["h1"], "connected", |h| h["connected"] == true);
    fleet.apply_ok(&inv, &site);
    let nft = fleet.hosts["h1"]
        .ns
        .run_ok("nft", &["list", "chain", "inet", "portcullis", "guard"])
        .unwrap();
    assert!(nft.contains("group 9"), "{nft}");
    wait_until(&fleet, "the agent never read group 9", 15, || {
        plain(&fleet.read_log("agent-h1")).contains("denial reader started group=9")
    });
    // tcp/23: denied and logged (each SYN retransmission is one more denial).
    assert_eq!(
        tcp_from_outside(&fleet, 23, Duration::from_millis(400)),
        TcpOutcome::TimedOut
    );
    fleet.blast_udp(SocketAddr::new(fleet.hosts["h1"].v4, 23), 5);
    wait_until(&fleet, "denials of port 23 never reached logs", 15, || {
        stored(&fleet, 23) >= 6
    });
    let tcp = fleet.cli_json(&[
        "logs", "--json", "--host", "h1", "--port", "23", "--proto", "tcp",
    ]);
    assert!(tcp["rows"][0]["count"].as_u64().unwrap() >= 1, "{tcp}");
    let st = fleet.wait_status(&["h1"], "without conditions", |h| {
        h["conditions"].as_array().is_some_and(Vec::is_empty)
    });
    assert!(st.to_string().contains("h1"));
    // The site's `management:` reached the agent for its fail-closed policy.
    let kept = std::fs::read_to_string(fleet.dir.path().join("state-h1/management.json")).unwrap();
    assert!(kept.contains("tcp/22 from 10.77.0.0/24"), "{kept}");
}

#[test]
fn a_held_nflog_group_and_a_broken_spool_are_reported_and_retried() {
    if !require_root_netns() {
        return;
    }
    let mut fleet = Fleet::new(&["h1"]).unwrap();
    let inv = fleet.write("inventory.yml", INVENTORY);
    let site = fleet.write("site.yml", &site_group(9));
    // Another program holds group 9 first: a second agent process that never reaches a
    // controller (its NFLOG socket is bound before it dials).
    let pki = fleet.pki();
    let holder_state = fleet.dir.path().join("holder-state");
    let holder_log = std::fs::File::create(fleet.dir.path().join("holder.log")).unwrap();
    let mut holder = fleet.hosts["h1"]
        .ns
        .command(common::bin("portcullis-agent"))
        .args([
            "run",
            "--controller",
            "https://127.0.0.1:1",
            "--nflog-group",
            "9",
        ])
        .arg("--ca")
        .arg(pki.join("ca.crt"))
        .arg("--cert")
        .arg(pki.join("agent-h1.crt"))
        .arg("--key")
        .arg(pki.join("agent-h1.key"))
        .arg("--state-dir")
        .arg(&holder_state)
        .arg("--drift-events=false")
        .env("PORTCULLIS_LOG", "info")
        .stderr(holder_log)
        .spawn()
        .unwrap();
    wait_until(&fleet, "the holder never bound group 9", 10, || {
        plain(&fleet.read_log("holder")).contains("NFLOG reader started group=9")
    });
    // The real agent's spool cannot be opened either: a file stands where its dir goes.
    let state = fleet.dir.path().join("state-h1");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("spool"), "not a directory").unwrap();
    fleet.start_controller().unwrap();
    fleet
        .start_agent_with("h1", &["--heartbeat", "1s"])
        .unwrap();
    let st = fleet.wait_status(&["h1"], "reporting the spool", |h| {
        h["connected"] == true && conditions(h).contains("cannot open the denial spool")
    });
    assert!(conditions(&st["hosts"][0]).contains("retrying in"), "{st}");
    // The policy is applied and enforced all the same.
    fleet.apply_ok(&inv, &site);
    let h1 = fleet.hosts["h1"].v4;
    let _smtp = TcpServer::start(&fleet.hosts["h1"].ns, SocketAddr::new(h1, 25)).unwrap();
    assert_eq!(
        tcp_from_outside(&fleet, 25, Duration::from_secs(2)),
        TcpOutcome::Accepted
    );
    std::fs::remove_file(state.join("spool")).unwrap();
    let st = fleet.wait_status(&["h1"], "reporting the held group", |h| {
        conditions(h).contains("cannot read NFLOG group 9")
    });
    assert!(st["hosts"][0]["hash_match"] == true, "{st}");
    let text = fleet.cli(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("h1: denials: cannot read NFLOG group 9"),
        "{text}"
    );
    // A policy with a free group: read at once (no waiting out the backoff).
    let site11 = fleet.write("site11.yml", &site_group(11));
    fleet.apply_ok(&inv, &site11);
    fleet.wait_status(&["h1"], "reading group 11", |h| {
        h["conditions"].as_array().is_some_and(Vec::is_empty)
    });
    fleet.blast_udp(SocketAddr::new(h1, 23), 4);
    wait_until(&fleet, "denials of group 11 never flowed", 15, || {
        stored(&fleet, 23) == 4
    });
    // Back to 9, still held; then the holder goes: the retry binds it, denials flow.
    fleet.apply_ok(&inv, &site);
    fleet.wait_status(&["h1"], "reporting the held group again", |h| {
        conditions(h).contains("cannot read NFLOG group 9")
    });
    portcullis_testkit::terminate(&mut holder);
    fleet.wait_status(&["h1"], "without conditions", |h| {
        h["connected"] == true && h["conditions"].as_array().is_some_and(Vec::is_empty)
    });
    fleet.blast_udp(SocketAddr::new(h1, 23), 3);
    wait_until(&fleet, "denials never flowed after the retry", 15, || {
        stored(&fleet, 23) == 7
    });
}

/// `--nft` whose ruleset changes (`nft -f`) hang forever; reads and `monitor` work.
const HANGING_NFT: &str = "#!/bin/sh
# e2e fault injection: every `nft -f` hangs (a wedged nft).
if [ \"$1\" = \"-f\" ]; then
    sleep 100017
fi
exec nft \"$@\"
";

#[test]
fn a_hung_nft_is_killed_and_the_session_lives_on() {
    if !require_root_netns() {
        return;
    }
    let mut fleet = Fleet::new(&["h1"]).unwrap();
    let inv = fleet.write("inventory.yml", INVENTORY);
    let site = fleet.write("site.yml", &site_group(7));
    let nft = fleet.executable("hanging-nft", HANGING_NFT);
    fleet.start_controller().unwrap();
    fleet
        .start_agent_with(
            "h1",
            &[
                "--heartbeat",
                "1s",
                "--nft",
                nft.to_str().unwrap(),
                "--nft-timeout",
                "2s",
            ],
        )
        .unwrap();
    fleet.wait_status(&["h1"], "connected", |h| h["connected"] == true);
    let out = fleet.cli(&[
        "apply",
        "-i",
        inv.to_str().unwrap(),
        site.to_str().unwrap(),
        "--timeout",
        "20s",
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("did not finish within 2s"),
        "{text}\n{}",
        fleet.logs()
    );
    // Still connected, still heartbeating, and no sleeping nft left behind.
    let before = fleet.wait_status(&["h1"], "connected", |h| h["connected"] == true);
    let seen = before["hosts"][0]["last_seen_unix_ms"].as_i64().unwrap();
    fleet.wait_status(&["h1"], "heartbeating", |h| {
        h["connected"] == true && h["last_seen_unix_ms"].as_i64().unwrap() > seen
    });
    let ps = std::process::Command::new("pgrep")
        .args(["-f", "sleep 100017"])
        .output()
        .unwrap();
    assert!(
        ps.stdout.is_empty(),
        "hung nft left running: {}",
        String::from_utf8_lossy(&ps.stdout)
    );
}
