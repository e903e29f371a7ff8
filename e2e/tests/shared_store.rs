//! End to end, issue 12: two controllers on one PostgreSQL database, three agents given
//! both addresses, real packets from `outside`.
//!
//! - An apply through controller A reaches every host, also those whose sessions B
//!   holds (B started first, so h1 and h2 are on it): `status` on both shows all applied.
//! - The controller holding h1's session is killed with SIGKILL: within 10 s h1 is on the
//!   other one (its metrics and the store's `hosts.controller` say so), and a new apply
//!   through the survivor reaches it.
//! - Denials probed before, during and after that failover are stored exactly once, also
//!   a batch stored through a controller whose acknowledgement never reached the agent
//!   (dropped in the controller's namespace until it is killed): the agent replays it to
//!   the other controller, the database dedups by (host, epoch, seq). `logs` on both
//!   controllers (the killed ones restarted) shows the same rows.
//! - On a cluster of the test's own, the database is stopped and started: the hosts keep
//!   enforcing meanwhile, an apply is refused with an error while it is down, and after it
//!   is back an apply reaches the hosts and `history` still lists every revision.

#![allow(clippy::unwrap_used)]

mod common;

use common::Fleet;
use portcullis_testkit::probe::{TcpOutcome, tcp_connect};
use portcullis_testkit::{TcpServer, postgres, require_postgres, require_root_netns};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const HOSTS: [&str; 3] = ["h1", "h2", "h3"];
const INVENTORY: &str = "all:\n  hosts:\n    h1:\n    h2:\n    h3:\n";
/// Both policies log denials (udp/137 is dropped, and logged, by both).
const LOG: &str = "log: { rate: 1000/second, burst: 1000 }";
const METRICS_PORT: u16 = 9642;
/// How long a connection to an allowed port may take on a slow, shared machine.
const ACCEPTED: Duration = Duration::from_secs(3);
/// Waiting this long with no answer means dropped.
const DROPPED: Duration = Duration::from_millis(500);
const DENIED_UDP: u16 = 137;

fn site(name: &str, allow: &str) -> String {
    format!(
        "- name: {name}\n  hosts: all\n  policy:\n    interface: default\n    allow: [{allow}]\n    {LOG}\n"
    )
}

/// The scenario's files: mail open (25) or web open (80), the other port dropped.
struct Sites {
    inv: PathBuf,
    smtp: PathBuf,
    http: PathBuf,
}

fn sites(fleet: &Fleet) -> Sites {
    Sites {
        inv: fleet.write("inventory.yml", INVENTORY),
        smtp: fleet.write("smtp.yml", &site("mail", "smtp/tcp")),
        http: fleet.write("http.yml", &site("web", "http/tcp")),
    }
}

/// TCP listeners on 25 and 80 of every host.
fn listen(fleet: &Fleet) -> Vec<TcpServer> {
    let any = |p: u16| SocketAddr::new("::".parse().unwrap(), p);
    HOSTS
        .iter()
        .flat_map(|h| [25, 80].map(|p| TcpServer::start(&fleet.hosts[*h].ns, any(p)).unwrap()))
        .collect()
}

/// Start `host`'s agent with both controllers, metrics on its own address.
fn start_agent(fleet: &mut Fleet, host: &str, extra: &[&str]) {
    let urls = fleet.controller_urls();
    let metrics = SocketAddr::new(fleet.hosts[host].v4, METRICS_PORT).to_string();
    let mut args = vec!["--metrics-listen", metrics.as_str()];
    args.extend_from_slice(extra);
    fleet.start_agent_to(host, &urls, &args).unwrap();
}

/// Every host connected and on `revision` (applied, hash read back, in sync), as
/// controller `i` reports it.
fn wait_applied_at(fleet: &Fleet, i: usize, revision: u64) {
    fleet.wait_status_at(
        i,
        &HOSTS,
        &format!("in sync on revision {revision}"),
        Duration::from_secs(20),
        |h| {
            h["connected"] == true
                && h["desired_revision"] == revision
                && h["applied_revision"] == revision
                && h["in_sync"] == true
        },
    );
}

