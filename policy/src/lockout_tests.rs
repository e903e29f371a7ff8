use super::*;
use crate::compile::compile;
use crate::facts::Facts;
use crate::model::{AllowEntry, HostPolicy, InterfaceSel, Mode, Replies};
use proptest::prelude::*;

fn allow(proto: Proto, a: u16, b: u16, from: &[&str]) -> AllowEntry {
    AllowEntry {
        proto,
        ports: PortRange::new(a, b).expect("range"),
        from: from.iter().map(|s| s.parse().expect("cidr")).collect(),
        lists: Vec::new(),
        label: format!("{a}/{proto}"),
    }
}

fn rs(allow: Vec<AllowEntry>, replies: Replies) -> Ruleset {
    let p = HostPolicy {
        allow,
        replies,
        ..HostPolicy::default()
    };
    compile(&p, &Facts::default(), 1).expect("compile")
}

fn flow(proto: Proto, src: &str, dport: u16, established: bool) -> Flow {
    Flow {
        proto,
        src: src.parse().expect("addr"),
        dport,
        iif: "eth0".into(),
        established,
    }
}

fn ifs() -> Vec<String> {
    vec!["eth0".into()]
}

#[test]
fn verdicts_follow_the_seed() {
    let r = rs(vec![allow(Proto::Tcp, 22, 22, &[])], Replies::Ports);
    assert_eq!(
        verdict(&r, &flow(Proto::Tcp, "10.0.0.1", 22, false)),
        Verdict::Accept
    );
    assert_eq!(
        verdict(&r, &flow(Proto::Tcp, "10.0.0.1", 25, false)),
        Verdict::Drop
    );
    assert_eq!(
        verdict(&r, &flow(Proto::Udp, "10.0.0.1", 22, false)),
        Verdict::Drop
    );
    assert_eq!(
        verdict(&r, &flow(Proto::Tcp, "10.0.0.1", 7443, false)),
        Verdict::Accept
    );
    // Loopback is not guarded.
    let lo = Flow {
        iif: "lo".into(),
        ..flow(Proto::Tcp, "10.0.0.1", 25, false)
    };
    assert_eq!(verdict(&r, &lo), Verdict::Accept);
    let st = rs(vec![], Replies::Stateful);
    assert_eq!(
        verdict(&st, &flow(Proto::Tcp, "10.0.0.1", 7443, false)),
        Verdict::Drop
    );
    assert_eq!(
        verdict(&st, &flow(Proto::Tcp, "10.0.0.1", 40000, true)),
        Verdict::Accept
    );
    // Audit mode never drops.
    let audit = compile(
        &HostPolicy {
            mode: Mode::Audit,
            ..HostPolicy::default()
        },
        &Facts::default(),
        1,
    )
    .expect("compile");
    assert_eq!(
        verdict(&audit, &flow(Proto::Tcp, "10.0.0.1", 22, false)),
        Verdict::Accept
    );
}

