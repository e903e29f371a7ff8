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
