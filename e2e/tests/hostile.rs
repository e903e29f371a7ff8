//! End to end against hostile use of keys: real controller, real agents in namespaces,
//! real certificates. A revoked agent is cut off and stays off; a controller whose
//! certificate was revoked (a stolen key, served from a copy of the PKI without the
//! revocation) is refused by an agent that heard of the revocation, which comes back as
//! soon as the real controller serves a new certificate.

#![allow(clippy::unwrap_used)]

mod common;

use common::Fleet;
use portcullis_testkit::require_root_netns;
use std::time::{Duration, Instant};

fn connected(v: &serde_json::Value) -> bool {
    v["connected"] == true
}

fn wait_for(what: &str, secs: u64, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(secs) {
        if done() {
            return started.elapsed();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: not within {secs} s");
}

#[test]
fn revoked_agents_are_cut_and_agents_refuse_a_revoked_controller() {
    if !require_root_netns() {
        return;
    }
    let mut fleet = Fleet::new(&["h1", "h2"]).unwrap();
    fleet.start_controller().unwrap();
    fleet.start_agent("h1").unwrap();
    fleet.start_agent("h2").unwrap();
    fleet.wait_status(&["h1", "h2"], "connected", connected);
    let pki = fleet.pki();
    let pki_s = pki.to_str().unwrap().to_owned();

    // A copy of the PKI made before any revocation: what a thief of the key would serve.
    let stolen = fleet.dir.path().join("stolen-pki");
    std::fs::create_dir(&stolen).unwrap();
    for f in ["ca.crt", "controller.crt", "controller.key"] {
        std::fs::copy(pki.join(f), stolen.join(f)).unwrap();
    }

    // Revoke h2: its open session is closed within seconds and it does not come back.
    fleet
        .portcullis_ok(&["ca", "revoke", "agent/h2", "--dir", &pki_s])
        .unwrap();
    let gone = fleet.wait_status(&["h2"], "disconnected", |h| !connected(h));
    let h1 = gone["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == "h1");
    assert!(connected(h1.unwrap()), "h1 stays: {gone:#}");
    std::thread::sleep(Duration::from_secs(3));
    let later = fleet.cli_json(&["status", "--json"]);
    let h2 = later["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == "h2");
    assert!(!connected(h2.unwrap()), "revoked h2 reconnected: {later:#}");

    // Revoke the controller's certificate: h1 receives the signed list and keeps it.
    fleet
        .portcullis_ok(&["ca", "revoke", "controller", "--dir", &pki_s])
        .unwrap();
    let kept = fleet.dir.path().join("state-h1").join("revocations.signed");
    wait_for("h1 keeps the signed list", 10, || {
        // Kept as signature line + list: exactly revoked.sig followed by revoked.txt.
        let signed = [
            std::fs::read(pki.join("revoked.sig")).unwrap(),
            std::fs::read(pki.join("revoked.txt")).unwrap(),
        ]
        .concat();
        std::fs::read(&kept).is_ok_and(|b| b == signed)
    });

    // The thief serves the revoked certificate: h1 refuses it (and says why).
    fleet.stop_controller();
    fleet.start_controller_with_pki(&stolen).unwrap();
    wait_for("h1 refuses the revoked controller certificate", 15, || {
        let log = fleet.read_log("agent-h1");
        log.contains("Revoked") && log.contains("presented a revoked certificate")
    });
    // The admin CLI refuses it too (revoked.txt + revoked.sig beside its ca.crt).
    let out = fleet.cli(&["status"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Revoked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fleet.stop_controller();

    // The real controller with a new certificate: h1 is back, h2 still out.
    fleet
        .portcullis_ok(&[
            "ca",
            "issue",
            "controller",
            "--san",
            &fleet.ctl.v4.to_string(),
            "--san",
            &fleet.ctl.v6.to_string(),
            "--force",
            "--dir",
            &pki_s,
        ])
        .unwrap();
    fleet.start_controller().unwrap();
    fleet.wait_status(&["h1"], "connected again", connected);
    let s = fleet.cli_json(&["status", "--json"]);
    let h2 = s["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == "h2");
    assert!(!connected(h2.unwrap()), "{s:#}");
}
