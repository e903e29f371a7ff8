//! Loading a realistic inventory + site pair from fixtures, and a round-trip property:
//! a valid policy written out as YAML loads back equal.

use ipnet::IpNet;
use portcullis_policy::{
    AllowEntry, DriftMode, HostPolicy, InterfaceSel, LogLimit, Mode, PortRange, Proto, RateUnit,
    Replies, Source, load_fleet, load_host_policy,
};
use proptest::prelude::*;

fn fixture(name: &str) -> Source {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    Source::new(name, text)
}

fn allowed(p: &HostPolicy) -> Vec<String> {
    p.allow
        .iter()
        .map(|a| {
            let from: Vec<String> = a.from.iter().map(|n| n.to_string()).collect();
            format!("{}/{} {}", a.ports, a.proto, from.join(","))
                .trim()
                .to_string()
        })
        .collect()
}

#[test]
fn seed_fleet_loads() {
    let fleet = load_fleet(&fixture("site.yml"), &fixture("inventory.yml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fleet.hosts.keys().collect::<Vec<_>>(), ["h1", "h2", "h3"]);
    let ssh = "22/tcp 10.77.0.0/24,fd77::/64";

    let h1 = &fleet.hosts["h1"];
    assert_eq!(allowed(h1), [ssh, "25/tcp", "123/udp"]);
    assert_eq!(h1.interface, InterfaceSel::Default);
    assert_eq!(
        (h1.replies, h1.mode, h1.drift),
        (Replies::Ports, Mode::Enforce, DriftMode::Heal)
    );
    assert_eq!((h1.log, h1.log_group), (LogLimit::default(), 7));

    let h2 = &fleet.hosts["h2"];
    assert_eq!(allowed(h2), [ssh, "25/tcp", "53/tcp", "53/udp", "123/udp"]);
    assert_eq!(h2.interface, InterfaceSel::Default);

    let h3 = &fleet.hosts["h3"];
    assert_eq!(allowed(h3), [ssh, "80/tcp", "443/tcp", "123/udp"]);
    assert_eq!(h3.interface, InterfaceSel::All);
    assert_eq!(h3.mode, Mode::Audit);

    let labels: Vec<&str> = h3.allow.iter().map(|a| a.label.as_str()).collect();
    assert_eq!(labels, ["22/tcp", "http/tcp", "https/tcp", "ntp/udp"]);
    assert_eq!(
        fleet.inventory.hosts["h2"].ansible_host.as_deref(),
        Some("10.77.0.12")
    );
    let matched: Vec<usize> = fleet.plays.iter().map(|p| p.matched.len()).collect();
    assert_eq!(matched, [3, 2, 1, 1]);
    assert_eq!(fleet.plays[2].hosts, "resolvers:!web");
}

#[test]
fn broken_site_reports_every_error_sorted() {
    let site = Source::new(
        "bad.yml",
        "- name: a\n  hosts: mail\n  policy:\n    allow: [smtp/udp, 0/tcp]\n    mdoe: audit\n",
    );
    let e = load_fleet(&site, &fixture("inventory.yml")).expect_err("bad.yml is invalid");
    let at: Vec<String> =
        e.0.iter()
            .map(|d| format!("{}:{}:{}", d.file, d.line, d.column))
            .collect();
    assert_eq!(at, ["bad.yml:4:13", "bad.yml:4:23", "bad.yml:5:5"], "{e}");
    assert!(e.to_string().contains("did you mean `mode`?"));
}

#[test]
fn alias_bomb_site_gives_exactly_one_error() {
    let e = load_fleet(&fixture("alias-bomb.yml"), &fixture("inventory.yml"))
        .expect_err("the bomb is refused");
    assert_eq!(
        e.to_string(),
        format!(
            "{}:9:12: too many alias expansions (limit 1000000)",
            fixture("alias-bomb.yml").name
        )
    );
    let e = portcullis_policy::load_host_policy(&fixture("alias-bomb.yml")).expect_err("refused");
    assert_eq!(e.len(), 1, "{e}");
}

// ---- round trip: a tiny emitter and generated policies ----

fn emit(p: &HostPolicy) -> String {
    let mut s = String::new();
    s += &format!(
        "interface: {}\n",
        match &p.interface {
            InterfaceSel::All => "all".to_string(),
            InterfaceSel::Default => "default".to_string(),
            InterfaceSel::Named(n) => n.clone(),
        }
    );
    s += &format!(
        "replies: {}\n",
        if p.replies == Replies::Ports {
            "ports"
        } else {
            "stateful"
        }
    );
    s += &format!(
        "mode: {}\n",
        if p.mode == Mode::Enforce {
            "enforce"
        } else {
            "audit"
        }
    );
    s += &format!(
        "drift: {}\n",
        if p.drift == DriftMode::Heal {
            "heal"
        } else {
            "report"
        }
    );
    s += &format!(
        "log: {{ rate: {}/{}, burst: {}, group: {} }}\n",
        p.log.rate, p.log.per, p.log.burst, p.log_group
    );
    s += "allow:\n";
    for a in &p.allow {
        if a.from.is_empty() {
            s += &format!("  - {}/{}\n", a.ports, a.proto);
        } else {
            let from: Vec<String> = a.from.iter().map(|n| format!("\"{n}\"")).collect();
            s += &format!(
                "  - port: \"{}\"\n    proto: {}\n    from: [{}]\n",
                a.ports,
                a.proto,
                from.join(", ")
            );
        }
    }
    s
}

fn net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (any::<u32>(), 0u8..=32).prop_map(|(a, l)| {
            IpNet::V4(
                ipnet::Ipv4Net::new(a.into(), l)
                    .expect("prefix <= 32")
                    .trunc(),
            )
        }),
        (any::<u128>(), 0u8..=128).prop_map(|(a, l)| {
            IpNet::V6(
                ipnet::Ipv6Net::new(a.into(), l)
                    .expect("prefix <= 128")
                    .trunc(),
            )
        }),
    ]
}

