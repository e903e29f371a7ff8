use super::*;
use crate::model::{AllowEntry, LogLimit, RateUnit};

fn allow(proto: Proto, a: u16, b: u16, from: &[&str]) -> AllowEntry {
    AllowEntry {
        proto,
        ports: PortRange::new(a, b).unwrap(),
        from: from.iter().map(|s| s.parse().unwrap()).collect(),
        lists: Vec::new(),
        label: format!("{a}/{proto}"),
    }
}

fn seed() -> HostPolicy {
    HostPolicy {
        allow: vec![
            allow(Proto::Tcp, 22, 22, &[]),
            allow(Proto::Tcp, 25, 25, &[]),
            allow(Proto::Udp, 53, 53, &[]),
            allow(Proto::Udp, 123, 123, &[]),
        ],
        ..HostPolicy::default()
    }
}

fn facts() -> Facts {
    Facts {
        hostname: "h1".into(),
        interfaces: vec![],
        default_route_interface: Some("eth0".into()),
    }
}

fn rules(rs: &Ruleset, chain: &str) -> Vec<String> {
    rs.chains[chain]
        .rules
        .iter()
        .map(|r| r.to_string())
        .collect()
}

#[test]
fn seed_layout() {
    let rs = compile(&seed(), &facts(), 42).unwrap();
    assert_eq!(
        rs.sets.keys().collect::<Vec<_>>(),
        ["allow_tcp", "allow_udp"]
    );
    assert_eq!(
        *rs.sets["allow_tcp"].elements,
        [22, 25].map(|p| Element::Port(PortRange::single(p))).into()
    );
    assert_eq!(
        rules(&rs, "guard"),
        [
            "frag frag-off != 0 counter accept",
            "tcp dport @allow_tcp counter accept",
            "udp dport @allow_udp counter accept",
            "tcp dport 1024-65535 counter accept",
            "udp dport 1024-65535 counter accept",
            "udplite dport 1024-65535 counter accept",
            "sctp dport 1024-65535 counter accept",
            "dccp dport 1024-65535 counter accept",
            "meta l4proto { tcp, udp, udplite, sctp, dccp } th dport 0-1023 limit rate 50/second burst 100 packets counter log prefix \"pc r42 deny \" group 7 drop",
            "meta l4proto { tcp, udp, udplite, sctp, dccp } th dport 0-1023 counter drop",
        ]
    );
    assert_eq!(
        rules(&rs, "input"),
        ["iifname != \"lo\" counter jump guard"]
    );
    let base = rs.chains["input"].base.as_ref().unwrap();
    assert_eq!(
        (base.hook.as_str(), base.priority, base.policy),
        ("input", -10, Verdict::Accept)
    );
}

#[test]
fn deterministic_and_empty_sets_kept() {
    let p = HostPolicy::default();
    let a = compile(&p, &facts(), 1).unwrap();
    assert_eq!(a, compile(&p, &facts(), 1).unwrap());
    assert_eq!(a.hash(), compile(&p, &facts(), 1).unwrap().hash());
    assert!(a.sets["allow_tcp"].elements.is_empty());
    assert_eq!(a.sets.len(), 2);
    // The revision is in the log prefix, which the hash masks: a table built by r1 and
    // kept by a list delta of r2 attests the same rules.
    let b = compile(&p, &facts(), 2).unwrap();
    assert_ne!(a, b);
    assert!(a.same_rules(&b));
    assert_eq!(a.hash(), b.hash());
    let audit = HostPolicy {
        mode: Mode::Audit,
        ..p.clone()
    };
    assert_ne!(a.hash(), compile(&audit, &facts(), 1).unwrap().hash());
}

#[test]
fn stateful_audit_denies_all_ports_but_accepts() {
    let p = HostPolicy {
        replies: Replies::Stateful,
        mode: Mode::Audit,
        log: LogLimit {
            rate: 5,
            per: RateUnit::Minute,
            burst: 10,
        },
        log_group: 3,
        ..seed()
    };
    let rs = compile(&p, &facts(), 7).unwrap();
    assert_eq!(
        rules(&rs, "guard")[2..],
        [
            "ct state established,related counter accept",
            "meta l4proto { tcp, udp, udplite, sctp, dccp } th dport 0-65535 limit rate 5/minute burst 10 packets counter log prefix \"pc r7 audit \" group 3 accept",
            "meta l4proto { tcp, udp, udplite, sctp, dccp } th dport 0-65535 counter accept",
        ]
    );
}

