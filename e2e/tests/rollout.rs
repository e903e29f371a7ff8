//! End to end rollouts: a controller and four agents in network namespaces. Waves in the
//! right order (`--serial 1,50%`), commit-confirmed hosts, the anti-lockout refusal under
//! `--keep`, a halted wave rolled back, `rollback` restoring the previous verdicts (real
//! packets), and a controller killed mid-rollout (agents revert, rollout `interrupted`).

#![allow(clippy::unwrap_used)]

mod common;

use common::Fleet;
use portcullis_testkit::probe::{TcpOutcome, tcp_connect};
use portcullis_testkit::{TcpServer, require_root_netns};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const HOSTS: [&str; 4] = ["h1", "h2", "h3", "h4"];

const INVENTORY: &str = "\
all:
  hosts:
    h1:
    h2:
    h3:
    h4:
";

/// r1: ssh + http.
const SITE_V1: &str = "\
- name: base
  hosts: all
  policy:
    allow: [ssh/tcp, http/tcp]
";

/// r2: ssh + smtp (http closed).
const SITE_V2: &str = "\
- name: base
  hosts: all
  policy:
    allow: [ssh/tcp, smtp/tcp]
";

/// No ssh: refused under `--keep tcp/22`.
const SITE_NO_SSH: &str = "\
- name: base
  hosts: all
  policy:
    allow: [http/tcp]
";

const DROPPED: Duration = Duration::from_millis(400);

fn tcp(fleet: &Fleet, host: &str, port: u16) -> TcpOutcome {
    let a = SocketAddr::new(fleet.hosts[host].addr(false), port);
    tcp_connect(&fleet.outside.ns, a, DROPPED).expect("probe")
}

fn servers(fleet: &Fleet) -> Vec<TcpServer> {
    let mut v = Vec::new();
    for h in HOSTS {
        for p in [22, 25, 80] {
            let any = SocketAddr::new("0.0.0.0".parse().expect("addr"), p);
            v.push(TcpServer::start(&fleet.hosts[h].ns, any).expect("server"));
        }
    }
    v
}

struct Files {
    inv: String,
    v1: String,
    v2: String,
    no_ssh: String,
}

fn setup() -> Option<(Fleet, Files, Vec<TcpServer>)> {
    if !require_root_netns() {
        return None;
    }
    let mut fleet = Fleet::new(&HOSTS).expect("fleet");
    let p = |n: &str, t: &str| fleet.write(n, t).to_str().expect("utf-8").to_owned();
    let files = Files {
        inv: p("inventory.yml", INVENTORY),
        v1: p("v1.yml", SITE_V1),
        v2: p("v2.yml", SITE_V2),
        no_ssh: p("no-ssh.yml", SITE_NO_SSH),
    };
    let l = servers(&fleet);
    fleet.start_controller().expect("controller");
    for h in HOSTS {
        fleet.start_agent(h).expect("agent");
    }
    fleet.wait_status(&HOSTS, "connected", |h| h["connected"] == true);
    let out = fleet.cli(&["apply", "-i", &files.inv, &files.v1, "--timeout", "20s"]);
    assert_eq!(out.status.code(), Some(0), "{}", fleet.logs());
    Some((fleet, files, l))
}

