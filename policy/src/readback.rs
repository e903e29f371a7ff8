//! Parsing the output of `nft -j list table inet portcullis` into the same normalized
//! [`Ruleset`] that `compile` produces, plus the rules' counter values.
//!
//! Text in, values out: this module never runs `nft`. Normalization: handles, counter
//! values and `metainfo` are dropped; set elements in any of the kernel's spellings
//! (number, `range`, `prefix`, bare address, address `range`, `concat`) become canonical
//! [`Element`]s (see [`crate::ruleset::Set::normalize`]). Nothing is silently dropped:
//! a rule that is not exactly one of our shapes becomes `Rule::Unknown`; a set of another
//! type or with other flags, a map, a named counter, a non-filter or device chain, or
//! table flags (e.g. `dormant`) go to `Ruleset::unknown` with their canonical JSON.
//! Objects of another table are an error (the caller listed the wrong thing). "Table
//! absent" is the caller's business (nft exits 1); an empty table parses to an empty
//! ruleset.

mod rule;
mod typed;

use crate::ruleset::{BaseChain, Chain, Element, Rule, Ruleset, Set, SetKey, TABLE_NAME, Verdict};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;
use serde_json::{Map, Value};
use std::net::IpAddr;

#[derive(Debug, thiserror::Error)]
pub enum ReadbackError {
    #[error("readback is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("readback is not `nft -j list table` output: {0}")]
    Shape(String),
    #[error("readback holds {kind} of table {family} {table}, expected inet {TABLE_NAME}")]
    ForeignTable {
        kind: String,
        family: String,
        table: String,
    },
}

/// One rule's counter values as read back (for `show` and the denial pipeline).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleCounter {
    pub chain: String,
    /// Position of the rule in its chain, from 0.
    pub index: usize,
    pub packets: u64,
    pub bytes: u64,
    /// The rule in nft syntax (shortened for unrecognized rules).
    pub rule: String,
}

/// Longest `RuleCounter::rule` text for an unrecognized rule.
const UNKNOWN_TEXT_MAX: usize = 100;

pub fn parse_readback(json: &str) -> Result<(Ruleset, Vec<RuleCounter>), ReadbackError> {
    parse(json, Foreign::Error).map(|(rs, counters, _)| (rs, counters))
}

/// Our table out of `nft -j list ruleset` output (any family filter, terse or not):
/// objects of other tables are skipped; `None` when our table is not listed. Otherwise
/// exactly what [`parse_readback`] returns for the same objects.
pub fn parse_ruleset_readback(
    json: &str,
) -> Result<Option<(Ruleset, Vec<RuleCounter>)>, ReadbackError> {
    let (rs, counters, table_seen) = parse(json, Foreign::Skip)?;
    Ok(table_seen.then_some((rs, counters)))
}

/// What to do with an object of another table.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Foreign {
    Error,
    Skip,
}

/// The ruleset, counters, and whether our `table` object was listed.
///
/// Typed first ([`typed`]): the entries are split as raw JSON, and set bodies (nearly all
/// of a large table) are deserialized straight into elements; an entry the typed path does
/// not take (anything but one of our set shapes) goes through `serde_json::Value` like the
/// whole document used to. A document the typed path cannot even split is parsed the
/// general way (which also words the error).
fn parse(json: &str, foreign: Foreign) -> Result<(Ruleset, Vec<RuleCounter>, bool), ReadbackError> {
    let Some(items) = typed::split(json) else {
        return parse_values(json, foreign);
    };
    let mut acc = Acc::default();
    for (kind, raw) in items {
        if kind == "metainfo" {
            continue;
        }
        if kind == "set"
            && let Some(set) = typed::set(raw.get())
        {
            match check_family_table(&set.family, &set.table, kind.as_ref()) {
                Err(ReadbackError::ForeignTable { .. }) if foreign == Foreign::Skip => continue,
                other => other?,
            }
            acc.rs.sets.insert(set.name, set.set);
            continue;
        }
        let body: Value = serde_json::from_str(raw.get())?;
        let body = body
            .as_object()
            .ok_or_else(|| shape(&format!("{kind} is not an object")))?;
        acc.add(&kind, body, foreign)?;
    }
    Ok((acc.rs, acc.counters, acc.table_seen))
}

