//! End to end, issue 12: a rollout in waves across two controllers on one PostgreSQL
//! database, three agents given both addresses (h1's session on B, h2's and h3's on A),
//! real packets from `outside`.
//!
//! - A commit-confirmed rollout in two waves started through A drives every host: h1 is
//!   sent its revision, comes back and is confirmed through B (its session never leaves
//!   B), and B's `rollout list` shows the rollout as A ran it.
//! - A second one, forced past the anti-lockout check, cuts the hosts off from both
//!   controllers (`deny:` their addresses). While its first wave (h1 on B, h2 on A) is
//!   applied and unconfirmed, A is killed with SIGKILL: another rollout through B is
//!   refused while the dead one's lease is live; h1 and h2 revert by themselves at their
//!   deadline (the packets say so) and reconnect to B, h3 never changes; B shows the
//!   rollout `interrupted` once the lease expired, h1 and h2 `reverted`, every host on
//!   the revision it enforces, and a rollout through B then succeeds.

#![allow(clippy::unwrap_used)]

mod common;

use common::Fleet;
use portcullis_testkit::probe::{TcpOutcome, tcp_connect};
use portcullis_testkit::{TcpServer, require_root_netns};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

const HOSTS: [&str; 3] = ["h1", "h2", "h3"];
const INVENTORY: &str = "all:\n  hosts:\n    h1:\n    h2:\n    h3:\n";
const METRICS_PORT: u16 = 9642;
const ACCEPTED: Duration = Duration::from_secs(3);
const DROPPED: Duration = Duration::from_millis(500);
/// The agents' confirm deadline in the interrupted rollout: past the lease's expiry
/// (15 s after A's last renewal), so B has interrupted the rollout when they revert.
const CONFIRM: &str = "30s";
const A: usize = 0;
const B: usize = 1;

fn site(name: &str, allow: &str, extra: &str) -> String {
    format!(
        "- name: {name}\n  hosts: all\n  policy:\n    interface: default\n    allow: [{allow}]\n{extra}"
    )
}

/// TCP listeners on 25 and 80 of every host.
fn listen(fleet: &Fleet) -> Vec<TcpServer> {
    let any = |p: u16| SocketAddr::new("::".parse().unwrap(), p);
    HOSTS
        .iter()
        .flat_map(|h| [25, 80].map(|p| TcpServer::start(&fleet.hosts[*h].ns, any(p)).unwrap()))
        .collect()
}

fn start_agent(fleet: &mut Fleet, host: &str) {
    let urls = fleet.controller_urls();
    let metrics = SocketAddr::new(fleet.hosts[host].v4, METRICS_PORT).to_string();
    fleet
        .start_agent_to(host, &urls, &["--metrics-listen", metrics.as_str()])
        .unwrap();
}

/// Reset (or, `false`, stop resetting) connections from `hosts` to controller `i`: their
/// agents go to the other controller at once.
fn refuse(fleet: &Fleet, i: usize, hosts: &[&str], on: bool) {
    let ns = &fleet.ctl_node(i).ns;
    if on {
        let srcs: Vec<String> = hosts
            .iter()
            .map(|h| fleet.hosts[*h].v4.to_string())
            .collect();
        let rules = format!(
            "add table inet e2e_refuse; \
             add chain inet e2e_refuse in {{ type filter hook input priority 0; }}; \
             add rule inet e2e_refuse in ip saddr {{ {} }} tcp dport {} reject with tcp reset",
            srcs.join(", "),
            common::CTL_PORT
        );
        ns.run_ok("nft", &[rules.as_str()]).unwrap();
    } else {
        ns.run_ok("nft", &["delete table inet e2e_refuse"]).unwrap();
    }
}

fn probe(fleet: &Fleet, host: &str, port: u16, v6: bool, within: Duration) -> TcpOutcome {
    let a = SocketAddr::new(fleet.hosts[host].addr(v6), port);
    tcp_connect(&fleet.outside.ns, a, within).unwrap()
}

/// From outside, IPv4 and IPv6: `open` accepted and `closed` dropped on each of `hosts`.
fn assert_verdicts(fleet: &Fleet, hosts: &[&str], open: u16, closed: u16, when: &str) {
    for host in hosts {
        for v6 in [false, true] {
            let got = (
                probe(fleet, host, open, v6, ACCEPTED),
                probe(fleet, host, closed, v6, DROPPED),
            );
            assert_eq!(
                got,
                (TcpOutcome::Accepted, TcpOutcome::TimedOut),
                "{when}: {host} (v6 {v6}): tcp/{open} must be accepted, tcp/{closed} dropped"
            );
        }
    }
}

