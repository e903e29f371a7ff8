use super::*;

fn fixture(name: &str) -> &'static str {
    match name {
        "seed" => include_str!("../../tests/fixtures/readback/seed.json"),
        "counters" => include_str!("../../tests/fixtures/readback/counters.json"),
        "empty-table" => include_str!("../../tests/fixtures/readback/empty-table.json"),
        "foreign" => include_str!("../../tests/fixtures/readback/drift-foreign.json"),
        "from" => include_str!("../../tests/fixtures/readback/from.json"),
        // Real `nft -j list table` (1.0.6) of address-list sets and rules of every shape.
        "lists" => include_str!("../../tests/fixtures/readback/lists.json"),
        _ => unreachable!(),
    }
}

fn texts(rs: &Ruleset, chain: &str) -> Vec<String> {
    rs.chains[chain]
        .rules
        .iter()
        .map(|r| r.to_string())
        .collect()
}

#[test]
fn seed_parses_to_known_shapes() {
    let (rs, counters) = parse_readback(fixture("seed")).unwrap();
    assert!(rs.unknown.is_empty());
    assert_eq!(rs.sets.len(), 2);
    assert_eq!(rs.sets["allow_udp"].elements.len(), 2);
    assert!(
        !rs.chains
            .values()
            .flat_map(|c| &c.rules)
            .any(|r| matches!(r, Rule::Unknown { .. }))
    );
    assert_eq!(
        texts(&rs, "input"),
        ["iifname != \"lo\" counter jump guard"]
    );
    assert_eq!(counters.len(), 11);
    assert!(counters.iter().all(|c| c.packets == 0 && c.bytes == 0));
}

#[test]
fn counters_are_reported_by_position() {
    let (_, counters) = parse_readback(fixture("counters")).unwrap();
    let c = |chain: &str, index| {
        counters
            .iter()
            .find(|c| c.chain == chain && c.index == index)
            .unwrap()
    };
    assert_eq!((c("guard", 1).packets, c("guard", 1).bytes), (1, 60));
    // The RST answering the SYN came back to the client's high port.
    assert_eq!((c("guard", 3).packets, c("guard", 3).bytes), (1, 40));
    assert_eq!(c("guard", 8).packets, 2);
    assert!(
        c("guard", 8)
            .rule
            .starts_with("meta l4proto { tcp, udp, udplite, sctp, dccp } th dport 0-1023 limit")
    );
    assert_eq!(c("input", 0).rule, "iifname \"lo\" counter jump guard");
}

#[test]
fn empty_table_is_empty_ruleset() {
    let (rs, counters) = parse_readback(fixture("empty-table")).unwrap();
    assert_eq!(rs, Ruleset::default());
    assert!(counters.is_empty());
}

#[test]
fn concat_elements_in_all_spellings() {
    let (rs, _) = parse_readback(fixture("from")).unwrap();
    let v4: Vec<String> = rs.sets["allow_tcp_v4"]
        .elements
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(
        v4,
        [
            "10.0.0.0/8 . 8000-8100",
            "10.1.0.0/16 . 8101-8200",
            "10.77.0.0/24 . 22",
            "192.0.2.7/32 . 22"
        ]
    );
    let json = r#"{"nftables":[{"table":{"family":"inet","name":"portcullis","handle":1}},
      {"set":{"family":"inet","name":"s","table":"portcullis","type":["ipv4_addr","inet_service"],
        "handle":2,"flags":["interval"],"elem":[{"concat":[{"range":["10.0.0.1","10.0.0.5"]},443]}]}}]}"#;
    let (rs, _) = parse_readback(json).unwrap();
    let got: Vec<String> = rs.sets["s"]
        .elements
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(
        got,
        [
            "10.0.0.1/32 . 443",
            "10.0.0.2/31 . 443",
            "10.0.0.4/31 . 443"
        ]
    );
}

