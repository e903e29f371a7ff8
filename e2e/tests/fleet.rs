//! End to end: a controller and three agents in network namespaces, real certificates,
//! the seed policy pushed with `portcullis apply`, verdicts checked with real packets
//! from an `outside` namespace, then fail-static, offline hosts and invalid input.

#![allow(clippy::unwrap_used)]

mod common;

use common::Fleet;
use portcullis_testkit::probe::{TcpOutcome, UdpOutcome, tcp_connect, udp_request};
use portcullis_testkit::{TcpServer, UdpEcho, require_root_netns};
use std::net::SocketAddr;
use std::time::Duration;

const INVENTORY: &str = "\
all:
  children:
    mail:
      hosts:
        h1:
    web:
      hosts:
        h2:
        h3:
";

const SITE: &str = "\
- name: seed baseline
  hosts: all
  policy:
    interface: default
    allow:
      - domain/udp
- name: mail relays
  hosts: mail
  policy:
    allow: [smtp/tcp]
- name: web servers
  hosts: web
  policy:
    allow: [http/tcp]
";

const DROPPED: Duration = Duration::from_millis(400);

struct Listeners {
    _tcp: Vec<TcpServer>,
    _udp: Vec<UdpEcho>,
}

fn listen(fleet: &Fleet, host: &str) -> Listeners {
    let ns = &fleet.hosts[host].ns;
    let any = |p: u16| SocketAddr::new("::".parse().unwrap(), p);
    Listeners {
        _tcp: [22, 25, 80, 5000]
            .into_iter()
            .map(|p| TcpServer::start(ns, any(p)).unwrap())
            .collect(),
        _udp: [53, 137]
            .into_iter()
            .map(|p| UdpEcho::start(ns, any(p)).unwrap())
            .collect(),
    }
}

/// The seed verdicts for `host`, from outside, over IPv4 and IPv6.
fn assert_seed_verdicts(fleet: &Fleet, host: &str) {
    let out = &fleet.outside.ns;
    let smtp_open = host == "h1";
    for v6 in [false, true] {
        let a = fleet.hosts[host].addr(v6);
        let tcp = |p| tcp_connect(out, SocketAddr::new(a, p), DROPPED).unwrap();
        let udp = |p| udp_request(out, SocketAddr::new(a, p), DROPPED).unwrap();
        let want = |open: bool| {
            if open {
                TcpOutcome::Accepted
            } else {
                TcpOutcome::TimedOut
            }
        };
        assert_eq!(tcp(25), want(smtp_open), "{host} {a} tcp/25");
        assert_eq!(tcp(80), want(!smtp_open), "{host} {a} tcp/80");
        assert_eq!(
            tcp(22),
            TcpOutcome::TimedOut,
            "{host} {a} tcp/22 must be dropped"
        );
        assert_eq!(
            tcp(5000),
            TcpOutcome::Accepted,
            "{host} {a} tcp/5000 (reply ports)"
        );
        assert_eq!(udp(53), UdpOutcome::Answered, "{host} {a} udp/53");
        assert_eq!(
            udp(137),
            UdpOutcome::NoAnswer,
            "{host} {a} udp/137 must be dropped"
        );
    }
}

fn entry<'a>(status: &'a serde_json::Value, host: &str) -> &'a serde_json::Value {
    status["hosts"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["host"] == host))
        .unwrap_or(&serde_json::Value::Null)
}

