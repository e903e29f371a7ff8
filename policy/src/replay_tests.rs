use super::*;
use crate::compile::compile;
use crate::facts::Facts;
use crate::model::{AllowEntry, HostPolicy, Mode, Replies};

fn allow(proto: Proto, a: u16, b: u16, from: &[&str]) -> AllowEntry {
    AllowEntry {
        proto,
        ports: PortRange::new(a, b).unwrap(),
        from: from.iter().map(|s| s.parse().unwrap()).collect(),
        lists: Vec::new(),
        label: format!("{a}/{proto}"),
    }
}

fn rs(allow: Vec<AllowEntry>, mode: Mode) -> Ruleset {
    let p = HostPolicy {
        allow,
        mode,
        replies: Replies::Ports,
        ..HostPolicy::default()
    };
    compile(&p, &Facts::default(), 1).unwrap()
}

fn ifs() -> Vec<String> {
    vec!["eth0".into()]
}

/// The counter of the rule matching `@set` in the guard chain.
fn hits_of(r: &Ruleset, set: &str, packets: u64) -> RuleHits {
    let guard = &r.chains["guard"];
    let index = guard
        .rules
        .iter()
        .position(|x| matches!(x, Rule::SetMatch { set: s, .. } if s == set))
        .unwrap();
    RuleHits {
        chain: "guard".into(),
        index,
        packets,
        last_ms: 7,
    }
}

#[test]
fn a_removed_port_with_accept_hits_is_newly_denied() {
    let cur = rs(
        vec![
            allow(Proto::Tcp, 25, 25, &[]),
            allow(Proto::Tcp, 80, 80, &[]),
        ],
        Mode::Enforce,
    );
    let new = rs(vec![allow(Proto::Tcp, 80, 80, &[])], Mode::Enforce);
    let set = crate::compile::set_name(Proto::Tcp, None);
    let f = replay(&cur, &new, &[], &[hits_of(&cur, &set, 12)], &ifs());
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].proto, Proto::Tcp);
    assert_eq!(f[0].ports, vec![PortRange::single(25)]);
    assert_eq!(f[0].packets, 12);
    assert_eq!(f[0].sources, vec!["any".to_string()]);
    assert!(
        matches!(&f[0].evidence, Evidence::Counter(t) if t.contains("@")),
        "{f:?}"
    );
    assert_eq!(f[0].example.dport, 25);
    // Same policy: nothing. No packets on the rule: nothing.
    assert!(replay(&cur, &cur, &[], &[hits_of(&cur, &set, 12)], &ifs()).is_empty());
    assert!(replay(&cur, &new, &[], &[hits_of(&cur, &set, 0)], &ifs()).is_empty());
}

#[test]
fn narrowing_sources_is_newly_denied_for_the_rest() {
    let cur = rs(vec![allow(Proto::Tcp, 22, 22, &[])], Mode::Enforce);
    let new = rs(
        vec![allow(Proto::Tcp, 22, 22, &["10.0.0.0/8"])],
        Mode::Enforce,
    );
    let set = crate::compile::set_name(Proto::Tcp, None);
    let f = replay(&cur, &new, &[], &[hits_of(&cur, &set, 3)], &ifs());
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].ports, vec![PortRange::single(22)]);
    assert!(!f[0].example.src.to_string().starts_with("10."), "{f:?}");
}

#[test]
fn audit_logged_packets_that_the_new_policy_drops() {
    // Audit: low ports are logged but accepted. The new policy enforces and allows 25.
    let cur = rs(vec![], Mode::Audit);
    let new = rs(vec![allow(Proto::Tcp, 25, 25, &[])], Mode::Enforce);
    let log = |src: &str, dport: u16, packets: u64| Logged {
        proto: Proto::Tcp,
        src: src.parse().unwrap(),
        dport,
        iif: "eth0".into(),
        packets,
        last_ms: 100,
    };
    let logged = vec![
        log("10.77.0.9", 111, 4),
        log("10.77.0.8", 111, 6),
        log("10.77.0.9", 25, 50),
    ];
    let f = replay(&cur, &new, &logged, &[], &ifs());
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].ports, vec![PortRange::single(111)]);
    assert_eq!(f[0].packets, 10);
    assert_eq!(f[0].sources, vec!["10.77.0.8", "10.77.0.9"]);
    assert_eq!(f[0].evidence, Evidence::Logged);
    // Denied now and denied after: not new.
    let enforced = rs(vec![], Mode::Enforce);
    assert!(replay(&enforced, &new, &logged, &[], &ifs()).is_empty());
}

