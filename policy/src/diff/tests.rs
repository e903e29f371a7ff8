use super::*;
use crate::model::{PortRange, Proto};
use crate::readback::parse_readback;
use crate::ruleset::{Element, SetKey, Verdict};

fn seed_readback() -> Ruleset {
    parse_readback(include_str!("../../tests/fixtures/readback/seed.json"))
        .unwrap()
        .0
}

fn lines(d: &RulesetDiff) -> Vec<String> {
    d.to_string().lines().map(str::to_string).collect()
}

fn ports_rule(p: u16) -> Rule {
    Rule::Ports {
        proto: Proto::Tcp,
        ports: PortRange::single(p),
        verdict: Verdict::Accept,
    }
}

#[test]
fn identical_is_empty_and_unchanged() {
    let r = seed_readback();
    assert!(diff(&r, &r).is_empty());
    assert_eq!(plan(&r, Some(&r)), Plan::Unchanged);
    assert!(matches!(plan(&r, None), Plan::Create(_)));
}

#[test]
fn one_inserted_rule_is_one_change() {
    let desired = seed_readback();
    let mut actual = desired.clone();
    actual
        .chains
        .get_mut("guard")
        .unwrap()
        .rules
        .insert(2, ports_rule(8080));
    let d = diff(&desired, &actual);
    assert_eq!(
        lines(&d),
        ["- chain guard rule 3: tcp dport 8080 counter accept"]
    );
    let d = diff(&actual, &desired);
    assert_eq!(
        lines(&d),
        ["+ chain guard rule 3: tcp dport 8080 counter accept"]
    );
}

#[test]
fn replaced_rule_is_a_change() {
    let desired = seed_readback();
    let mut actual = desired.clone();
    actual.chains.get_mut("guard").unwrap().rules[3] = ports_rule(1);
    assert_eq!(
        lines(&diff(&desired, &actual)),
        [
            "~ chain guard rule 4: tcp dport 1 counter accept",
            "      -> tcp dport 1024-65535 counter accept"
        ]
    );
}

#[test]
fn sets_and_chains() {
    let desired = seed_readback();
    let mut actual = desired.clone();
    actual.sets.remove("allow_udp");
    actual.sets.insert(
        "allow_tcp_v4".into(),
        Set::new(
            SetKey::V4Port,
            [Element::V4Port(
                "10.0.0.0/8".parse().unwrap(),
                PortRange::single(22),
            )],
        ),
    );
    actual.sets.get_mut("allow_tcp").unwrap().key = SetKey::V6Port;
    actual.chains.remove("input");
    actual.chains.get_mut("guard").unwrap().base = desired.chains["input"].base.clone();
    actual.unknown.insert("map m".into(), "{}".into());
    let got = lines(&diff(&desired, &actual));
    assert_eq!(
        got,
        [
            "~ set allow_tcp type ipv6_addr . inet_service -> inet_service",
            "- set allow_tcp_v4 type ipv4_addr . inet_service",
            "- set allow_tcp_v4 element 10.0.0.0/8 . 22",
            "+ set allow_udp type inet_service",
            "+ set allow_udp element 53",
            "+ set allow_udp element 123",
            "~ chain guard base type filter hook input priority filter - 10; policy accept; -> regular",
            "+ chain input: type filter hook input priority filter - 10; policy accept;",
            "+ chain input rule 1: iifname != \"lo\" counter jump guard",
            "- unrecognized map m: {}",
        ]
    );
}

#[test]
fn plan_display() {
    let r = seed_readback();
    let created = plan(&r, None).to_string();
    assert!(
        created
            .starts_with("create table inet portcullis (2 sets, 4 elements, 2 chains, 11 rules)\n")
    );
    assert!(created.contains("+ set allow_tcp element 22\n"));
    let mut actual = r.clone();
    actual
        .chains
        .get_mut("input")
        .unwrap()
        .base
        .as_mut()
        .unwrap()
        .policy = Verdict::Drop;
    let p = plan(&r, Some(&actual));
    assert_eq!(
        p.to_string(),
        "replace table inet portcullis (1 changes)\n~ chain input policy drop -> accept\n"
    );
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["plan"], "replace");
    assert_eq!(json["diff"]["changes"][0]["change"], "chain_changed");
}

#[test]
fn large_chains_fall_back_without_blowing_up() {
    let a: Vec<Rule> = (0..2000).map(ports_rule).collect();
    let d: Vec<Rule> = (0..2000).rev().map(ports_rule).collect();
    let mut out = Vec::new();
    diff_rules(&mut out, "guard", &d, &a);
    assert!(out.iter().all(|c| matches!(c, Change::RuleChanged { .. })));
}
