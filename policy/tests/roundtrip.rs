//! Compile -> kernel -> readback round trips, without root: real-kernel readback fixtures
//! (saved from nft 1.0.6 in a network namespace, see `fixtures/readback/`) must parse to
//! exactly what `compile` produced, and property tests over random policies check
//! determinism, `diff(r, r)` empty, `plan(d, Some(d))` unchanged, and readback of the
//! kernel's JSON spelling of a compiled ruleset giving it back.
#![allow(clippy::unwrap_used)]

use portcullis_policy::ruleset::{Element, Rule, Set, SetKey};
use portcullis_policy::*;
use proptest::prelude::*;
use serde_json::{Value, json};

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/readback/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn allow(proto: Proto, a: u16, b: u16, from: &[&str]) -> AllowEntry {
    AllowEntry {
        proto,
        ports: PortRange::new(a, b).unwrap(),
        from: from.iter().map(|s| s.parse().unwrap()).collect(),
        lists: Vec::new(),
        label: format!("{a}/{proto}"),
    }
}

fn facts() -> Facts {
    Facts {
        hostname: "h1".into(),
        interfaces: vec![],
        default_route_interface: Some("eth0".into()),
    }
}

/// The policies the fixtures were made from (revision 42).
fn case(name: &str) -> HostPolicy {
    let mut p = HostPolicy {
        allow: vec![
            allow(Proto::Tcp, 22, 22, &[]),
            allow(Proto::Tcp, 25, 25, &[]),
            allow(Proto::Udp, 53, 53, &[]),
            allow(Proto::Udp, 123, 123, &[]),
        ],
        ..HostPolicy::default()
    };
    match name {
        "seed" => {}
        "stateful" => p.replies = Replies::Stateful,
        "audit" => p.mode = Mode::Audit,
        "stateful-audit" => {
            p.replies = Replies::Stateful;
            p.mode = Mode::Audit;
            p.log = LogLimit {
                rate: 5,
                per: RateUnit::Minute,
                burst: 10,
            };
            p.log_group = 3;
        }
        "from" => {
            p.allow.retain(|a| a.ports.start != 22);
            let from = [
                "10.77.0.0/24",
                "fd77::/64",
                "192.0.2.7/32",
                "2001:db8::1/128",
            ];
            p.allow.push(allow(Proto::Tcp, 22, 22, &from));
            p.allow.push(allow(Proto::Tcp, 8000, 8100, &["10.0.0.0/8"]));
            p.allow
                .push(allow(Proto::Tcp, 8050, 8200, &["10.1.0.0/16"]));
            p.allow
                .push(allow(Proto::Udp, 161, 162, &["0.0.0.0/0", "::/0"]));
            p.allow
                .push(allow(Proto::Udp, 2000, 30000, &["198.51.100.0/24"]));
            p.allow.push(allow(Proto::Tcp, 1000, 2000, &[]));
            p.allow.push(allow(Proto::Tcp, 2001, 2002, &[]));
        }
        "transports" => {
            p.allow.push(allow(Proto::Udplite, 137, 137, &[]));
            p.allow.push(allow(Proto::Sctp, 5000, 5000, &[]));
            p.allow.push(allow(Proto::Dccp, 6000, 6001, &[]));
            p.allow.push(allow(
                Proto::Sctp,
                3868,
                3868,
                &["10.77.0.0/24", "fd77::/64"],
            ));
            p.allow
                .push(allow(Proto::Udplite, 9000, 9000, &["fd77::5/128"]));
            p.allow
                .push(allow(Proto::Tcp, 5432, 5432, &["10.77.200.5/32"]));
            p.mode = Mode::Audit;
        }
        "iface" => p.interface = InterfaceSel::Named("eth2".into()),
        "default" => p.interface = InterfaceSel::Default,
        "empty" => p.allow.clear(),
        _ => unreachable!("{name}"),
    }
    p
}

