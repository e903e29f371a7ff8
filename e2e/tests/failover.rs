//! End to end: two controllers (each with its own database for now, one PKI), one agent
//! given both URLs. It connects to one of them; that controller is killed with SIGKILL;
//! within 10 s the agent is connected to the other (the survivor's `status --json` says
//! so), the host kept enforcing meanwhile, and an apply through the survivor reaches it:
//! real packets from `outside`. The agent's metrics name the controller it is on.
//!
//! Then the killed controller comes back and a commit-confirmed rollout goes through the
//! survivor: it is confirmed only if the agent's reconnect after `Applied` goes to the
//! same controller again (the other one knows nothing of the rollout), although the one
//! that came back is first in the agent's order (it was the first one it connected to).
//!
//! The same failover with one DNS name for both controllers (`/etc/hosts` of h1's
//! namespace lists both addresses; the controller certificate names the name): each
//! address is a controller, and TLS checks the name while the agent dials an address
//! (another name of the same addresses, not in the certificate, is refused).

#![allow(clippy::unwrap_used)]

mod common;

use common::Fleet;
use portcullis_testkit::probe::{TcpOutcome, tcp_connect};
use portcullis_testkit::{TcpServer, require_root_netns};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const INVENTORY: &str = "\
all:
  hosts:
    h1:
";

/// Through the first controller: mail open, web closed.
const SITE_SMTP: &str = "\
- name: mail
  hosts: all
  policy:
    interface: default
    allow: [smtp/tcp]
";

/// Through the survivor: web open, mail closed.
const SITE_HTTP: &str = "\
- name: web
  hosts: all
  policy:
    interface: default
    allow: [http/tcp]
";

/// The survivor's commit-confirmed rollout: both open.
const SITE_BOTH: &str = "\
- name: both
  hosts: all
  policy:
    interface: default
    allow: [smtp/tcp, http/tcp]
";

const DROPPED: Duration = Duration::from_millis(400);
const METRICS_PORT: u16 = 9642;
/// The one name of both controllers in the DNS test (h1's `/etc/hosts`).
const NAME: &str = "ctl.e2e.test";
/// Another name of the same addresses, not in the controller certificate.
const OTHER: &str = "other.e2e.test";

fn connected_on(fleet: &Fleet, i: usize) -> bool {
    let out = fleet.cli_at(i, &["status", "--json"]);
    if !out.status.success() {
        return false;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["hosts"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["host"] == "h1"))
        .is_some_and(|h| h["connected"] == true)
}

/// The controller h1's session is on (exactly one of the two).
fn wait_connected_to_one(fleet: &Fleet) -> usize {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let on: Vec<usize> = (0..2).filter(|i| connected_on(fleet, *i)).collect();
        if on.len() == 1 {
            return on[0];
        }
        assert!(
            on.len() < 2,
            "h1 connected to both controllers\n{}",
            fleet.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("h1 never connected to a controller\n{}", fleet.logs());
}

/// tcp/25 and tcp/80 of h1 from outside: (smtp open, http open).
fn verdicts(fleet: &Fleet) -> (bool, bool) {
    let a = fleet.hosts["h1"].v4;
    let open = |p| {
        tcp_connect(&fleet.outside.ns, SocketAddr::new(a, p), DROPPED).unwrap()
            == TcpOutcome::Accepted
    };
    (open(25), open(80))
}

/// The agent's `/metrics`, fetched inside h1's own namespace.
fn agent_metrics(fleet: &Fleet) -> String {
    fleet
        .agent_metrics("h1", METRICS_PORT)
        .expect("h1's metrics endpoint answers")
}

fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
}

/// The series of `agent_controller` for `url` at `address`.
fn on_series(url: &str, address: &str) -> String {
    format!("portcullis_agent_controller{{url=\"{url}\",address=\"{address}\"}}")
}

fn failovers(m: &str) -> Option<&str> {
    sample(m, "portcullis_agent_controller_failovers_total")
}

/// Files of the scenario.
struct Sites {
    inv: PathBuf,
    smtp: PathBuf,
    http: PathBuf,
    both: PathBuf,
}

/// Two controllers and h1 (listening on 25 and 80), nothing started.
fn two_controllers() -> (Fleet, Sites, Vec<TcpServer>) {
    let fleet = Fleet::with_controllers(&["h1"], 2).unwrap();
    let sites = Sites {
        inv: fleet.write("inventory.yml", INVENTORY),
        smtp: fleet.write("smtp.yml", SITE_SMTP),
        http: fleet.write("http.yml", SITE_HTTP),
        both: fleet.write("both.yml", SITE_BOTH),
    };
    let any = |p: u16| SocketAddr::new("::".parse().unwrap(), p);
    let listeners = [25, 80]
        .into_iter()
        .map(|p| TcpServer::start(&fleet.hosts["h1"].ns, any(p)).unwrap())
        .collect();
    (fleet, sites, listeners)
}

