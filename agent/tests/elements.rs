//! `NftDataplane::update_elements` / `has_elements` / `generation` on the real kernel:
//! element deltas in the address-list sets (hash and interval, v4 and v6) read back as the
//! ruleset with the delta applied, by every readback; a batch with one bad element
//! changes nothing; touching prefixes survive each other's removal; 200,000 additions in
//! one call.
//!
//! Fails without root unless `PORTCULLIS_SKIP_NETNS=1`.

#![allow(clippy::unwrap_used)]

use portcullis_agent::dataplane::STAGE_MIN_ELEMENTS;
use portcullis_agent::dataplane::SetChange;
use portcullis_agent::{Dataplane, NftDataplane};
use portcullis_policy::ruleset::{Element, L3, Rule, Set, SetKey, Verdict};
use portcullis_policy::{AddrLists, Ruleset, Source, compile, parse_readback};
use portcullis_testkit::{NetNs, require_root_netns};

const POLICY: &str = "allow:\n  - { port: 22, proto: tcp, from: { file: admins.txt } }\ndeny:\n  - { from: { file: blocked.txt } }\n";
const BLOCKED: &str = "192.0.2.7\n198.51.100.0/24\n0.0.0.0/2\n2001:db8::1\n2001:db8:1::/48\n";
const ADMINS: &str = "10.77.1.2\n10.77.200.0/24\nfd77::2\nfd77:1::/64\n";

fn compiled() -> Ruleset {
    let lists = AddrLists::parse(&[
        Source::new("blocked.txt", BLOCKED),
        Source::new("admins.txt", ADMINS),
    ])
    .unwrap();
    let p =
        portcullis_policy::site::load_host_policy_with_lists(&Source::new("p.yml", POLICY), &lists)
            .unwrap();
    compile(&p, &Default::default(), 1).unwrap()
}

/// The name of the one set of `key` whose name starts with `prefix`.
fn set_name(rs: &Ruleset, prefix: &str, key: SetKey) -> String {
    let names: Vec<&String> = rs
        .sets
        .iter()
        .filter(|(n, s)| n.starts_with(prefix) && s.key == key)
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names.len(), 1, "{prefix} {key:?}: {names:?}");
    names[0].clone()
}

fn v4(s: &str) -> Element {
    Element::V4(s.parse().unwrap())
}

fn v6(s: &str) -> Element {
    Element::V6(s.parse().unwrap())
}

fn change(
    rs: &Ruleset,
    prefix: &str,
    key: SetKey,
    add: &[Element],
    remove: &[Element],
) -> SetChange {
    SetChange {
        set: set_name(rs, prefix, key),
        key,
        add: add.to_vec(),
        remove: remove.to_vec(),
    }
}

/// `rs` with `changes` applied to its sets.
fn applied(rs: &Ruleset, changes: &[SetChange]) -> Ruleset {
    let mut out = rs.clone();
    for c in changes {
        let set = out.sets.get_mut(&c.set).unwrap();
        let mut elements = (*set.elements).clone();
        for e in &c.remove {
            assert!(elements.remove(e), "{e} not in {}", c.set);
        }
        elements.extend(c.add.iter().cloned());
        *set = Set::new(c.key, elements);
    }
    out
}

/// Every readback agrees with `want`.
fn assert_reads(nft: &NftDataplane, want: &Ruleset, ctx: &str) {
    let general = parse_readback(&nft.read_back().unwrap().unwrap())
        .unwrap()
        .0;
    assert_eq!(&general, want, "{ctx}: nft -j list table");
    let netlink = nft.read_table_netlink().unwrap().unwrap().ruleset;
    assert_eq!(&netlink, want, "{ctx}: netlink");
    let split = nft.read_table_split().unwrap().unwrap().ruleset;
    assert_eq!(&split, want, "{ctx}: split");
    assert_eq!(netlink.hash(), want.hash(), "{ctx}");
}

