//! `NftDataplane`'s fast readbacks (all over netlink; terse listing + set elements over
//! netlink) against the general one (`nft -j list table` + `parse_readback`) on the real
//! kernel: equal for every table we compile, and for hand-edited tables either equal or
//! left to the general readback (never a different answer).
//!
//! Fails without root unless `PORTCULLIS_SKIP_NETNS=1`.

#![allow(clippy::unwrap_used)]

use portcullis_agent::{Dataplane, KernelTable, NftDataplane};
use portcullis_policy::{HostPolicy, compile, parse_readback};
use portcullis_testkit::{NetNs, require_root_netns};
use std::process::{Command, Stdio};

/// What `nft -j list table` + `parse_readback` say.
fn general(nft: &NftDataplane) -> Option<KernelTable> {
    nft.read_back().unwrap().map(|json| {
        let (ruleset, counters) = parse_readback(&json).unwrap();
        KernelTable { ruleset, counters }
    })
}

fn nft_script(script: &str) {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "nft -f: {script}");
}

fn policy(yaml: &str) -> HostPolicy {
    let src = portcullis_policy::Source::new("p.yml", yaml);
    portcullis_policy::site::load_host_policy(&src).expect("policy")
}

const POLICIES: [&str; 11] = [
    "allow:\n  - smtp/tcp\n  - domain/udp\n  - http/tcp\n",
    "allow:\n  - { port: 1-3, proto: tcp }\n  - { port: 5, proto: tcp }\n  - { port: 60000-65535, proto: tcp }\n  - { port: 65535, proto: udp }\n  - { port: 7, proto: udp }\n",
    "replies: stateful\nmode: audit\ninterface: eth9\nallow:\n  - ntp/udp\n  - { port: 22, proto: tcp, from: [10.77.0.0/24, 10.77.1.5/32, \"fd77::/64\"] }\n  - { port: 53, proto: udp, from: [\"fd77:1::7/128\"] }\n",
    "allow:\n  - { port: 8000-8100, proto: tcp, from: [10.0.0.0/8, 0.0.0.0/0] }\n  - { port: 1-30000, proto: udp, from: [\"::/0\"] }\n  - { port: 443, proto: tcp, from: [192.0.2.0/25, 192.0.2.128/26, \"2001:db8::/33\"] }\n",
    "allow: []\n",
    "interface: eth0\nmode: audit\nlog: { rate: 10/minute, burst: 20, group: 9 }\nallow:\n  - { port: 22, proto: tcp, from: [192.0.2.1/32] }\n",
    "interface: \"veth*\"\nlog: { rate: 3/hour, burst: 1, group: 0 }\nallow: [http/tcp]\n",
    "interface: wan0\nreplies: stateful\nlog: { rate: 1/day, burst: 1000, group: 65535 }\nallow: [domain/udp]\n",
    "interface: all\nlog: { rate: 5/second, burst: 5 }\nallow: [ssh/tcp]\n",
    "allow:\n  - 137/udplite\n  - { port: 5000, proto: sctp }\n  - { port: 6000-6001, proto: dccp }\n  - { port: 3868, proto: sctp, from: [10.77.0.0/24, \"fd77::/64\"] }\n  - { port: 9000, proto: udplite, from: [\"fd77::5/128\"] }\n  - { port: 5432, proto: tcp, from: [10.77.200.5/32] }\n",
    "mode: audit\nallow:\n  - { port: 1000-2000, proto: udp, from: [10.0.0.0/8] }\n  - { port: 4000, proto: dccp, from: [\"fd77::/16\"] }\n",
];