/// The agent is running: apply through the controller it is on, SIGKILL that one, wait
/// until h1 is on the other (10 s at most), apply through the survivor. Returns (first,
/// survivor).
fn apply_kill_fail_over_apply(fleet: &mut Fleet, sites: &Sites) -> (usize, usize) {
    let first = wait_connected_to_one(fleet);
    let survivor = 1 - first;
    fleet.apply_ok_at(first, &sites.inv, &sites.smtp);
    assert_eq!(verdicts(fleet), (true, false), "after the first apply");
    assert_eq!(failovers(&agent_metrics(fleet)), Some("0"));

    // The controller holding the session dies without a word.
    fleet.kill_controller(first);
    let killed = Instant::now();
    fleet.wait_status_at(
        survivor,
        &["h1"],
        "connected to the survivor",
        Duration::from_secs(10),
        |h| h["connected"] == true,
    );
    let took = killed.elapsed();
    eprintln!("h1 failed over from controller {first} to {survivor} in {took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    // Fail-static meanwhile: still the first controller's policy.
    assert_eq!(verdicts(fleet), (true, false), "during the failover");

    // An apply through the survivor reaches the host.
    fleet.apply_ok_at(survivor, &sites.inv, &sites.http);
    assert_eq!(verdicts(fleet), (false, true), "after the survivor's apply");
    let m = agent_metrics(fleet);
    assert_eq!(failovers(&m), Some("1"), "{m}");
    let log = fleet.read_log("agent-h1");
    assert!(log.contains("failed over"), "{log}");
    (first, survivor)
}

#[test]
fn agent_fails_over_to_the_surviving_controller_and_takes_its_applies() {
    if !require_root_netns() {
        return;
    }
    let (mut fleet, sites, _listeners) = two_controllers();
    fleet.start_controller_at(0).unwrap();
    fleet.start_controller_at(1).unwrap();
    let urls = fleet.controller_urls();
    let metrics = SocketAddr::new(fleet.hosts["h1"].v4, METRICS_PORT).to_string();
    fleet
        .start_agent_to("h1", &urls, &["--metrics-listen", &metrics])
        .unwrap();
    let addr = |i: usize| urls[i].trim_start_matches("https://").to_owned();

    let (first, survivor) = apply_kill_fail_over_apply(&mut fleet, &sites);
    let m = agent_metrics(&fleet);
    let on_survivor = on_series(&urls[survivor], &addr(survivor));
    assert_eq!(sample(&m, &on_survivor), Some("1"), "{m}");
    assert_eq!(
        sample(&m, &on_series(&urls[first], &addr(first))),
        None,
        "{m}"
    );

    // The killed controller is back (and first in h1's order); the agent stays.
    fleet.start_controller_at(first).unwrap();
    let out = fleet.cli_at(
        survivor,
        &[
            "apply",
            "-i",
            sites.inv.to_str().unwrap(),
            sites.both.to_str().unwrap(),
            "--serial",
            "1",
            "--confirm-timeout",
            "10s",
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(
        (out.status.code(), v["status"].as_str()),
        (Some(0), Some("succeeded")),
        "confirmed rollout through the survivor: {v}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        fleet.logs()
    );
    assert_eq!(
        verdicts(&fleet),
        (true, true),
        "after the confirmed rollout"
    );
    assert!(
        !connected_on(&fleet, first),
        "h1 went back to the restarted controller\n{}",
        fleet.logs()
    );
    let m = agent_metrics(&fleet);
    assert_eq!(sample(&m, &on_survivor), Some("1"), "{m}");
    assert_eq!(failovers(&m), Some("1"), "{m}");
}

#[test]
fn one_name_with_two_addresses_is_two_controllers_checked_against_the_name() {
    if !require_root_netns() {
        return;
    }
    let (mut fleet, sites, _listeners) = two_controllers();
    // The controller certificate names NAME too (and still both IPs).
    let pki = fleet.pki();
    let mut args = vec!["ca", "issue", "controller", "--force"];
    let sans: Vec<String> = (0..2)
        .flat_map(|i| {
            let n = fleet.ctl_node(i);
            [n.v4.to_string(), n.v6.to_string()]
        })
        .chain([NAME.to_owned()])
        .collect();
    for san in &sans {
        args.extend(["--san", san.as_str()]);
    }
    args.extend(["--dir", pki.to_str().unwrap()]);
    fleet.portcullis_ok(&args).unwrap();
    let v4s = [fleet.ctl_node(0).v4, fleet.ctl_node(1).v4];
    let v4 = |i: usize| v4s[i];
    let hosts = format!("{} {NAME} {OTHER}\n{} {NAME} {OTHER}\n", v4(0), v4(1));
    fleet.hosts["h1"].ns.set_hosts(&hosts).unwrap();

    fleet.start_controller_at(0).unwrap();
    fleet.start_controller_at(1).unwrap();

    // The addresses are right but the certificate does not name OTHER: refused.
    let other = format!("https://{OTHER}:{}", common::CTL_PORT);
    fleet.start_agent_to("h1", &[other], &[]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = format!("certificate not valid for name \"{OTHER}\"");
    while !fleet.read_log("agent-h1").contains(&refused) {
        assert!(
            Instant::now() < deadline,
            "no certificate error for {OTHER}\n{}",
            fleet.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!connected_on(&fleet, 0) && !connected_on(&fleet, 1));
    fleet.stop_agent("h1");

    let url = format!("https://{NAME}:{}", common::CTL_PORT);
    let metrics = SocketAddr::new(fleet.hosts["h1"].v4, METRICS_PORT).to_string();
    fleet
        .start_agent_to(
            "h1",
            std::slice::from_ref(&url),
            &["--metrics-listen", &metrics],
        )
        .unwrap();

    let (first, survivor) = apply_kill_fail_over_apply(&mut fleet, &sites);
    let m = agent_metrics(&fleet);
    let at = |i: usize| SocketAddr::new(v4(i), common::CTL_PORT).to_string();
    assert_eq!(
        sample(&m, &on_series(&url, &at(survivor))),
        Some("1"),
        "{m}"
    );
    assert_eq!(sample(&m, &on_series(&url, &at(first))), None, "{m}");
}