/// [`parse`] entirely through `serde_json::Value`.
fn parse_values(
    json: &str,
    foreign: Foreign,
) -> Result<(Ruleset, Vec<RuleCounter>, bool), ReadbackError> {
    let root: Value = serde_json::from_str(json)?;
    let items = root
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| shape("no top-level \"nftables\" array"))?;
    let mut acc = Acc::default();
    for item in items {
        let obj = item
            .as_object()
            .filter(|o| o.len() == 1)
            .ok_or_else(|| shape("an \"nftables\" entry is not a one-key object"))?;
        let Some((kind, body)) = obj.iter().next() else {
            continue;
        };
        if kind == "metainfo" {
            continue;
        }
        let body = body
            .as_object()
            .ok_or_else(|| shape(&format!("{kind} is not an object")))?;
        acc.add(kind, body, foreign)?;
    }
    Ok((acc.rs, acc.counters, acc.table_seen))
}

/// What the entries add up to.
#[derive(Default)]
struct Acc {
    rs: Ruleset,
    counters: Vec<RuleCounter>,
    table_seen: bool,
}

impl Acc {
    /// One `{kind: body}` entry of the listing (not `metainfo`).
    fn add(
        &mut self,
        kind: &str,
        body: &Map<String, Value>,
        foreign: Foreign,
    ) -> Result<(), ReadbackError> {
        match check_table(kind, body) {
            Err(ReadbackError::ForeignTable { .. }) if foreign == Foreign::Skip => return Ok(()),
            other => other?,
        }
        let rs = &mut self.rs;
        let name = str_field(body, "name").unwrap_or_default();
        match kind {
            "table" => {
                self.table_seen = true;
                if body
                    .keys()
                    .any(|k| !["family", "name", "handle"].contains(&k.as_str()))
                {
                    rs.unknown
                        .insert(format!("table {name}"), canonical_obj(kind, body));
                }
            }
            "set" => match parse_set(body) {
                Some(set) => {
                    rs.sets.insert(name, set);
                }
                None => {
                    rs.unknown
                        .insert(format!("set {name}"), canonical_obj(kind, body));
                }
            },
            "chain" => {
                let (chain, known) = parse_chain(body);
                if !known {
                    rs.unknown
                        .insert(format!("chain {name}"), canonical_obj(kind, body));
                }
                rs.chains.insert(name, chain);
            }
            "rule" => {
                let chain_name =
                    str_field(body, "chain").ok_or_else(|| shape("rule without chain"))?;
                let chain = rs.chains.get_mut(&chain_name).ok_or_else(|| {
                    shape(&format!(
                        "rule for chain {chain_name:?} listed before the chain"
                    ))
                })?;
                let expr = body
                    .get("expr")
                    .and_then(Value::as_array)
                    .ok_or_else(|| shape("rule without \"expr\" array"))?;
                let (rule, counter) = rule::parse_rule(expr, body.get("comment"));
                if let Some((packets, bytes)) = counter {
                    self.counters.push(RuleCounter {
                        chain: chain_name.clone(),
                        index: chain.rules.len(),
                        packets,
                        bytes,
                        rule: short_text(&rule),
                    });
                }
                chain.rules.push(rule);
            }
            _ => {
                rs.unknown
                    .insert(format!("{kind} {name}"), canonical_obj(kind, body));
            }
        }
        Ok(())
    }
}

fn shape(what: &str) -> ReadbackError {
    ReadbackError::Shape(what.to_string())
}

fn str_field(o: &Map<String, Value>, key: &str) -> Option<String> {
    o.get(key).and_then(Value::as_str).map(str::to_string)
}

