//! Real packets through policies applied by the `portcullis-agent` binary, IPv4 and IPv6:
//! the seed rule, `replies: stateful`, `mode: audit`, interface scoping, `from:` CIDRs.
//!
//! Each test builds its own namespaces (testkit) and fails without root unless
//! `PORTCULLIS_SKIP_NETNS=1`.

#![allow(clippy::unwrap_used)]

mod lab;

use lab::{ACCEPT_WAIT, DROP_WAIT, Lab, deny_packets};
use portcullis_testkit::{TcpOutcome, Topology, UdpOutcome, probe, require_root_netns};
use std::net::SocketAddr;

const INVENTORY: &str = "all:\n  children:\n    mail:\n      hosts:\n        h1:\n        h2:\n";
const SITE: &str = "- name: mail relays\n  hosts: mail\n  policy:\n    allow:\n      - smtp/tcp\n      - domain/udp\n      - http/tcp\n";

#[test]
fn seed_policy_from_site_and_inventory() {
    if !require_root_netns() {
        return;
    }
    let lab = Lab::pair();
    let mut servers = Vec::new();
    for v6 in [false, true] {
        let host = lab.addr(0, "host", v6);
        for port in [25, 80, 5000] {
            servers.push(lab.tcp_server("host", host, port));
        }
        // Without a policy a listener-less port answers with RST: a timeout later is a drop.
        assert_eq!(lab.tcp("peer", host, 22, ACCEPT_WAIT), TcpOutcome::Refused);
    }

    let site = lab.file("site.yml", SITE);
    let inventory = lab.file("inventory.yml", INVENTORY);
    let out = lab.agent_ok(&[
        "apply",
        "--site",
        &site.to_string_lossy(),
        "--inventory",
        &inventory.to_string_lossy(),
        "--host",
        "h1",
    ]);
    assert!(out.contains("applied: revision 1"), "{out}");

    let mut echoes = Vec::new();
    for v6 in [false, true] {
        let host = lab.addr(0, "host", v6);
        echoes.push(lab.udp_echo("host", host, 53));
        echoes.push(lab.udp_echo("host", host, 137));
        let ctx = if v6 { "v6" } else { "v4" };
        assert_eq!(
            lab.tcp("peer", host, 25, ACCEPT_WAIT),
            TcpOutcome::Accepted,
            "{ctx} 25"
        );
        assert_eq!(
            lab.tcp("peer", host, 80, ACCEPT_WAIT),
            TcpOutcome::Accepted,
            "{ctx} 80"
        );
        assert_eq!(
            lab.tcp("peer", host, 22, DROP_WAIT),
            TcpOutcome::TimedOut,
            "{ctx} 22"
        );
        assert_eq!(
            lab.tcp("peer", host, 5000, ACCEPT_WAIT),
            TcpOutcome::Accepted,
            "{ctx} 5000"
        );
        assert_eq!(
            lab.udp("peer", host, 53, ACCEPT_WAIT),
            UdpOutcome::Answered,
            "{ctx} u53"
        );
        assert_eq!(
            lab.udp("peer", host, 137, DROP_WAIT),
            UdpOutcome::NoAnswer,
            "{ctx} u137"
        );
    }
    // The denials were counted by the deny rules.
    assert!(deny_packets(&lab.show_json()) >= 4);
}