#[test]
fn kernel_readback_equals_compiled() {
    for name in [
        "seed",
        "stateful",
        "audit",
        "stateful-audit",
        "from",
        "iface",
        "default",
        "empty",
        "transports",
    ] {
        let compiled = compile(&case(name), &facts(), 42).unwrap();
        let (read, counters) = parse_readback(&fixture(name)).unwrap();
        assert_eq!(read, compiled, "{name}:\n{}", diff(&compiled, &read));
        assert_eq!(read.hash(), compiled.hash(), "{name}");
        assert_eq!(plan(&compiled, Some(&read)), Plan::Unchanged, "{name}");
        assert_eq!(counters.len(), compiled.rule_count(), "{name}");
    }
}

/// Writes the `nft -f` script of every fixture case (and `counters`: the seed on `lo`)
/// into `$PORTCULLIS_FIXTURE_SCRIPTS`; `fixtures/readback/regen.sh` applies them in a
/// network namespace and saves what nft 1.0.6 reads back.
#[test]
#[ignore = "tool: run by fixtures/readback/regen.sh"]
fn write_fixture_scripts() {
    let dir = std::env::var("PORTCULLIS_FIXTURE_SCRIPTS").unwrap();
    let mut cases: Vec<(&str, HostPolicy)> = [
        "seed",
        "stateful",
        "audit",
        "stateful-audit",
        "from",
        "iface",
        "default",
        "empty",
        "transports",
    ]
    .into_iter()
    .map(|n| (n, case(n)))
    .collect();
    let mut counters = case("seed");
    counters.interface = InterfaceSel::Named("lo".into());
    cases.push(("counters", counters));
    for (name, p) in cases {
        let rs = compile(&p, &facts(), 42).unwrap();
        std::fs::write(format!("{dir}/{name}.nft"), rs.to_nft_script()).unwrap();
    }
}

#[test]
fn kernel_drift_shows_as_diff() {
    let desired = compile(&case("seed"), &facts(), 42).unwrap();
    let lines = |name: &str| -> Vec<String> {
        let actual = parse_readback(&fixture(name)).unwrap().0;
        assert_ne!(actual.hash(), desired.hash());
        diff(&desired, &actual)
            .to_string()
            .lines()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        lines("drift-extra-rule"),
        ["- chain guard rule 4: tcp dport 8080 counter accept"]
    );
    // `add element { 8443, 23 }`: 23 touches 22, so the canonical form merges them.
    assert_eq!(
        lines("drift-extra-element"),
        [
            "- set allow_tcp element 22-23",
            "- set allow_tcp element 8443",
            "+ set allow_tcp element 22"
        ]
    );
    assert_eq!(
        lines("drift-policy-drop"),
        ["~ chain input policy drop -> accept"]
    );
    let foreign = lines("drift-foreign");
    // The hand-made `type ipv4_addr` set reads as an address-list set (extra, not wanted).
    assert_eq!(foreign.len(), 7, "{foreign:#?}");
    assert_eq!(
        foreign[..2],
        ["- set foo type ipv4_addr", "- set foo element 1.2.3.4"]
    );
    assert!(foreign[2].starts_with("~ chain guard rule 3: # unrecognized: "));
    assert!(foreign[4].starts_with("- chain guard rule 11: # unrecognized: "));
    assert!(foreign[5].starts_with("- unrecognized counter c1: "));
}

#[test]
fn rendered_script_spells_every_part() {
    let rs = compile(&case("from"), &facts(), 42).unwrap();
    let script = rs.to_nft_script();
    assert!(script.starts_with("add table inet portcullis\ndelete table inet portcullis\n"));
    assert!(!script.contains("flush"));
    for set in rs.sets.values() {
        for e in set.elements.iter() {
            assert!(script.contains(&e.to_string()), "{e}");
        }
    }
    for rule in rs.chains.values().flat_map(|c| &c.rules) {
        assert!(script.contains(&format!("\t\t{rule}\n")), "{rule}");
    }
}