/// Every object must belong to `inet portcullis` (`table` objects name it in `name`).
fn check_table(kind: &str, body: &Map<String, Value>) -> Result<(), ReadbackError> {
    let family = str_field(body, "family").unwrap_or_default();
    let table = str_field(body, if kind == "table" { "name" } else { "table" }).unwrap_or_default();
    check_family_table(&family, &table, kind)
}

fn check_family_table(family: &str, table: &str, kind: &str) -> Result<(), ReadbackError> {
    if family == "inet" && table == TABLE_NAME {
        Ok(())
    } else {
        Err(ReadbackError::ForeignTable {
            kind: kind.to_string(),
            family: family.to_string(),
            table: table.to_string(),
        })
    }
}

fn canonical_obj(kind: &str, body: &Map<String, Value>) -> String {
    let v = Value::Object(Map::from_iter([(
        kind.to_string(),
        Value::Object(body.clone()),
    )]));
    rule::canonical(&rule::strip_volatile(v))
}

fn short_text(rule: &Rule) -> String {
    match rule {
        Rule::Unknown { expr } if expr.len() > UNKNOWN_TEXT_MAX => {
            let cut = (0..=UNKNOWN_TEXT_MAX)
                .rev()
                .find(|i| expr.is_char_boundary(*i))
                .unwrap_or(0);
            format!("# unrecognized: {}...", &expr[..cut])
        }
        r => r.to_string(),
    }
}

/// A chain and whether it is exactly one we could have written. A base chain of another
/// type, on a device, or with a symbolic priority keeps its hook/priority/policy here
/// (so its rules have a home) and is also reported in `Ruleset::unknown`.
fn parse_chain(body: &Map<String, Value>) -> (Chain, bool) {
    const REGULAR: [&str; 4] = ["family", "table", "name", "handle"];
    const BASE: [&str; 8] = [
        "family", "table", "name", "handle", "type", "hook", "prio", "policy",
    ];
    let Some(hook) = str_field(body, "hook") else {
        let known = body.keys().all(|k| REGULAR.contains(&k.as_str()));
        return (
            Chain {
                base: None,
                rules: vec![],
            },
            known,
        );
    };
    let prio = body
        .get("prio")
        .and_then(Value::as_i64)
        .and_then(|p| i32::try_from(p).ok());
    let policy = match body.get("policy").and_then(Value::as_str) {
        Some("drop") => Some(Verdict::Drop),
        Some("accept") => Some(Verdict::Accept),
        _ => None,
    };
    let known = body.keys().all(|k| BASE.contains(&k.as_str()))
        && str_field(body, "type").as_deref() == Some("filter")
        && prio.is_some()
        && policy.is_some();
    let base = BaseChain {
        hook,
        priority: prio.unwrap_or_default(),
        policy: policy.unwrap_or(Verdict::Accept),
    };
    let chain = Chain {
        base: Some(base),
        rules: vec![],
    };
    (chain, known)
}

/// One of our set shapes, exactly, or `None`.
fn parse_set(body: &Map<String, Value>) -> Option<Set> {
    const KEYS: [&str; 8] = [
        "family", "name", "table", "type", "handle", "flags", "elem", "size",
    ];
    if body.keys().any(|k| !KEYS.contains(&k.as_str())) {
        return None;
    }
    let interval = match body.get("flags") {
        None => false,
        Some(f) if f == &Value::Array(vec![Value::String("interval".into())]) => true,
        Some(_) => return None,
    };
    let key = match body.get("type")? {
        Value::String(s) if s == "inet_service" => SetKey::Port,
        Value::String(s) if s == "ipv4_addr" && interval => SetKey::V4Net,
        Value::String(s) if s == "ipv4_addr" => SetKey::V4Addr,
        Value::String(s) if s == "ipv6_addr" && interval => SetKey::V6Net,
        Value::String(s) if s == "ipv6_addr" => SetKey::V6Addr,
        Value::Array(a) => match a.iter().map(Value::as_str).collect::<Vec<_>>().as_slice() {
            [Some("ipv4_addr"), Some("inet_service")] => SetKey::V4Port,
            [Some("ipv6_addr"), Some("inet_service")] => SetKey::V6Port,
            _ => return None,
        },
        _ => return None,
    };
    if key.interval() != interval {
        return None;
    }
    // A staged hash set's `size` (the kernel's table size and a cap) changes no verdict:
    // not part of the ruleset. Nothing else of ours has one.
    if let Some(size) = body.get("size") {
        let hash = matches!(key, SetKey::V4Addr | SetKey::V6Addr);
        if !hash || size.as_u64().is_none_or(|n| n == 0) {
            return None;
        }
    }
    let mut elements = Vec::new();
    for e in body
        .get("elem")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
    {
        elements.extend(parse_element(key, e)?);
    }
    Some(Set::new(key, elements))
}