#[test]
fn waves_in_order_keep_refusal_and_rollback_restores_verdicts() {
    let Some((fleet, f, _l)) = setup() else {
        return;
    };
    assert_eq!(tcp(&fleet, "h1", 80), TcpOutcome::Accepted);
    assert_eq!(tcp(&fleet, "h1", 25), TcpOutcome::TimedOut);

    let args = [
        "apply",
        "-i",
        &f.inv,
        &f.v2,
        "--serial",
        "1,50%",
        "--confirm-timeout",
        "10s",
        "--json",
    ];
    let out = fleet.cli(&args);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(out.status.code(), Some(0), "{v}\n{}", fleet.logs());
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(
        v["waves"],
        serde_json::json!([["h1"], ["h2", "h3"], ["h4"]])
    );
    let id = v["rollout"].as_u64().expect("rollout id").to_string();
    let shown = fleet.cli_json(&["rollout", "show", &id, "--json"]);
    let hosts = shown["rollouts"][0]["hosts"]
        .as_array()
        .expect("hosts")
        .clone();
    let order: Vec<(u64, &str, &str)> = hosts
        .iter()
        .map(|h| {
            (
                h["wave"].as_u64().unwrap_or(99),
                h["host"].as_str().unwrap_or(""),
                h["state"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        order,
        vec![
            (0, "h1", "confirmed"),
            (1, "h2", "confirmed"),
            (1, "h3", "confirmed"),
            (2, "h4", "confirmed")
        ]
    );
    for h in HOSTS {
        assert_eq!(
            tcp(&fleet, h, 25),
            TcpOutcome::Accepted,
            "{h} smtp after r2"
        );
        assert_eq!(
            tcp(&fleet, h, 80),
            TcpOutcome::TimedOut,
            "{h} http after r2"
        );
    }

    // Anti-lockout: no ssh under --keep tcp/22 is refused, nothing stored or sent.
    let out = fleet.cli(&[
        "apply",
        "-i",
        &f.inv,
        &f.no_ssh,
        "--keep",
        "tcp/22 from 10.0.0.0/8",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("anti-lockout") && err.contains("keep tcp/22"),
        "{err}"
    );
    let history = fleet.cli_json(&["history", "--json"]);
    assert_eq!(
        history.to_string().matches("\"revision\":3").count(),
        0,
        "{history}"
    );

    // Rollback to r1 (the one before the latest) restores the r1 verdicts.
    let out = fleet.cli(&[
        "rollback",
        "--serial",
        "50%",
        "--confirm-timeout",
        "10s",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(out.status.code(), Some(0), "{v}\n{}", fleet.logs());
    for h in HOSTS {
        assert_eq!(
            tcp(&fleet, h, 80),
            TcpOutcome::Accepted,
            "{h} http after rollback"
        );
        assert_eq!(
            tcp(&fleet, h, 25),
            TcpOutcome::TimedOut,
            "{h} smtp after rollback"
        );
    }
    let list = fleet.cli_json(&["rollout", "list", "--json"]);
    assert_eq!(list["rollouts"][0]["kind"], "rollback", "{list}");
    assert_eq!(list["rollouts"][0]["author"], "e2e", "{list}");
}

#[test]
fn failing_wave_halts_and_rolls_back() {
    let Some((mut fleet, f, _l)) = setup() else {
        return;
    };
    // h3 is down when its wave starts: the wave fails, the rollout halts and h1, h2
    // (wave 1) go back to r1; h4 is never touched.
    fleet.stop_agent("h3");
    fleet.wait_status(&["h3"], "disconnected", |h| h["connected"] == false);
    let out = fleet.cli(&[
        "apply",
        "-i",
        &f.inv,
        &f.v2,
        "--serial",
        "2",
        "--confirm-timeout",
        "10s",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(out.status.code(), Some(6), "{v}\n{}", fleet.logs());
    assert_eq!(v["status"], "rolled_back", "{v}");
    let result = |h: &str| {
        v["hosts"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["host"] == h))
            .map(|x| x["result"].as_str().unwrap_or("").to_owned())
            .unwrap_or_default()
    };
    assert_eq!(result("h1"), "rolled-back", "{v}");
    assert_eq!(result("h2"), "rolled-back", "{v}");
    assert_eq!(result("h3"), "offline", "{v}");
    for h in ["h1", "h2", "h4"] {
        assert_eq!(
            tcp(&fleet, h, 80),
            TcpOutcome::Accepted,
            "{h} back on / still on r1"
        );
        assert_eq!(
            tcp(&fleet, h, 25),
            TcpOutcome::TimedOut,
            "{h} r2 not in force"
        );
    }
}

#[test]
fn controller_killed_mid_rollout_agents_revert_and_rollout_is_interrupted() {
    let Some((mut fleet, f, _l)) = setup() else {
        return;
    };
    // Wave 1 (h1) applies r2 under a 6 s deadline; the controller dies before it can
    // confirm: h1 reverts to r1 by itself.
    let pki = fleet.pki();
    let mut apply = fleet
        .ctl
        .ns
        .command(common::bin("portcullis"))
        .args([
            "apply",
            "-i",
            &f.inv,
            &f.v2,
            "--serial",
            "1",
            "--confirm-timeout",
            "6s",
        ])
        .env("PORTCULLIS_CONTROLLER", fleet.controller_url())
        .env("PORTCULLIS_CERT", pki.join("admin-e2e.crt"))
        .env("PORTCULLIS_KEY", pki.join("admin-e2e.key"))
        .env("PORTCULLIS_CA", pki.join("ca.crt"))
        .env("HOME", fleet.dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("apply");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fleet
        .read_log("agent-h1")
        .contains("applying under commit-confirmed")
    {
        assert!(
            Instant::now() < deadline,
            "h1 never got r2:\n{}",
            fleet.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    fleet.stop_controller();
    let _ = apply.wait();
    assert_eq!(
        tcp(&fleet, "h1", 25),
        TcpOutcome::Accepted,
        "r2 in force before the deadline"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while tcp(&fleet, "h1", 25) != TcpOutcome::TimedOut {
        assert!(
            Instant::now() < deadline,
            "h1 did not revert:\n{}",
            fleet.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(tcp(&fleet, "h1", 80), TcpOutcome::Accepted, "h1 back on r1");
    assert_eq!(tcp(&fleet, "h2", 80), TcpOutcome::Accepted, "h2 untouched");

    fleet.start_controller().expect("controller restart");
    let list = fleet.cli_json(&["rollout", "list", "--json"]);
    assert_eq!(list["rollouts"][0]["status"], "interrupted", "{list}");
    // h1 reconnects, reports the revert, and is not pushed r2 again.
    let st = fleet.wait_status(&["h1"], "back on r1", |h| {
        h["connected"] == true && h["applied_revision"] == 1 && h["desired_revision"] == 1
    });
    assert!(st.to_string().contains("h1"), "{st}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        tcp(&fleet, "h1", 25),
        TcpOutcome::TimedOut,
        "r2 not re-pushed"
    );
}
