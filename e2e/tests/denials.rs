//! End to end, issue 4: denials seen by real agents (NFLOG) in namespaces arrive in
//! `portcullis logs` with the right host, source, port and counts; `--follow` is live;
//! floods over the log limit are counted, not lost; a controller outage is bridged by the
//! agent's spool; a SIGKILLed agent neither loses nor duplicates acknowledged batches.

#![allow(clippy::unwrap_used)]

mod common;

use common::Fleet;
use portcullis_testkit::require_root_netns;
use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

const INVENTORY: &str = "all:\n  hosts:\n    h1:\n    h2:\n";

fn site(rate: &str, burst: u32) -> String {
    format!(
        "- name: seed\n  hosts: all\n  policy:\n    interface: default\n    allow: [domain/udp, smtp/tcp]\n    log: {{ rate: {rate}, burst: {burst} }}\n"
    )
}

fn setup(rate: &str, burst: u32) -> (Fleet, PathBuf, PathBuf) {
    let mut fleet = Fleet::new(&["h1", "h2"]).unwrap();
    let inv = fleet.write("inventory.yml", INVENTORY);
    let site = fleet.write("site.yml", &site(rate, burst));
    fleet.start_controller().unwrap();
    fleet.start_agent("h1").unwrap();
    fleet.start_agent("h2").unwrap();
    fleet.wait_status(&["h1", "h2"], "connected", |h| h["connected"] == true);
    fleet.apply_ok(&inv, &site);
    (fleet, inv, site)
}

/// Sum of stored counts for `host`/`port`, and the host's totals entry.
fn stored(fleet: &Fleet, host: &str, port: u16) -> (u64, serde_json::Value) {
    let out = fleet.cli_json(&[
        "logs",
        "--json",
        "--host",
        host,
        "--port",
        &port.to_string(),
        "--limit",
        "100000",
    ]);
    let sum = out["rows"]
        .as_array()
        .map(|rows| rows.iter().map(|r| r["count"].as_u64().unwrap_or(0)).sum())
        .unwrap_or(0);
    let totals = out["totals"]
        .as_array()
        .and_then(|t| t.iter().find(|x| x["host"] == host).cloned())
        .unwrap_or_default();
    (sum, totals)
}

fn wait_stored(fleet: &Fleet, host: &str, port: u16, want: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (sum, totals) = stored(fleet, host, port);
        if sum == want {
            return totals;
        }
        assert!(
            sum < want && Instant::now() < deadline,
            "{host} port {port}: stored {sum}, want {want}; totals {totals}\n{}",
            fleet.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn denials_from_two_hosts_reach_logs_with_source_port_and_counts() {
    if !require_root_netns() {
        return;
    }
    let (fleet, _, _) = setup("1000/second", 1000);
    let h1 = SocketAddr::new(fleet.hosts["h1"].v4, 137);
    let h2 = SocketAddr::new(fleet.hosts["h2"].v6, 22);
    fleet.blast_udp(h1, 7);
    fleet.blast_udp(h2, 4);
    wait_stored(&fleet, "h1", 137, 7);
    wait_stored(&fleet, "h2", 22, 4);
    let out = fleet.cli_json(&["logs", "--json", "--host", "h1"]);
    let row = &out["rows"][0];
    assert_eq!(row["host"], "h1");
    assert_eq!(row["src"], fleet.outside.v4.to_string());
    assert_eq!(row["proto"], "udp");
    assert_eq!(row["dport"], 137);
    assert_eq!(row["revision"], 1);
    let out = fleet.cli_json(&["logs", "--json", "--host", "h2", "--proto", "udp"]);
    assert_eq!(out["rows"][0]["src"], fleet.outside.v6.to_string(), "{out}");
    // Filters: nothing from h1 on port 22, nothing from another source.
    assert_eq!(stored(&fleet, "h1", 22).0, 0);
    let other = fleet.cli_json(&["logs", "--json", "--source", "10.77.9.0/24"]);
    assert_eq!(other["rows"].as_array().map(Vec::len), Some(0), "{other}");
    // Allowed traffic is not logged.
    fleet.blast_udp(SocketAddr::new(fleet.hosts["h1"].v4, 53), 5);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(stored(&fleet, "h1", 53).0, 0);
}

#[test]
fn follow_shows_a_new_denial_within_two_seconds() {
    if !require_root_netns() {
        return;
    }
    let (fleet, _, _) = setup("1000/second", 1000);
    let pki = fleet.pki();
    let mut child = fleet
        .ctl
        .ns
        .command(common::bin("portcullis"))
        .args(["logs", "--follow", "--json", "--host", "h1"])
        .env("PORTCULLIS_CONTROLLER", fleet.controller_url())
        .env("PORTCULLIS_CERT", pki.join("admin-e2e.crt"))
        .env("PORTCULLIS_KEY", pki.join("admin-e2e.key"))
        .env("PORTCULLIS_CA", pki.join("ca.crt"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The follower is ready once it printed its header (totals) line.
    rx.recv_timeout(Duration::from_secs(10))
        .expect("follow printed nothing");
    let sent = Instant::now();
    fleet.blast_udp(SocketAddr::new(fleet.hosts["h1"].v4, 111), 1);
    let mut got = None;
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(3)) {
        if line.contains("\"dport\":111") {
            got = Some(sent.elapsed());
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let latency = got.expect("no live row for udp/111");
    assert!(
        latency < Duration::from_secs(2),
        "follow latency {latency:?}"
    );
}

#[test]
fn a_flood_over_the_log_limit_is_counted_not_lost() {
    if !require_root_netns() {
        return;
    }
    let (fleet, _, _) = setup("10/second", 10);
    let n = 500;
    fleet.blast_udp(SocketAddr::new(fleet.hosts["h1"].v4, 137), n);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (logged, totals) = stored(&fleet, "h1", 137);
        let suppressed = totals["kernel_suppressed"].as_u64().unwrap_or(0);
        if logged + suppressed == n as u64 {
            assert!(logged >= 10 && logged < n as u64, "logged {logged}");
            assert_eq!(totals["seen"].as_u64(), Some(logged), "{totals}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "logged {logged} + suppressed {suppressed} != {n}; totals {totals}\n{}",
            fleet.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn controller_outage_is_bridged_by_the_spool_and_kill_9_loses_nothing() {
    if !require_root_netns() {
        return;
    }
    let (mut fleet, _, _) = setup("1000/second", 1000);
    let dst = SocketAddr::new(fleet.hosts["h1"].v4, 137);

    // Controller down during a burst spread over several aggregation intervals.
    fleet.stop_controller();
    for _ in 0..3 {
        fleet.blast_udp(dst, 20);
        std::thread::sleep(Duration::from_millis(700));
    }
    fleet.start_controller().unwrap();
    wait_stored(&fleet, "h1", 137, 60);

    // SIGKILL the agent after its batches were acknowledged: after a restart nothing is
    // stored twice, and new denials still arrive.
    fleet.kill_agent("h1");
    fleet.start_agent("h1").unwrap();
    fleet.wait_status(&["h1"], "reconnected", |h| h["connected"] == true);
    std::thread::sleep(Duration::from_millis(500));
    fleet.blast_udp(dst, 15);
    wait_stored(&fleet, "h1", 137, 75);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(stored(&fleet, "h1", 137).0, 75, "duplicates after restart");
}