#[test]
fn reply_range_narrowed_by_a_stateful_policy_is_not_flagged_on_ephemeral_ports() {
    let cur = rs(vec![], Mode::Enforce);
    // The replies rule (tcp 1024-65535) saw packets; the new policy adds a port only.
    let new = rs(vec![allow(Proto::Tcp, 25, 25, &[])], Mode::Enforce);
    let guard = &cur.chains["guard"];
    let index = guard
        .rules
        .iter()
        .position(|x| {
            matches!(
                x,
                Rule::Ports {
                    proto: Proto::Tcp,
                    ..
                }
            )
        })
        .unwrap();
    let h = RuleHits {
        chain: "guard".into(),
        index,
        packets: 1000,
        last_ms: 1,
    };
    assert!(replay(&cur, &new, &[], std::slice::from_ref(&h), &ifs()).is_empty());
    // A stateful policy drops new connections to 1024-65535: flagged, whole range.
    let stateful = compile(
        &HostPolicy {
            replies: Replies::Stateful,
            ..HostPolicy::default()
        },
        &Facts::default(),
        1,
    )
    .unwrap();
    let f = replay(&cur, &stateful, &[], &[h], &ifs());
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].ports, vec![PortRange::new(1024, 65535).unwrap()]);
}

#[test]
fn merge_joins_adjacent_ranges() {
    let r = |a, b| PortRange::new(a, b).unwrap();
    assert_eq!(
        merge_ports(vec![r(5, 5), r(1, 3), r(4, 4), r(7, 9), r(8, 10)]),
        vec![r(1, 5), r(7, 10)]
    );
}

#[test]
fn restricting_a_high_port_reports_the_replies_counter() {
    let cur = rs(vec![allow(Proto::Tcp, 25, 25, &[])], Mode::Enforce);
    let new = rs(
        vec![
            allow(Proto::Tcp, 25, 25, &[]),
            allow(Proto::Tcp, 5432, 5432, &["10.0.0.0/8"]),
        ],
        Mode::Enforce,
    );
    let guard = &cur.chains["guard"];
    let index = guard
        .rules
        .iter()
        .position(|x| {
            matches!(
                x,
                Rule::Ports {
                    proto: Proto::Tcp,
                    ..
                }
            )
        })
        .unwrap();
    let hits = RuleHits {
        chain: "guard".into(),
        index,
        packets: 9,
        last_ms: 7,
    };
    let f = replay(&cur, &new, &[], &[hits], &ifs());
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].ports, vec![PortRange::single(5432)]);
    assert!(!f[0].sources.iter().any(|s| s == "10.0.0.0/8"), "{f:?}");
    // In audit mode the restricted deny rules accept (and log `audit`).
    let audit = rs(
        vec![allow(Proto::Tcp, 5432, 5432, &["10.0.0.0/8"])],
        Mode::Audit,
    );
    let flow = Flow {
        proto: Proto::Tcp,
        src: "192.0.2.1".parse().unwrap(),
        dport: 5432,
        iif: "eth0".into(),
        established: false,
    };
    let (v, by) = decide(&audit, &flow);
    assert_eq!(v, Verdict::Accept);
    let Decider::Rule(chain, i) = by else {
        panic!("{by:?}")
    };
    assert!(matches!(
        audit.chains[&chain].rules[i],
        Rule::SetLogLimited { .. }
    ));
}
