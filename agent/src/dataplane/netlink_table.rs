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
use crate::nflog::wire::{Attrs, be16, be32};
use portcullis_policy::model::{LogLimit, PortRange, Proto, RateUnit};
use portcullis_policy::ruleset::{BaseChain, Chain, IfMatch, L3, Rule, Set, SetKey, Verdict};
use portcullis_policy::{RuleCounter, Ruleset, TABLE_NAME};
use std::collections::{BTreeMap, BTreeSet};
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
    let table = match nl.request(NFT_MSG_GETTABLE, false, NFPROTO_INET, &name_attr) {
        Ok(t) => t,
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOENT as i32) => {
            return Ok(Ok(None));
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
        if !nl.request(msg, true, NFPROTO_INET, &name_attr)?.is_empty() {
            return Ok(Err(format!("a stateful {what} in the table")));
        }
    }
    let mut rs = Ruleset::default();
    // Anonymous sets by name: whether it is exactly `{ tcp, udp, udplite, sctp, dccp }`.
    let mut anonymous: BTreeMap<String, bool> = BTreeMap::new();
    for set in nl.request(NFT_MSG_GETSET, true, NFPROTO_INET, &name_attr)? {
        match set_shape(&set) {
            Err(why) => return Ok(Err(why)),
            Ok(SetShape::Ours(name, key)) => {
                let set = match nl.set_elements(TABLE_NAME, &name, key)? {
                    Decoded::Elements(elements) => Set::new(key, elements),
                    Decoded::Unrecognized(why) => return Ok(Err(format!("set {name}: {why}"))),
                };
                rs.sets.insert(name, set);
            }
            Ok(SetShape::L4Protos(name)) => {
                let every = match nl.raw_set_elements(TABLE_NAME, &name)? {
                    Ok(raw) => is_every_proto(&raw),
                    Err(_) => false,
                };
                anonymous.insert(name, every);
            }
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
        let (chain_name, rule, counter) = match rule_shape(&rule, &anonymous) {
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
/// nft's set user data for `type inet_service; flags interval` (key byte order: big endian).
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
    let shape = match (flags, key_type, key_len, udata) {
        (Some(f), ..) if sized && f & NFT_SET_ANONYMOUS == 0 => {
            return Err(format!("set {name} has a size"));
        }
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

/// One decoded expression: its name and attributes.
struct Expr<'a> {
    name: &'a str,
    attrs: Vec<(u16, &'a [u8])>,
}

impl<'a> Expr<'a> {
    /// The attributes, exactly these types in this order.
    fn exact<const N: usize>(&self, name: &str, types: [u16; N]) -> Option<[&'a [u8]; N]> {
        if self.name != name || self.attrs.len() != N {
            return None;
        }
        let mut out = [&[][..]; N];
        for (i, (t, v)) in self.attrs.iter().enumerate() {
            (*t == types[i]).then_some(())?;
            out[i] = v;
        }
        Some(out)
    }
}

const REG_VERDICT: u32 = 0;
const NFT_JUMP: i32 = -3;
const REG_1: u32 = 1;
const META_IIFNAME: u32 = 6;
const META_NFPROTO: u32 = 15;
const META_L4PROTO: u32 = 16;
const CMP_EQ: u32 = 0;
const CMP_NEQ: u32 = 1;
const CMP_LTE: u32 = 3;
const CMP_GTE: u32 = 5;
const BASE_NETWORK: u32 = 1;
const BASE_TRANSPORT: u32 = 2;

/// `meta load <key> => reg <dreg>`
fn meta(e: &Expr<'_>, key: u32, dreg: u32) -> Option<()> {
    let [k, d] = e.exact("meta", [2, 1])?;
    (u32_attr(k)? == key && u32_attr(d)? == dreg).then_some(())
}

/// `cmp <op> reg 1 <data>`
fn cmp<'a>(e: &Expr<'a>, op: u32) -> Option<&'a [u8]> {
    let [r, o, d] = e.exact("cmp", [1, 2, 3])?;
    (u32_attr(r)? == REG_1 && u32_attr(o)? == op).then_some(())?;
    data_value(d)
}

/// `payload load <len>b @ <base> + <offset> => reg <dreg>`
fn payload(e: &Expr<'_>, dreg: u32, base: u32, offset: u32, len: u32) -> Option<()> {
    let [d, b, o, l] = e.exact("payload", [1, 2, 3, 4])?;
    (u32_attr(d)? == dreg && u32_attr(b)? == base && u32_attr(o)? == offset && u32_attr(l)? == len)
        .then_some(())
}

/// `lookup reg 1 set <name>` (not inverted)
fn lookup<'a>(e: &Expr<'a>) -> Option<&'a str> {
    let [s, r, f] = e.exact("lookup", [1, 2, 5])?;
    (u32_attr(r)? == REG_1 && u32_attr(f)? == 0).then_some(())?;
    cstr(s)
}