#[test]
fn from_entries_go_to_concat_sets() {
    let mut p = seed();
    p.allow.retain(|a| a.ports.start != 22);
    p.allow
        .push(allow(Proto::Tcp, 22, 22, &["10.77.0.5/24", "fd77::/64"]));
    p.allow.push(allow(Proto::Tcp, 23, 23, &["10.77.0.0/24"]));
    p.allow.push(allow(Proto::Udp, 161, 162, &["192.0.2.1/32"]));
    let rs = compile(&p, &facts(), 1).unwrap();
    assert_eq!(
        rs.sets.keys().collect::<Vec<_>>(),
        [
            "allow_tcp",
            "allow_tcp_v4",
            "allow_tcp_v6",
            "allow_udp",
            "allow_udp_v4"
        ]
    );
    let v4: Vec<String> = rs.sets["allow_tcp_v4"]
        .elements
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(v4, ["10.77.0.0/24 . 22-23"]);
    assert_eq!(
        rules(&rs, "guard")[3..6],
        [
            "ip saddr . tcp dport @allow_tcp_v4 counter accept",
            "ip6 saddr . tcp dport @allow_tcp_v6 counter accept",
            "ip saddr . udp dport @allow_udp_v4 counter accept",
        ]
    );
}

#[test]
fn interface_selection() {
    let mut p = seed();
    p.interface = InterfaceSel::Default;
    let rs = compile(&p, &facts(), 1).unwrap();
    assert_eq!(rules(&rs, "input"), ["iifname \"eth0\" counter jump guard"]);
    let no_route = Facts {
        default_route_interface: None,
        ..facts()
    };
    assert_eq!(
        compile(&p, &no_route, 1),
        Err(CompileError::NoDefaultRoute {
            hostname: "h1".into()
        })
    );
    p.interface = InterfaceSel::Named("eth2".into());
    let rs = compile(&p, &no_route, 1).unwrap();
    assert_eq!(rules(&rs, "input"), ["iifname \"eth2\" counter jump guard"]);
    for bad in ["", "a\"b", "way-too-long-name0", "a b"] {
        p.interface = InterfaceSel::Named(bad.into());
        assert!(matches!(
            compile(&p, &facts(), 1),
            Err(CompileError::InvalidInterface { .. })
        ));
    }
}

#[test]
fn log_limit_validated() {
    let mut p = seed();
    p.log.burst = 0;
    assert_eq!(compile(&p, &facts(), 1), Err(CompileError::ZeroLogBurst));
    p.log.rate = 0;
    assert!(matches!(
        compile(&p, &facts(), 1),
        Err(CompileError::ZeroLogRate { .. })
    ));
}

#[test]
fn log_prefix_round_trips() {
    assert_eq!(log_prefix(42, Mode::Enforce), "pc r42 deny ");
    assert_eq!(parse_log_prefix("pc r42 deny "), Some((42, Mode::Enforce)));
    assert_eq!(
        parse_log_prefix(&log_prefix(u64::MAX, Mode::Audit)),
        Some((u64::MAX, Mode::Audit))
    );
    assert_eq!(parse_log_prefix("pc rx deny "), None);
    assert_eq!(parse_log_prefix("fail2ban "), None);
}