#[test]
fn foreign_objects_and_edits_are_kept() {
    let (rs, counters) = parse_readback(fixture("foreign")).unwrap();
    assert_eq!(
        rs.unknown.keys().collect::<Vec<_>>(),
        ["counter c1", "map m"]
    );
    assert!(!rs.unknown["counter c1"].contains("packets"));
    // A hand-made `type ipv4_addr` set has the shape of an address-list set now: it reads
    // as one (and differs from what compile wants by being there).
    assert_eq!(rs.sets["foo"].key, crate::ruleset::SetKey::V4Addr);
    assert_eq!(rs.sets["foo"].elements.len(), 1);
    let guard = texts(&rs, "guard");
    assert!(
        guard[2].starts_with("# unrecognized: [{\"match\""),
        "{}",
        guard[2]
    );
    assert!(guard[10].contains("{\"comment\":\"hi\"}"), "{}", guard[10]);
    assert!(guard[10].contains("{\"counter\":{}}"), "{}", guard[10]);
    // The counter-less edited rule has no counter entry; the commented one does.
    assert!(!counters.iter().any(|c| c.chain == "guard" && c.index == 2));
    assert!(counters.iter().any(|c| c.chain == "guard" && c.index == 10));
}

#[test]
fn dormant_table_and_odd_chains_are_unknown() {
    let json = r#"{"nftables":[{"table":{"family":"inet","name":"portcullis","handle":1,"flags":["dormant"]}},
      {"chain":{"family":"inet","table":"portcullis","name":"n","handle":2,"type":"nat","hook":"input","prio":0,"policy":"accept"}}]}"#;
    let (rs, _) = parse_readback(json).unwrap();
    assert_eq!(
        rs.unknown.keys().collect::<Vec<_>>(),
        ["chain n", "table portcullis"]
    );
    assert!(rs.chains.contains_key("n"));
}

#[test]
fn errors() {
    assert!(matches!(
        parse_readback("nope"),
        Err(ReadbackError::Json(_))
    ));
    assert!(matches!(parse_readback("{}"), Err(ReadbackError::Shape(_))));
    let other = r#"{"nftables":[{"table":{"family":"ip","name":"filter","handle":1}}]}"#;
    assert!(matches!(
        parse_readback(other),
        Err(ReadbackError::ForeignTable { .. })
    ));
    let orphan = r#"{"nftables":[{"rule":{"family":"inet","table":"portcullis","chain":"x","handle":1,"expr":[]}}]}"#;
    assert!(matches!(
        parse_readback(orphan),
        Err(ReadbackError::Shape(_))
    ));
}

