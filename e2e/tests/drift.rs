//! End to end drift: real agents in network namespaces, real nft edits behind their back,
//! real packets. Event path (nft monitor) and timer path, heal and report modes,
//! re-rendering that is not drift, `portcullis drift` exit codes, coexistence findings,
//! `status` attestation and `apply --check --diff`.

#![allow(clippy::unwrap_used)]

mod common;

use common::Fleet;
use portcullis_testkit::probe::{TcpOutcome, tcp_connect};
use portcullis_testkit::{TcpServer, require_root_netns};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const INVENTORY: &str = "all:\n  children:\n    lab:\n      hosts:\n        h1:\n        h2:\n";
const DROPPED: Duration = Duration::from_millis(300);
/// The bound for the event path.
const EVENT_BOUND_MS: i64 = 2_000;

fn site(h1_mode: &str, h2_mode: &str, extra: &str) -> String {
    format!(
        "- name: h1\n  hosts: h1\n  policy:\n    interface: default\n    allow: [smtp/tcp, http/tcp{extra}]\n    drift: {h1_mode}\n\
         - name: h2\n  hosts: h2\n  policy:\n    interface: default\n    allow: [smtp/tcp, http/tcp{extra}]\n    drift: {h2_mode}\n"
    )
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(0))
        .unwrap_or(0)
}

struct Lab {
    fleet: Fleet,
    inv: String,
    /// `--limit` for every apply: only the hosts this lab runs.
    limit: String,
    _servers: Vec<TcpServer>,
}

impl Lab {
    /// Controller + agents (with `agent_flags`), listeners on tcp 22/25, `site` applied.
    fn start(hosts: &[&str], site_yaml: &str, agent_flags: &[&str]) -> Lab {
        let mut fleet = Fleet::new(hosts).unwrap();
        let inv = fleet
            .write("inventory.yml", INVENTORY)
            .display()
            .to_string();
        let mut servers = Vec::new();
        for h in hosts {
            for p in [22, 25] {
                let any = SocketAddr::new("::".parse().unwrap(), p);
                servers.push(TcpServer::start(&fleet.hosts[*h].ns, any).unwrap());
            }
        }
        fleet.start_controller().unwrap();
        for h in hosts {
            fleet.start_agent_with(h, agent_flags).unwrap();
        }
        fleet.wait_status(hosts, "connected", |h| h["connected"] == true);
        let lab = Lab {
            fleet,
            inv,
            limit: hosts.join(":"),
            _servers: servers,
        };
        let out = lab.apply(site_yaml, &[]);
        assert_eq!(out.status.code(), Some(0), "{}", lab.explain(&out));
        lab
    }

    fn apply(&self, site_yaml: &str, extra: &[&str]) -> std::process::Output {
        let site = self
            .fleet
            .write("site.yml", site_yaml)
            .display()
            .to_string();
        let mut args = vec![
            "apply",
            "-i",
            &self.inv,
            &site,
            "--limit",
            &self.limit,
            "--timeout",
            "10s",
        ];
        args.extend_from_slice(extra);
        self.fleet.cli(&args)
    }

    fn explain(&self, out: &std::process::Output) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.fleet.logs()
        )
    }

    fn nft(&self, host: &str, args: &[&str]) {
        self.fleet.hosts[host].ns.run_ok("nft", args).unwrap();
    }

    fn status(&self, host: &str) -> serde_json::Value {
        let s = self.fleet.cli_json(&["status", "--json"]);
        s["hosts"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["host"] == host).cloned())
            .unwrap_or_default()
    }

    /// Polls `status --json` until `pred` holds for `host` (panics after `within`).
    fn wait(
        &self,
        host: &str,
        what: &str,
        within: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            let s = self.status(host);
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{host} never {what}; last status {s:#}\n{}",
                self.fleet.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn tcp(&self, host: &str, port: u16) -> TcpOutcome {
        let a = SocketAddr::new(self.fleet.hosts[host].v4, port);
        tcp_connect(&self.fleet.outside.ns, a, DROPPED).unwrap()
    }

    /// The seed verdicts: 25 open, 22 dropped.
    fn assert_enforced(&self, host: &str, when: &str) {
        assert_eq!(
            self.tcp(host, 25),
            TcpOutcome::Accepted,
            "{host} tcp/25 {when}"
        );
        assert_eq!(
            self.tcp(host, 22),
            TcpOutcome::TimedOut,
            "{host} tcp/22 {when}"
        );
    }

    fn drift_cli(&self, args: &[&str]) -> (i32, serde_json::Value) {
        let mut full = vec!["drift", "--json", "--timeout", "3s"];
        full.extend_from_slice(args);
        let out = self.fleet.cli(&full);
        let json = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("drift --json: {}", self.explain(&out)));
        (out.status.code().unwrap_or(-1), json)
    }
}

