//! Decoding one rule of our table from its netlink attributes into a [`Rule`]: every
//! expression sequence nft 1.0.x writes for the shapes `compile` produces (registers,
//! offsets, comparison data and all), and nothing else; a rule of another shape is an
//! `Err(why)`, and the caller then reads the table through nft. Part of
//! [`super`] (`netlink_table`); it must not send requests.

use super::{attrs, cstr, data_value, i32_attr, u32_attr, u64_attr};
use crate::nflog::wire::be16;
use portcullis_policy::TABLE_NAME;
use portcullis_policy::model::{LogLimit, PortRange, Proto, RateUnit};
use portcullis_policy::ruleset::{IfMatch, L3, Rule, Verdict};
use std::collections::{BTreeMap, BTreeSet};

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
pub(super) fn rule_shape(
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
    if let Some(found) = source::source_set(e, anonymous) {
        return Some(found);
    }
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

#[path = "netlink_source.rs"]
mod source;

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