/// `counter` -> (packets, bytes)
fn counter(e: &Expr<'_>) -> Option<(u64, u64)> {
    let [b, p] = e.exact("counter", [1, 2])?;
    Some((u64_attr(p)?, u64_attr(b)?))
}

/// The verdict of `immediate reg 0 <verdict>`.
enum Imm {
    Verdict(Verdict),
    Jump(String),
}

fn immediate(e: &Expr<'_>) -> Option<Imm> {
    let [d, data] = e.exact("immediate", [1, 2])?;
    (u32_attr(d)? == REG_VERDICT).then_some(())?;
    let parts = attrs(data);
    let [(2, verdict)] = parts.as_slice() else {
        return None;
    };
    match attrs(verdict).as_slice() {
        [(1, code)] => match u32_attr(code)? {
            0 => Some(Imm::Verdict(Verdict::Drop)),
            1 => Some(Imm::Verdict(Verdict::Accept)),
            _ => None,
        },
        [(1, code), (2, chain)] if i32_attr(code)? == NFT_JUMP => {
            Some(Imm::Jump(cstr(chain)?.to_owned()))
        }
        _ => None,
    }
}

fn verdict(e: &Expr<'_>) -> Option<Verdict> {
    match immediate(e)? {
        Imm::Verdict(v) => Some(v),
        Imm::Jump(_) => None,
    }
}

/// A port as compared by nft: 2 bytes, network order.
fn port(d: &[u8]) -> Option<u16> {
    match d {
        [hi, lo] => Some(u16::from_be_bytes([*hi, *lo])),
        _ => None,
    }
}

/// `meta l4proto tcp` / `udp` / ...: the protocol number compared.
fn proto(d: &[u8]) -> Option<Proto> {
    match d {
        [n] => Proto::from_number(*n),
        _ => None,
    }
}

