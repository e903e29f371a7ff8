//! `portcullis-agent restore` (the boot oneshot) against the real kernel, with real
//! packets: no controller, no default route, the policy's interface absent at restore
//! time; and a corrupt last-known-good failing closed to the minimal policy.
//!
//! Fails without root unless `PORTCULLIS_SKIP_NETNS=1`.

#![allow(clippy::unwrap_used)]

mod lab;

use lab::{ACCEPT_WAIT, DROP_WAIT, Lab};
use portcullis_agent::{LastKnownGood, StateDir};
use portcullis_policy::{AllowEntry, Facts, HostPolicy, InterfaceSel, PortRange, Proto, compile};
use portcullis_testkit::{TcpOutcome, require_root_netns};

fn tcp_allow(port: u16) -> AllowEntry {
    AllowEntry {
        proto: Proto::Tcp,
        ports: PortRange::single(port),
        from: Vec::new(),
        lists: Vec::new(),
        label: format!("{port}/tcp"),
    }
}

/// Writes last-known-good as the daemon would have, compiled with `facts`.
fn store_lkg(lab: &Lab, policy: HostPolicy, facts: &Facts, revision: u64) {
    let ruleset = compile(&policy, facts, revision).unwrap();
    StateDir::new(lab.state_dir())
        .store(&LastKnownGood::new(policy, revision, ruleset))
        .unwrap();
}

fn no_default_route(lab: &Lab) {
    let routes = lab
        .topo
        .ns("host")
        .ip(&["route", "show", "default"])
        .unwrap();
    assert!(
        routes.trim().is_empty(),
        "the lab has a default route: {routes}"
    );
}