#[test]
fn element_deltas_read_back_as_the_ruleset_with_them() {
    if !require_root_netns() {
        return;
    }
    let base = compiled();
    let ns = NetNs::new().expect("ns");
    ns.enter(|| {
        let nft = NftDataplane::default();
        nft.replace(&base).unwrap();
        assert_reads(&nft, &base, "base");
        let g0 = nft.generation().unwrap().unwrap();
        // Additions and removals in every kind of set, touching prefixes, one to the end
        // of the address space, one at 0.0.0.0 next to nft's own end element at 0.
        let changes = vec![
            change(
                &base,
                "deny_",
                SetKey::V4Addr,
                &[v4("203.0.113.5/32"), v4("203.0.113.6/32")],
                &[v4("192.0.2.7/32")],
            ),
            change(
                &base,
                "deny_",
                SetKey::V4Net,
                &[
                    v4("198.51.101.0/24"),
                    v4("198.51.99.0/24"),
                    v4("240.0.0.0/4"),
                ],
                &[],
            ),
            change(
                &base,
                "deny_",
                SetKey::V6Addr,
                &[v6("2001:db8::2/128")],
                &[v6("2001:db8::1/128")],
            ),
            change(
                &base,
                "deny_",
                SetKey::V6Net,
                &[v6("2001:db8:2::/48"), v6("ff00::/8")],
                &[v6("2001:db8:1::/48")],
            ),
            change(
                &base,
                "list_",
                SetKey::V4Net,
                &[v4("0.0.0.0/8"), v4("10.77.201.0/24")],
                &[v4("10.77.200.0/24")],
            ),
            change(&base, "list_", SetKey::V6Addr, &[v6("fd77::3/128")], &[]),
        ];
        let g1 = nft.update_elements(&changes).unwrap().unwrap();
        assert_ne!(g1, g0, "a new generation");
        let want = applied(&base, &changes);
        assert_reads(&nft, &want, "after the first delta");
        // The same additions again: present elements, the whole batch refused.
        let again = vec![
            change(&base, "list_", SetKey::V6Addr, &[v6("fd77::4/128")], &[]),
            change(&base, "deny_", SetKey::V4Net, &[v4("198.51.101.0/24")], &[]),
        ];
        let err = nft.update_elements(&again).unwrap_err().to_string();
        assert!(err.contains("adding 198.51.101.0/24 in set deny_"), "{err}");
        // An overlapping prefix likewise.
        let overlap = vec![change(
            &base,
            "deny_",
            SetKey::V4Net,
            &[v4("198.51.101.128/25")],
            &[],
        )];
        assert!(nft.update_elements(&overlap).is_err());
        assert_eq!(nft.generation().unwrap(), Some(g1), "nothing committed");
        assert_reads(&nft, &want, "after a refused re-add");
        // Removing the middle one of three touching prefixes, then the wide ones.
        let second = vec![
            change(
                &want,
                "deny_",
                SetKey::V4Net,
                &[],
                &[v4("198.51.100.0/24"), v4("240.0.0.0/4"), v4("0.0.0.0/2")],
            ),
            change(&want, "deny_", SetKey::V6Net, &[], &[v6("ff00::/8")]),
            change(&want, "list_", SetKey::V4Net, &[], &[v4("0.0.0.0/8")]),
        ];
        nft.update_elements(&second).unwrap();
        let want = applied(&want, &second);
        assert_reads(&nft, &want, "after the removals");
        let v4n = set_name(&want, "deny_", SetKey::V4Net);
        assert_eq!(
            want.sets[&v4n]
                .elements
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["198.51.99.0/24", "198.51.101.0/24"]
        );
        // Lookups, hash and interval.
        let v4a = set_name(&want, "deny_", SetKey::V4Addr);
        assert_eq!(
            nft.has_elements(
                &v4a,
                SetKey::V4Addr,
                &[v4("203.0.113.5/32"), v4("192.0.2.7/32")]
            )
            .unwrap(),
            [true, false]
        );
        assert_eq!(
            nft.has_elements(
                &v4n,
                SetKey::V4Net,
                &[
                    v4("198.51.101.0/24"),
                    v4("198.51.100.0/24"),
                    v4("198.51.101.0/25")
                ]
            )
            .unwrap(),
            [true, false, false]
        );
        let v6a = set_name(&want, "deny_", SetKey::V6Addr);
        assert_eq!(
            nft.has_elements(
                &v6a,
                SetKey::V6Addr,
                &[v6("2001:db8::2/128"), v6("2001:db8::1/128")]
            )
            .unwrap(),
            [true, false]
        );
    })
    .expect("enter");
}