/// What nft 1.0.6 prints for `rs` (`nft -j list table`), in its own spellings: bare
/// numbers and addresses, `range`, `prefix`, `concat`, touching ranges stored apart.
fn kernel_json(rs: &Ruleset, split: bool, packets: u64) -> String {
    let port = |p: PortRange| {
        if p.start == p.end {
            json!(p.start)
        } else {
            json!({"range": [p.start, p.end]})
        }
    };
    let pieces = |p: PortRange| {
        let mid = p.start + (p.end - p.start) / 2;
        if split && p.start < p.end {
            vec![
                PortRange::new(p.start, mid).unwrap(),
                PortRange::new(mid + 1, p.end).unwrap(),
            ]
        } else {
            vec![p]
        }
    };
    let addr = |a: String, len: u8, max: u8| {
        if len == max {
            json!(a)
        } else {
            json!({"prefix": {"addr": a, "len": len}})
        }
    };
    let mut items = vec![
        json!({"metainfo": {"version": "1.0.6", "json_schema_version": 1}}),
        json!({"table": {"family": "inet", "name": "portcullis", "handle": 9}}),
    ];
    let base =
        |name: &str| json!({"family": "inet", "table": "portcullis", "name": name, "handle": 1});
    for (name, set) in &rs.sets {
        let mut o = base(name);
        o["type"] = match set.key {
            SetKey::Port => json!("inet_service"),
            SetKey::V4Port => json!(["ipv4_addr", "inet_service"]),
            SetKey::V6Port => json!(["ipv6_addr", "inet_service"]),
            SetKey::V4Addr | SetKey::V4Net => json!("ipv4_addr"),
            SetKey::V6Addr | SetKey::V6Net => json!("ipv6_addr"),
        };
        if set.key.interval() {
            o["flags"] = json!(["interval"]);
        }
        let mut elem = Vec::new();
        for e in set.elements.iter() {
            let (a, p) = match e {
                Element::V4(n) => {
                    elem.push(addr(n.addr().to_string(), n.prefix_len(), 32));
                    continue;
                }
                Element::V6(n) => {
                    elem.push(addr(n.addr().to_string(), n.prefix_len(), 128));
                    continue;
                }
                Element::Port(p) => (None, *p),
                Element::V4Port(n, p) => (Some(addr(n.addr().to_string(), n.prefix_len(), 32)), *p),
                Element::V6Port(n, p) => {
                    (Some(addr(n.addr().to_string(), n.prefix_len(), 128)), *p)
                }
            };
            for piece in pieces(p) {
                elem.push(match &a {
                    None => port(piece),
                    Some(a) => json!({"concat": [a, port(piece)]}),
                });
            }
        }
        if !elem.is_empty() {
            o["elem"] = Value::Array(elem);
        }
        items.push(json!({"set": o}));
    }
    for (name, chain) in &rs.chains {
        let mut o = base(name);
        if let Some(b) = &chain.base {
            o["type"] = json!("filter");
            o["hook"] = json!(b.hook);
            o["prio"] = json!(b.priority);
            o["policy"] = json!(b.policy.to_string());
        }
        items.push(json!({"chain": o}));
    }
    for (name, chain) in &rs.chains {
        for rule in &chain.rules {
            let expr = rule_json(rule, packets);
            items.push(
                json!({"rule": {"family": "inet", "table": "portcullis", "chain": name,
                "handle": 3, "expr": expr}}),
            );
        }
    }
    json!({"nftables": items}).to_string()
}