#[test]
fn fast_readbacks_equal_the_general_one_for_compiled_tables() {
    if !require_root_netns() {
        return;
    }
    let ns = NetNs::new().expect("ns");
    ns.enter(|| {
        let nft = NftDataplane::default();
        assert_eq!(nft.read_table_split(), Ok(None), "no table yet");
        assert_eq!(nft.read_table_netlink(), Ok(None), "no table yet");
        assert_eq!(nft.read_table().unwrap(), None);
        // Another inet table (skipped) next to ours.
        nft_script(
            "table inet other {\n\tset s { type inet_service; flags interval; elements = { 1-9 } }\n\tchain c { type filter hook input priority 0; policy accept; tcp dport @s accept; }\n}\n",
        );
        for (i, yaml) in POLICIES.iter().enumerate() {
            let compiled = compile(&policy(yaml), &Default::default(), 3).expect("compile");
            nft.replace(&compiled).expect("apply");
            let want = general(&nft);
            let split = nft.read_table_split();
            let netlink = nft.read_table_netlink();
            assert_eq!(nft.read_table().unwrap(), want, "policy {i}");
            assert_eq!(want.as_ref().map(|t| &t.ruleset), Some(&compiled), "policy {i}");
            assert_eq!(split.as_ref().ok(), Some(&want), "policy {i}: {split:?}");
            assert_eq!(netlink.as_ref().ok(), Some(&want), "policy {i}: {netlink:?}");
        }
        nft_script("delete table inet other\n");
    })
    .expect("enter");
}

#[test]
fn hand_edits_read_the_same_either_way() {
    if !require_root_netns() {
        return;
    }
    let ns = NetNs::new().expect("ns");
    let base = compile(&policy(POLICIES[2]), &Default::default(), 4).expect("compile");
    // (edit, whether the split readback must still take it: elements it decodes itself)
    let edits: [(&str, bool); 19] = [
        // An anonymous set, printed inline by nft (not a set match of ours).
        (
            "add rule inet portcullis guard tcp dport { 22, 80 } counter accept",
            false,
        ),
        // Rules of our shapes added by hand: every path reads them the same.
        (
            "add rule inet portcullis guard tcp dport 2323 counter accept",
            true,
        ),
        (
            "insert rule inet portcullis guard ct state new counter drop",
            true,
        ),
        (
            "add rule inet portcullis input iifname \"eth*\" counter jump guard",
            true,
        ),
        (
            "add rule inet portcullis guard meta l4proto { tcp, udp, udplite, sctp, dccp } th dport 22 counter accept",
            true,
        ),
        // The deny rules' shape of old (tcp and udp only) is not ours any more.
        (
            "add rule inet portcullis guard meta l4proto { tcp, udp } th dport 22 counter accept",
            false,
        ),
        (
            "add rule inet portcullis guard meta l4proto { tcp, udp, udplite, sctp, dccp, icmp } th dport 22 counter accept",
            false,
        ),
        (
            "add rule inet portcullis guard ip6 saddr . udp dport @allow_tcp_v6 counter drop",
            false,
        ),
        ("add element inet portcullis allow_udp { 124 }", true),
        ("add element inet portcullis allow_udp { 0, 2 }", true),
        (
            "add element inet portcullis allow_udp { 1000-2000, 65535 }",
            true,
        ),
        (
            "add element inet portcullis allow_tcp_v4 { 10.1.0.1-10.1.0.5 . 443, 10.9.0.0/16 . 1-2 }",
            true,
        ),
        (
            "delete element inet portcullis allow_tcp_v4 { 10.77.1.5 . 22 }",
            true,
        ),
        (
            "add element inet portcullis allow_udp { 4242 comment \"hand\" }",
            false,
        ),
        (
            "add rule inet portcullis guard tcp dport 2323 accept",
            false,
        ),
        (
            "add set inet portcullis t { type inet_service; flags interval,timeout; }",
            false,
        ),
        (
            "add map inet portcullis m { type inet_service : verdict; }",
            false,
        ),
        ("add chain inet portcullis x", true),
        // The IPv4 twin of our fragment rule (compile writes only the IPv6 one).
        (
            "insert rule inet portcullis guard ip frag-off & 8191 != 0 counter accept",
            true,
        ),
    ];
    ns.enter(|| {
        let nft = NftDataplane::default();
        for (edit, decoded) in edits {
            nft.replace(&base).expect("apply");
            nft_script(&format!("{edit}\n"));
            let want = general(&nft).expect("table");
            assert_ne!(want.ruleset, base, "{edit}: the edit shows");
            for (path, got) in [
                ("split", nft.read_table_split()),
                ("netlink", nft.read_table_netlink()),
            ] {
                match &got {
                    Ok(got) => assert_eq!(got.as_ref(), Some(&want), "{path}: {edit}"),
                    Err(why) => assert!(!decoded, "{path}: {edit}: fell back: {why}"),
                }
            }
            assert_eq!(nft.read_table().unwrap(), Some(want), "{edit}");
        }
    })
    .expect("enter");
}

