//! The table's lifecycle against the real kernel: atomic re-apply under traffic, foreign
//! tables left untouched, bad policies applying nothing, `verify` catching hand edits, and
//! the in-memory fake's JSON matching the real `nft -j` output.
//!
//! Fails without root unless `PORTCULLIS_SKIP_NETNS=1`.

#![allow(clippy::unwrap_used)]

mod lab;

use lab::{ACCEPT_WAIT, DROP_WAIT, Lab, SEED};
use portcullis_agent::dataplane::nft_json;
use portcullis_agent::{Dataplane, NftDataplane};
use portcullis_policy::{HostPolicy, compile, parse_readback};
use portcullis_testkit::{NetNs, TcpOutcome, probe, require_root_netns};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[test]
fn reapply_is_atomic_under_traffic() {
    if !require_root_netns() {
        return;
    }
    let lab = Arc::new(Lab::pair());
    lab.apply_policy(SEED, &["--revision", "1"]);
    let mut servers = Vec::new();
    for v6 in [false, true] {
        let host = lab.addr(0, "host", v6);
        servers.push(lab.tcp_server("host", host, 80));
        servers.push(lab.tcp_server("host", host, 22)); // denied: must never connect
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut probers = Vec::new();
    for v6 in [false, true] {
        for (port, wait, expect) in [
            (80, ACCEPT_WAIT, TcpOutcome::Accepted),
            (22, DROP_WAIT, TcpOutcome::TimedOut),
            (22, DROP_WAIT, TcpOutcome::TimedOut),
        ] {
            let (lab, stop) = (lab.clone(), stop.clone());
            probers.push(std::thread::spawn(move || {
                let dst = SocketAddr::new(lab.addr(0, "host", v6), port);
                let mut probes = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let got = probe::tcp_connect(lab.topo.ns("peer"), dst, wait).expect("probe");
                    assert_eq!(got, expect, "{dst} after {probes} probes");
                    probes += 1;
                }
                probes
            }));
        }
    }
    // Each revision changes the log prefix, so every apply is a real transaction.
    for revision in 2..52 {
        let out = lab.apply_policy(SEED, &["--revision", &revision.to_string()]);
        assert!(out.starts_with("applied:"), "{out}");
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for p in probers {
        let n = p.join().expect("a probe saw the wrong outcome");
        assert!(n > 0);
        total += n;
    }
    assert!(total >= 6);
}

const FOREIGN: &str = "table inet x {\n\tchain c {\n\t\ttype filter hook input priority 0; policy accept;\n\t\ttcp dport 9999 counter accept\n\t}\n}\ntable ip filter {\n\tchain INPUT {\n\t\ttype filter hook input priority filter; policy accept;\n\t\tip saddr 10.77.1.2 tcp dport 8888 counter accept\n\t}\n}\n";

#[test]
fn foreign_tables_survive_apply_and_remove() {
    if !require_root_netns() {
        return;
    }
    let lab = Lab::pair();
    lab.nft_script(FOREIGN);
    let snapshot = || {
        (
            lab.nft(&["list", "table", "inet", "x"]),
            lab.nft(&["list", "table", "ip", "filter"]),
        )
    };
    let before = snapshot();
    lab.apply_policy(SEED, &[]);
    assert_eq!(snapshot(), before);
    lab.apply_policy("allow:\n  - ssh/tcp\n", &[]);
    assert_eq!(snapshot(), before);
    lab.agent_ok(&["remove"]);
    assert_eq!(snapshot(), before);
    let tables = lab.nft(&["list", "tables"]);
    assert!(!tables.contains("portcullis"), "{tables}");
    assert!(tables.contains("table inet x") && tables.contains("table ip filter"));
    // remove is idempotent
    lab.agent_ok(&["remove"]);
}

#[test]
fn bad_policy_exits_2_names_the_line_and_applies_nothing() {
    if !require_root_netns() {
        return;
    }
    let lab = Lab::pair();
    lab.apply_policy(SEED, &[]);
    let table = lab.nft(&["list", "table", "inet", "portcullis"]);
    let bad = lab.file(
        "bad.yml",
        "allow:\n  - smtp/tcp\n  - nosuch/tcp\n  - { port: 70000, proto: tcp }\n",
    );
    let out = lab.agent(&["apply", "--policy", &bad.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let name = bad.to_string_lossy();
    assert!(stderr.contains(&format!("{name}:3:")), "{stderr}");
    assert!(stderr.contains(&format!("{name}:4:")), "{stderr}");
    assert_eq!(lab.nft(&["list", "table", "inet", "portcullis"]), table);

    // A site file whose play targets a host that is not in the inventory's group.
    let site = lab.file(
        "site.yml",
        "- name: web\n  hosts: web\n  policy:\n    allow: [http/tcp]\n",
    );
    let inv = lab.file("inv.yml", "all:\n  hosts:\n    h1:\n");
    let out = lab.agent(&[
        "apply",
        "--site",
        &site.to_string_lossy(),
        "--inventory",
        &inv.to_string_lossy(),
        "--host",
        "h1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&*site.to_string_lossy()), "{stderr}");
    assert_eq!(lab.nft(&["list", "table", "inet", "portcullis"]), table);
    assert_eq!(lab.agent(&["verify"]).status.code(), Some(0));
}

#[test]
fn verify_detects_hand_made_changes() {
    if !require_root_netns() {
        return;
    }
    let lab = Lab::pair();
    assert_eq!(lab.agent(&["verify"]).status.code(), Some(3));
    lab.apply_policy(SEED, &[]);
    assert_eq!(lab.agent(&["verify"]).status.code(), Some(0));

    lab.nft(&[
        "add",
        "element",
        "inet",
        "portcullis",
        "allow_tcp",
        "{ 23 }",
    ]);
    let out = lab.agent(&["verify"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("DRIFT") && stdout.contains("23"),
        "{stdout}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&lab.agent(&["verify", "--json"]).stdout).expect("json");
    assert_eq!(json["status"], "drifted");
    assert!(json["expected_hash"] != json["actual_hash"]);
    // Port 23 really is open now; re-applying heals it.
    let host = lab.addr(0, "host", false);
    let _telnet = lab.tcp_server("host", host, 23);
    assert_eq!(lab.tcp("peer", host, 23, ACCEPT_WAIT), TcpOutcome::Accepted);
    lab.apply_policy(SEED, &[]);
    assert_eq!(lab.tcp("peer", host, 23, DROP_WAIT), TcpOutcome::TimedOut);
    assert_eq!(lab.agent(&["verify"]).status.code(), Some(0));

    lab.nft(&["delete", "table", "inet", "portcullis"]);
    let out = lab.agent(&["verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("missing"));
}

/// The fake's rendering must parse to the same ruleset as the real kernel's output.
#[test]
fn fake_json_matches_the_real_kernel() {
    if !require_root_netns() {
        return;
    }
    let ns = NetNs::new().expect("ns");
    let policies = [
        "allow:\n  - smtp/tcp\n  - domain/udp\n  - http/tcp\n  - { port: 8000-8080, proto: tcp }\n",
        "replies: stateful\nmode: audit\ninterface: eth9\nallow:\n  - ntp/udp\n  - { port: 22, proto: tcp, from: [10.77.0.0/24, 10.77.1.5/32, \"fd77::/64\"] }\n  - { port: 53, proto: udp, from: [\"fd77:1::7/128\"] }\n",
        // Every transport, restricted high ports (and the fragment rule of replies: ports).
        "mode: audit\nallow:\n  - 137/udplite\n  - { port: 5000, proto: sctp }\n  - { port: 5432, proto: tcp, from: [10.77.200.5/32] }\n  - { port: 4000, proto: dccp, from: [\"fd77::/64\"] }\n",
    ];
    for (i, yaml) in policies.iter().enumerate() {
        let src = portcullis_policy::Source::new(format!("p{i}.yml"), *yaml);
        let policy: HostPolicy = portcullis_policy::site::load_host_policy(&src).expect("policy");
        let compiled = compile(&policy, &Default::default(), 9).expect("compile");
        let real = ns
            .enter(|| {
                let nft = NftDataplane::default();
                nft.replace(&compiled).expect("apply");
                nft.read_back().expect("read back").expect("table")
            })
            .expect("enter");
        let (from_kernel, _) = parse_readback(&real).expect("parse real");
        let fake = nft_json::render(&compiled, &Default::default());
        let (from_fake, _) = parse_readback(&fake).expect("parse fake");
        assert_eq!(from_fake, from_kernel, "policy {i}");
        assert_eq!(from_kernel, compiled, "policy {i}");
    }
}