#[test]
fn a_batch_with_one_bad_element_changes_nothing() {
    if !require_root_netns() {
        return;
    }
    let base = compiled();
    let ns = NetNs::new().expect("ns");
    ns.enter(|| {
        let nft = NftDataplane::default();
        nft.replace(&base).unwrap();
        let g0 = nft.generation().unwrap();
        let many: Vec<Element> = (0..5000u32)
            .map(|i| v4(&format!("{}/32", std::net::Ipv4Addr::from(0x0b00_0000 + i))))
            .collect();
        let bad = vec![
            change(&base, "deny_", SetKey::V4Addr, &many, &[]),
            change(&base, "deny_", SetKey::V6Net, &[v6("2001:db8:7::/48")], &[]),
            // Absent: the kernel refuses it, and with it everything above.
            change(&base, "list_", SetKey::V4Net, &[], &[v4("10.99.0.0/16")]),
        ];
        let err = nft.update_elements(&bad).unwrap_err().to_string();
        assert!(err.contains("10.99.0.0/16"), "names the element: {err}");
        assert_eq!(nft.generation().unwrap(), g0, "nothing committed");
        assert_reads(&nft, &base, "after the refused batch");
        // An element of the wrong family is refused before anything is sent.
        let wrong = vec![change(
            &base,
            "deny_",
            SetKey::V4Net,
            &[v6("fd00::/8")],
            &[],
        )];
        assert!(nft.update_elements(&wrong).is_err());
        assert_eq!(nft.generation().unwrap(), g0);
    })
    .expect("enter");
}

#[test]
fn two_hundred_thousand_additions_in_one_call() {
    if !require_root_netns() {
        return;
    }
    let base = compiled();
    let ns = NetNs::new().expect("ns");
    ns.enter(|| {
        let nft = NftDataplane::default();
        nft.replace(&base).unwrap();
        let addrs: Vec<Element> = (0..150_000u32)
            .map(|i| {
                Element::V4(ipnet::Ipv4Net::from(std::net::Ipv4Addr::from(
                    0x6400_0000 + i,
                )))
            })
            .collect();
        // /24s spaced out (every other one): 50,000 prefixes, start and end each.
        let nets: Vec<Element> = (0..50_000u32)
            .map(|i| {
                Element::V4(
                    ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(0x8000_0000 + (i << 9)), 24)
                        .unwrap(),
                )
            })
            .collect();
        let changes = vec![
            change(&base, "deny_", SetKey::V4Addr, &addrs, &[]),
            change(&base, "list_", SetKey::V4Net, &nets, &[]),
        ];
        nft.update_elements(&changes).unwrap();
        let want = applied(&base, &changes);
        let got = nft.read_table_netlink().unwrap().unwrap().ruleset;
        assert_eq!(got.element_count(), want.element_count());
        assert_eq!(got, want);
    })
    .expect("enter");
}

/// A list file of `n` v4 addresses from `base`, `n / 40` v4 /24s and `n / 100` v6
/// addresses.
fn big_list(base: u32, n: u32) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for i in 0..n {
        writeln!(s, "{}", std::net::Ipv4Addr::from(base + i)).unwrap();
    }
    for i in 0..n / 40 {
        writeln!(
            s,
            "{}/24",
            std::net::Ipv4Addr::from(0xc000_0000 + (base >> 8) + (i << 9))
        )
        .unwrap();
    }
    for i in 0..n / 100 {
        writeln!(s, "2001:db8:{:x}::{:x}", base >> 16, i + 1).unwrap();
    }
    s
}

