//! The loader's refusals of unenforceable restrictions, with both entries located.

use crate::diag::{Diagnostics, Source};
use crate::site::{load_fleet, load_host_policy};

const INV: &str = "all:\n  children:\n    db:\n      hosts:\n        d1:\n        d2:\n    web:\n      hosts:\n        w1:\n";

fn fleet(site: &str) -> Result<crate::Fleet, Diagnostics> {
    load_fleet(&Source::new("site.yml", site), &Source::new("inv.yml", INV))
}

fn one(e: &Diagnostics) -> (usize, usize, &str) {
    assert_eq!(e.0.len(), 1, "{e}");
    let d = &e.0[0];
    (d.line, d.column, d.message.as_str())
}

#[test]
fn open_and_restricted_entries_in_one_play_are_refused() {
    let site = "\
- name: db
  hosts: db
  policy:
    allow:
      - 5432/tcp
      - { port: 5432, proto: tcp, from: [10.77.200.5/32] }
";
    let e = fleet(site).unwrap_err();
    let (line, column, msg) = one(&e);
    assert_eq!((line, column), (6, 9), "at the restricted entry");
    assert!(msg.contains("site.yml:6:9, play `db`"), "{msg}");
    assert!(
        msg.contains("`5432/tcp` (site.yml:5:9, play `db`)"),
        "{msg}"
    );
    assert!(msg.contains("remove `from:` from one of them, or give both a `from:` list"));
    assert!(msg.contains("host d1, d2"), "{msg}");
}

#[test]
fn plays_that_widen_a_restriction_are_refused_for_the_hosts_they_share() {
    let site = "\
- name: everyone
  hosts: all
  policy:
    allow: [\"1000-1100/udp\"]
- name: db
  hosts: db
  policy:
    allow:
      - { port: 1050-1060, proto: udp, from: [\"fd77::/64\"] }
      - { port: 1050, proto: tcp, from: [\"fd77::/64\"] }
";
    let e = fleet(site).unwrap_err();
    let (line, column, msg) = one(&e);
    assert_eq!((line, column), (9, 9));
    assert!(
        msg.contains("play `everyone`") && msg.contains("site.yml:4:13"),
        "{msg}"
    );
    assert!(msg.contains("udp ports 1050-1060"), "{msg}");
    assert!(
        msg.contains("(host d1, d2)"),
        "w1 does not get the db play: {msg}"
    );

    // The same entries on hosts apart, and other protocols, are fine.
    let apart = site.replace("hosts: all", "hosts: web");
    let f = fleet(&apart).unwrap();
    assert_eq!(f.hosts["d1"].allow.len(), 2);
}

#[test]
fn ephemeral_restrictions_need_stateful_replies() {
    let site = "\
- name: db
  hosts: db
  policy:
    allow:
      - { port: 40000-40010, proto: tcp, from: [10.0.0.0/8] }
";
    let e = fleet(site).unwrap_err();
    let (line, column, msg) = one(&e);
    assert_eq!((line, column), (5, 9));
    assert!(msg.contains("restricts 40000-40010"), "{msg}");
    assert!(msg.contains("use `replies: stateful`") || msg.contains("set `replies: stateful`"));
    // Stateful from another play of the same hosts makes it enforceable.
    let ok = format!("{site}- name: stateful\n  hosts: db\n  policy:\n    replies: stateful\n");
    let f = fleet(&ok).unwrap();
    assert_eq!(f.hosts["d2"].allow[0].from.len(), 1);
    // Outside the ephemeral range, ports mode is fine.
    assert!(fleet(&site.replace("40000-40010", "5432")).is_ok());
}

#[test]
fn one_host_policy_files_are_checked_too() {
    let text = "allow:\n  - ssh\n  - { port: 22, proto: tcp, from: [10.0.0.0/8] }\n";
    let e = load_host_policy(&Source::new("p.yml", text)).unwrap_err();
    let (line, column, msg) = one(&e);
    assert_eq!((line, column), (3, 5));
    assert!(msg.contains("`ssh` (p.yml:2:5)"), "{msg}");
    assert!(e.to_string().starts_with("p.yml:3:5: "), "{e}");
    // sctp/22 restricted next to tcp/22 open: different protocols.
    let text = "allow:\n  - ssh\n  - { port: 22, proto: sctp, from: [10.0.0.0/8] }\n";
    assert!(load_host_policy(&Source::new("p.yml", text)).is_ok());
}