#[test]
fn keep_parses_both_spellings_and_services() {
    let k = parse_keep("tcp/22 from 10.0.0.0/8").expect("parse");
    assert_eq!(k.len(), 1);
    assert_eq!(k[0].ports, PortRange::single(22));
    assert_eq!(parse_keep("22/tcp").expect("parse").len(), 2);
    assert_eq!(
        parse_keep("ssh/tcp").expect("parse")[0].ports,
        PortRange::single(22)
    );
    for bad in ["", "22", "icmp/1", "tcp/22 to 10.0.0.0/8", "tcp/22 from x"] {
        assert!(parse_keep(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn keep_needs_every_source_of_the_network() {
    let keep = parse_keep("tcp/22 from 10.0.0.0/8").expect("parse");
    let open = rs(vec![allow(Proto::Tcp, 22, 22, &[])], Replies::Ports);
    assert!(check(&open, &keep, &ifs()).is_empty());
    let narrow = rs(
        vec![allow(Proto::Tcp, 22, 22, &["10.1.0.0/16"])],
        Replies::Ports,
    );
    let v = check(&narrow, &keep, &ifs());
    assert_eq!(v.len(), 1);
    assert!(
        !"10.1.0.0/16"
            .parse::<IpNet>()
            .expect("net")
            .contains(&v[0].denied.src)
    );
    let wide = rs(
        vec![allow(Proto::Tcp, 20, 30, &["10.0.0.0/7"])],
        Replies::Ports,
    );
    assert!(check(&wide, &keep, &ifs()).is_empty());
    let none = rs(vec![], Replies::Ports);
    assert_eq!(check(&none, &keep, &ifs())[0].denied.dport, 22);
    // Only eth1 is guarded: traffic on eth0 passes.
    let named = compile(
        &HostPolicy {
            interface: InterfaceSel::Named("eth1".into()),
            ..HostPolicy::default()
        },
        &Facts::default(),
        1,
    )
    .expect("compile");
    assert!(check(&named, &keep, &ifs()).is_empty());
    assert!(!check(&named, &keep, &["eth1".into()]).is_empty());
}

#[test]
fn controller_paths() {
    let ctl: IpAddr = "10.77.0.1".parse().expect("addr");
    let agent: IpAddr = "10.77.0.2".parse().expect("addr");
    for replies in [Replies::Ports, Replies::Stateful] {
        assert!(check(&rs(vec![], replies), &[agent_replies(ctl)], &ifs()).is_empty());
    }
    let stateful = rs(vec![], Replies::Stateful);
    let v = check(&stateful, &[controller_port(7443, agent)], &ifs());
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].to_string().contains("7443"), "{}", v[0]);
    let allowed = rs(
        vec![allow(Proto::Tcp, 7443, 7443, &["10.77.0.0/24"])],
        Replies::Stateful,
    );
    assert!(check(&allowed, &[controller_port(7443, agent)], &ifs()).is_empty());
}

proptest! {
    /// The boundary search agrees with brute force over a small port space.
    #[test]
    fn first_denied_matches_brute_force(
        ranges in prop::collection::vec((0u16..80, 0u16..20), 0..4),
        want in (0u16..80, 0u16..20),
        stateful in any::<bool>(),
    ) {
        let allows = ranges.iter().map(|&(a, l)| allow(Proto::Tcp, a, a.saturating_add(l), &[])).collect();
        let r = rs(allows, if stateful { Replies::Stateful } else { Replies::Ports });
        let req = Requirement {
            what: "t".into(), proto: Proto::Tcp,
            ports: PortRange::new(want.0, want.0 + want.1).expect("range"),
            from: "10.0.0.0/30".parse().expect("net"), established: false,
        };
        let brute = (want.0..=want.0 + want.1).any(|p| verdict(&r, &flow(Proto::Tcp, "10.0.0.1", p, false)) == Verdict::Drop);
        prop_assert_eq!(first_denied(&r, &req, "eth0").is_some(), brute);
    }
}

#[test]
fn restricted_high_ports_and_other_transports() {
    let r = rs(
        vec![
            allow(Proto::Tcp, 5432, 5432, &["10.77.200.5/32"]),
            allow(Proto::Sctp, 5000, 5000, &[]),
        ],
        Replies::Ports,
    );
    let v = |proto, src, port| verdict(&r, &flow(proto, src, port, false));
    assert_eq!(v(Proto::Tcp, "10.77.200.5", 5432), Verdict::Accept);
    assert_eq!(v(Proto::Tcp, "10.77.200.9", 5432), Verdict::Drop);
    assert_eq!(
        v(Proto::Tcp, "fd77::5", 5432),
        Verdict::Drop,
        "no v6 source"
    );
    assert_eq!(
        v(Proto::Udp, "10.77.200.9", 5432),
        Verdict::Accept,
        "udp replies"
    );
    assert_eq!(v(Proto::Tcp, "10.77.200.9", 5433), Verdict::Accept);
    assert_eq!(v(Proto::Sctp, "10.77.200.9", 5000), Verdict::Accept);
    assert_eq!(v(Proto::Dccp, "10.77.200.9", 22), Verdict::Drop);
    assert_eq!(v(Proto::Udplite, "10.77.200.9", 40000), Verdict::Accept);
    // A keep from a refused source names the packet it would lose.
    let keep = parse_keep("tcp/5432 from 10.77.200.0/24").unwrap();
    let found = check(&r, &keep, &ifs());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_ne!(found[0].denied.src.to_string(), "10.77.200.5");
    assert!(
        check(
            &r,
            &parse_keep("tcp/5432 from 10.77.200.5/32").unwrap(),
            &ifs()
        )
        .is_empty()
    );
    assert_eq!(parse_keep("5000/sctp").unwrap()[0].proto, Proto::Sctp);
    assert!(check(&r, &parse_keep("sctp/5000").unwrap(), &ifs()).is_empty());
}

fn listed(deny: bool, nets: impl IntoIterator<Item = ipnet::IpNet>) -> Ruleset {
    use std::sync::Arc;
    let list = crate::addrlist::AddrList::from_nets(nets);
    let mut p = HostPolicy {
        allow: vec![allow(Proto::Tcp, 22, 22, &[])],
        ..HostPolicy::default()
    };
    if deny {
        p.deny.push(crate::model::DenyEntry {
            proto: None,
            ports: None,
            from: vec![],
            lists: vec!["l".into()],
            label: "deny".into(),
        });
    } else {
        p.allow = vec![AllowEntry {
            lists: vec!["l".into()],
            ..allow(Proto::Tcp, 443, 443, &[])
        }];
        p.allow.push(allow(Proto::Tcp, 22, 22, &[]));
    }
    p.lists.insert("l".into(), Arc::new(list));
    compile(&p, &Facts::default(), 1).expect("compile")
}

#[test]
fn a_blocklist_covering_management_or_the_controller_is_a_lockout() {
    let nets = ["192.0.2.7/32", "198.51.100.0/24", "fd77::9/128"].map(|s| s.parse().unwrap());
    let r = listed(true, nets);
    // Blocked sources are dropped on every port, the open one included.
    assert_eq!(
        verdict(&r, &flow(Proto::Tcp, "192.0.2.7", 22, false)),
        Verdict::Drop
    );
    assert_eq!(
        verdict(&r, &flow(Proto::Tcp, "192.0.2.8", 22, false)),
        Verdict::Accept
    );
    assert_eq!(
        verdict(&r, &flow(Proto::Tcp, "198.51.100.200", 40000, true)),
        Verdict::Drop
    );
    assert_eq!(
        verdict(&r, &flow(Proto::Tcp, "fd77::9", 22, false)),
        Verdict::Drop
    );
    let keep = |k: &str| check(&r, &parse_keep(k).unwrap(), &ifs());
    let v = keep("tcp/22 from 192.0.2.0/24");
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].denied.src.to_string(), "192.0.2.7");
    assert!(keep("tcp/22 from 203.0.113.0/24").is_empty());
    assert_eq!(
        check(
            &r,
            &[agent_replies("198.51.100.1".parse().unwrap())],
            &ifs()
        )
        .len(),
        1
    );
    assert!(check(&r, &[agent_replies("203.0.113.1".parse().unwrap())], &ifs()).is_empty());
}

#[test]
fn a_million_entry_list_is_checked_in_one_pass() {
    // 1M addresses in 11.0.0.0/8 and up; management from anywhere on another port than
    // the list's (allow) and across it (deny): both answered without a point per entry.
    let nets = (0..1_000_000u32).map(|i| {
        ipnet::IpNet::V4(
            ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(0x0b00_0000 + i * 3), 32).unwrap(),
        )
    });
    let allowed = listed(false, nets.clone());
    assert!(check(&allowed, &parse_keep("tcp/22").unwrap(), &ifs()).is_empty());
    let blocked = listed(true, nets);
    let v = check(&blocked, &parse_keep("tcp/22").unwrap(), &ifs());
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].denied.src.to_string(), "11.0.0.0");
}