/// A policy denying the sources of list file `deny` (text `text`), allowing 22/tcp from
/// `admins.txt`.
fn with_blocklist(deny: &str, text: &str) -> Ruleset {
    let policy = format!(
        "allow:\n  - {{ port: 22, proto: tcp, from: {{ file: admins.txt }} }}\ndeny:\n  - {{ from: {{ file: {deny} }} }}\n"
    );
    let lists =
        AddrLists::parse(&[Source::new(deny, text), Source::new("admins.txt", ADMINS)]).unwrap();
    let p = portcullis_policy::site::load_host_policy_with_lists(
        &Source::new("p.yml", &policy),
        &lists,
    )
    .unwrap();
    compile(&p, &Default::default(), 1).unwrap()
}

/// The staged replace: new large lists are filled over netlink before one `nft -f`
/// swaps the rest of the table around them; the result reads back as the ruleset, by
/// every readback, with nothing of the old table left; a swap the kernel refuses leaves
/// the old table exactly as it was (the staged sets removed again), and so does the
/// fallback to one `nft -f`.
#[test]
fn large_new_lists_are_staged_and_swapped_in_at_once() {
    if !require_root_netns() {
        return;
    }
    let a = with_blocklist("a.txt", &big_list(0x6440_0000, 20_000));
    let b = with_blocklist("b.txt", &big_list(0x6480_0000, 24_000));
    assert!(a.element_count() > STAGE_MIN_ELEMENTS);
    let ns = NetNs::new().expect("ns");
    ns.enter(|| {
        let nft = NftDataplane::default();
        nft.replace_staged(&a).unwrap();
        assert_reads(&nft, &a, "a, staged into no table");
        // Deltas work on staged sets as on any (a sized hash set is asked by key).
        let first = a
            .sets
            .iter()
            .find(|(n, s)| n.starts_with("deny_") && s.key == SetKey::V4Addr)
            .unwrap();
        let (set, gone) = (
            first.0.clone(),
            first.1.elements.iter().next().unwrap().clone(),
        );
        let delta = vec![SetChange {
            set: set.clone(),
            key: SetKey::V4Addr,
            add: vec![v4("203.0.113.77/32")],
            remove: vec![gone.clone()],
        }];
        nft.update_elements(&delta).unwrap();
        assert_eq!(
            nft.has_elements(&set, SetKey::V4Addr, &[v4("203.0.113.77/32"), gone])
                .unwrap(),
            [true, false]
        );
        let a_delta = applied(&a, &delta);
        assert_reads(&nft, &a_delta, "a with a delta");
        nft.update_elements(&[SetChange {
            set,
            key: SetKey::V4Addr,
            add: delta[0].remove.clone(),
            remove: delta[0].add.clone(),
        }])
        .unwrap();
        assert_reads(&nft, &a, "a, the delta undone");
        nft.replace_staged(&b).unwrap();
        assert_reads(&nft, &b, "b, staged into a's table");
        nft.replace_staged(&a).unwrap();
        assert_reads(&nft, &a, "a again");
        // The same lists again: nothing new to stage (a plain `nft -f` is as fast).
        let why = nft.replace_staged(&a).unwrap_err();
        assert!(why.contains("new address-list elements"), "{why}");
        nft.replace(&a).unwrap();
        assert_reads(&nft, &a, "a by one nft -f");

        // b with a rule the kernel refuses (its set does not exist): the swap fails
        // after b's sets were staged.
        let mut broken = b.clone();
        broken
            .chains
            .values_mut()
            .find(|c| c.base.is_some())
            .unwrap()
            .rules
            .push(Rule::SourceSet {
                l3: L3::Ip,
                set: "absent_v4a".into(),
                proto: None,
                ports: None,
                log: None,
                verdict: Verdict::Drop,
            });
        let g0 = nft.generation().unwrap();
        let why = nft.replace_staged(&broken).unwrap_err();
        assert!(why.contains("absent_v4a"), "names the refused set: {why}");
        assert_ne!(nft.generation().unwrap(), g0, "b's sets were staged");
        assert_reads(&nft, &a, "after the refused swap");
        assert!(nft.replace(&broken).is_err());
        assert_reads(&nft, &a, "after the refused replace");
    })
    .expect("enter");
}