/// The five edits of the issue, each as nft arguments, with what it does to tcp/22.
fn edits() -> Vec<(&'static str, Vec<&'static str>, bool)> {
    vec![
        ("flush ruleset", vec!["flush", "ruleset"], true),
        (
            "delete table",
            vec!["delete", "table", "inet", "portcullis"],
            true,
        ),
        (
            "inserted accept rule",
            vec![
                "insert",
                "rule",
                "inet",
                "portcullis",
                "guard",
                "tcp",
                "dport",
                "22",
                "accept",
            ],
            true,
        ),
        (
            "added set element",
            vec![
                "add",
                "element",
                "inet",
                "portcullis",
                "allow_tcp",
                "{ 22 }",
            ],
            true,
        ),
        (
            "changed chain policy",
            vec!["chain", "inet", "portcullis", "input", "{ policy drop ; }"],
            false,
        ),
    ]
}

fn ms(v: &serde_json::Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

/// Heal mode: each edit is detected and healed, verdicts restored.
fn heal_each_edit(lab: &Lab, bound_ms: i64) {
    for (name, args, _) in edits() {
        let t0 = now_ms();
        lab.nft("h1", &args);
        let s = lab.wait(
            "h1",
            &format!("healed after {name}"),
            Duration::from_secs(5),
            |s| ms(&s["drift_healed_unix_ms"]) >= t0,
        );
        let detected = ms(&s["drift_detected_unix_ms"]) - t0;
        let healed = ms(&s["drift_healed_unix_ms"]) - t0;
        eprintln!("{name}: detected after {detected} ms, healed after {healed} ms");
        assert!(
            detected <= bound_ms,
            "{name}: detected after {detected} ms > {bound_ms}"
        );
        assert!(healed <= bound_ms + 500, "{name}: healed after {healed} ms");
        assert!(
            !s["drift_diff"].as_array().unwrap().is_empty(),
            "{name}: {s:#}"
        );
        lab.assert_enforced("h1", &format!("after healing {name}"));
    }
    let s = lab.status("h1");
    assert_eq!(s["drifted"], false, "{s:#}");
    assert_eq!(s["expected_hash"], s["reported_hash"], "{s:#}");
}

#[test]
fn event_path_heals_every_edit_and_rerendering_is_not_drift() {
    if !require_root_netns() {
        return;
    }
    let lab = Lab::start(&["h1"], &site("heal", "heal", ""), &[]);
    lab.assert_enforced("h1", "after apply");
    heal_each_edit(&lab, EVENT_BOUND_MS);

    // Re-rendering: the same table, replaced, with set elements in another order.
    let before = lab.status("h1");
    let text = lab.fleet.hosts["h1"]
        .ns
        .run_ok("nft", &["list", "table", "inet", "portcullis"])
        .unwrap();
    assert!(text.contains("elements = { 25, 80 }"), "{text}");
    let script = format!(
        "add table inet portcullis\ndelete table inet portcullis\n{}",
        text.replace("elements = { 25, 80 }", "elements = { 80, 25 }")
    );
    let path = lab.fleet.write("rerender.nft", &script);
    lab.nft("h1", &["-f", path.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(1500));
    let after = lab.status("h1");
    assert_eq!(
        after["drift_detected_unix_ms"], before["drift_detected_unix_ms"],
        "re-rendering reported as drift: {after:#}"
    );
    assert_eq!(after["drifted"], false);
    let (code, json) = lab.drift_cli(&["h1"]);
    assert_eq!(code, 0, "{json:#}");
}

#[test]
fn timer_path_alone_detects_and_heals_within_one_period() {
    if !require_root_netns() {
        return;
    }
    let flags = ["--drift-events=false", "--drift-interval", "1s"];
    let lab = Lab::start(&["h1"], &site("heal", "heal", ""), &flags);
    // One period (1 s) plus the check itself and scheduling slack.
    heal_each_edit(&lab, 1_300);
}

#[test]
fn report_mode_leaves_drift_in_place_and_reports_it() {
    if !require_root_netns() {
        return;
    }
    let lab = Lab::start(&["h1"], &site("report", "report", ""), &[]);
    for (name, args, opens_22) in edits() {
        let t0 = now_ms();
        lab.nft("h1", &args);
        let s = lab.wait(
            "h1",
            &format!("reported {name}"),
            Duration::from_secs(5),
            |s| ms(&s["drift_detected_unix_ms"]) >= t0 && s["drifted"] == true,
        );
        let detected = ms(&s["drift_detected_unix_ms"]) - t0;
        assert!(
            detected <= EVENT_BOUND_MS,
            "{name}: detected after {detected} ms"
        );
        assert_eq!(s["drift_state"], "drifted", "{s:#}");
        assert_ne!(s["reported_hash"], s["expected_hash"], "attestation: {s:#}");
        assert!(ms(&s["verified_unix_ms"]) >= t0, "{s:#}");
        // Left in place: the kernel still has the edit.
        if opens_22 {
            assert_eq!(
                lab.tcp("h1", 22),
                TcpOutcome::Accepted,
                "{name} must be left in place"
            );
        }
        let (code, json) = lab.drift_cli(&["--diff"]);
        assert_eq!(code, 2, "{json:#}");
        assert_eq!(json["hosts"][0]["state"], "drifted", "{json:#}");
        assert!(!json["hosts"][0]["diff"].as_array().unwrap().is_empty());
        // The operator restores it with a fresh apply.
        let out = lab.apply(&site("report", "report", ""), &[]);
        assert_eq!(out.status.code(), Some(0), "{}", lab.explain(&out));
        lab.wait("h1", "back in sync", Duration::from_secs(5), |s| {
            s["drifted"] == false && s["in_sync"] == true
        });
        lab.assert_enforced("h1", &format!("after re-applying over {name}"));
    }
}

#[test]
fn drift_exit_codes_coexistence_and_apply_check() {
    if !require_root_netns() {
        return;
    }
    let mut lab = Lab::start(&["h1", "h2"], &site("report", "heal", ""), &[]);
    let (code, json) = lab.drift_cli(&[]);
    assert_eq!(code, 0, "{json:#}");
    assert_eq!(json["summary"]["in_sync"], 2, "{json:#}");

    // apply --check: same site is no change (0); one more port is a change (2); nothing applied.
    let out = lab.apply(&site("report", "heal", ""), &["--check", "--diff"]);
    assert_eq!(out.status.code(), Some(0), "{}", lab.explain(&out));
    let out = lab.apply(
        &site("report", "heal", ", 8080/tcp"),
        &["--check", "--diff"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{}", lab.explain(&out));
    assert!(
        stdout.contains("8080") && stdout.contains("nothing was applied"),
        "{stdout}"
    );
    let s = lab.status("h1");
    assert_eq!(
        s["desired_revision"], 1,
        "check must not store a revision: {s:#}"
    );

    // A foreign table with an input hook: a coexistence finding, not drift.
    let foreign = lab.fleet.write(
        "foreign.nft",
        "table ip filter {\n  chain INPUT {\n    type filter hook input priority 0; policy accept;\n    tcp dport 25 drop\n  }\n}\n",
    );
    lab.nft("h2", &["-f", foreign.to_str().unwrap()]);
    let (code, json) = lab.drift_cli(&["h2"]);
    assert_eq!(code, 0, "{json:#}");
    let found = json["hosts"][0]["coexistence"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let f = found
        .iter()
        .find(|f| f["table"] == "filter" && f["family"] == "ip")
        .unwrap_or_else(|| panic!("no finding for table ip filter: {json:#}"));
    assert_eq!(
        (f["hook"].as_str(), f["has_drop"].as_bool()),
        (Some("input"), Some(true)),
        "{f}"
    );
    lab.wait(
        "h2",
        "shows the finding in status",
        Duration::from_secs(5),
        |s| s["coexistence"].as_array().is_some_and(|a| !a.is_empty()),
    );
    // Never touched.
    lab.nft("h2", &["list", "table", "ip", "filter"]);

    // An unreachable host: 3.
    lab.fleet.stop_agent("h2");
    lab.fleet
        .wait_status(&["h2"], "disconnected", |h| h["connected"] == false);
    let (code, json) = lab.drift_cli(&[]);
    assert_eq!(code, 3, "{json:#}");
    assert_eq!(json["summary"]["unreachable"], 1, "{json:#}");

    // Drift on h1 (report mode) while h2 is unreachable: drift wins, 2.
    lab.nft(
        "h1",
        &[
            "add",
            "element",
            "inet",
            "portcullis",
            "allow_tcp",
            "{ 22 }",
        ],
    );
    let (code, json) = lab.drift_cli(&["--diff"]);
    assert_eq!(code, 2, "{json:#}");
    let h1 = &json["hosts"][0];
    assert_eq!(h1["state"], "drifted", "{json:#}");
    assert!(h1["diff"].to_string().contains("22"), "{json:#}");
}