/// The port match after a transport-header port load: `cmp eq P` or `cmp gte A` +
/// `cmp lte B`; the range and how many expressions it took.
fn ports(exprs: &[Expr<'_>]) -> Option<(PortRange, usize)> {
    if let Some(d) = exprs.first().and_then(|e| cmp(e, CMP_EQ)) {
        return Some((PortRange::single(port(d)?), 1));
    }
    let lo = port(cmp(exprs.first()?, CMP_GTE)?)?;
    let hi = port(cmp(exprs.get(1)?, CMP_LTE)?)?;
    Some((PortRange::new(lo, hi)?, 2))
}

/// (chain, rule, (packets, bytes)) for a rule of one of our shapes.
fn rule_shape(
    a: &[u8],
    anonymous: &BTreeMap<String, bool>,
) -> Result<(String, Rule, (u64, u64)), String> {
    let (mut chain, mut exprs_attr) = (None, None);
    for (t, v) in attrs(a) {
        match t {
            1 => (cstr(v) == Some(TABLE_NAME))
                .then_some(())
                .ok_or("rule of another table")?,
            2 => chain = cstr(v),
            4 => exprs_attr = Some(v),
            // handle, position, pad, id, position id
            3 | 6 | 8 | 9 | 10 => {}
            other => return Err(format!("rule attribute {other}")), // e.g. a comment
        }
    }
    let chain = chain.ok_or("rule without a chain")?.to_owned();
    let mut exprs = Vec::new();
    for (t, e) in attrs(exprs_attr.unwrap_or(&[])) {
        let parts = attrs(e);
        let (name, data) = match parts.as_slice() {
            [(1, n), (2, d)] => (cstr(n), attrs(d)),
            [(1, n)] => (cstr(n), Vec::new()),
            _ => return Err("malformed expression".to_owned()),
        };
        (t == 1).then_some(()).ok_or("malformed expression list")?;
        let name = name.ok_or("expression name")?;
        // 64-bit values may be preceded by a pad attribute (architectures without
        // efficient unaligned access): counter's and limit's.
        let pad = match name {
            "counter" => Some(3),
            "limit" => Some(6),
            _ => None,
        };
        exprs.push(Expr {
            name,
            attrs: data.into_iter().filter(|(t, _)| Some(*t) != pad).collect(),
        });
    }
    let (rule, counter) = recognize(&exprs, anonymous).ok_or_else(|| {
        let names: Vec<&str> = exprs.iter().map(|e| e.name).collect();
        format!(
            "a rule in chain {chain} we do not write: [{}]",
            names.join(", ")
        )
    })?;
    Ok((chain, rule, counter))
}

fn recognize(e: &[Expr<'_>], anonymous: &BTreeMap<String, bool>) -> Option<(Rule, (u64, u64))> {
    match e {
        // [iifname [!=] "x"] counter jump <target>
        [c, j] => {
            let Imm::Jump(target) = immediate(j)? else {
                return None;
            };
            Some((
                Rule::Jump {
                    iifname: None,
                    target,
                },
                counter(c)?,
            ))
        }
        [m, cmp_if, c, j] if meta(m, META_IIFNAME, REG_1).is_some() => {
            let (negate, d) = match cmp(cmp_if, CMP_EQ) {
                Some(d) => (false, d),
                None => (true, cmp(cmp_if, CMP_NEQ)?),
            };
            let Imm::Jump(target) = immediate(j)? else {
                return None;
            };
            Some((
                Rule::Jump {
                    iifname: Some(IfMatch {
                        negate,
                        name: ifname(d)?,
                    }),
                    target,
                },
                counter(c)?,
            ))
        }
        // ct state <states> counter <verdict>
        [ct, bw, nz, c, v] => {
            let [d, k] = ct.exact("ct", [1, 2])?;
            (u32_attr(d)? == REG_1 && u32_attr(k)? == 0).then_some(())?;
            let [s, dr, len, op, mask, xor] = bw.exact("bitwise", [1, 2, 3, 6, 4, 5])?;
            (u32_attr(s)? == REG_1
                && u32_attr(dr)? == REG_1
                && u32_attr(len)? == 4
                && u32_attr(op)? == 0
                && data_value(xor)? == [0, 0, 0, 0])
            .then_some(())?;
            (cmp(nz, CMP_NEQ)? == [0, 0, 0, 0]).then_some(())?;
            let mask: [u8; 4] = data_value(mask)?.try_into().ok()?;
            Some((
                Rule::CtState {
                    states: ct_states(u32::from_ne_bytes(mask))?,
                    verdict: verdict(v)?,
                },
                counter(c)?,
            ))
        }
        // ip frag-off & 8191 != 0 | frag frag-off != 0, counter <verdict>
        [nf, nfc, load, bw, nz, c, v] if meta(nf, META_NFPROTO, REG_1).is_some() => {
            let (l3, mask) = match cmp(nfc, CMP_EQ)? {
                [2] => {
                    payload(load, REG_1, BASE_NETWORK, 6, 2)?;
                    (L3::Ip, [0x1f, 0xff])
                }
                [10] => {
                    frag_off_exthdr(load)?;
                    (L3::Ip6, [0xff, 0xf8])
                }
                _ => return None,
            };
            let [s, dr, len, op, m, xor] = bw.exact("bitwise", [1, 2, 3, 6, 4, 5])?;
            (u32_attr(s)? == REG_1
                && u32_attr(dr)? == REG_1
                && u32_attr(len)? == 2
                && u32_attr(op)? == 0
                && data_value(m)? == mask
                && data_value(xor)? == [0, 0]
                && cmp(nz, CMP_NEQ)? == [0, 0])
            .then_some(())?;
            Some((
                Rule::Fragment {
                    l3,
                    verdict: verdict(v)?,
                },
                counter(c)?,
            ))
        }
        _ => recognize_l4(e, anonymous),
    }
}

/// `exthdr load ipv6 2b @ 44 + 2 => reg 1` (the fragment header's offset field), with
/// nothing else set (no `exists` flag, the IPv6 extension-header operation).
fn frag_off_exthdr(e: &Expr<'_>) -> Option<()> {
    (e.name == "exthdr").then_some(())?;
    let (mut dreg, mut kind, mut offset, mut len) = (None, None, None, None);
    for (t, v) in &e.attrs {
        match t {
            1 => dreg = u32_attr(v),
            2 => kind = v.first().copied().filter(|_| v.len() == 1),
            3 => offset = u32_attr(v),
            4 => len = u32_attr(v),
            5 | 6 => (u32_attr(v)? == 0).then_some(())?, // flags, op (ipv6)
            _ => return None,
        }
    }
    (dreg? == REG_1 && kind? == 44 && offset? == 2 && len? == 2).then_some(())
}

/// Rules that start with `meta l4proto` (or `meta nfproto`).
fn recognize_l4<'a>(
    e: &[Expr<'a>],
    anonymous: &BTreeMap<String, bool>,
) -> Option<(Rule, (u64, u64))> {
    let named = |lk: &Expr<'a>| named_lookup(lk, anonymous);
    if let Some(found) = saddr_set_match(e, named) {
        return Some(found);
    }
    let [l4, sel, dport, rest @ ..] = e else {
        return None;
    };
    meta(l4, META_L4PROTO, REG_1)?;
    payload(dport, REG_1, BASE_TRANSPORT, 2, 2)?;
    if let Some(d) = cmp(sel, CMP_EQ) {
        // <proto> dport @set [limit ... log ...] | <proto> dport <ports>
        let proto = proto(d)?;
        return match rest {
            [lk, c, v] if named(lk).is_some() => Some((
                Rule::SetMatch {
                    saddr: None,
                    proto,
                    set: named(lk)?.to_owned(),
                    verdict: verdict(v)?,
                },
                counter(c)?,
            )),
            [lk, lim, c, log, v] if named(lk).is_some() => {
                let (prefix, group) = log_stmt(log)?;
                Some((
                    Rule::SetLogLimited {
                        proto,
                        set: named(lk)?.to_owned(),
                        limit: limit(lim)?,
                        group,
                        prefix,
                        verdict: verdict(v)?,
                    },
                    counter(c)?,
                ))
            }
            _ => {
                let (p, used) = ports(rest)?;
                let [c, v] = &rest[used..] else {
                    return None;
                };
                Some((
                    Rule::Ports {
                        proto,
                        ports: p,
                        verdict: verdict(v)?,
                    },
                    counter(c)?,
                ))
            }
        };
    }
    // meta l4proto { tcp, udp, udplite, sctp, dccp } th dport <ports> [limit] counter [log]
    // <verdict>
    (*anonymous.get(lookup(sel)?)?).then_some(())?;
    let (p, used) = ports(rest)?;
    match &rest[used..] {
        [c, v] => Some((
            Rule::Counted {
                ports: p,
                verdict: verdict(v)?,
            },
            counter(c)?,
        )),
        [lim, c, log, v] => {
            let (prefix, group) = log_stmt(log)?;
            Some((
                Rule::LogLimited {
                    ports: p,
                    limit: limit(lim)?,
                    group,
                    prefix,
                    verdict: verdict(v)?,
                },
                counter(c)?,
            ))
        }
        _ => None,
    }
}

/// `lookup` of a named set: `@__setN` is how nft spells an anonymous set (`{ 22, 80 }`),
/// which it prints inline.
fn named_lookup<'a>(lk: &Expr<'a>, anonymous: &BTreeMap<String, bool>) -> Option<&'a str> {
    lookup(lk).filter(|n| !anonymous.contains_key(*n))
}