/// A list file mixing families, single addresses and prefixes: touching prefixes, a wide
/// one starting at 0.0.0.0, one ending at 255.255.255.255 (and their IPv6 twins).
const LIST: &str = "192.0.2.7\n10.0.0.1\n198.51.100.0/24\n198.51.101.0/24\n198.51.102.0/23\n0.0.0.0/2\n255.255.255.0/24\n2001:db8::1\n2001:db8:1::/48\n2001:db8:2::/48\n::/3\nffff:ff00::/24\n";

const LIST_POLICIES: [&str; 3] = [
    "allow:\n  - ssh/tcp\n  - { port: 5432, proto: tcp, from: [10.77.250.0/24, { file: admins.txt }] }\ndeny:\n  - { from: { file: blocked.txt } }\n  - { from: [203.0.113.0/24, 203.0.113.9], port: 80-90, proto: tcp }\n  - { from: [\"2001:db8:9::/48\"], proto: udp }\n  - { from: [203.0.114.1], port: 53, proto: udp }\n",
    "mode: audit\nlog: { rate: 10/minute, burst: 20, group: 9 }\nallow:\n  - { port: 1000-2000, proto: udp, from: { file: blocked.txt } }\ndeny:\n  - { from: [{ file: admins.txt }, 100.64.0.0/10] }\n",
    "allow: []\ndeny:\n  - { from: { file: blocked.txt }, proto: sctp }\n",
];

#[test]
fn fast_readbacks_equal_the_general_one_for_address_lists() {
    if !require_root_netns() {
        return;
    }
    let srcs = [
        portcullis_policy::Source::new("blocked.txt", LIST),
        portcullis_policy::Source::new("admins.txt", "10.77.1.2\nfd77:0:0:1::2\n10.77.200.0/24\n"),
    ];
    let lists = portcullis_policy::AddrLists::parse(&srcs).expect("lists");
    let ns = NetNs::new().expect("ns");
    ns.enter(|| {
        let nft = NftDataplane::default();
        for (i, yaml) in LIST_POLICIES.iter().enumerate() {
            let src = portcullis_policy::Source::new("p.yml", *yaml);
            let p =
                portcullis_policy::site::load_host_policy_with_lists(&src, &lists).expect("policy");
            let compiled = compile(&p, &Default::default(), 3).expect("compile");
            assert!(
                compiled.sets.values().any(|s| s.key.is_address()),
                "policy {i}: address sets"
            );
            nft.replace(&compiled).expect("apply");
            let want = general(&nft);
            assert_eq!(
                want.as_ref().map(|t| &t.ruleset),
                Some(&compiled),
                "policy {i}"
            );
            let split = nft.read_table_split();
            let netlink = nft.read_table_netlink();
            assert_eq!(split.as_ref().ok(), Some(&want), "policy {i}: {split:?}");
            assert_eq!(
                netlink.as_ref().ok(),
                Some(&want),
                "policy {i}: {netlink:?}"
            );
            assert_eq!(nft.read_table().unwrap(), want, "policy {i}");
            assert_eq!(
                want.map(|t| t.ruleset.hash()),
                Some(compiled.hash()),
                "policy {i}"
            );
        }
    })
    .expect("enter");
}
