//! End to end rollouts: a controller and four agents in network namespaces. Waves in the
//! right order (`--serial 1,50%`), commit-confirmed hosts, `apply --check --replay`
//! listing a port seen in traffic that the new policy closes, the anti-lockout refusal
//! under `--keep` and for the controller's own host (forced: the cut-off host reverts by
//! itself and the rollout halts), a failed apply and a failed denial-rate gate halting and
//! rolling back, `rollback` restoring the previous verdicts (real packets), and a
//! controller killed mid-rollout (agents revert, rollout `interrupted`).

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

/// r1: ssh + http + dns.
const SITE_V1: &str = "\
- name: base
  hosts: all
  policy:
    allow: [ssh/tcp, http/tcp, domain/udp]
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
    for node in fleet.hosts.values() {
        for p in [22, 25, 80] {
            let any = SocketAddr::new("0.0.0.0".parse().expect("addr"), p);
            v.push(TcpServer::start(&node.ns, any).expect("server"));
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
        // Heartbeats (with the rule counters `--replay` uses) every second.
        fleet
            .start_agent_with(h, &["--heartbeat", "1s"])
            .expect("agent");
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

    // "Who would be denied": h1 served http (its accept counter moved, reported in a
    // heartbeat); r2 closes http, so the replay lists tcp/80 on h1 and nothing on h2.
    std::thread::sleep(Duration::from_millis(2500));
    let out = fleet.cli(&[
        "apply", "-i", &f.inv, &f.v2, "--check", "--replay", "1h", "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(out.status.code(), Some(2), "{v}\n{}", fleet.logs());
    let denied = |h: &str| {
        v["hosts"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["host"] == h))
            .map(|x| x["newly_denied"].clone())
            .unwrap_or_default()
    };
    let h1 = denied("h1");
    assert!(
        h1.as_array().is_some_and(|a| a
            .iter()
            .any(|f| f["proto"] == "tcp" && f["ports"] == serde_json::json!(["80"]))),
        "{v}"
    );
    assert_eq!(denied("h2"), serde_json::json!([]), "{v}");
    let out = fleet.cli(&["apply", "-i", &f.inv, &f.v2, "--check", "--replay", "1h"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("NEWLY DENIED tcp/80"), "{text}");
    assert_eq!(
        tcp(&fleet, "h1", 80),
        TcpOutcome::Accepted,
        "check applied nothing"
    );

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
    // The same access declared in the site file (`management:`), no --keep needed.
    let mgmt = fleet.write(
        "no-ssh-mgmt.yml",
        "- name: base\n  hosts: all\n  management: [tcp/22 from 10.0.0.0/8]\n  policy:\n    allow: [http/tcp]\n",
    );
    let out = fleet.cli(&["apply", "-i", &f.inv, mgmt.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("anti-lockout")
            && err.contains("management `tcp/22 from 10.0.0.0/8` (")
            && err.contains("no-ssh-mgmt.yml:3)"),
        "{err}"
    );
    let history = fleet.cli_json(&["history", "--json"]);
    assert_eq!(
        history.to_string().matches("\"revision\":3").count(),
        0,
        "{history}"
    );
    // `history` shows r2's rollout: who ran it, its waves and per-host results.
    let r2 = &history["revisions"][0];
    assert_eq!(r2["revision"], 2, "{history}");
    assert_eq!(r2["rollout"]["author"], "e2e", "{history}");
    assert_eq!(r2["rollout"]["status"], "succeeded", "{history}");
    assert_eq!(
        r2["rollout"]["hosts"].as_array().map(Vec::len),
        Some(4),
        "{history}"
    );
    let text = String::from_utf8_lossy(&fleet.cli(&["history"]).stdout).into_owned();
    assert!(text.contains("wave 2: h2,h3 confirmed"), "{text}");

    // Rollback to r1 (the one before the latest) restores the r1 verdicts; without flags
    // it reuses the latest rollout's waves and confirmation.
    let out = fleet.cli(&["rollback", "--json"]);
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
    assert_eq!(list["rollouts"][0]["serial"], "1,50%", "{list}");
    assert_eq!(list["rollouts"][0]["confirm_timeout_ms"], 10000, "{list}");
    assert_eq!(list["rollouts"][0]["author"], "e2e", "{list}");

    // Abort: wave 1 (h1) is confirmed and sits in its 4 s denial gate; the abort stops
    // the rollout there. h1 keeps r2 (a known, confirmed revision), the rest keep r1.
    let apply = fleet
        .cli_command(&[
            "apply",
            "-i",
            &f.inv,
            &f.v2,
            "--serial",
            "1",
            "--confirm-timeout",
            "10s",
            "--max-denial-increase",
            "10x",
            "--denial-window",
            "4s",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("apply");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let l = fleet.cli_json(&["rollout", "list", "--json"]);
        let r = &l["rollouts"][0];
        let h1 = r["hosts"]
            .as_array()
            .and_then(|a| a.iter().find(|h| h["host"] == "h1"))
            .map(|h| h["state"].clone());
        if r["status"] == "running" && h1 == Some(serde_json::json!("confirmed")) {
            break;
        }
        assert!(Instant::now() < deadline, "h1 never confirmed: {l}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let a = fleet.cli_json(&["rollout", "abort", "--json"]);
    assert!(a["rollout"].as_u64().is_some(), "{a}");
    let out = apply.wait_with_output().expect("apply");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(out.status.code(), Some(7), "{v}");
    assert_eq!(v["status"], "aborted", "{v}");
    assert_eq!(tcp(&fleet, "h1", 25), TcpOutcome::Accepted, "h1 keeps r2");
    for h in ["h2", "h3", "h4"] {
        assert_eq!(tcp(&fleet, h, 25), TcpOutcome::TimedOut, "{h} keeps r1");
    }
    let again = fleet.cli(&["rollout", "abort"]);
    assert_ne!(again.status.code(), Some(0), "nothing to abort");
}

/// `--nft` for a host whose kernel refuses every ruleset change (reads still work).
const REFUSING_NFT: &str = "#!/bin/sh
# e2e fault injection: every `nft -f` (a ruleset change) fails.
for a in \"$@\"; do
  if [ \"$a\" = \"-f\" ]; then
    echo 'Error: Could not process rule: Cannot allocate memory (e2e fault injection)' >&2
    exit 1
  fi
done
exec nft \"$@\"
";

fn result_of(v: &serde_json::Value, host: &str) -> String {
    v["hosts"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["host"] == host))
        .map(|x| x["result"].as_str().unwrap_or("").to_owned())
        .unwrap_or_default()
}

#[test]
fn failed_apply_and_failed_denial_gate_halt_and_roll_back() {
    let Some((mut fleet, f, _l)) = setup() else {
        return;
    };
    // 1. Denial-rate gate. DNS traffic to h1 is accepted by r1; r2 drops it. Wave 1 (h1)
    // applies and confirms, then denies ~300/s against a quiet baseline (floor 1/s,
    // 10x): the gate fails, h1 is rolled back, h2-h4 never get r2.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let dns = SocketAddr::new(fleet.hosts["h1"].addr(false), 53);
    let flag = stop.clone();
    let sender = fleet
        .outside
        .ns
        .spawn(move || {
            let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = s.send_to(b"portcullis-e2e", dns);
                std::thread::sleep(Duration::from_millis(3));
            }
            Ok(())
        })
        .expect("sender");
    let out = fleet.cli(&[
        "apply",
        "-i",
        &f.inv,
        &f.v2,
        "--serial",
        "1",
        "--confirm-timeout",
        "10s",
        "--max-denial-increase",
        "10x",
        "--denial-window",
        "3s",
        "--json",
    ]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sender.join();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(out.status.code(), Some(6), "{v}\n{}", fleet.logs());
    assert_eq!(v["status"], "rolled_back", "{v}");
    assert!(
        v["reason"].as_str().unwrap_or("").contains("denial gate"),
        "{v}"
    );
    assert_eq!(result_of(&v, "h1"), "rolled_back", "{v}");
    for h in HOSTS {
        assert_eq!(tcp(&fleet, h, 80), TcpOutcome::Accepted, "{h} on r1");
        assert_eq!(
            tcp(&fleet, h, 25),
            TcpOutcome::TimedOut,
            "{h} r2 not in force"
        );
    }

    // 2. A host whose kernel refuses the change: h3 in wave 2 fails to apply, the rollout
    // halts and h1, h2 (wave 1) and h4 (wave 2) go back to r1.
    let nft = fleet.executable("refusing-nft", REFUSING_NFT);
    fleet.stop_agent("h3");
    fleet
        .start_agent_with(
            "h3",
            &["--heartbeat", "1s", "--nft", nft.to_str().expect("utf-8")],
        )
        .expect("h3 with a refusing kernel");
    fleet.wait_status(&["h3"], "connected", |h| h["connected"] == true);
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
    assert_eq!(result_of(&v, "h3"), "failed", "{v}");
    for h in ["h1", "h2", "h4"] {
        assert_eq!(result_of(&v, h), "rolled_back", "{v}");
    }
    assert!(
        v.to_string().contains("fault injection"),
        "the agent's error reaches the operator: {v}"
    );
    for h in HOSTS {
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

/// The controller's own host gets a stateful policy that does not open the controller's
/// port: agents could no longer connect. Refused; forced, the next host cannot come back
/// through the controller's new rules, reverts by itself, and the rollout halts and rolls
/// the controller's host back; the hosts after it are never touched.
#[test]
fn lockout_of_the_controller_is_refused_and_forced_the_cut_off_host_reverts() {
    if !require_root_netns() {
        return;
    }
    let hosts = ["h1", "h2", "h3"];
    let mut fleet = Fleet::new(&hosts).expect("fleet");
    let pki = fleet.pki();
    fleet
        .portcullis_ok(&[
            "ca",
            "issue",
            "agent",
            "ctl",
            "--dir",
            pki.to_str().expect("utf-8"),
        ])
        .expect("ctl agent cert");
    let inv = fleet.write(
        "inventory.yml",
        "all:\n  children:\n    control:\n      hosts:\n        ctl:\n    workers:\n      hosts:\n        h1:\n        h2:\n        h3:\n",
    );
    let v1 = fleet.write(
        "v1.yml",
        "- hosts: all\n  policy:\n    allow: [ssh/tcp, http/tcp]\n",
    );
    let cut = fleet.write(
        "cut.yml",
        "- hosts: workers\n  policy:\n    allow: [ssh/tcp]\n\
         - hosts: control\n  policy:\n    allow: [ssh/tcp]\n    replies: stateful\n",
    );
    let _l = servers(&fleet);
    fleet.start_controller().expect("controller");
    for h in ["ctl", "h1", "h2", "h3"] {
        fleet.start_agent(h).expect("agent");
    }
    fleet.wait_status(&["ctl", "h1", "h2", "h3"], "connected", |h| {
        h["connected"] == true
    });
    fleet.apply_ok(&inv, &v1);
    let (inv, cut) = (inv.to_str().expect("utf-8"), cut.to_str().expect("utf-8"));

    let args = [
        "apply",
        "-i",
        inv,
        cut,
        "--serial",
        "1",
        "--confirm-timeout",
        "6s",
    ];
    let out = fleet.cli(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("anti-lockout") && err.contains("ctl: agent connections from"),
        "{err}"
    );
    assert!(err.contains("tcp/7443"), "{err}");

    let started = Instant::now();
    let mut forced = args.to_vec();
    forced.extend(["--force-lockout-risk", "--json"]);
    let out = fleet.cli(&forced);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(out.status.code(), Some(6), "{v}\n{}", fleet.logs());
    assert_eq!(v["status"], "rolled_back", "{v}");
    assert_eq!(
        v["waves"],
        serde_json::json!([["ctl"], ["h1"], ["h2"], ["h3"]])
    );
    assert_eq!(result_of(&v, "ctl"), "rolled_back", "{v}");
    assert_eq!(result_of(&v, "h1"), "unconfirmed", "{v}");
    assert!(started.elapsed() < Duration::from_secs(30), "{v}");
    // h1 is back on r1 within its confirm timeout: by itself (revert at the deadline) or,
    // once the controller's host is rolled back, pushed r1 when it reconnects, whichever
    // comes first. h2, h3 were never sent r2.
    let st = fleet.wait_status(&["h1"], "h1 back on r1", |h| {
        h["connected"] == true && h["applied_revision"] == 1
    });
    assert!(st.to_string().contains("h1"), "{st}");
    let log = fleet.read_log("agent-h1");
    assert!(log.contains("applying under commit-confirmed"), "{log}");
    assert!(started.elapsed() < Duration::from_secs(20), "{log}");
    for h in ["h2", "h3"] {
        assert!(
            !fleet
                .read_log(&format!("agent-{h}"))
                .contains("applying under commit-confirmed"),
            "{h} was sent r2"
        );
    }
    for h in hosts {
        assert_eq!(tcp(&fleet, h, 80), TcpOutcome::Accepted, "{h} on r1");
    }
}

#[test]
fn controller_killed_mid_rollout_agents_revert_and_rollout_is_interrupted() {
    let Some((mut fleet, f, _l)) = setup() else {
        return;
    };
    // Wave 1 (h1) applies r2 under a 6 s deadline; the controller dies before it can
    // confirm: h1 reverts to r1 by itself.
    let mut apply = fleet
        .cli_command(&[
            "apply",
            "-i",
            &f.inv,
            &f.v2,
            "--serial",
            "1",
            "--confirm-timeout",
            "6s",
        ])
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
        std::thread::sleep(Duration::from_millis(5));
    }
    // SIGKILL at once: a SIGTERM'd controller keeps serving while it shuts down, long
    // enough (under load) to take h1's new session and confirm it.
    fleet.kill_controller(0);
    let _ = apply.wait();
    // The log line comes before nft runs: r2 is in force once that apply finished, well
    // before the 6 s deadline.
    let applied = Instant::now() + Duration::from_secs(4);
    while tcp(&fleet, "h1", 25) != TcpOutcome::Accepted {
        assert!(
            Instant::now() < applied,
            "r2 in force before the deadline:\n{}",
            fleet.logs()
        );
    }
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
