//! Our whole table read over netlink (no `nft` process): table, sets and their elements,
//! chains, rules, and the check that there are no objects or flowtables, decoded into the
//! [`Ruleset`] that `nft -j list table` + `parse_readback` would give.
//!
//! Recognizes exactly what nft 1.0.x writes for the table `compile` produces, attribute by
//! attribute, expression by expression (the registers, offsets and user data nft uses
//! included). Anything else, however harmless (a rule of another shape, a comment, a set
//! option, an expression attribute we do not know, another nft version's user data),
//! makes it answer `Err(why)`, and the caller reads the table through nft instead, which
//! shows it as nft prints it. So where this answers, it answers what the nft path would;
//! the real-kernel tests compare both on every shape `compile` writes.

use super::KernelTable;
use super::netlink::{Decoded, NFPROTO_INET, NfTables, RawElement, push_attr_str};
use crate::nflog::wire::{Attrs, be32};
use portcullis_policy::model::Proto;
use portcullis_policy::ruleset::{BaseChain, Chain, Set, SetKey, Verdict};
use portcullis_policy::{RuleCounter, Ruleset, TABLE_NAME};
use std::collections::BTreeMap;
use std::io;

const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_GETOBJ: u16 = 19;
const NFT_MSG_GETFLOWTABLE: u16 = 23;

/// A result of this module: the table (`None`: absent), or why nft must read it.
pub type Read = Result<Option<KernelTable>, String>;

/// Reads table `inet portcullis` (one generation: the caller brackets it).
pub fn read(nl: &mut NfTables) -> io::Result<Read> {
    let mut name_attr = Vec::new();
    push_attr_str(&mut name_attr, 1, TABLE_NAME); // NFTA_{TABLE_NAME,SET_TABLE,...} = 1
    match table_of_ours(nl, &name_attr)? {
        Ok(true) => {}
        Ok(false) => return Ok(Ok(None)),
        Err(why) => return Ok(Err(why)),
    }
    let mut rs = Ruleset::default();
    // Anonymous sets by name: whether it is exactly `{ tcp, udp, udplite, sctp, dccp }`.
    let mut anonymous: BTreeMap<String, bool> = BTreeMap::new();
    let mut ours = Vec::new();
    for set in nl.request(NFT_MSG_GETSET, true, NFPROTO_INET, &name_attr)? {
        match set_shape(&set) {
            Err(why) => return Ok(Err(why)),
            Ok(SetShape::Ours(name, key)) => ours.push((name, key)),
            Ok(SetShape::L4Protos(name)) => {
                let every = match nl.raw_set_elements(TABLE_NAME, &name)? {
                    Ok(raw) => is_every_proto(&raw),
                    Err(_) => false,
                };
                anonymous.insert(name, every);
            }
        }
    }
    for ((name, _), set) in ours.iter().zip(read_sets(nl, &ours)?) {
        match set {
            Ok(set) => {
                rs.sets.insert(name.clone(), set);
            }
            Err(why) => return Ok(Err(format!("set {name}: {why}"))),
        }
    }
    for chain in nl.request(NFT_MSG_GETCHAIN, true, NFPROTO_INET, &name_attr)? {
        match chain_shape(&chain) {
            Err(why) => return Ok(Err(why)),
            Ok(None) => {} // another table's (the chain dump is not filtered by table)
            Ok(Some((name, chain))) => {
                rs.chains.insert(name, chain);
            }
        }
    }
    let mut counters = Vec::new();
    for rule in nl.request(NFT_MSG_GETRULE, true, NFPROTO_INET, &name_attr)? {
        let (chain_name, rule, counter) = match rule::rule_shape(&rule, &anonymous) {
            Ok(r) => r,
            Err(why) => return Ok(Err(why)),
        };
        let Some(chain) = rs.chains.get_mut(&chain_name) else {
            return Ok(Err(format!("rule of unlisted chain {chain_name}")));
        };
        counters.push(RuleCounter {
            chain: chain_name,
            index: chain.rules.len(),
            packets: counter.0,
            bytes: counter.1,
            rule: rule.to_string(),
        });
        chain.rules.push(rule);
    }
    Ok(Ok(Some(KernelTable {
        ruleset: rs,
        counters,
    })))
}

/// Sets from which [`read_sets`] dumps on two sockets in two threads.
const PARALLEL_FROM_SETS: usize = 4;