/// From outside, over IPv4 and IPv6: `open` accepts on every host, `closed` is dropped.
fn assert_verdicts(fleet: &Fleet, open: u16, closed: u16, when: &str) {
    for host in HOSTS {
        for v6 in [false, true] {
            let a = fleet.hosts[host].addr(v6);
            let probe = |p, t| tcp_connect(&fleet.outside.ns, SocketAddr::new(a, p), t).unwrap();
            let got = (probe(open, ACCEPTED), probe(closed, DROPPED));
            assert_eq!(
                got,
                (TcpOutcome::Accepted, TcpOutcome::TimedOut),
                "{when}: {host} {a}: tcp/{open} must be accepted, tcp/{closed} dropped"
            );
        }
    }
}

/// The controller id the store names for `host` (`hosts.controller`).
fn stored_controller(cluster: &postgres::Cluster, db: &str, host: &str) -> String {
    let dbname = db
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("dbname="))
        .unwrap();
    cluster
        .psql(
            dbname,
            &format!("SELECT controller FROM hosts WHERE name = '{host}'"),
        )
        .unwrap()
}

/// `host`'s stored rows for udp/`port` on controller `i`, sorted.
fn denial_rows(fleet: &Fleet, i: usize, host: &str, port: u16) -> Vec<serde_json::Value> {
    let port = port.to_string();
    let args = [
        "logs", "--json", "--host", host, "--proto", "udp", "--port", &port, "--limit", "100000",
    ];
    let out = fleet.cli_at(i, &args);
    assert!(
        out.status.success(),
        "logs on controller {i}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut rows = v["rows"].as_array().cloned().unwrap_or_default();
    rows.sort_by_key(|r| r.to_string());
    rows
}

fn count(rows: &[serde_json::Value]) -> u64 {
    rows.iter().map(|r| r["count"].as_u64().unwrap_or(0)).sum()
}

/// Wait until controller `i` has exactly `want` denials of `host` on udp/`port` stored
/// (a panic as soon as there are more).
fn wait_denials(fleet: &Fleet, i: usize, host: &str, port: u16, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = count(&denial_rows(fleet, i, host, port));
        assert!(
            n <= want,
            "{n} denials stored for {want} sent\n{}",
            fleet.logs()
        );
        if n == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} of {want} denials stored on controller {i} within 30 s\n{}",
            fleet.logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Controller `i`'s log file name (as the harness names it).
fn controller_log(i: usize) -> String {
    match i {
        0 => "controller".to_owned(),
        _ => format!("controller-{i}"),
    }
}

/// Drop (or, `false`, stop dropping) what controller `i` sends to `host`: its answers,
/// acknowledgements and TCP ACKs; what the agent sends still arrives (and is read). A
/// table of the test's own in the controller's namespace (no agent runs there).
fn mute(fleet: &Fleet, i: usize, host: &str, on: bool) {
    let ns = &fleet.ctl_node(i).ns;
    if on {
        let dst = fleet.hosts[host].v4;
        let rules = format!(
            "add table inet e2e_mute; \
             add chain inet e2e_mute out {{ type filter hook output priority 0; }}; \
             add rule inet e2e_mute out ip daddr {dst} tcp sport {} drop",
            common::CTL_PORT
        );
        ns.run_ok("nft", &[rules.as_str()]).unwrap();
    } else {
        ns.run_ok("nft", &["delete table inet e2e_mute"]).unwrap();
    }
}

#[test]
fn two_controllers_on_postgres_share_applies_failover_and_denials() {
    if !require_root_netns() {
        return;
    }
    let Some(mut fleet) = Fleet::on_postgres(&HOSTS, 2).unwrap() else {
        return;
    };
    let (cluster, db) = (require_postgres().unwrap(), fleet.db().unwrap().to_owned());
    let sites = sites(&fleet);
    let _listeners = listen(&fleet);

    // Controller 1 first: h1 and h2 connect to it and stay there when 0 comes up.
    fleet.start_controller_at(1).unwrap();
    for h in ["h1", "h2"] {
        start_agent(&mut fleet, h, &[]);
    }
    for h in ["h1", "h2"] {
        fleet.wait_session(h, METRICS_PORT, Duration::from_secs(20), |i| i == 1);
    }
    fleet.start_controller_at(0).unwrap();
    start_agent(&mut fleet, "h3", &[]);
    fleet.wait_session("h3", METRICS_PORT, Duration::from_secs(20), |_| true);

    // a. An apply through controller 0 reaches every host, h1 and h2 through 1.
    fleet.apply_ok_at(0, &sites.inv, &sites.smtp);
    for i in 0..2 {
        wait_applied_at(&fleet, i, 1);
    }
    assert_verdicts(&fleet, 25, 80, "after the apply through controller 0");
    let first = fleet.session_on("h1", METRICS_PORT).unwrap();
    assert_eq!(first, 1, "h1 moved to controller 0 during the apply");
    let survivor = 0;

    // b. SIGKILL the controller holding h1's session, with denials around it: batches
    // of 1 s, one most likely sent before the kill, one around it, one during the
    // failover (spooled), one after.
    let before = stored_controller(cluster, &db, "h1");
    assert!(!before.is_empty(), "the store names no controller for h1");
    let denied = SocketAddr::new(fleet.hosts["h1"].v4, DENIED_UDP);
    fleet.blast_udp(denied, 20);
    std::thread::sleep(Duration::from_secs(1));
    fleet.blast_udp(denied, 20);
    fleet.kill_controller(first);
    let killed = Instant::now();
    fleet.blast_udp(denied, 20);
    fleet.wait_session("h1", METRICS_PORT, Duration::from_secs(10), |i| {
        i == survivor
    });
    let took = killed.elapsed();
    eprintln!("h1 failed over from controller {first} to {survivor} in {took:?}");
    assert!(took < Duration::from_secs(10), "failover took {took:?}");
    let after = stored_controller(cluster, &db, "h1");
    assert!(
        !after.is_empty() && after != before,
        "the store still names {after:?} (was {before:?}) for h1"
    );
    assert_verdicts(&fleet, 25, 80, "after the failover (fail-static)");
    fleet.blast_udp(denied, 20);
    for h in HOSTS {
        fleet.wait_session(h, METRICS_PORT, Duration::from_secs(15), |i| i == survivor);
    }
    fleet.apply_ok_at(survivor, &sites.inv, &sites.http);
    wait_applied_at(&fleet, survivor, 2);
    assert_verdicts(&fleet, 80, 25, "after the apply through the survivor");
    wait_denials(&fleet, survivor, "h1", DENIED_UDP, 80);

    // c. A batch stored but never acknowledged: controller 1 back; the survivor's answers
    // to h1 are dropped while 20 more denials are stored through it; it is killed; h1
    // replays the batch to controller 1, and the database stores it once.
    fleet.start_controller_at(first).unwrap();
    wait_applied_at(&fleet, first, 2);
    mute(&fleet, survivor, "h1", true);
    fleet.blast_udp(denied, 20);
    wait_denials(&fleet, first, "h1", DENIED_UDP, 100);
    fleet.kill_controller(survivor);
    // The kernel would still deliver the acknowledgement queued on the dead process's
    // socket (it outlives the process, retransmitting) once unmuted: destroy it.
    let h1 = fleet.hosts["h1"].v4.to_string();
    let sport = format!(":{}", common::CTL_PORT);
    let args = [
        "-K",
        "-tn",
        "dst",
        h1.as_str(),
        "sport",
        "=",
        sport.as_str(),
    ];
    fleet.ctl_node(survivor).ns.run_ok("ss", &args).unwrap();
    mute(&fleet, survivor, "h1", false);
    let killed = Instant::now();
    fleet.wait_session("h1", METRICS_PORT, Duration::from_secs(15), |i| i == first);
    eprintln!(
        "h1 failed over back to controller {first} in {:?}",
        killed.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let replayed = |log: String| {
        log.lines().any(|l| {
            l.contains("denial batch stored") && l.contains("h1") && l.contains("Duplicate {")
        })
    };
    while !replayed(fleet.read_log(&controller_log(first))) {
        assert!(
            Instant::now() < deadline,
            "h1 replayed no batch to controller {first}\n{}",
            fleet.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    fleet.start_controller_at(survivor).unwrap();
    // Time for any late replay to show up (it must not).
    std::thread::sleep(Duration::from_secs(3));
    let rows = denial_rows(&fleet, first, "h1", DENIED_UDP);
    assert_eq!(count(&rows), 100, "denials lost or stored twice: {rows:#?}");
    let mut distinct = rows.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), rows.len(), "a row stored twice: {rows:#?}");
    let src = fleet.outside.v4.to_string();
    assert!(rows.iter().all(|r| r["src"] == src), "{rows:#?}");
    assert_eq!(
        denial_rows(&fleet, survivor, "h1", DENIED_UDP),
        rows,
        "the controllers' logs differ"
    );
}

#[test]
fn hosts_keep_enforcing_while_the_database_is_down_and_no_revision_is_lost() {
    if !require_root_netns() {
        return;
    }
    // A cluster of this test's own, to stop; declared first, so it outlives the fleet.
    let Some(mut cluster) = postgres::require_dedicated(&["fsync=off"]) else {
        return;
    };
    let db = cluster.fresh_database().unwrap();
    let mut fleet = Fleet::with_shared_db(&HOSTS, 2, db).unwrap();
    let sites = sites(&fleet);
    let _listeners = listen(&fleet);
    fleet.start_controller_at(0).unwrap();
    fleet.start_controller_at(1).unwrap();
    for h in HOSTS {
        // Heartbeats (store writes) every 2 s, so several fall in the outage.
        start_agent(&mut fleet, h, &["--heartbeat", "2s"]);
    }
    for h in HOSTS {
        fleet.wait_session(h, METRICS_PORT, Duration::from_secs(20), |_| true);
    }
    fleet.apply_ok_at(0, &sites.inv, &sites.smtp);
    fleet.apply_ok_at(1, &sites.inv, &sites.http);
    for i in 0..2 {
        wait_applied_at(&fleet, i, 2);
    }
    assert_verdicts(&fleet, 80, 25, "before the outage");

    cluster.stop().unwrap();
    let stopped = Instant::now();
    for i in 0..2 {
        let inv = sites.inv.to_str().unwrap();
        let site = sites.smtp.to_str().unwrap();
        let cmd = fleet.cli_command_at(i, &["apply", "-i", inv, site, "--timeout", "20s"]);
        let out = common::output_within(cmd, Duration::from_secs(60));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code() == Some(4)
                && stderr.contains("database is unreachable: nothing was changed"),
            "apply through controller {i} with the database down: {:?}\n{}\n{stderr}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
        );
    }
    // Enforced throughout: probe every host for 20 s of outage (10 heartbeats).
    while stopped.elapsed() < Duration::from_secs(20) {
        assert_verdicts(&fleet, 80, 25, "with the database down");
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!("database down for {:?}", stopped.elapsed());

    cluster.restart().unwrap();
    fleet.apply_ok_at(1, &sites.inv, &sites.smtp);
    for i in 0..2 {
        wait_applied_at(&fleet, i, 3);
    }
    assert_verdicts(&fleet, 25, 80, "after the database came back");
    for i in 0..2 {
        let out = fleet.cli_at(i, &["history", "--json"]);
        assert!(out.status.success(), "history on controller {i}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut revs: Vec<u64> = v["revisions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["revision"].as_u64().unwrap())
            .collect();
        revs.sort_unstable();
        assert_eq!(revs, [1, 2, 3], "history on controller {i}: {v:#}");
    }
}
