//! Address-list files: the line format, its errors at file:line:column, budgets, and
//! `from: { file }` in site and policy files.

use super::*;
use crate::site::{load_fleet_with_lists, load_host_policy_with_lists};

const INV: &str = "all:\n  hosts:\n    h1:\n    h2:\n";

fn lists(files: &[(&str, &str)]) -> Result<AddrLists, Diagnostics> {
    let src: Vec<Source> = files.iter().map(|(n, t)| Source::new(*n, *t)).collect();
    AddrLists::parse(&src)
}

#[test]
fn mixed_families_comments_and_blank_lines() {
    let text =
        "# partners\n\n10.77.1.5\n  10.77.2.0/24   # office\nfd77::1\nfd77:1::/48\n10.77.1.5/32\n";
    let l = parse_list(&Source::new("lists/p.txt", text)).expect("valid");
    assert_eq!(
        l.v4,
        vec![(0x0a4d_0105, 32), (0x0a4d_0200, 24)],
        "sorted, duplicate /32 dropped"
    );
    assert_eq!(l.v6.len(), 2);
    let nets: Vec<String> = l.nets().map(|n| n.to_string()).collect();
    assert_eq!(
        nets,
        ["10.77.1.5/32", "10.77.2.0/24", "fd77::1/128", "fd77:1::/48"]
    );
}

#[test]
fn bad_lines_are_located_with_what_was_found() {
    let text = "10.77.0.1\n   10.77.0.300\n10.77.0.1/24\n10.77.0.2 10.77.0.3\n";
    let e = parse_list(&Source::new("lists/b.txt", text)).unwrap_err();
    let shown: Vec<String> = e.0.iter().map(|d| d.to_string()).collect();
    assert_eq!(shown.len(), 3, "{shown:?}");
    assert!(shown[0].starts_with("lists/b.txt:2:4: "), "{}", shown[0]);
    assert!(shown[0].contains("`10.77.0.300` is not an IP network"));
    assert!(shown[1].starts_with("lists/b.txt:3:1: "), "{}", shown[1]);
    assert!(shown[1].contains("did you mean 10.77.0.0/24"));
    assert!(shown[2].starts_with("lists/b.txt:4:1: "), "{}", shown[2]);
    assert!(shown[2].contains("one address or prefix per line"));
}

#[test]
fn many_bad_lines_are_capped_and_counted() {
    let text = "x\n".repeat(60);
    let e = parse_list(&Source::new("l.txt", text)).unwrap_err();
    assert_eq!(e.len(), 51);
    assert!(e.to_string().contains("10 more bad lines not shown"), "{e}");
}

#[test]
fn names_must_stay_below_the_site_directory() {
    for bad in ["/etc/passwd", "../x.txt", "lists/../../x", "", "a\\b"] {
        assert!(check_name(bad).is_err(), "{bad}");
    }
    assert!(check_name("lists/partners.txt").is_ok());
    let e = lists(&[("../x.txt", "10.77.0.1\n")]).unwrap_err();
    assert!(e.to_string().contains("relative path"), "{e}");
    let e = lists(&[("a.txt", "10.77.0.1\n"), ("a.txt", "10.77.0.2\n")]).unwrap_err();
    assert!(e.to_string().contains("given twice"), "{e}");
}

#[test]
fn too_big_a_file_is_refused() {
    let text = "#".repeat(MAX_LIST_BYTES + 1);
    let e = parse_list(&Source::new("l.txt", text)).unwrap_err();
    assert!(e.to_string().starts_with("l.txt:0:0: list file is"), "{e}");
}

const SITE: &str = "\
- name: partners
  hosts: all
  policy:
    allow:
      - { port: 443, proto: tcp, from: [10.77.9.0/24, { file: lists/partners.txt }] }
      - { port: 22, proto: tcp, from: { file: lists/admins.txt } }
";

