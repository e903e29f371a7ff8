use super::*;
use crate::model::{AllowEntry, Proto};

const INV: &str = "\
all:
  hosts:
    spare:
  children:
    mail:
      hosts:
        h1:
        h2:
    web:
      hosts:
        h2:
        h3:
    staging:
      hosts:
        h3:
";

fn fleet(site: &str) -> Result<Fleet, Diagnostics> {
    load_fleet(&Source::new("site.yml", site), &Source::new("inv.yml", INV))
}

#[track_caller]
fn errs(site: &str, want: &[(usize, usize, &str)]) {
    let e = fleet(site).expect_err("expected errors");
    let got: Vec<_> =
        e.0.iter()
            .map(|d| (d.line, d.column, d.message.as_str()))
            .collect();
    assert_eq!(got.len(), want.len(), "got:\n{e}");
    for ((l, c, m), (wl, wc, wm)) in got.iter().zip(want) {
        assert_eq!((l, c), (wl, wc), "at {m}\nall:\n{e}");
        assert!(m.contains(wm), "`{m}` does not contain `{wm}`");
    }
}

fn ports(allow: &[AllowEntry]) -> Vec<(Proto, u16)> {
    allow.iter().map(|a| (a.proto, a.ports.start)).collect()
}

#[test]
fn merges_allows_and_scalars_across_plays() {
    let f = fleet(
        "\
- name: base
  hosts: all:!spare
  policy:
    allow: [ssh]
    mode: enforce
- name: mail relays
  hosts: mail
  policy:
    allow: [smtp/tcp, domain/udp, 22/tcp]
    interface: eth2
- name: web
  hosts: web:!staging
  policy:
    allow: [http/tcp, ssh]
    interface: eth2
    log: { rate: 5/second }
",
    )
    .unwrap();
    use Proto::{Tcp, Udp};
    assert_eq!(f.hosts.keys().collect::<Vec<_>>(), ["h1", "h2", "h3"]);
    let h1 = &f.hosts["h1"];
    assert_eq!(ports(&h1.allow), [(Tcp, 22), (Tcp, 25), (Udp, 53)]);
    assert_eq!(h1.interface, InterfaceSel::Named("eth2".into()));
    assert_eq!(h1.log, crate::model::LogLimit::default());
    let h2 = &f.hosts["h2"];
    assert_eq!(
        ports(&h2.allow),
        [(Tcp, 22), (Tcp, 25), (Tcp, 80), (Udp, 53)]
    );
    assert_eq!(h2.log.rate, 5);
    let h3 = &f.hosts["h3"];
    assert_eq!(ports(&h3.allow), [(Tcp, 22)]);
    assert_eq!(h3.interface, InterfaceSel::All);
    assert_eq!(h3.mode, Mode::Enforce);
    assert_eq!(f.plays.len(), 3);
    assert_eq!(f.plays[1].name, "mail relays");
    assert_eq!(f.plays[1].hosts, "mail");
    assert_eq!(f.plays[1].line, 6);
    assert_eq!(f.plays[2].matched.iter().collect::<Vec<_>>(), ["h2"]);
    assert!(f.inventory.hosts.contains_key("spare") && !f.hosts.contains_key("spare"));
}

#[test]
fn conflict_names_both_plays() {
    errs(
        "\
- name: mail relays
  hosts: mail
  policy:
    mode: enforce
    interface: eth2
- name: web
  hosts: web
  policy:
    mode: audit
    interface: eth2
",
        &[(
            9,
            11,
            "conflicting `mode` for host h2: play `mail relays` (site.yml:1) sets enforce at site.yml:4:11, play `web` (site.yml:6) sets audit",
        )],
    );
}

#[test]
fn conflicts_are_reported_per_field_and_play_pair() {
    let e = fleet(
        "\
- { name: a, hosts: all, policy: { replies: ports, drift: heal } }
- { name: b, hosts: mail, policy: { replies: stateful, drift: report } }
- { name: c, hosts: web, policy: { replies: stateful } }
",
    )
    .unwrap_err();
    assert_eq!(e.len(), 3, "{e}");
    assert!(
        e.0[0]
            .message
            .contains("`replies` for host h1, h2: play `a`"),
        "{e}"
    );
    assert!(e.0[1].message.contains("`drift` for host h1, h2"), "{e}");
    assert!(
        e.0[2]
            .message
            .contains("`replies` for host h2, h3: play `a`"),
        "{e}"
    );
}