/// The elements of `sets` (name, key), decoded and normalized, in order; `Err(why)` for
/// a set with an element not of our shapes. With several sets, half of them are dumped
/// on a second socket in a second thread: the kernel walks a set in the thread that
/// reads it, so a million elements read in about half the time on two cores.
fn read_sets(nl: &mut NfTables, sets: &[(String, SetKey)]) -> io::Result<Vec<Result<Set, String>>> {
    let one = |nl: &mut NfTables, (name, key): &(String, SetKey)| {
        Ok(match nl.set_elements(TABLE_NAME, name, *key)? {
            Decoded::Elements(elements) => Ok(Set::new(*key, elements)),
            Decoded::Unrecognized(why) => Err(why),
        })
    };
    let second = if sets.len() >= PARALLEL_FROM_SETS {
        nl.fork()?
    } else {
        None
    };
    let Some(mut second) = second else {
        return sets.iter().map(|s| one(nl, s)).collect();
    };
    // Alternate sets between the two (shards of one list are alike in size).
    let (mine, theirs): (Vec<_>, Vec<_>) = sets.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let (mine, theirs) = std::thread::scope(|s| {
        let other = s.spawn(|| {
            theirs
                .iter()
                .map(|(_, set)| one(&mut second, set))
                .collect::<io::Result<Vec<_>>>()
        });
        let mine = mine
            .iter()
            .map(|(_, set)| one(nl, set))
            .collect::<io::Result<Vec<_>>>();
        let theirs = other
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("set reader thread panicked")));
        (mine, theirs)
    });
    let (mut mine, mut theirs) = (mine?.into_iter(), theirs?.into_iter());
    Ok((0..sets.len())
        .filter_map(|i| {
            if i % 2 == 0 {
                mine.next()
            } else {
                theirs.next()
            }
        })
        .collect())
}

/// The named chains and sets of our table (no elements, no rules): what a staged replace
/// must delete (see `nft.rs`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub chains: Vec<String>,
    pub sets: Vec<String>,
}

/// The names in table `inet portcullis`: `Ok(None)` when it is absent; `Err(why)` when it
/// holds anything deleting those names would leave behind or that is not of our shapes
/// (table flags, an object, a flowtable, a map, a chain or set of another shape): the
/// caller then replaces the table whole.
pub fn inventory(nl: &mut NfTables) -> io::Result<Result<Option<Inventory>, String>> {
    let mut name_attr = Vec::new();
    push_attr_str(&mut name_attr, 1, TABLE_NAME);
    match table_of_ours(nl, &name_attr)? {
        Ok(true) => {}
        Ok(false) => return Ok(Ok(None)),
        Err(why) => return Ok(Err(why)),
    }
    let mut out = Inventory::default();
    for set in nl.request(NFT_MSG_GETSET, true, NFPROTO_INET, &name_attr)? {
        match set_shape(&set) {
            Err(why) => return Ok(Err(why)),
            Ok(SetShape::Ours(name, _)) => out.sets.push(name),
            // Bound to its rule: it goes with the rule.
            Ok(SetShape::L4Protos(_)) => {}
        }
    }
    for chain in nl.request(NFT_MSG_GETCHAIN, true, NFPROTO_INET, &name_attr)? {
        match chain_shape(&chain) {
            Err(why) => return Ok(Err(why)),
            Ok(None) => {}
            Ok(Some((name, _))) => out.chains.push(name),
        }
    }
    Ok(Ok(Some(out)))
}

/// Whether the table exists, and that it is ours with no object or flowtable in it.
fn table_of_ours(nl: &mut NfTables, name_attr: &[u8]) -> io::Result<Result<bool, String>> {
    let table = match nl.request(NFT_MSG_GETTABLE, false, NFPROTO_INET, name_attr) {
        Ok(t) => t,
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOENT as i32) => {
            return Ok(Ok(false));
        }
        Err(e) => return Err(e),
    };
    let [table] = table.as_slice() else {
        return Ok(Err("GETTABLE: not one answer".to_owned()));
    };
    if let Err(why) = check_table(table) {
        return Ok(Err(why));
    }
    for (msg, what) in [
        (NFT_MSG_GETOBJ, "object"),
        (NFT_MSG_GETFLOWTABLE, "flowtable"),
    ] {
        if !nl.request(msg, true, NFPROTO_INET, name_attr)?.is_empty() {
            return Ok(Err(format!("a stateful {what} in the table")));
        }
    }
    Ok(Ok(true))
}

/// Attributes of a message or nested attribute, in order.
fn attrs(b: &[u8]) -> Vec<(u16, &[u8])> {
    Attrs::new(b).collect()
}

/// A NUL-terminated string attribute.
fn cstr(v: &[u8]) -> Option<&str> {
    let (last, body) = v.split_last()?;
    (*last == 0 && !body.contains(&0))
        .then(|| std::str::from_utf8(body).ok())
        .flatten()
}