/// `ip saddr . tcp dport @set counter <verdict>` (or ip6, udp).
fn saddr_set_match<'a>(
    e: &[Expr<'a>],
    named: impl Fn(&Expr<'a>) -> Option<&'a str>,
) -> Option<(Rule, (u64, u64))> {
    let [nf, nfc, l4, l4c, addr, dport, lk, c, v] = e else {
        return None;
    };
    meta(nf, META_NFPROTO, REG_1)?;
    meta(l4, META_L4PROTO, REG_1)?;
    let proto = proto(cmp(l4c, CMP_EQ)?)?;
    let l3 = match cmp(nfc, CMP_EQ)? {
        [2] => {
            payload(addr, REG_1, BASE_NETWORK, 12, 4)?;
            payload(dport, 9, BASE_TRANSPORT, 2, 2)?; // NFT_REG32_01
            L3::Ip
        }
        [10] => {
            payload(addr, REG_1, BASE_NETWORK, 8, 16)?;
            payload(dport, 2, BASE_TRANSPORT, 2, 2)?; // NFT_REG_2
            L3::Ip6
        }
        _ => return None,
    };
    Some((
        Rule::SetMatch {
            saddr: Some(l3),
            proto,
            set: named(lk)?.to_owned(),
            verdict: verdict(v)?,
        },
        counter(c)?,
    ))
}

/// `iifname` data: the name NUL-padded to IFNAMSIZ, or a prefix without NUL (nft's
/// wildcard `name*`).
fn ifname(d: &[u8]) -> Option<String> {
    let text = |b: &[u8]| {
        (!b.is_empty() && !b.contains(&0))
            .then(|| String::from_utf8(b.to_vec()).ok())
            .flatten()
    };
    match d.iter().position(|b| *b == 0) {
        Some(end) if d.len() == 16 && d[end..].iter().all(|b| *b == 0) => text(&d[..end]),
        None if d.len() < 16 => text(d).map(|prefix| format!("{prefix}*")),
        _ => None,
    }
}

/// The conntrack states of a `ct state` mask, by nft's names.
fn ct_states(mask: u32) -> Option<BTreeSet<String>> {
    const NAMES: [(u32, &str); 5] = [
        (1, "invalid"),
        (2, "established"),
        (4, "related"),
        (8, "new"),
        (64, "untracked"),
    ];
    let known: u32 = NAMES.iter().map(|(b, _)| b).sum();
    (mask != 0 && mask & !known == 0).then_some(())?;
    Some(
        NAMES
            .iter()
            .filter(|(b, _)| mask & b != 0)
            .map(|(_, n)| (*n).to_owned())
            .collect(),
    )
}

/// `limit rate R/U burst B packets` (a burst of 0, which nft leaves out of its JSON and
/// our parser then does not take, is left to nft here too; `compile` never writes it).
fn limit(e: &Expr<'_>) -> Option<LogLimit> {
    let [r, u, b, t, f] = e.exact("limit", [1, 2, 3, 4, 5])?;
    (u32_attr(t)? == 0 && u32_attr(f)? == 0).then_some(())?;
    let per = match u64_attr(u)? {
        1 => RateUnit::Second,
        60 => RateUnit::Minute,
        3600 => RateUnit::Hour,
        86400 => RateUnit::Day,
        _ => return None,
    };
    let burst = u32_attr(b)?;
    (burst != 0).then_some(())?;
    Some(LogLimit {
        rate: u32::try_from(u64_attr(r)?).ok()?,
        per,
        burst,
    })
}

/// `log prefix "P" group G`, nothing else.
fn log_stmt(e: &Expr<'_>) -> Option<(String, u16)> {
    let [p, g] = e.exact("log", [2, 1])?;
    (g.len() == 2).then_some(())?;
    Some((cstr(p)?.to_owned(), be16(g, 0)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_state_masks() {
        assert_eq!(
            ct_states(6).map(|s| s.into_iter().collect::<Vec<_>>()),
            Some(vec!["established".to_owned(), "related".to_owned()])
        );
        assert_eq!(ct_states(0), None);
        assert_eq!(ct_states(16), None);
    }

    #[test]
    fn interface_names() {
        let mut d = [0u8; 16];
        d[..4].copy_from_slice(b"eth9");
        assert_eq!(ifname(&d).as_deref(), Some("eth9"));
        assert_eq!(
            ifname(&d[..3]).as_deref(),
            Some("eth*"),
            "a wildcard compare"
        );
        assert_eq!(ifname(&d[..5]), None);
        d[6] = b'x';
        assert_eq!(ifname(&d), None);
        assert_eq!(ifname(&[0; 16]), None);
    }
}