fn rule_json(rule: &Rule, packets: u64) -> Value {
    let m = |op: &str, left: Value, right: Value| json!({"match": {"op": op, "left": left, "right": right}});
    let pay = |p: &str, f: &str| json!({"payload": {"protocol": p, "field": f}});
    let counter = json!({"counter": {"packets": packets, "bytes": packets * 60}});
    let v = |v: &ruleset::Verdict| {
        let mut o = serde_json::Map::new();
        o.insert(v.to_string(), Value::Null);
        Value::Object(o)
    };
    let range = |p: &PortRange| json!({"range": [p.start, p.end]});
    // nft prints the anonymous set in protocol-number order, by name where
    // /etc/protocols has it (numbers otherwise: both must read the same).
    let l4 = m(
        "==",
        json!({"meta": {"key": "l4proto"}}),
        if packets.is_multiple_of(2) {
            json!({"set": ["tcp", "udp", "dccp", "sctp", "udplite"]})
        } else {
            json!({"set": [6, 17, 33, 132, 136]})
        },
    );
    match rule {
        Rule::Jump {
            iifname: Some(i),
            target,
        } => {
            let op = if i.negate { "!=" } else { "==" };
            let iif = m(op, json!({"meta": {"key": "iifname"}}), json!(i.name));
            json!([iif, counter, {"jump": {"target": target}}])
        }
        Rule::SetMatch {
            saddr,
            proto,
            set,
            verdict,
        } => {
            let dport = pay(&proto.to_string(), "dport");
            let left = match saddr {
                None => dport,
                Some(l3) => json!({"concat": [pay(&l3.to_string(), "saddr"), dport]}),
            };
            json!([m("==", left, json!(format!("@{set}"))), counter, v(verdict)])
        }
        Rule::Fragment { l3, verdict } => {
            let left = match l3 {
                ruleset::L3::Ip => json!({"&": [pay("ip", "frag-off"), 8191]}),
                ruleset::L3::Ip6 => json!({"exthdr": {"name": "frag", "field": "frag-off"}}),
            };
            json!([m("!=", left, json!(0)), counter, v(verdict)])
        }
        Rule::Ports {
            proto,
            ports,
            verdict,
        } => {
            json!([
                m("==", pay(&proto.to_string(), "dport"), range(ports)),
                counter,
                v(verdict)
            ])
        }
        Rule::CtState { states, verdict } => {
            json!([
                m("in", json!({"ct": {"key": "state"}}), json!(states)),
                counter,
                v(verdict)
            ])
        }
        Rule::LogLimited {
            ports,
            limit,
            group,
            prefix,
            verdict,
        } => json!([
            l4, m("==", pay("th", "dport"), range(ports)),
            {"limit": {"rate": limit.rate, "burst": limit.burst, "per": limit.per.to_string()}},
            counter, {"log": {"prefix": prefix, "group": group}}, v(verdict)
        ]),
        Rule::SetLogLimited {
            proto,
            set,
            limit,
            group,
            prefix,
            verdict,
        } => json!([
            m("==", pay(&proto.to_string(), "dport"), json!(format!("@{set}"))),
            {"limit": {"rate": limit.rate, "burst": limit.burst, "per": limit.per.to_string()}},
            counter, {"log": {"prefix": prefix, "group": group}}, v(verdict)
        ]),
        Rule::Counted { ports, verdict } => {
            json!([
                l4,
                m("==", pay("th", "dport"), range(ports)),
                counter,
                v(verdict)
            ])
        }
        other => panic!("compile never emits {other:?}"),
    }
}

fn net() -> impl Strategy<Value = ipnet::IpNet> {
    prop_oneof![
        (any::<u32>(), 0u8..=32)
            .prop_map(|(a, l)| ipnet::IpNet::V4(ipnet::Ipv4Net::new(a.into(), l).unwrap())),
        (any::<u128>(), 0u8..=128)
            .prop_map(|(a, l)| ipnet::IpNet::V6(ipnet::Ipv6Net::new(a.into(), l).unwrap())),
        // Small neighbourhood, so entries overlap and touch.
        (0u32..64, 26u8..=32).prop_map(|(a, l)| ipnet::IpNet::V4(
            ipnet::Ipv4Net::new((0x0a00_0000 + a).into(), l).unwrap()
        )),
    ]
}

fn entry() -> impl Strategy<Value = AllowEntry> {
    let ports = prop_oneof![(0u16..100, 0u16..20), (any::<u16>(), any::<u16>())]
        .prop_map(|(a, n)| PortRange::new(a, a.saturating_add(n)).unwrap());
    let proto = prop::sample::select(Proto::ALL.to_vec());
    let from = prop_oneof![Just(vec![]), prop::collection::vec(net(), 1..4)];
    (proto, ports, from).prop_map(|(proto, ports, from)| AllowEntry {
        proto,
        ports,
        from,
        lists: Vec::new(),
        label: String::new(),
    })
}