#[test]
fn fleet_apply_status_failstatic_and_offline_host() {
    if !require_root_netns() {
        return;
    }
    let mut fleet = Fleet::new(&["h1", "h2", "h3"]).unwrap();
    let inv = fleet.write("inventory.yml", INVENTORY);
    let site = fleet.write("site.yml", SITE);
    let (inv, site) = (
        inv.to_str().unwrap().to_owned(),
        site.to_str().unwrap().to_owned(),
    );
    let _l: Vec<Listeners> = ["h1", "h2", "h3"]
        .iter()
        .map(|h| listen(&fleet, h))
        .collect();

    fleet.start_controller().unwrap();
    fleet.start_agent("h1").unwrap();
    fleet.start_agent("h2").unwrap();
    fleet.wait_status(&["h1", "h2"], "connected", |h| h["connected"] == true);

    // h3 is offline: apply reaches h1 and h2, lists h3 as pending, exits 1.
    let out = fleet.cli(&["apply", "-i", &inv, &site, "--timeout", "10s"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{}", fleet.logs());
    assert!(stdout.contains("2/3 hosts applied r1"), "{stdout}");
    assert!(stdout.contains("offline"), "{stdout}");
    assert_seed_verdicts(&fleet, "h1");
    assert_seed_verdicts(&fleet, "h2");

    // h3 comes up and gets revision 1 on connect.
    fleet.start_agent("h3").unwrap();
    let status = fleet.wait_status(&["h1", "h2", "h3"], "in sync", |h| h["in_sync"] == true);
    for h in ["h1", "h2", "h3"] {
        let e = entry(&status, h);
        assert_eq!(e["applied_revision"], 1, "{e}");
        assert_eq!(e["expected_hash"], e["reported_hash"], "{e}");
    }
    assert_seed_verdicts(&fleet, "h3");

    // Everything connected: a second apply exits 0 with every host applied.
    let out = fleet.cli(&["apply", "-i", &inv, &site, "--timeout", "10s", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["revision"], 2);
    assert_eq!(result["ok"], true);

    // Fail-static: controller down, agent h1 restarted after a "reboot" (table gone):
    // it re-applies last-known-good before it can reach the controller.
    fleet.stop_controller();
    fleet.stop_agent("h1");
    fleet.hosts["h1"]
        .ns
        .run_ok("nft", &["delete", "table", "inet", "portcullis"])
        .unwrap();
    assert_eq!(
        tcp_connect(
            &fleet.outside.ns,
            SocketAddr::new(fleet.hosts["h1"].v4, 22),
            DROPPED
        )
        .unwrap(),
        TcpOutcome::Accepted,
        "without the table tcp/22 is open (sanity check)"
    );
    fleet.start_agent("h1").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fleet.hosts["h1"]
        .ns
        .run("nft", &["list", "table", "inet", "portcullis"])
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "last-known-good not restored:\n{}",
            fleet.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_seed_verdicts(&fleet, "h1");
    assert!(
        fleet.read_log("agent-h1").contains("last-known-good"),
        "{}",
        fleet.read_log("agent-h1")
    );

    // Controller back: h1 reconnects by itself and is attested in sync.
    fleet.start_controller().unwrap();
    fleet.wait_status(&["h1", "h2", "h3"], "reconnected and in sync", |h| {
        h["connected"] == true && h["in_sync"] == true
    });

    // history shows both revisions with the admin's name.
    let history = fleet.cli_json(&["history", "--json"]);
    let revs = history["revisions"].as_array().unwrap();
    assert_eq!(revs.len(), 2);
    assert!(revs.iter().all(|r| r["author"] == "e2e"));
}

#[test]
fn invalid_site_is_refused_with_file_and_line_and_nothing_is_stored() {
    if !require_root_netns() {
        return;
    }
    let mut fleet = Fleet::new(&["h1"]).unwrap();
    fleet.start_controller().unwrap();
    let inv = fleet.write("inventory.yml", INVENTORY);
    let bad = fleet.write(
        "bad-site.yml",
        "- name: web\n  hosts: web\n  policy:\n    allow:\n      - smtp/udp\n      - { port: 70000, proto: tcp }\n",
    );
    let out = fleet.cli(&["apply", "-i", inv.to_str().unwrap(), bad.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("bad-site.yml:5:"), "{stderr}");
    assert!(stderr.contains("bad-site.yml:6:"), "{stderr}");
    let history = fleet.cli_json(&["history", "--json"]);
    assert_eq!(history["revisions"].as_array().map(Vec::len), Some(0));
}