#[test]
fn play_structure_errors() {
    errs(
        "\
- name: one
  host: mail
  policy: {}
- name: two
  hosts: mail
- hosts: nosuch
  policy:
    allow: [smpt/tcp]
- just a string
- name: [x]
  hosts: ''
  policy: {}
",
        &[
            (1, 3, "play `one` has no `hosts`"),
            (2, 3, "unknown key `host` in play: did you mean `hosts`?"),
            (4, 3, "play `two` has no `policy`"),
            (
                6,
                10,
                "pattern `nosuch` matches no host (no group or host named `nosuch`)",
            ),
            (8, 13, "unknown service `smpt`"),
            (9, 3, "play #4 must be a mapping"),
            (10, 9, "`name` must be text"),
            (11, 10, "`hosts` must be an inventory pattern"),
        ],
    );
}

#[test]
fn empty_or_wrong_site() {
    errs("", &[(1, 1, "the site file is empty")]);
    errs("# nothing\n", &[(1, 1, "the site file is empty")]);
    errs("[]\n", &[(1, 1, "no plays")]);
    errs(
        "hosts: all\n",
        &[(1, 1, "must be a list of plays, found a mapping")],
    );
}

#[test]
fn errors_from_both_files_are_reported() {
    let e = load_fleet(
        &Source::new(
            "site.yml",
            "- name: x\n  hosts: all\n  policy: { mode: nope }\n",
        ),
        &Source::new("inv.yml", "all:\n  hostz: {}\n"),
    )
    .unwrap_err();
    let files: Vec<_> = e.0.iter().map(|d| (d.file.as_str(), d.line)).collect();
    assert_eq!(files, [("inv.yml", 2), ("site.yml", 3)], "{e}");
    let e = load_fleet(
        &Source::new("site.yml", "- [\n"),
        &Source::new("inv.yml", INV),
    )
    .unwrap_err();
    assert!(e.0[0].message.starts_with("YAML syntax error"), "{e}");
}

#[test]
fn hosts_may_be_a_list_of_patterns() {
    let f = fleet("- { hosts: [mail, staging], policy: { allow: [ssh] } }\n").unwrap();
    assert_eq!(f.hosts.keys().collect::<Vec<_>>(), ["h1", "h2", "h3"]);
    assert_eq!(f.plays[0].name, "play #1");
}

#[test]
fn management_entries_per_host() {
    let f = fleet(
        "\
- name: operators
  hosts: all
  management:
    - tcp/22 from 10.0.0.0/8
- name: mail
  hosts: mail
  policy:
    allow: [smtp/tcp]
  management: [ssh/tcp from 10.0.0.0/8, tcp/8443]
",
    )
    .unwrap();
    // The management-only play targets no policy.
    assert_eq!(f.hosts.keys().collect::<Vec<_>>(), ["h1", "h2"]);
    let h1 = &f.management["h1"];
    // tcp/22 from 10/8 once (the same entry twice), tcp/8443 from v4 and v6 anywhere.
    assert_eq!(h1.len(), 3, "{h1:?}");
    assert!(
        h1[0]
            .what
            .contains("management `tcp/22 from 10.0.0.0/8` (site.yml:4)")
    );
    assert_eq!(h1[0].ports.start, 22);
    assert_eq!(h1[0].from.to_string(), "10.0.0.0/8");
    assert!(
        h1.iter()
            .any(|r| r.ports.start == 8443 && r.from.prefix_len() == 0)
    );
    assert_eq!(f.management["spare"].len(), 1);
    assert_eq!(f.management["h3"].len(), 1);
    // The targeted hosts' policies carry them in `--keep` syntax (stored with the
    // revision, pushed with every Desired for the agent's fail-closed policy).
    assert_eq!(
        f.hosts["h1"].management.as_deref(),
        Some(
            &[
                "tcp/22 from 10.0.0.0/8".to_string(),
                "tcp/8443 from 0.0.0.0/0".to_string(),
                "tcp/8443 from ::/0".to_string(),
            ][..]
        )
    );
    let entries = f.hosts["h1"].management.clone().unwrap_or_default();
    for e in &entries {
        crate::lockout::parse_keep(e).unwrap_or_else(|err| panic!("{e}: {err}"));
    }
}

#[test]
fn management_errors_are_located() {
    errs(
        "\
- hosts: all
  management:
    - tcp/22 from somewhere
    - 22
    - {port: 22}
- hosts: mail
  management: {tcp: 22}
",
        &[
            (3, 7, "`management`: keep \"tcp/22 from somewhere\""),
            (4, 7, "missing `/`"),
            (5, 7, "must be text"),
            (7, 15, "must be a list of access entries"),
        ],
    );
}