#[test]
fn site_from_mixes_list_files_and_inline_networks() {
    let l = lists(&[
        ("lists/partners.txt", "10.77.1.1\nfd77::5\n"),
        ("lists/admins.txt", "# nobody else\n10.77.3.0/28\n"),
    ])
    .expect("lists");
    let site = Source::new("site.yml", SITE);
    let refs = list_references(&crate::yaml::parse(&site).expect("yaml"));
    assert_eq!(
        refs.into_iter().collect::<Vec<_>>(),
        ["lists/admins.txt", "lists/partners.txt"]
    );
    let fleet = load_fleet_with_lists(&site, &Source::new("inv.yml", INV), &l).expect("valid");
    let h1 = &fleet.hosts["h1"];
    let from = |port: u16| -> (Vec<String>, Vec<String>) {
        let a = h1
            .allow
            .iter()
            .find(|a| a.ports.start == port)
            .expect("entry");
        (
            a.from.iter().map(|n| n.to_string()).collect(),
            a.lists.clone(),
        )
    };
    assert_eq!(from(22), (vec![], vec!["lists/admins.txt".to_string()]));
    assert_eq!(
        from(443),
        (
            vec!["10.77.9.0/24".to_string()],
            vec!["lists/partners.txt".to_string()]
        )
    );
    // The content travels once per list, shared (not copied per entry or host).
    let nets =
        |name: &str| -> Vec<String> { h1.lists[name].nets().map(|n| n.to_string()).collect() };
    assert_eq!(nets("lists/partners.txt"), ["10.77.1.1/32", "fd77::5/128"]);
    assert_eq!(nets("lists/admins.txt"), ["10.77.3.0/28"]);
    assert!(std::sync::Arc::ptr_eq(
        &h1.lists["lists/admins.txt"],
        &fleet.hosts["h2"].lists["lists/admins.txt"]
    ));
}

#[test]
fn a_list_file_not_read_is_an_error_at_its_name() {
    let l = lists(&[("lists/partners.txt", "10.77.1.1\n")]).expect("lists");
    let e = load_fleet_with_lists(
        &Source::new("site.yml", SITE),
        &Source::new("inv.yml", INV),
        &l,
    )
    .unwrap_err();
    assert_eq!(e.len(), 1, "{e}");
    let d = &e.0[0];
    assert_eq!((d.file.as_str(), d.line, d.column), ("site.yml", 6, 47));
    assert!(d.message.contains("`lists/admins.txt` was not read"), "{e}");
}

#[test]
fn policy_file_list_entries_are_checked() {
    let l = lists(&[("empty.txt", "# none yet\n"), ("a.txt", "10.77.0.7\n")]).expect("lists");
    let load = |text: &str| load_host_policy_with_lists(&Source::new("p.yml", text), &l);
    let ok = load("allow:\n  - { port: 22, proto: tcp, from: { file: a.txt } }\n").expect("ok");
    assert_eq!(ok.allow[0].lists, ["a.txt"]);
    assert_eq!(ok.lists["a.txt"].len(), 1);
    let e = load("allow:\n  - { port: 22, proto: tcp, from: { file: empty.txt } }\n").unwrap_err();
    assert!(e.to_string().contains("only empty list files"), "{e}");
    let e = load("allow:\n  - { port: 22, proto: tcp, from: { path: a.txt } }\n").unwrap_err();
    assert!(e.to_string().contains("unknown key `path`"), "{e}");
    let e = load("allow:\n  - { port: 22, proto: tcp, from: { file: /etc/a.txt } }\n").unwrap_err();
    assert!(e.to_string().starts_with("p.yml:2:43: "), "{e}");
}

