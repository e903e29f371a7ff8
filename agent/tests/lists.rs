//! Real packets for address-list files (`from: { file }`): a source listed in the file
//! is accepted on its port, a neighbour address is not; after the list changes (the
//! neighbour added, the first source removed) and the policy is applied again, the
//! verdicts swap. v4 and v6 in one file.
//!
//! Fails without root unless `PORTCULLIS_SKIP_NETNS=1`.

#![allow(clippy::unwrap_used)]

mod lab;

use lab::{ACCEPT_WAIT, DROP_WAIT, Lab};
use portcullis_testkit::{TcpOutcome, probe, require_root_netns};
use std::net::{IpAddr, SocketAddr};

const POLICY: &str = "allow:\n  - smtp/tcp\n  - { port: 5432, proto: tcp, from: [10.77.250.0/24, { file: admins.txt }] }\n";

fn neighbour(v6: bool) -> IpAddr {
    if v6 { "fd77:0:0:1::3" } else { "10.77.1.3" }
        .parse()
        .unwrap()
}

#[test]
fn a_listed_source_is_accepted_and_its_neighbour_is_not_before_and_after_a_change() {
    if !require_root_netns() {
        return;
    }
    let lab = Lab::pair();
    lab.topo.add_addr("peer", "eth0", "10.77.1.3/24").unwrap();
    lab.topo
        .add_addr("peer", "eth0", "fd77:0:0:1::3/64")
        .unwrap();
    lab.file(
        "admins.txt",
        "# admins\n10.77.1.2\n\nfd77:0:0:1::2   # v6\n10.77.200.0/24\n",
    );
    lab.apply_policy(POLICY, &[]);
    let peer = lab.topo.ns("peer");
    let verdicts = |ctx: &str, listed_ok: bool| {
        for v6 in [false, true] {
            let host = lab.addr(0, "host", v6);
            let first = lab.addr(0, "peer", v6);
            let _db = lab.tcp_server("host", host, 5432);
            let tcp = |src, wait| {
                probe::tcp_connect_from(peer, Some(src), SocketAddr::new(host, 5432), wait).unwrap()
            };
            let (ok, refused) = if listed_ok {
                (first, neighbour(v6))
            } else {
                (neighbour(v6), first)
            };
            assert_eq!(tcp(ok, ACCEPT_WAIT), TcpOutcome::Accepted, "{ctx} v6={v6}");
            assert_eq!(
                tcp(refused, DROP_WAIT),
                TcpOutcome::TimedOut,
                "{ctx} v6={v6}"
            );
        }
    };
    verdicts("first list", true);
    lab.file("admins.txt", "10.77.1.3\nfd77:0:0:1::3\n10.77.200.0/24\n");
    lab.apply_policy(POLICY, &[]);
    verdicts("changed list", false);
}

const DENY_POLICY: &str = "allow:\n  - smtp/tcp\ndeny:\n  - { from: { file: blocked.txt } }\n  - { from: [10.77.1.4, \"fd77:0:0:1::4\"], port: 25, proto: tcp }\n";

fn peer_addr(last: u8, v6: bool) -> IpAddr {
    if v6 {
        format!("fd77:0:0:1::{last}")
    } else {
        format!("10.77.1.{last}")
    }
    .parse()
    .unwrap()
}

#[test]
fn a_blocklist_drops_its_sources_on_every_port_before_and_after_a_list_delta() {
    blocklist_before_and_after_a_delta(0);
}

/// The same with 40,000 more addresses in the list: the first apply stages the list's
/// sets over netlink before one `nft -f` swaps the rules in (see `NftDataplane::replace`).
#[test]
fn a_large_blocklist_is_staged_and_drops_its_sources_before_and_after_a_list_delta() {
    blocklist_before_and_after_a_delta(40_000);
}

/// `filler` more addresses (from 100.64.0.0/10) in the blocklist.
fn blocklist_before_and_after_a_delta(filler: u32) {
    if !require_root_netns() {
        return;
    }
    let filler: String = (0..filler)
        .map(|i| format!("{}\n", std::net::Ipv4Addr::from(0x6440_0000 + i)))
        .collect();
    let lab = Lab::pair();
    for last in [3, 4] {
        for v6 in [false, true] {
            let a = peer_addr(last, v6);
            let len = if v6 { 64 } else { 24 };
            lab.topo
                .add_addr("peer", "eth0", &format!("{a}/{len}"))
                .unwrap();
        }
    }
    lab.file(
        "blocked.txt",
        &format!("# scanners\n10.77.1.3\nfd77:0:0:1::3\n198.51.100.0/24\n2001:db8::/32\n{filler}"),
    );
    lab.apply_policy(DENY_POLICY, &[]);
    let peer = lab.topo.ns("peer");
    // (source, port 25 accepted?, port 2000 accepted?) for each source.
    let verdicts = |ctx: &str, blocked: u8| {
        for v6 in [false, true] {
            let host = lab.addr(0, "host", v6);
            let _smtp = lab.tcp_server("host", host, 25);
            let _high = lab.tcp_server("host", host, 2000);
            let tcp = |src: IpAddr, port: u16, ok: bool| {
                let wait = if ok { ACCEPT_WAIT } else { DROP_WAIT };
                let got =
                    probe::tcp_connect_from(peer, Some(src), SocketAddr::new(host, port), wait)
                        .unwrap();
                let want = if ok {
                    TcpOutcome::Accepted
                } else {
                    TcpOutcome::TimedOut
                };
                assert_eq!(got, want, "{ctx}: {src} -> {port}");
            };
            let free = if blocked == 3 { 2 } else { 3 };
            // The blocklisted source: nothing, not even the open port or a reply port.
            tcp(peer_addr(blocked, v6), 25, false);
            tcp(peer_addr(blocked, v6), 2000, false);
            // Its neighbour: everything the policy allows.
            tcp(peer_addr(free, v6), 25, true);
            tcp(peer_addr(free, v6), 2000, true);
            // The port-limited deny: only port 25.
            tcp(peer_addr(4, v6), 25, false);
            tcp(peer_addr(4, v6), 2000, true);
        }
    };
    verdicts("first list", 3);
    // Only the list changes: an element delta, no table rewrite.
    lab.file(
        "blocked.txt",
        &format!("10.77.1.2\nfd77:0:0:1::2\n198.51.100.0/24\n2001:db8::/32\n{filler}"),
    );
    let out = lab.apply_policy(DENY_POLICY, &[]);
    assert!(out.contains("list delta"), "{out}");
    verdicts("after the delta", 2);
    // The kernel reads back as the policy compiles (no drift after the delta).
    let verify = lab.agent_ok(&["verify"]);
    assert!(verify.contains("in sync"), "{verify}");
}
