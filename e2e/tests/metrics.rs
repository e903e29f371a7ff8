//! End to end, issue 13: Prometheus metrics of a real controller and a real agent while a
//! policy is applied and denials flow. Both endpoints pass `promtool check metrics`; a
//! real Prometheus server (Debian's `prometheus` package) scrapes them and its query API
//! returns the series; the numbers move as they should (denied probes raise the agent's
//! NFLOG count, the controller's stored count and the deny rule's packet counter).
//!
//! The controller's endpoint is on loopback of its namespace (as the docs suggest);
//! Prometheus runs in that namespace too and reaches the agent's endpoint on the agent's
//! test address (10.77.0.0/16). Needs `prometheus` and `promtool` (`.ci/run` installs
//! them); fails without them, like the netns tests, unless PORTCULLIS_SKIP_NETNS=1.

#![allow(clippy::unwrap_used)]

mod common;

use common::Fleet;
use portcullis_testkit::require_root_netns;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CTL_METRICS: &str = "127.0.0.1:9641";
const AGENT_METRICS_PORT: u16 = 9642;
const PROM_PORT: u16 = 9090;

/// One HTTP/1.0 GET from inside `ns` (bounded by 5 s); the body.
fn get(fleet_ns: &portcullis_testkit::NetNs, addr: SocketAddr, path: &str) -> String {
    let p = path.to_string();
    fleet_ns
        .enter(move || {
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(s, "GET {p} HTTP/1.0\r\nHost: test\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok::<_, std::io::Error>(out)
        })
        .unwrap()
        .map(|r| {
            r.split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or(r)
        })
        .unwrap_or_else(|e| panic!("GET {addr}{path}: {e}"))
}

/// The value of the sample `series` (name plus labels, exactly as exposed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Sum of every sample of metric `name` (all label sets).
fn sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

fn promtool_check(text: &str, what: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics ({what}):\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Poll `f` every 250 ms for up to `secs`; panics with `what` and the last value.
fn eventually<T: std::fmt::Debug>(secs: u64, what: &str, mut f: impl FnMut() -> (bool, T)) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (ok, v) = f();
        if ok {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: last {v:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

const SITE: &str = "- name: seed\n  hosts: all\n  policy:\n    interface: default\n    allow: [domain/udp]\n    log: { rate: 1000/second, burst: 1000 }\n";

#[test]
fn controller_and_agent_metrics_scraped_by_prometheus_move_with_applies_and_denials() {
    if !require_root_netns() {
        return;
    }
    for tool in ["prometheus", "promtool"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(found, "{tool} missing: apt-get install prometheus");
    }
    let mut fleet = Fleet::new(&["h1"]).unwrap();
    let inv = fleet.write("inventory.yml", "all:\n  hosts:\n    h1:\n");
    let site = fleet.write("site.yml", SITE);
    fleet
        .start_controller_with(&["--metrics-listen", CTL_METRICS])
        .unwrap();
    let agent_metrics = SocketAddr::new(fleet.hosts["h1"].v4, AGENT_METRICS_PORT);
    fleet
        .start_agent_with("h1", &["--metrics-listen", &agent_metrics.to_string()])
        .unwrap();
    fleet.wait_status(&["h1"], "connected", |h| h["connected"] == true);
    let ctl_addr: SocketAddr = CTL_METRICS.parse().unwrap();
    let ctl = |f: &Fleet| get(&f.ctl.ns, ctl_addr, "/metrics");
    let agent = |f: &Fleet| get(&f.ctl.ns, agent_metrics, "/metrics");

    let before = ctl(&fleet);
    assert_eq!(
        sample(&before, "portcullis_agents_connected"),
        Some(1.0),
        "{before}"
    );
    assert_eq!(
        sample(&before, "portcullis_sessions_opened_total"),
        Some(1.0),
        "{before}"
    );

    fleet.apply_ok(&inv, &site);
    let c = eventually(10, "controller counts the apply", || {
        let t = ctl(&fleet);
        let n = sample(&t, "portcullis_apply_duration_seconds_count{result=\"ok\"}");
        (n == Some(1.0), t)
    });
    assert!(
        sum(&c, "portcullis_store_call_duration_seconds_count") > 0.0,
        "{c}"
    );
    assert_eq!(sample(&c, "portcullis_hosts_known"), Some(1.0), "{c}");
    let a = agent(&fleet);
    assert!(
        sum(&a, "portcullis_agent_apply_duration_seconds_count") >= 1.0,
        "the agent counts its applies:\n{a}"
    );
    assert_eq!(
        sample(&a, "portcullis_agent_applied_revision"),
        Some(1.0),
        "{a}"
    );
    assert!(
        sample(&a, "portcullis_agent_last_known_good_age_seconds").is_some(),
        "{a}"
    );
    assert!(
        sum(&a, "portcullis_agent_rule_packets_total") >= 0.0
            && a.contains("portcullis_agent_rule_packets_total{chain=\"input\""),
        "rule counters by chain and position:\n{a}"
    );
    promtool_check(&c, "controller");
    promtool_check(&a, "agent");

    // Denied probes: 25 UDP packets to a port the policy does not allow.
    let seen_agent = sum(&a, "portcullis_agent_denials_seen_total");
    let packets_before = sum(&a, "portcullis_agent_rule_packets_total");
    fleet.blast_udp(SocketAddr::new(fleet.hosts["h1"].v4, 137), 25);
    let a = eventually(15, "the agent counts 25 denials", || {
        let t = agent(&fleet);
        (
            sum(&t, "portcullis_agent_denials_seen_total") >= seen_agent + 25.0,
            t,
        )
    });
    assert!(
        sum(&a, "portcullis_agent_rule_packets_total") >= packets_before + 25.0,
        "the deny rule's counter moved:\n{a}"
    );
    let c = eventually(15, "the controller stores the 25 denials", || {
        let t = ctl(&fleet);
        let stored = sample(&t, "portcullis_denial_events_stored_total").unwrap_or(0.0);
        (stored >= 25.0, t)
    });
    assert!(
        sample(&c, "portcullis_denial_events_seen_total").unwrap_or(0.0) >= 25.0,
        "{c}"
    );
    assert!(
        sample(&c, "portcullis_denial_batches_total{outcome=\"stored\"}").unwrap_or(0.0) >= 1.0,
        "{c}"
    );

    // A real Prometheus in the controller's namespace scrapes both endpoints.
    let dir = fleet.dir.path().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  \
             - job_name: portcullis\n    static_configs:\n      - targets: ['{CTL_METRICS}']\n  \
             - job_name: portcullis-agent\n    static_configs:\n      - targets: ['{agent_metrics}']\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _prometheus = Kill(
        fleet
            .ctl
            .ns
            .command("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{PROM_PORT}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting prometheus"),
    );
    let prom_addr: SocketAddr = format!("127.0.0.1:{PROM_PORT}").parse().unwrap();
    let query = |q: &str| -> serde_json::Value {
        let q: String = q
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let body = fleet.ctl.ns.enter(move || {
            let mut s =
                std::net::TcpStream::connect_timeout(&prom_addr, Duration::from_secs(2)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            write!(s, "GET /api/v1/query?query={q} HTTP/1.0\r\n\r\n").ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            Some(out.split_once("\r\n\r\n")?.1.to_string())
        });
        body.ok()
            .flatten()
            .and_then(|b| serde_json::from_str(&b).ok())
            .unwrap_or_default()
    };
    let value = |v: &serde_json::Value| -> Option<f64> {
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    eventually(60, "prometheus scraped both targets (up == 1)", || {
        let up = query("sum(up)");
        (value(&up) == Some(2.0), up)
    });
    for (q, min) in [
        ("portcullis_agents_connected", 1.0),
        ("portcullis_denial_events_stored_total", 25.0),
        ("sum(portcullis_agent_denials_seen_total)", 25.0),
        ("sum(portcullis_agent_rule_packets_total)", 25.0),
        ("portcullis_apply_duration_seconds_count", 1.0),
    ] {
        eventually(20, q, || {
            let r = query(q);
            (value(&r).is_some_and(|v| v >= min), r)
        });
    }
}