fn parse_element(key: SetKey, e: &Value) -> Option<Vec<Element>> {
    if key == SetKey::Port {
        return Some(vec![Element::Port(rule::port_range(e)?)]);
    }
    if key.is_address() {
        return addr_nets(e)?
            .into_iter()
            .map(|net| address_element(key, net))
            .collect();
    }
    let o = e.as_object().filter(|o| o.len() == 1)?;
    let parts = o.get("concat")?.as_array()?;
    let [addr, port] = parts.as_slice() else {
        return None;
    };
    let ports = rule::port_range(port)?;
    let mut out = Vec::new();
    for net in addr_nets(addr)? {
        match (key, net) {
            (SetKey::V4Port, IpNet::V4(n)) => out.push(Element::V4Port(n, ports)),
            (SetKey::V6Port, IpNet::V6(n)) => out.push(Element::V6Port(n, ports)),
            _ => return None,
        }
    }
    Some(out)
}

/// One network of an address-list set of `key`: of its family, and a single address in a
/// hash set (`V4Addr`/`V6Addr`).
pub(crate) fn address_element(key: SetKey, net: IpNet) -> Option<Element> {
    match (key, net) {
        (SetKey::V4Addr, IpNet::V4(n)) if n.prefix_len() == 32 => Some(Element::V4(n)),
        (SetKey::V6Addr, IpNet::V6(n)) if n.prefix_len() == 128 => Some(Element::V6(n)),
        (SetKey::V4Net, IpNet::V4(n)) => Some(Element::V4(n)),
        (SetKey::V6Net, IpNet::V6(n)) => Some(Element::V6(n)),
        _ => None,
    }
}

/// `"10.0.0.1"`, `{"prefix": {"addr", "len"}}` or `{"range": [a, b]}` as networks.
fn addr_nets(v: &Value) -> Option<Vec<IpNet>> {
    if let Some(s) = v.as_str() {
        return Some(vec![IpNet::from(s.parse::<IpAddr>().ok()?)]);
    }
    let o = v.as_object().filter(|o| o.len() == 1)?;
    if let Some(p) = o.get("prefix") {
        let addr: IpAddr = p.get("addr")?.as_str()?.parse().ok()?;
        let len = u8::try_from(p.get("len")?.as_u64()?).ok()?;
        return Some(vec![IpNet::new(addr, len).ok()?.trunc()]);
    }
    let r = o.get("range")?.as_array()?;
    let [a, b] = r.as_slice() else {
        return None;
    };
    let a: IpAddr = a.as_str()?.parse().ok()?;
    let b: IpAddr = b.as_str()?.parse().ok()?;
    // The normalizer cuts ranges into prefixes; hand it the exact range as prefixes.
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => Some(
            ipnet::Ipv4Subnets::new(a, b, 0)
                .map(|n: Ipv4Net| IpNet::V4(n))
                .collect(),
        ),
        (IpAddr::V6(a), IpAddr::V6(b)) => Some(
            ipnet::Ipv6Subnets::new(a, b, 0)
                .map(|n: Ipv6Net| IpNet::V6(n))
                .collect(),
        ),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