#[test]
fn stateful_replies_drop_inbound_high_ports_but_pass_our_own_replies() {
    if !require_root_netns() {
        return;
    }
    let lab = Lab::pair();
    lab.apply_policy("replies: stateful\nallow:\n  - smtp/tcp\n", &[]);
    for v6 in [false, true] {
        let host = lab.addr(0, "host", v6);
        let peer = lab.addr(0, "peer", v6);
        let _high = lab.tcp_server("host", host, 5000);
        let _smtp = lab.tcp_server("host", host, 25);
        let _remote = lab.tcp_server("peer", peer, 8080);
        let ctx = if v6 { "v6" } else { "v4" };
        assert_eq!(
            lab.tcp("peer", host, 5000, DROP_WAIT),
            TcpOutcome::TimedOut,
            "{ctx}"
        );
        assert_eq!(
            lab.tcp("peer", host, 25, ACCEPT_WAIT),
            TcpOutcome::Accepted,
            "{ctx}"
        );
        // The host's own connection: SYN-ACK and data come back to its ephemeral port.
        assert_eq!(
            lab.tcp("host", peer, 8080, ACCEPT_WAIT),
            TcpOutcome::Accepted,
            "{ctx}"
        );
    }
}

#[test]
fn audit_mode_accepts_and_counts_would_be_denials() {
    if !require_root_netns() {
        return;
    }
    let lab = Lab::pair();
    lab.apply_policy("mode: audit\nallow:\n  - smtp/tcp\n", &[]);
    let before = deny_packets(&lab.show_json());
    for v6 in [false, true] {
        let host = lab.addr(0, "host", v6);
        let _ssh = lab.tcp_server("host", host, 22);
        assert_eq!(
            lab.tcp("peer", host, 22, ACCEPT_WAIT),
            TcpOutcome::Accepted,
            "v6={v6}"
        );
    }
    let show = lab.show_json();
    assert_eq!(show["mode"], "audit");
    assert!(deny_packets(&show) >= before + 2, "{show:#}");
}

#[test]
fn interface_scoping_leaves_other_interfaces_alone() {
    if !require_root_netns() {
        return;
    }
    let topo = Topology::builder()
        .link("host", "vethA", "peer", "eth0")
        .link("host", "vethB", "other", "eth0")
        .build()
        .expect("topology");
    let lab = Lab::with(topo);
    lab.apply_policy("interface: vethA\nallow:\n  - smtp/tcp\n", &[]);
    for v6 in [false, true] {
        let on_a = lab.addr(0, "host", v6);
        let on_b = lab.addr(1, "host", v6);
        let _a = lab.tcp_server("host", on_a, 22);
        let _b = lab.tcp_server("host", on_b, 22);
        assert_eq!(
            lab.tcp("peer", on_a, 22, DROP_WAIT),
            TcpOutcome::TimedOut,
            "v6={v6}"
        );
        assert_eq!(
            lab.tcp("other", on_b, 22, ACCEPT_WAIT),
            TcpOutcome::Accepted,
            "v6={v6}"
        );
    }
}

#[test]
fn from_cidr_restricts_the_source() {
    if !require_root_netns() {
        return;
    }
    let lab = Lab::pair();
    lab.topo
        .add_addr("peer", "eth0", "10.77.1.3/24")
        .expect("addr");
    lab.topo
        .add_addr("peer", "eth0", "fd77:0:0:1::3/64")
        .expect("addr");
    lab.apply_policy(
        "allow:\n  - { port: 22, proto: tcp, from: [10.77.1.2/32, \"fd77:0:0:1::2/128\"] }\n",
        &[],
    );
    for v6 in [false, true] {
        let host = lab.addr(0, "host", v6);
        let _ssh = lab.tcp_server("host", host, 22);
        let dst = SocketAddr::new(host, 22);
        let allowed = lab.addr(0, "peer", v6);
        let other: std::net::IpAddr = if v6 {
            "fd77:0:0:1::3".parse().expect("ip")
        } else {
            "10.77.1.3".parse().expect("ip")
        };
        let peer = lab.topo.ns("peer");
        let got = probe::tcp_connect_from(peer, Some(allowed), dst, ACCEPT_WAIT).expect("probe");
        assert_eq!(got, TcpOutcome::Accepted, "from {allowed}");
        let got = probe::tcp_connect_from(peer, Some(other), dst, DROP_WAIT).expect("probe");
        assert_eq!(got, TcpOutcome::TimedOut, "from {other}");
    }
}