fn entry() -> impl Strategy<Value = AllowEntry> {
    (
        prop::sample::select(Proto::ALL.to_vec()),
        1u16..=65535,
        0u16..200,
        prop::collection::btree_set(net(), 0..3),
    )
        .prop_map(|(proto, start, len, from)| {
            let ports = PortRange {
                start,
                end: start.saturating_add(len),
            };
            AllowEntry {
                proto,
                ports,
                from: from.into_iter().collect(),
                lists: Vec::new(),
                label: format!("{ports}/{proto}"),
            }
        })
}

fn policy() -> impl Strategy<Value = HostPolicy> {
    let iface = prop_oneof![
        Just(InterfaceSel::All),
        Just(InterfaceSel::Default),
        "[a-z][a-z0-9]{0,10}".prop_filter_map("reserved", |n| {
            (n != "all" && n != "default" && n != "null").then_some(InterfaceSel::Named(n))
        }),
    ];
    let unit = prop_oneof![
        Just(RateUnit::Second),
        Just(RateUnit::Minute),
        Just(RateUnit::Hour),
        Just(RateUnit::Day)
    ];
    (
        iface,
        any::<bool>(),
        prop::collection::vec(entry(), 0..8),
        (1u32..=1_000_000, unit, 1u32..=100_000, any::<u16>()),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(interface, stateful, mut allow, (rate, per, burst, group), audit, report)| {
                allow.sort();
                allow.dedup_by(|b, a| (a.proto, a.ports, &a.from) == (b.proto, b.ports, &b.from));
                // Without the entries the loader refuses (see `restrict`).
                let open: Vec<(Proto, PortRange)> = allow
                    .iter()
                    .filter(|a| a.from.is_empty())
                    .map(|a| (a.proto, a.ports))
                    .collect();
                let meets = |a: PortRange, b: PortRange| a.start <= b.end && b.start <= a.end;
                allow.retain(|a| {
                    a.from.is_empty()
                        || !(open
                            .iter()
                            .any(|(p, r)| *p == a.proto && meets(*r, a.ports))
                            || !stateful && meets(a.ports, portcullis_policy::lockout::EPHEMERAL))
                });
                HostPolicy {
                    interface,
                    replies: if stateful {
                        Replies::Stateful
                    } else {
                        Replies::Ports
                    },
                    allow,
                    log: LogLimit { rate, per, burst },
                    log_group: group,
                    mode: if audit { Mode::Audit } else { Mode::Enforce },
                    drift: if report {
                        DriftMode::Report
                    } else {
                        DriftMode::Heal
                    },
                    management: None,
                    ..HostPolicy::default()
                }
            },
        )
}

proptest! {
    #[test]
    fn emitted_policy_loads_back_equal(p in policy()) {
        let text = emit(&p);
        let loaded = load_host_policy(&Source::new("gen.yml", text.clone()));
        prop_assert_eq!(loaded, Ok(p), "text:\n{}", text);
    }
}