fn u32_attr(v: &[u8]) -> Option<u32> {
    (v.len() == 4).then(|| be32(v, 0)).flatten()
}

fn i32_attr(v: &[u8]) -> Option<i32> {
    let b: [u8; 4] = v.try_into().ok()?;
    Some(i32::from_be_bytes(b))
}

fn u64_attr(v: &[u8]) -> Option<u64> {
    let b: [u8; 8] = v.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// `NFTA_DATA_VALUE` inside a nested data attribute.
fn data_value(v: &[u8]) -> Option<&[u8]> {
    match attrs(v).as_slice() {
        [(1, value)] => Some(value),
        _ => None,
    }
}

/// Table: name ours, flags 0, nothing else (no comment, no owner).
fn check_table(a: &[u8]) -> Result<(), String> {
    for (t, v) in attrs(a) {
        match t {
            1 => (cstr(v) == Some(TABLE_NAME))
                .then_some(())
                .ok_or("GETTABLE answered another table")?,
            2 => (u32_attr(v) == Some(0))
                .then_some(())
                .ok_or("table flags (dormant or owner)")?,
            3..=5 => {} // use, handle, pad
            other => return Err(format!("table attribute {other}")),
        }
    }
    Ok(())
}

enum SetShape {
    Ours(String, SetKey),
    /// Anonymous `meta l4proto` set (its elements are checked separately).
    L4Protos(String),
}

const NFT_SET_ANONYMOUS: u32 = 0x1;
const NFT_SET_CONSTANT: u32 = 0x2;
const NFT_SET_INTERVAL: u32 = 0x4;
const NFT_SET_CONCAT: u32 = 0x80;
/// nft's set user data for `type inet_service; flags interval`, and for `type ipv4_addr` /
/// `ipv6_addr` with or without `flags interval` (key byte order: big endian).
const UDATA_PORT: &[u8] = &[0, 4, 2, 0, 0, 0];
/// ... for `type ipv4_addr . inet_service` / `ipv6_addr . inet_service`, `flags interval`.
const UDATA_CONCAT: &[u8] = &[0, 4, 0, 0, 0, 0, 3, 8, 0, 4, 13, 0, 0, 0, 1, 0];
/// ... for the anonymous `meta l4proto { tcp, udp, udplite, sctp, dccp }` set (typeof
/// meta l4proto).
const UDATA_L4PROTO: &[u8] = &[
    0, 4, 1, 0, 0, 0, 3, 14, 0, 4, 9, 0, 0, 0, 1, 6, 0, 4, 16, 0, 0, 0,
];

fn set_shape(a: &[u8]) -> Result<SetShape, String> {
    let (mut name, mut flags, mut key_type, mut key_len, mut udata) =
        (None, None, None, None, None);
    let mut sized = false;
    for (t, v) in attrs(a) {
        match t {
            1 => (cstr(v) == Some(TABLE_NAME))
                .then_some(())
                .ok_or("set of another table")?,
            2 => name = cstr(v),
            3 => flags = u32_attr(v),
            4 => key_type = u32_attr(v),
            5 => key_len = u32_attr(v),
            // NFT_SET_POL_PERFORMANCE is the default nft does not print.
            8 => (u32_attr(v) == Some(0))
                .then_some(())
                .ok_or("set policy memory")?,
            // Description: concatenation field lengths, and a size (which nft prints for
            // a named set; an anonymous one has its element count there).
            9 => {
                for (t, _) in attrs(v) {
                    match t {
                        1 => sized = true,
                        2 => {}
                        other => return Err(format!("set description attribute {other}")),
                    }
                }
            }
            13 => udata = Some(v),
            // id, pad, handle, backend, element count
            10 | 14 | 16 | 19 | 20 => {}
            other => return Err(format!("set attribute {other}")),
        }
    }
    let name = name.ok_or("set without a name")?.to_owned();
    // A staged hash set of addresses has a size, which changes no verdict (see
    // `parse_set` in the policy crate's readback); any other named set with one is not
    // ours (an anonymous one has its element count there).
    let hash_of_addresses = flags.is_none() && matches!(key_type, Some(7 | 8));
    if sized && flags.unwrap_or(0) & NFT_SET_ANONYMOUS == 0 && !hash_of_addresses {
        return Err(format!("set {name} has a size"));
    }
    let shape = match (flags, key_type, key_len, udata) {
        (Some(NFT_SET_INTERVAL), Some(13), Some(2), Some(UDATA_PORT)) => {
            SetShape::Ours(name, SetKey::Port)
        }
        (Some(f), Some(461), Some(8), Some(UDATA_CONCAT))
            if f == NFT_SET_INTERVAL | NFT_SET_CONCAT =>
        {
            SetShape::Ours(name, SetKey::V4Port)
        }
        (Some(f), Some(525), Some(20), Some(UDATA_CONCAT))
            if f == NFT_SET_INTERVAL | NFT_SET_CONCAT =>
        {
            SetShape::Ours(name, SetKey::V6Port)
        }
        // Address lists: hash sets of addresses (no flags attribute at all) and interval
        // sets of prefixes; key types ipv4_addr (7) and ipv6_addr (8).
        (None, Some(7), Some(4), Some(UDATA_PORT)) => SetShape::Ours(name, SetKey::V4Addr),
        (None, Some(8), Some(16), Some(UDATA_PORT)) => SetShape::Ours(name, SetKey::V6Addr),
        (Some(NFT_SET_INTERVAL), Some(7), Some(4), Some(UDATA_PORT)) => {
            SetShape::Ours(name, SetKey::V4Net)
        }
        (Some(NFT_SET_INTERVAL), Some(8), Some(16), Some(UDATA_PORT)) => {
            SetShape::Ours(name, SetKey::V6Net)
        }
        (Some(f), Some(12), Some(1), Some(UDATA_L4PROTO))
            if f == NFT_SET_ANONYMOUS | NFT_SET_CONSTANT =>
        {
            SetShape::L4Protos(name)
        }
        _ => return Err(format!("set {name} is not one of our shapes")),
    };
    Ok(shape)
}

/// Exactly the keys of every [`Proto`] (tcp 6, udp 17, udplite 136, sctp 132, dccp 33),
/// each once, nothing else (an old `{ tcp, udp }` set is not ours any more).
fn is_every_proto(raw: &[RawElement]) -> bool {
    let mut keys: Vec<&[u8]> = raw
        .iter()
        .filter(|e| e.key_end.is_none() && !e.interval_end && !e.interval_open)
        .map(|e| e.key.as_slice())
        .collect();
    keys.sort_unstable();
    let mut every: Vec<[u8; 1]> = Proto::ALL.iter().map(|p| [p.number()]).collect();
    every.sort_unstable();
    raw.len() == every.len() && keys.iter().copied().eq(every.iter().map(|k| &k[..]))
}

/// `Ok(None)` for a chain of another table.
fn chain_shape(a: &[u8]) -> Result<Option<(String, Chain)>, String> {
    let all = attrs(a);
    if !all
        .iter()
        .any(|(t, v)| *t == 1 && cstr(v) == Some(TABLE_NAME))
    {
        return Ok(None);
    }
    let (mut name, mut hook, mut policy, mut kind, mut flags) = (None, None, None, None, 0);
    for (t, v) in all {
        match t {
            1 => {}
            3 => name = cstr(v),
            4 => hook = Some(v),
            5 => policy = u32_attr(v),
            7 => kind = cstr(v),
            10 => flags = u32_attr(v).ok_or("chain flags")?,
            // handle, use, counters, pad, id
            2 | 6 | 8 | 9 | 11 => {}
            other => return Err(format!("chain attribute {other}")),
        }
    }
    let name = name.ok_or("chain without a name")?.to_owned();
    let odd = || format!("chain {name} is not one of our shapes");
    let base = match (hook, flags) {
        (None, 0) => {
            (policy.is_none() && kind.is_none())
                .then_some(())
                .ok_or_else(odd)?;
            None
        }
        (Some(hook), 1) => {
            let (mut num, mut prio) = (None, None);
            for (t, v) in attrs(hook) {
                match t {
                    1 => num = u32_attr(v),
                    2 => prio = i32_attr(v),
                    _ => return Err(odd()), // a device
                }
            }
            let hook = match num {
                Some(0) => "prerouting",
                Some(1) => "input",
                Some(2) => "forward",
                Some(3) => "output",
                Some(4) => "postrouting",
                _ => return Err(odd()),
            };
            let policy = match policy {
                Some(0) => Verdict::Drop,
                Some(1) => Verdict::Accept,
                _ => return Err(odd()),
            };
            (kind == Some("filter")).then_some(()).ok_or_else(odd)?;
            Some(BaseChain {
                hook: hook.to_owned(),
                priority: prio.ok_or_else(odd)?,
                policy,
            })
        }
        _ => return Err(odd()),
    };
    Ok(Some((
        name,
        Chain {
            base,
            rules: Vec::new(),
        },
    )))
}

#[path = "netlink_rule.rs"]
mod rule;