#[test]
fn ruleset_listing_keeps_only_our_table() {
    let ours = fixture("seed");
    let (want, want_counters) = parse_readback(ours).unwrap();
    let root: serde_json::Value = serde_json::from_str(ours).unwrap();
    let mut items = vec![
        serde_json::json!({"metainfo": {"version": "1.0.6", "json_schema_version": 1}}),
        serde_json::json!({"table": {"family": "inet", "name": "x", "handle": 1}}),
        serde_json::json!({"chain": {"family": "inet", "table": "x", "name": "input", "handle": 1}}),
        serde_json::json!({"rule": {"family": "inet", "table": "x", "chain": "input", "handle": 2,
            "expr": [{"accept": null}]}}),
    ];
    items.extend(root["nftables"].as_array().unwrap().iter().cloned());
    items.push(serde_json::json!({"table": {"family": "ip", "name": "portcullis", "handle": 9}}));
    let listing = serde_json::json!({ "nftables": items }).to_string();
    let (rs, counters) = parse_ruleset_readback(&listing).unwrap().unwrap();
    assert_eq!((rs, counters), (want, want_counters));
    // Only other tables: ours is absent.
    let others = r#"{"nftables":[{"table":{"family":"inet","name":"x","handle":1}}]}"#;
    assert_eq!(parse_ruleset_readback(others).unwrap(), None);
    assert_eq!(parse_ruleset_readback(r#"{"nftables":[]}"#).unwrap(), None);
    // Not a listing at all is still an error.
    assert!(parse_ruleset_readback("{}").is_err());
}

/// The typed path answers exactly like the `Value` path, or leaves the entry to it.
#[test]
fn typed_and_value_paths_agree() {
    let set = |body: &str| {
        format!(
            r#"{{"nftables":[{{"metainfo":{{"version":"1.0.6"}}}},{{"table":{{"family":"inet","name":"portcullis","handle":1}}}},{{"set":{body}}}]}}"#
        )
    };
    let ports =
        r#""family":"inet","name":"p","table":"portcullis","type":"inet_service","handle":2"#;
    let v4 = r#""family":"inet","name":"c","table":"portcullis","type":["ipv4_addr","inet_service"],"handle":3"#;
    let v6 =
        r#""family":"inet","name":"c6","table":"portcullis","type":["ipv6_addr","inet_service"]"#;
    let a4 = r#""family":"inet","name":"a4","table":"portcullis","type":"ipv4_addr""#;
    let a6 = r#""family":"inet","name":"a6","table":"portcullis","type":"ipv6_addr""#;
    let mut docs: Vec<String> = [
        "seed",
        "counters",
        "empty-table",
        "foreign",
        "from",
        "lists",
    ]
    .iter()
    .map(|f| fixture(f).to_owned())
    .collect();
    for body in [
        format!(r#"{{{ports},"flags":["interval"],"elem":[22,{{"range":[80,90]}},65535]}}"#),
        format!(r#"{{{ports},"flags":["interval"]}}"#),
        format!(r#"{{{ports},"flags":["interval"],"elem":[]}}"#),
        format!(r#"{{{ports},"flags":["interval","timeout"],"elem":[22]}}"#),
        format!(r#"{{{ports},"flags":[],"elem":[22]}}"#),
        format!(r#"{{{ports},"flags":"interval","elem":[22]}}"#),
        format!(r#"{{{ports},"flags":["interval"],"elem":[70000]}}"#),
        format!(r#"{{{ports},"flags":["interval"],"elem":[22.0]}}"#),
        format!(r#"{{{ports},"flags":["interval"],"elem":[-1]}}"#),
        format!(r#"{{{ports},"flags":["interval"],"elem":[{{"range":[90,80]}}]}}"#),
        format!(r#"{{{ports},"flags":["interval"],"elem":[{{"range":[1,2,3]}}]}}"#),
        format!(r#"{{{ports},"flags":["interval"],"elem":[{{"elem":{{"val":22,"comment":"x"}}}}]}}"#),
        format!(r#"{{{ports},"flags":["interval"],"elem":22}}"#),
        format!(r#"{{{ports},"flags":["interval"],"elem":[22],"size":9}}"#),
        format!(r#"{{{ports},"flags":["interval"],"elem":[22],"elem":[23]}}"#),
        format!(r#"{{{ports},"flags":["interval"],"elem":[{{"concat":["10.0.0.1",22]}}]}}"#),
        r#"{"family":"inet","name":"p\u0041","table":"portcullis","type":"inet_service","flags":["interval"],"elem":[1]}"#.to_owned(),
        r#"{"family":"ip","name":"p","table":"portcullis","type":"inet_service","flags":["interval"]}"#.to_owned(),
        r#"{"name":"p","table":"portcullis","type":"inet_service","flags":["interval"]}"#.to_owned(),
        r#"{"family":"inet","name":"p","table":"portcullis","type":"ipv4_addr","flags":["interval"]}"#.to_owned(),
        format!(r#"{{{v4},"flags":["interval"],"elem":[{{"concat":["10.0.0.1",22]}},{{"concat":[{{"prefix":{{"addr":"10.1.0.0","len":16}}}},{{"range":[1,9]}}]}},{{"concat":[{{"range":["10.2.0.1","10.2.0.6"]}},443]}}]}}"#),
        format!(r#"{{{v4},"flags":["interval"],"elem":[{{"concat":[{{"prefix":{{"addr":"10.1.2.3","len":16}}}},1]}}]}}"#),
        format!(r#"{{{v4},"flags":["interval"],"elem":[{{"concat":[{{"prefix":{{"addr":"10.1.0.0","len":16,"x":1}}}},1]}}]}}"#),
        format!(r#"{{{v4},"flags":["interval"],"elem":[{{"concat":[{{"prefix":{{"addr":"10.1.0.0","len":33}}}},1]}}]}}"#),
        format!(r#"{{{v4},"flags":["interval"],"elem":[{{"concat":["fd77::1",22]}}]}}"#),
        format!(r#"{{{v4},"flags":["interval"],"elem":[{{"concat":[{{"range":["10.0.0.1","fd77::1"]}},22]}}]}}"#),
        format!(r#"{{{v4},"flags":["interval"],"elem":[{{"concat":["10.0.0.1",22,1]}}]}}"#),
        format!(r#"{{{v4},"flags":["interval"],"elem":[{{"concat":["10.0.0.1"]}}]}}"#),
        format!(r#"{{{v4},"flags":["interval"],"elem":[{{"concat":["10.0.0.1",{{"concat":["10.0.0.1",1]}}]}}]}}"#),
        format!(r#"{{{v4},"flags":["interval"],"elem":[{{"concat":["10.0.0.1",22],"x":1}}]}}"#),
        format!(r#"{{{v4},"flags":["interval"],"elem":[22]}}"#),
        format!(r#"{{{v4},"flags":["interval"],"elem":[{{"concat":["not-an-ip",22]}}]}}"#),
        format!(r#"{{{v6},"flags":["interval"],"elem":[{{"concat":[{{"prefix":{{"addr":"fd77::","len":64}}}},22]}},{{"concat":["10.0.0.1",22]}}]}}"#),
        format!(r#"{{{v6},"flags":["interval"],"elem":[{{"concat":[{{"range":["fd77::1","fd77::9"]}},{{"range":[5,6]}}]}}]}}"#),
        // Address-list sets: hash (no flags) and interval, every spelling, wrong ones.
        format!(r#"{{{a4},"elem":["10.0.0.1","10.0.0.2"]}}"#),
        format!(r#"{{{a4},"elem":[{{"prefix":{{"addr":"10.0.0.0","len":8}}}}]}}"#),
        format!(r#"{{{a4},"elem":["fd77::1"]}}"#),
        format!(r#"{{{a4},"flags":["interval"],"elem":["10.0.0.1",{{"prefix":{{"addr":"10.0.0.0","len":8}}}},{{"range":["11.0.0.1","11.0.0.6"]}}]}}"#),
        format!(r#"{{{a4},"flags":["interval"],"elem":[{{"range":["11.0.0.1",6]}}]}}"#),
        format!(r#"{{{a4},"flags":["interval"],"elem":[22]}}"#),
        format!(r#"{{{a4},"flags":["interval","timeout"],"elem":["10.0.0.1"]}}"#),
        format!(r#"{{{a6},"elem":["fd77::1"]}}"#),
        format!(r#"{{{a4},"size":65536,"elem":["10.0.0.1"]}}"#),
        format!(r#"{{{a6},"size":1024,"elem":["fd77::1"]}}"#),
        format!(r#"{{{a4},"size":0,"elem":["10.0.0.1"]}}"#),
        format!(r#"{{{a4},"size":"x","elem":["10.0.0.1"]}}"#),
        format!(r#"{{{a4},"flags":["interval"],"size":1024,"elem":["10.0.0.1"]}}"#),
        format!(r#"{{{a6},"elem":["10.0.0.1"]}}"#),
        format!(r#"{{{a6},"flags":["interval"],"elem":[{{"prefix":{{"addr":"fd77::","len":16}}}},{{"range":["fd78::","fd78::5"]}}]}}"#),
        format!(r#"{{{ports},"elem":[22]}}"#),
    ] {
        docs.push(set(&body));
    }
    docs.push(r#"{"nftables":[{"set":{"family":"inet","name":"p","table":"portcullis","type":"inet_service","flags":["interval"]},"x":{}}]}"#.to_owned());
    docs.push(r#"{"nftables":[{}]}"#.to_owned());
    docs.push(r#"{"nftables":{}}"#.to_owned());
    docs.push(r#"{"nftables":[{"set":[]}]}"#.to_owned());
    docs.push(r#"{"nftables":[]} x"#.to_owned());
    for doc in &docs {
        for foreign in [Foreign::Error, Foreign::Skip] {
            let typed = parse(doc, foreign);
            let values = parse_values(doc, foreign);
            match (&typed, &values) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{doc}"),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{doc}"),
                _ => panic!("{doc}: typed {typed:?} vs value {values:?}"),
            }
        }
    }
    // The typed path did take our shapes: every set of the kernel's own listings.
    for f in ["seed", "from", "lists"] {
        let items = typed::split(fixture(f)).unwrap();
        let sets: Vec<_> = items.iter().filter(|(k, _)| k == "set").collect();
        assert!(!sets.is_empty());
        for (_, raw) in sets {
            assert!(typed::set(raw.get()).is_some(), "{f}: {}", raw.get());
        }
    }
    let taken = set(&format!(
        r#"{{{v4},"flags":["interval"],"elem":[{{"concat":["10.0.0.1",22]}}]}}"#
    ));
    let items = typed::split(&taken).unwrap();
    assert!(typed::set(items[2].1.get()).is_some());
    assert!(typed::set(r#"{"family":"inet"}"#).is_none());
}

#[test]
fn address_list_sets_and_rules_as_nft_lists_them() {
    use crate::model::{LogLimit, PortRange, Proto, RateUnit};
    use crate::ruleset::{Element, L3, LogSpec, SetKey};
    let (rs, counters) = parse_readback(fixture("lists")).unwrap();
    assert!(rs.unknown.is_empty(), "{:?}", rs.unknown);
    let set = |n: &str| &rs.sets[&format!("deny_aaaaaaaaaa_{n}")];
    let texts =
        |n: &str| -> Vec<String> { set(n).elements.iter().map(ToString::to_string).collect() };
    assert_eq!(set("v4a").key, SetKey::V4Addr);
    assert_eq!(texts("v4a"), ["1.2.3.4", "10.0.0.1", "192.0.2.7"]);
    assert_eq!(set("v4n").key, SetKey::V4Net);
    assert_eq!(
        texts("v4n"),
        [
            "0.0.0.0/1",
            "198.51.100.0/24",
            "198.51.101.0/24",
            "255.255.255.0/24"
        ],
        "touching prefixes stay apart"
    );
    assert_eq!(set("v6a").key, SetKey::V6Addr);
    assert_eq!(set("v6n").key, SetKey::V6Net);
    // A range that is not a prefix (written by hand) is its covering prefixes.
    assert_eq!(
        texts("v6n"),
        [
            "2001:db8:1::/48",
            "2001:db8:2::/48",
            "2001:db8:4::/126",
            "2001:db8:4::4/127",
            "ffff::/16"
        ]
    );
    assert!(matches!(set("v4n").elements.first(), Some(Element::V4(_))));
    let rules = &rs.chains["guard"].rules;
    let log = LogSpec {
        limit: LogLimit {
            rate: 50,
            per: RateUnit::Second,
            burst: 100,
        },
        group: 7,
        prefix: "pc r1 deny ".into(),
    };
    let v4a = "deny_aaaaaaaaaa_v4a".to_string();
    let v6n = "deny_aaaaaaaaaa_v6n".to_string();
    assert_eq!(
        rules,
        &[
            Rule::SourceSet {
                l3: L3::Ip,
                set: v4a.clone(),
                proto: None,
                ports: None,
                log: Some(log),
                verdict: Verdict::Drop
            },
            Rule::SourceSet {
                l3: L3::Ip,
                set: v4a,
                proto: None,
                ports: None,
                log: None,
                verdict: Verdict::Drop
            },
            Rule::SourceSet {
                l3: L3::Ip6,
                set: v6n.clone(),
                proto: Some(Proto::Tcp),
                ports: PortRange::new(80, 90),
                log: None,
                verdict: Verdict::Drop
            },
            Rule::SourceSet {
                l3: L3::Ip6,
                set: v6n,
                proto: Some(Proto::Tcp),
                ports: Some(PortRange::single(22)),
                log: None,
                verdict: Verdict::Drop
            },
            Rule::SourceSet {
                l3: L3::Ip,
                set: "deny_aaaaaaaaaa_v4n".into(),
                proto: Some(Proto::Udp),
                ports: None,
                log: None,
                verdict: Verdict::Accept
            },
        ]
    );
    assert_eq!(counters.len(), 5);
    // Each rule prints back as the nft text it was read from.
    assert_eq!(
        rules[0].to_string(),
        "ip saddr @deny_aaaaaaaaaa_v4a limit rate 50/second burst 100 packets counter log prefix \"pc r1 deny \" group 7 drop"
    );
    assert_eq!(
        rules[4].to_string(),
        "ip saddr @deny_aaaaaaaaaa_v4n meta l4proto udp counter accept"
    );
}

#[test]
fn address_list_rules_of_other_shapes_are_unknown() {
    let doc = |expr: &str| {
        format!(
            r#"{{"nftables":[{{"table":{{"family":"inet","name":"portcullis"}}}},{{"chain":{{"family":"inet","table":"portcullis","name":"g"}}}},{{"rule":{{"family":"inet","table":"portcullis","chain":"g","expr":{expr}}}}}]}}"#
        )
    };
    let saddr = r#"{"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"saddr"}},"right":"@s"}}"#;
    let c = r#"{"counter":{"packets":0,"bytes":0}}"#;
    for expr in [
        format!(r#"[{saddr},{{"drop":null}}]"#),
        format!(r#"[{},{c},{{"drop":null}}]"#, saddr.replace("==", "!=")),
        format!(
            r#"[{},{c},{{"drop":null}}]"#,
            saddr.replace("saddr", "daddr")
        ),
        format!(
            r#"[{saddr},{{"match":{{"op":"==","left":{{"meta":{{"key":"l4proto"}}}},"right":"icmp"}}}},{c},{{"drop":null}}]"#
        ),
        format!(
            r#"[{saddr},{{"match":{{"op":"==","left":{{"payload":{{"protocol":"tcp","field":"sport"}}}},"right":22}}}},{c},{{"drop":null}}]"#
        ),
        format!(r#"[{saddr},{c},{{"log":{{"prefix":"x","group":1}}}},{{"drop":null}}]"#),
        format!(r#"[{saddr},{c},{{"jump":{{"target":"x"}}}}]"#),
    ] {
        let (rs, _) = parse_readback(&doc(&expr)).unwrap();
        assert!(
            matches!(rs.chains["g"].rules[0], Rule::Unknown { .. }),
            "{expr}"
        );
    }
    let (rs, _) = parse_readback(&doc(&format!(r#"[{saddr},{c},{{"drop":null}}]"#))).unwrap();
    assert_eq!(
        rs.chains["g"].rules[0].to_string(),
        "ip saddr @s counter drop"
    );
}

/// A staged hash set's `size` is not part of the ruleset; on any other set it is
/// something we never write.
#[test]
fn a_hash_set_size_reads_as_no_part_of_the_ruleset() {
    let doc = |body: &str| {
        format!(
            r#"{{"nftables":[{{"table":{{"family":"inet","name":"portcullis","handle":1}}}},{{"set":{{"family":"inet","name":"a4","table":"portcullis","type":"ipv4_addr"{body},"elem":["10.0.0.1"]}}}}]}}"#
        )
    };
    let plain = parse_readback(&doc("")).unwrap().0;
    assert!(plain.unknown.is_empty());
    assert_eq!(parse_readback(&doc(r#","size":65536"#)).unwrap().0, plain);
    let interval = parse_readback(&doc(r#","flags":["interval"],"size":65536"#))
        .unwrap()
        .0;
    assert!(interval.sets.is_empty());
    assert_eq!(interval.unknown.len(), 1, "{interval:?}");
}