#[test]
fn restore_without_route_enforces_the_stored_ruleset() {
    if !require_root_netns() {
        return;
    }
    let lab = Lab::pair();
    no_default_route(&lab);
    // Compiled where `interface: default` resolved to eth0; here there is no default
    // route, so it cannot be recompiled: the verified ruleset stored with it is applied.
    let policy = HostPolicy {
        interface: InterfaceSel::Default,
        allow: vec![tcp_allow(25)],
        ..HostPolicy::default()
    };
    let then = Facts {
        hostname: "h1".into(),
        interfaces: Vec::new(),
        default_route_interface: Some("eth0".into()),
    };
    store_lkg(&lab, policy, &then, 3);
    let host = lab.addr(0, "host", false);
    let _smtp = lab.tcp_server("host", host, 25);
    let _ssh = lab.tcp_server("host", host, 22);
    assert_eq!(lab.tcp("peer", host, 22, ACCEPT_WAIT), TcpOutcome::Accepted);
    let out = lab.agent_ok(&["restore", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["outcome"], "stored", "{report}");
    assert_eq!(report["revision"], 3, "{report}");
    assert!(
        report["why"].as_str().unwrap().contains("no default route"),
        "{report}"
    );
    assert_eq!(lab.tcp("peer", host, 25, ACCEPT_WAIT), TcpOutcome::Accepted);
    assert_eq!(lab.tcp("peer", host, 22, DROP_WAIT), TcpOutcome::TimedOut);
    let show = lab.show_json();
    assert_eq!(show["in_sync"], true, "{show}");
    assert!(show["fail_closed"].is_null(), "{show}");
}

#[test]
fn restore_before_the_named_interface_exists_guards_it_when_it_appears() {
    if !require_root_netns() {
        return;
    }
    let lab = Lab::pair();
    no_default_route(&lab);
    let policy = HostPolicy {
        interface: InterfaceSel::Named("pc9".into()),
        allow: vec![tcp_allow(25)],
        ..HostPolicy::default()
    };
    store_lkg(&lab, policy, &Facts::default(), 4);
    let out = lab.agent_ok(&["restore", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["outcome"], "recompiled", "{report}");
    // The interface appears (as udev renames it at boot), keeping its IPv4 address.
    let ns = lab.topo.ns("host");
    ns.ip(&["link", "set", "eth0", "down"]).unwrap();
    ns.ip(&["link", "set", "eth0", "name", "pc9"]).unwrap();
    ns.ip(&["link", "set", "pc9", "up"]).unwrap();
    let host = lab.addr(0, "host", false);
    let _smtp = lab.tcp_server("host", host, 25);
    let _ssh = lab.tcp_server("host", host, 22);
    assert_eq!(lab.tcp("peer", host, 25, ACCEPT_WAIT), TcpOutcome::Accepted);
    assert_eq!(lab.tcp("peer", host, 22, DROP_WAIT), TcpOutcome::TimedOut);
}

#[test]
fn corrupt_last_known_good_fails_closed_keeping_management() {
    if !require_root_netns() {
        return;
    }
    let lab = Lab::pair();
    std::fs::create_dir_all(lab.state_dir()).unwrap();
    let lkg = lab.state_dir().join("last-known-good.json");
    std::fs::write(&lkg, "{ torn").unwrap();
    let peer = lab.addr(0, "peer", false);
    let out = lab.agent(&[
        "restore",
        "--json",
        "--management",
        &format!("tcp/22 from {peer}/32"),
    ]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["outcome"], "fail_closed", "{report}");
    assert!(
        report["record"]["reason"]
            .as_str()
            .unwrap()
            .contains("unreadable"),
        "{report}"
    );
    assert!(
        lab.state_dir()
            .join("last-known-good.json.unusable")
            .exists()
    );

    let host = lab.addr(0, "host", false);
    let _ssh = lab.tcp_server("host", host, 22);
    let _web = lab.tcp_server("host", host, 8080);
    let _smtp = lab.tcp_server("host", host, 25);
    // Management kept; every other new inbound connection denied, low or high port.
    assert_eq!(lab.tcp("peer", host, 22, ACCEPT_WAIT), TcpOutcome::Accepted);
    assert_eq!(lab.tcp("peer", host, 25, DROP_WAIT), TcpOutcome::TimedOut);
    assert_eq!(lab.tcp("peer", host, 8080, DROP_WAIT), TcpOutcome::TimedOut);
    // Replies to the host's own connections come back (it can reach its controller).
    let _out = lab.tcp_server("peer", peer, 7443);
    assert_eq!(
        lab.tcp("host", peer, 7443, ACCEPT_WAIT),
        TcpOutcome::Accepted
    );

    let show = lab.show_json();
    assert_eq!(show["in_sync"], true, "{show}");
    assert!(
        show["fail_closed"]["reason"]
            .as_str()
            .unwrap()
            .contains("unreadable"),
        "{show}"
    );
    let text = lab.agent_ok(&["show"]);
    assert!(text.starts_with("FAIL-CLOSED: "), "{text}");
    // A second boot still fails closed (the minimal policy is no real revision).
    let again = lab.agent(&["restore"]);
    assert_eq!(again.status.code(), Some(5), "{again:?}");
    // A real policy ends it.
    lab.apply_policy("allow:\n  - smtp/tcp\n", &["--revision", "7"]);
    assert!(lab.show_json()["fail_closed"].is_null());
    assert_eq!(lab.tcp("peer", host, 25, ACCEPT_WAIT), TcpOutcome::Accepted);
}

#[test]
fn missing_last_known_good_fails_closed_with_the_sites_management() {
    if !require_root_netns() {
        return;
    }
    let lab = Lab::pair();
    let out = lab.agent(&["restore"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("no last-known-good record"), "{text}");
    assert!(text.contains("management kept: none"), "{text}");
    let host = lab.addr(0, "host", false);
    let _ssh = lab.tcp_server("host", host, 22);
    assert_eq!(lab.tcp("peer", host, 22, DROP_WAIT), TcpOutcome::TimedOut);
    // The site's `management:` as the controller last sent it (management.json).
    let peer = lab.addr(0, "peer", false);
    std::fs::write(
        lab.state_dir().join("management.json"),
        format!("[\"tcp/22 from {peer}/32\"]"),
    )
    .unwrap();
    let out = lab.agent(&["restore"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("management kept: tcp/22 from {peer}/32")),
        "{text}"
    );
    assert_eq!(lab.tcp("peer", host, 22, ACCEPT_WAIT), TcpOutcome::Accepted);
}

/// `--nft` that refuses every transaction of revision 5 (its log prefix `pc r5 `).
const REFUSING_R5: &str = "#!/bin/sh
if [ \"$1\" = \"-f\" ]; then
    script=$(cat)
    case \"$script\" in
        *'pc r5 '*) echo 'Error: injected refusal' >&2; exit 1 ;;
    esac
    printf '%s\\n' \"$script\" | exec nft \"$@\"
fi
exec nft \"$@\"
";

#[test]
fn last_known_good_the_kernel_refuses_fails_closed() {
    if !require_root_netns() {
        return;
    }
    let lab = Lab::pair();
    let policy = HostPolicy {
        allow: vec![tcp_allow(25)],
        ..HostPolicy::default()
    };
    store_lkg(&lab, policy, &Facts::default(), 5);
    let nft = lab.dir.path().join("refusing-nft");
    portcullis_testkit::write_executable(&nft, REFUSING_R5).unwrap();
    let nft = nft.to_string_lossy().into_owned();
    let out = lab.agent(&["--nft", &nft, "restore", "--json"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reason = report["record"]["reason"].as_str().unwrap();
    assert!(reason.contains("injected refusal"), "{report}");
    assert!(reason.contains("stored ruleset failed too"), "{report}");
    let aside =
        std::fs::read_to_string(lab.state_dir().join("last-known-good.json.unusable")).unwrap();
    assert!(
        aside.contains("\"revision\":5"),
        "the refused record is kept aside"
    );
    let host = lab.addr(0, "host", false);
    let _smtp = lab.tcp_server("host", host, 25);
    assert_eq!(lab.tcp("peer", host, 25, DROP_WAIT), TcpOutcome::TimedOut);
}