fn policy() -> impl Strategy<Value = HostPolicy> {
    let iface = prop_oneof![
        Just(InterfaceSel::All),
        Just(InterfaceSel::Default),
        "[a-z]{1,8}[0-9]{0,3}".prop_map(InterfaceSel::Named),
    ];
    let replies = prop_oneof![Just(Replies::Ports), Just(Replies::Stateful)];
    let mode = prop_oneof![Just(Mode::Enforce), Just(Mode::Audit)];
    let per = prop_oneof![
        Just(RateUnit::Second),
        Just(RateUnit::Minute),
        Just(RateUnit::Hour)
    ];
    let allow = prop::collection::vec(entry(), 0..24);
    (
        iface,
        replies,
        mode,
        per,
        1u32..10_000,
        1u32..10_000,
        any::<u16>(),
        allow,
    )
        .prop_map(
            |(interface, replies, mode, per, rate, burst, log_group, allow)| {
                enforceable(HostPolicy {
                    interface,
                    replies,
                    allow,
                    log: LogLimit { rate, per, burst },
                    log_group,
                    mode,
                    drift: DriftMode::Heal,
                    ..HostPolicy::default()
                })
            },
        )
}

/// `p` without the restricted entries compile refuses (overlapping an unrestricted one of
/// the same protocol, or the ephemeral range under `replies: ports`).
fn enforceable(mut p: HostPolicy) -> HostPolicy {
    let open: Vec<(Proto, PortRange)> = p
        .allow
        .iter()
        .filter(|a| a.from.is_empty())
        .map(|a| (a.proto, a.ports))
        .collect();
    let meets = |a: PortRange, b: PortRange| a.start <= b.end && b.start <= a.end;
    let ports_mode = p.replies == Replies::Ports;
    p.allow.retain(|a| {
        a.from.is_empty()
            || !(open
                .iter()
                .any(|(pr, r)| *pr == a.proto && meets(*r, a.ports))
                || ports_mode && meets(a.ports, lockout::EPHEMERAL))
    });
    p
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn compile_is_deterministic_and_self_consistent(p in policy(), rev in any::<u64>()) {
        let a = compile(&p, &facts(), rev).unwrap();
        let b = compile(&p, &facts(), rev).unwrap();
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(a.hash(), b.hash());
        prop_assert_eq!(a.to_nft_script(), b.to_nft_script());
        prop_assert!(diff(&a, &a).is_empty());
        prop_assert_eq!(plan(&a, Some(&a)), Plan::Unchanged);
        // Entry order does not matter.
        let mut rev_p = p.clone();
        rev_p.allow.reverse();
        prop_assert_eq!(compile(&rev_p, &facts(), rev).unwrap(), a);
    }

    #[test]
    fn readback_of_compiled_gives_it_back(p in policy(), split in any::<bool>(), packets in 0u64..1000) {
        let compiled = compile(&p, &facts(), 7).unwrap();
        let (read, counters) = parse_readback(&kernel_json(&compiled, split, packets)).unwrap();
        prop_assert_eq!(&read, &compiled, "{}", diff(&compiled, &read));
        prop_assert_eq!(counters.len(), compiled.rule_count());
        prop_assert!(counters.iter().all(|c| c.packets == packets));
    }

    #[test]
    fn normalized_sets_cover_the_same_and_do_not_overlap(
        raw in prop::collection::vec((0u32..64, 26u8..=32, 0u16..40, 0u16..8), 0..12)
    ) {
        let elems: Vec<Element> = raw.iter().map(|&(a, l, p, n)| Element::V4Port(
            ipnet::Ipv4Net::new((0x0a00_0000 + a).into(), l).unwrap(),
            PortRange::new(p, p + n).unwrap(),
        )).collect();
        let set = Set::new(SetKey::V4Port, elems.clone());
        let again = Set::new(SetKey::V4Port, set.elements.iter().cloned());
        prop_assert_eq!(&again, &set);
        let hits = |es: &[&Element], a: u32, port: u16| es.iter().filter(|e| match e {
            Element::V4Port(n, p) => n.contains(&std::net::Ipv4Addr::from(0x0a00_0000 + a)) && p.contains(port),
            _ => false,
        }).count();
        let before: Vec<&Element> = elems.iter().collect();
        let after: Vec<&Element> = set.elements.iter().collect();
        for a in 0..128 {
            for port in 0..50 {
                prop_assert_eq!(hits(&before, a, port) > 0, hits(&after, a, port) > 0);
                prop_assert!(hits(&after, a, port) <= 1, "overlap at {} {}", a, port);
            }
        }
    }
}