#[test]
fn every_transport_is_whitelisted_and_denied() {
    let mut p = seed();
    p.allow.push(allow(Proto::Udplite, 137, 137, &[]));
    p.allow.push(allow(Proto::Sctp, 5000, 5000, &[]));
    p.allow.push(allow(Proto::Dccp, 80, 80, &["10.77.0.0/24"]));
    let rs = compile(&p, &facts(), 1).unwrap();
    assert_eq!(
        rs.sets.keys().collect::<Vec<_>>(),
        [
            "allow_dccp_v4",
            "allow_sctp",
            "allow_tcp",
            "allow_udp",
            "allow_udplite"
        ]
    );
    let guard = rules(&rs, "guard");
    assert_eq!(
        guard[1..6],
        [
            "tcp dport @allow_tcp counter accept",
            "udp dport @allow_udp counter accept",
            "udplite dport @allow_udplite counter accept",
            "sctp dport @allow_sctp counter accept",
            "ip saddr . dccp dport @allow_dccp_v4 counter accept",
        ]
    );
    // dccp/80 is a low port: restricted by the deny range, no restrict set needed.
    assert!(!rs.sets.contains_key("restrict_dccp"));
    assert!(
        guard[6..11]
            .iter()
            .all(|r| r.ends_with("dport 1024-65535 counter accept"))
    );
    assert!(
        guard[11]
            .starts_with("meta l4proto { tcp, udp, udplite, sctp, dccp } th dport 0-1023 limit")
    );
}

#[test]
fn restricted_high_ports_are_denied_before_the_replies_rule() {
    let mut p = seed();
    p.allow.push(allow(
        Proto::Tcp,
        5432,
        5432,
        &["10.77.200.5/32", "fd77::5/128"],
    ));
    p.allow
        .push(allow(Proto::Udp, 1000, 2000, &["10.77.0.0/16"]));
    let rs = compile(&p, &facts(), 9).unwrap();
    let guard = rules(&rs, "guard");
    assert_eq!(
        guard[3..10],
        [
            "ip saddr . tcp dport @allow_tcp_v4 counter accept",
            "ip6 saddr . tcp dport @allow_tcp_v6 counter accept",
            "ip saddr . udp dport @allow_udp_v4 counter accept",
            "tcp dport @restrict_tcp limit rate 50/second burst 100 packets counter log prefix \"pc r9 deny \" group 7 drop",
            "tcp dport @restrict_tcp counter drop",
            "udp dport @restrict_udp limit rate 50/second burst 100 packets counter log prefix \"pc r9 deny \" group 7 drop",
            "udp dport @restrict_udp counter drop",
        ]
    );
    assert_eq!(guard[10], "tcp dport 1024-65535 counter accept");
    // Only the part >= 1024 of a range: the low part is denied by the low-port rules.
    let udp: Vec<String> = rs.sets["restrict_udp"]
        .elements
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(udp, ["1024-2000"]);
    assert!(
        rs.chains["guard"]
            .rules
            .iter()
            .filter(|r| r.is_deny())
            .count()
            == 6
    );

    // Audit: the restricted denies log `audit` and accept, like the low-port ones.
    p.mode = Mode::Audit;
    let guard = rules(&compile(&p, &facts(), 9).unwrap(), "guard");
    assert!(
        guard[6].ends_with("log prefix \"pc r9 audit \" group 7 accept"),
        "{}",
        guard[6]
    );
    assert_eq!(guard[7], "tcp dport @restrict_tcp counter accept");

    // Stateful: every port is in the deny range already; no restrict sets.
    p.mode = Mode::Enforce;
    p.replies = Replies::Stateful;
    let rs = compile(&p, &facts(), 9).unwrap();
    assert!(rs.sets.keys().all(|k| k.starts_with("allow_")));
    assert_eq!(
        rules(&rs, "guard")[5],
        "ct state established,related counter accept"
    );
}

#[test]
fn unenforceable_restrictions_are_refused() {
    let mut p = seed();
    p.allow.push(allow(Proto::Tcp, 20, 30, &["10.0.0.0/8"]));
    assert!(matches!(
        compile(&p, &facts(), 1),
        Err(CompileError::WidenedRestriction { .. })
    ));
    // Another protocol on the same port is no overlap.
    let mut p = seed();
    p.allow.push(allow(Proto::Sctp, 22, 22, &["10.0.0.0/8"]));
    assert!(compile(&p, &facts(), 1).is_ok());
    // The ephemeral range under replies: ports, but not under stateful.
    p.allow
        .push(allow(Proto::Tcp, 40000, 40000, &["10.0.0.0/8"]));
    assert_eq!(
        compile(&p, &facts(), 1),
        Err(CompileError::RestrictedEphemeral {
            label: "40000/tcp".into()
        })
    );
    p.replies = Replies::Stateful;
    assert!(compile(&p, &facts(), 1).is_ok());
}
