//! End to end: a blocklist file of 20,000 addresses pushed by the controller to a real
//! agent. Its packed form (~100 KB) is more than one `ListPart`, so it travels in parts
//! (`portcullis_proto::parts`) and is put back together by the agent. Real packets from
//! the `outside` namespace: a listed source is dropped, its neighbour is not, before and
//! after a one-address change (sent as a delta).

#![allow(clippy::unwrap_used)]

mod common;

use common::Fleet;
use portcullis_testkit::probe::{TcpOutcome, tcp_connect_from};
use portcullis_testkit::{TcpServer, require_root_netns};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

const INVENTORY: &str = "all:\n  hosts:\n    h1:\n";

const SITE: &str = "\
- name: web behind a blocklist
  hosts: all
  policy:
    allow: [http/tcp]
    deny:
      - { from: { file: blocked.txt } }
";

/// Sources on `outside` besides its own address: .101 / ::65 and .102 / ::66.
fn source(n: u8, v6: bool) -> IpAddr {
    if v6 {
        format!("fd77::{:x}", 100 + n)
    } else {
        format!("10.77.0.{}", 100 + n)
    }
    .parse()
    .unwrap()
}

/// The list: `blocked` (1 or 2) of the two extra sources, and 20,000 addresses of
/// 100.64.0.0/10 no packet comes from.
fn list(blocked: u8) -> String {
    let mut text = format!(
        "# scanners\n{}\n{}\n",
        source(blocked, false),
        source(blocked, true)
    );
    for i in 0..20_000u32 {
        text.push_str(&format!("{}\n", std::net::Ipv4Addr::from(0x6440_0000 + i)));
    }
    text
}

#[test]
fn a_big_blocklist_pushed_in_parts_drops_its_sources_before_and_after_a_delta() {
    if !require_root_netns() {
        return;
    }
    let mut fleet = Fleet::new(&["h1"]).unwrap();
    for n in [1, 2] {
        let out = &fleet.outside.ns;
        out.ip(&[
            "addr",
            "add",
            &format!("{}/24", source(n, false)),
            "dev",
            "eth0",
        ])
        .unwrap();
        out.ip(&[
            "addr",
            "add",
            &format!("{}/64", source(n, true)),
            "dev",
            "eth0",
            "nodad",
        ])
        .unwrap();
    }
    let inv = fleet.write("inventory.yml", INVENTORY);
    let site = fleet.write("site.yml", SITE);
    fleet.write("blocked.txt", &list(1));
    let _http = TcpServer::start(
        &fleet.hosts["h1"].ns,
        SocketAddr::new("::".parse().unwrap(), 80),
    )
    .unwrap();
    fleet.start_controller().unwrap();
    fleet.start_agent("h1").unwrap();
    fleet.wait_status(&["h1"], "connected", |h| h["connected"] == true);

    let verdicts = |when: &str, blocked: u8| {
        let free = 3 - blocked;
        for v6 in [false, true] {
            let dst = SocketAddr::new(fleet.hosts["h1"].addr(v6), 80);
            let probe = |src: IpAddr, wait_ms: u64| {
                tcp_connect_from(
                    &fleet.outside.ns,
                    Some(src),
                    dst,
                    Duration::from_millis(wait_ms),
                )
                .unwrap()
            };
            assert_eq!(
                probe(source(blocked, v6), 400),
                TcpOutcome::TimedOut,
                "{when}: listed {} -> {dst}\n{}",
                source(blocked, v6),
                fleet.logs()
            );
            assert_eq!(
                probe(source(free, v6), 3_000),
                TcpOutcome::Accepted,
                "{when}: neighbour {} -> {dst}\n{}",
                source(free, v6),
                fleet.logs()
            );
        }
    };

    fleet.apply_ok(&inv, &site);
    verdicts("revision 1 (the whole list, in parts)", 1);
    fleet.write("blocked.txt", &list(2));
    fleet.apply_ok(&inv, &site);
    verdicts("revision 2 (a delta)", 2);
    let status = fleet.wait_status(&["h1"], "in sync", |h| h["in_sync"] == true);
    let h1 = status["hosts"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["host"] == "h1"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(h1["applied_revision"], 2, "{h1}");
}