#[test]
fn deny_entries_read_lists_and_inline_networks_with_locations() {
    let l = lists(&[(
        "lists/blocked.txt",
        "192.0.2.7\n198.51.100.0/24\n2001:db8::/32\n",
    )])
    .expect("lists");
    let load = |text: &str| load_host_policy_with_lists(&Source::new("p.yml", text), &l);
    let p = load(
        "allow: [22/tcp]\ndeny:\n  - { from: { file: lists/blocked.txt } }\n  - { from: [203.0.113.0/24, 203.0.113.0/24], port: 80-90, proto: tcp }\n  - { from: [203.0.113.9], proto: udp }\n",
    )
    .expect("valid");
    assert_eq!(p.deny.len(), 3);
    assert_eq!(p.deny[0].lists, ["lists/blocked.txt"]);
    assert_eq!((p.deny[0].proto, p.deny[0].ports), (None, None));
    assert_eq!(p.deny[1].from.len(), 1, "de-duplicated");
    assert_eq!(p.deny[1].ports.map(|r| (r.start, r.end)), Some((80, 90)));
    assert_eq!(p.deny[2].proto, Some(crate::model::Proto::Udp));
    assert_eq!(p.lists["lists/blocked.txt"].len(), 3);

    let at = |text: &str| {
        let e = load(text).unwrap_err();
        let d = &e.0[0];
        (d.line, d.column, d.message.clone())
    };
    let (line, col, m) = at("deny:\n  - { port: 22, proto: tcp }\n");
    assert_eq!((line, col), (2, 5), "{m}");
    assert!(m.contains("needs `from:`"), "{m}");
    let (line, col, m) = at("deny:\n  - { from: [192.0.2.1], port: 22 }\n");
    assert_eq!((line, col), (2, 32), "{m}");
    assert!(m.contains("needs `proto`"), "{m}");
    let (line, _, m) = at("deny:\n  - { from: [192.0.2.1], prot: tcp }\n");
    assert_eq!(line, 2);
    assert!(m.contains("did you mean `proto`"), "{m}");
    let (_, _, m) = at("deny:\n  - { from: { file: lists/missing.txt } }\n");
    assert!(m.contains("was not read"), "{m}");
    let (_, _, m) = at("deny: { from: [192.0.2.1] }\n");
    assert!(m.contains("`deny` must be a list"), "{m}");
}

#[test]
fn packed_lists_round_trip_and_refuse_bad_bytes() {
    let l = lists(&[("a", "10.0.0.1\n10.0.0.0/8\nfd77::/16\n::1\n")]).expect("lists");
    let a = l.get("a").expect("a");
    let (v4, v6) = a.pack();
    assert_eq!(&AddrList::unpack(&v4, &v6).expect("unpack"), &**a);
    let json = serde_json::to_string(&**a).expect("json");
    assert_eq!(
        &serde_json::from_str::<AddrList>(&json).expect("back"),
        &**a
    );
    // Out of order, host bits set, a bad prefix length, a partial entry: refused.
    let mut rev = v4[5..10].to_vec();
    rev.extend_from_slice(&v4[..5]);
    assert!(AddrList::unpack(&rev, &[]).is_err());
    assert!(AddrList::unpack(&[10, 0, 0, 1, 8], &[]).is_err());
    assert!(AddrList::unpack(&[10, 0, 0, 0, 33], &[]).is_err());
    assert!(AddrList::unpack(&[10, 0, 0, 0], &[]).is_err());
}

#[test]
fn deltas_apply_only_to_their_base() {
    let old = AddrList::from_nets(
        ["10.0.0.1/32", "10.0.0.2/32", "fd77::/16"].map(|s| s.parse().unwrap()),
    );
    let new = AddrList::from_nets(
        ["10.0.0.2/32", "10.0.0.3/32", "fd77::/16", "fd78::/16"].map(|s| s.parse().unwrap()),
    );
    let (added, removed) = old.diff(&new);
    assert_eq!((added.len(), removed.len()), (2, 1));
    assert_eq!(old.apply_delta(&added, &removed).expect("fits"), new);
    // Applied twice, or to the new list: the delta does not fit.
    assert!(new.apply_delta(&added, &removed).is_err());
    assert_ne!(old.digest(), new.digest());
}