/// Every host connected and on `revision` (desired, applied, in sync) as controller `i`
/// reports it.
fn wait_on_revision(fleet: &Fleet, i: usize, revision: u64, within: Duration) {
    fleet.wait_status_at(i, &HOSTS, &format!("on r{revision}"), within, |h| {
        h["connected"] == true
            && h["desired_revision"] == revision
            && h["applied_revision"] == revision
            && h["in_sync"] == true
    });
}

fn apply_args<'a>(inv: &'a Path, site: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "apply",
        "-i",
        inv.to_str().unwrap(),
        site.to_str().unwrap(),
        "--timeout",
        "90s",
    ];
    args.extend_from_slice(extra);
    args
}

/// The rollout `id` as controller `i`'s `rollout list --json` shows it.
fn rollout_at(fleet: &Fleet, i: usize, id: u64) -> serde_json::Value {
    let out = fleet.cli_at(i, &["rollout", "list", "--json"]);
    assert!(
        out.status.success(),
        "rollout list on controller {i}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["rollouts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no rollout {id} on controller {i}: {v:#}"))
}

/// (host, wave, state) of a rollout's JSON.
fn states(r: &serde_json::Value) -> Vec<(String, u64, String)> {
    r["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["host"].as_str().unwrap().to_owned(),
                h["wave"].as_u64().unwrap(),
                h["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn want(v: &[(&str, u64, &str)]) -> Vec<(String, u64, String)> {
    v.iter()
        .map(|(h, w, s)| ((*h).to_owned(), *w, (*s).to_owned()))
        .collect()
}

/// Lines of `host`'s agent log containing `what`.
fn agent_says(fleet: &Fleet, host: &str, what: &str) -> usize {
    fleet
        .read_log(&format!("agent-{host}"))
        .lines()
        .filter(|l| l.contains(what))
        .count()
}

fn wait_until(what: &str, within: Duration, fleet: &Fleet, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}\n{}",
            fleet.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_rollout_drives_hosts_on_both_controllers_and_one_cut_short_by_a_kill_is_interrupted() {
    if !require_root_netns() {
        return;
    }
    let Some(mut fleet) = Fleet::on_postgres(&HOSTS, 2).unwrap() else {
        return;
    };
    let inv = fleet.write("inventory.yml", INVENTORY);
    let smtp = fleet.write("smtp.yml", &site("mail", "smtp/tcp", ""));
    let http = fleet.write("http.yml", &site("web", "http/tcp", ""));
    // Mail open, and nothing at all from either controller: the agents cannot come back.
    let cut = fleet.write(
        "cut.yml",
        &site(
            "cut",
            "smtp/tcp",
            "    deny:\n      - { from: [10.77.0.1/32, 10.77.0.2/32] }\n",
        ),
    );
    let _listeners = listen(&fleet);

    // h1 on B (started first); h2 and h3 on A (B refuses them while they start).
    fleet.start_controller_at(B).unwrap();
    start_agent(&mut fleet, "h1");
    fleet.wait_session("h1", METRICS_PORT, Duration::from_secs(20), |i| i == B);
    fleet.start_controller_at(A).unwrap();
    refuse(&fleet, B, &["h2", "h3"], true);
    for h in ["h2", "h3"] {
        start_agent(&mut fleet, h);
    }
    for h in ["h2", "h3"] {
        fleet.wait_session(h, METRICS_PORT, Duration::from_secs(20), |i| i == A);
    }
    refuse(&fleet, B, &["h2", "h3"], false);
    fleet.apply_ok_at(A, &inv, &smtp);
    wait_on_revision(&fleet, B, 1, Duration::from_secs(20));
    assert_verdicts(&fleet, &HOSTS, 25, 80, "r1");

    // 1. r2 in waves h1 | h2, h3, commit-confirmed, through A: h1 through B.
    let args = apply_args(
        &inv,
        &http,
        &["--serial", "1,2", "--confirm-timeout", "20s"],
    );
    let out = fleet.cli_at(A, &args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "rollout r2 through A:\n{}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        fleet.logs()
    );
    wait_on_revision(&fleet, B, 2, Duration::from_secs(20));
    assert_verdicts(&fleet, &HOSTS, 80, 25, "r2");
    let r = rollout_at(&fleet, B, 1);
    assert_eq!(r["status"], "succeeded", "{r:#}");
    assert_eq!(
        states(&r),
        want(&[
            ("h1", 0, "confirmed"),
            ("h2", 1, "confirmed"),
            ("h3", 1, "confirmed")
        ]),
        "{r:#}"
    );
    assert_eq!(
        rollout_at(&fleet, A, 1),
        r,
        "the controllers' rollouts differ"
    );
    for h in HOSTS {
        assert_eq!(
            agent_says(&fleet, h, "applying under commit-confirmed"),
            1,
            "{h}"
        );
        assert_eq!(
            agent_says(&fleet, h, "revision confirmed by the controller"),
            1,
            "{h}"
        );
    }
    assert_eq!(fleet.session_on("h1", METRICS_PORT), Some(B), "h1 left B");

    // 2. r3 cuts the hosts off both controllers: waves h1, h2 | h3, through A.
    let args = apply_args(
        &inv,
        &cut,
        &[
            "--serial",
            "2",
            "--confirm-timeout",
            CONFIRM,
            "--force-lockout-risk",
        ],
    );
    let mut rollout = fleet
        .cli_command_at(A, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sent = Instant::now();
    // Applied (the packets say r3) and unconfirmed (the agents cannot come back).
    for h in ["h1", "h2"] {
        wait_until(
            &format!("{h} applies r3"),
            Duration::from_secs(20),
            &fleet,
            || agent_says(&fleet, h, "applying under commit-confirmed") == 2,
        );
    }
    wait_until(
        "r3 in force on h1, h2",
        Duration::from_secs(10),
        &fleet,
        || {
            ["h1", "h2"]
                .iter()
                .all(|h| probe(&fleet, h, 25, false, ACCEPTED) == TcpOutcome::Accepted)
        },
    );
    assert_verdicts(&fleet, &["h1", "h2"], 25, 80, "r3 applied, unconfirmed");
    let r = rollout_at(&fleet, B, 2);
    assert_eq!(r["status"], "running", "{r:#}");
    for h in r["hosts"].as_array().unwrap() {
        assert_ne!(h["state"], "confirmed", "{r:#}");
    }
    fleet.kill_controller(A);
    let killed = Instant::now();
    let _ = rollout.wait();

    // The dead controller's lease still holds: no other rollout, through B either.
    let args = apply_args(&inv, &smtp, &["--serial", "1"]);
    let out = fleet.cli_at(B, &args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("rollout 2 is running on controller"), "{err}");
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "the refusal came too late to be the lease's ({:?})",
        killed.elapsed()
    );

    // h1 and h2 revert by themselves at their deadline; h3 never changed.
    wait_until(
        "h1, h2 revert to r2",
        Duration::from_secs(45),
        &fleet,
        || {
            ["h1", "h2"]
                .iter()
                .all(|h| probe(&fleet, h, 80, false, ACCEPTED) == TcpOutcome::Accepted)
        },
    );
    eprintln!(
        "reverted {:?} after r3 was sent, {:?} after the kill",
        sent.elapsed(),
        killed.elapsed()
    );
    assert_verdicts(&fleet, &HOSTS, 80, 25, "after the reverts");
    assert_eq!(
        agent_says(&fleet, "h3", "applying under commit-confirmed"),
        1
    );
    for h in HOSTS {
        fleet.wait_session(h, METRICS_PORT, Duration::from_secs(20), |i| i == B);
    }

    // B: the rollout as it ended, and every host on what it enforces.
    wait_until(
        "rollout 2 interrupted on B",
        Duration::from_secs(20),
        &fleet,
        || {
            let r = rollout_at(&fleet, B, 2);
            r["status"] == "interrupted"
                && states(&r)
                    == want(&[
                        ("h1", 0, "reverted"),
                        ("h2", 0, "reverted"),
                        ("h3", 1, "interrupted"),
                    ])
        },
    );
    wait_on_revision(&fleet, B, 2, Duration::from_secs(20));
    for h in ["h1", "h2"] {
        assert!(
            agent_says(&fleet, h, "reverting the unconfirmed revision") >= 1,
            "{h}"
        );
    }

    // The lease is gone: a rollout through B runs, and reaches every host.
    let args = apply_args(&inv, &smtp, &["--serial", "1", "--confirm-timeout", "20s"]);
    let out = fleet.cli_at(B, &args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "rollout r4 through B:\n{}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        fleet.logs()
    );
    wait_on_revision(&fleet, B, 4, Duration::from_secs(20));
    assert_verdicts(&fleet, &HOSTS, 25, 80, "r4 through B");
    assert_eq!(rollout_at(&fleet, B, 3)["status"], "succeeded");
}