/// The figures for a large blocklist: `nft -f` of a table with 1,000,000 address-list
/// elements (900k addresses, 100k prefixes; v4 and v6), its readback over netlink, and
/// one-element transactions in it. Run with
/// `cargo test --release -p portcullis-agent --test elements -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark; run with --release -- --ignored --nocapture"]
fn figures_for_a_million_elements() {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Instant;
    if !require_root_netns() {
        return;
    }
    let mut rs = compiled();
    let fill = |rs: &mut Ruleset, key: SetKey, elements: Vec<Element>| {
        let name = set_name(rs, "deny_", key);
        rs.sets.insert(name, Set::new(key, elements));
    };
    fill(
        &mut rs,
        SetKey::V4Addr,
        (0..600_000u32)
            .map(|i| Element::V4(Ipv4Addr::from(0x0a00_0000 + i * 3).into()))
            .collect(),
    );
    fill(
        &mut rs,
        SetKey::V6Addr,
        (0..300_000u128)
            .map(|i| Element::V6(Ipv6Addr::from((0x2001_0db8u128 << 96) + i * 7).into()))
            .collect(),
    );
    fill(
        &mut rs,
        SetKey::V4Net,
        (0..70_000u32)
            .map(|i| {
                Element::V4(
                    ipnet::Ipv4Net::new(Ipv4Addr::from(0x6400_0000 + (i << 9)), 24).unwrap(),
                )
            })
            .collect(),
    );
    fill(
        &mut rs,
        SetKey::V6Net,
        (0..30_000u128)
            .map(|i| {
                let a = Ipv6Addr::from((0x2a00u128 << 112) + (i << 81));
                Element::V6(ipnet::Ipv6Net::new(a, 48).unwrap())
            })
            .collect(),
    );
    let total = rs.element_count();
    assert!(total >= 1_000_000, "{total}");
    let ns = NetNs::new().expect("ns");
    ns.enter(|| {
        let nft = NftDataplane::default().with_timeout(std::time::Duration::from_secs(600));
        let t = Instant::now();
        nft.replace(&rs).unwrap();
        eprintln!("nft -f of {total} elements: {:?}", t.elapsed());
        let t = Instant::now();
        let got = nft.read_table_netlink().unwrap().unwrap();
        eprintln!("readback over netlink: {:?}", t.elapsed());
        assert_eq!(got.ruleset, rs);
        let t = Instant::now();
        let split = nft.read_table_split().unwrap().unwrap();
        eprintln!("readback nft -j -t + netlink elements: {:?}", t.elapsed());
        assert_eq!(split.ruleset, rs);
        for (key, e) in [
            (SetKey::V4Addr, v4("192.0.2.200/32")),
            (SetKey::V4Net, v4("203.0.113.0/24")),
            (SetKey::V6Addr, v6("fd00::1/128")),
        ] {
            let one = vec![change(&rs, "deny_", key, std::slice::from_ref(&e), &[])];
            let t = Instant::now();
            nft.update_elements(&one).unwrap();
            eprintln!("update_elements, 1 addition ({key:?}): {:?}", t.elapsed());
            let name = set_name(&rs, "deny_", key);
            let t = Instant::now();
            assert_eq!(nft.has_elements(&name, key, &[e]).unwrap(), [true]);
            eprintln!("has_elements, 1 element ({key:?}): {:?}", t.elapsed());
        }
    })
    .expect("enter");
}
