//! Recognizing one rule's `expr` array from `nft -j` output as one of our [`Rule`] shapes,
//! and canonical JSON for everything else.
//!
//! Exact matching only: an object with an extra key, a different operator or one more
//! statement is not ours and becomes `Rule::Unknown`, so a foreign edit is never hidden.

use crate::model::{LogLimit, PortRange, Proto, RateUnit};
use crate::ruleset::{IfMatch, L3, LogSpec, Rule, Verdict};
use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// The rule for `expr` (and its optional `comment`), plus its counter values if it has an
/// anonymous counter.
pub(super) fn parse_rule(expr: &[Value], comment: Option<&Value>) -> (Rule, Option<(u64, u64)>) {
    let counter = expr.iter().find_map(counter_values);
    let known = if comment.is_none() {
        recognize(expr)
    } else {
        None
    };
    let rule = known.unwrap_or_else(|| {
        let mut all = expr.to_vec();
        if let Some(c) = comment {
            all.push(Value::Object(Map::from_iter([(
                "comment".into(),
                c.clone(),
            )])));
        }
        Rule::Unknown {
            expr: canonical(&strip_volatile(Value::Array(all))),
        }
    });
    (rule, counter)
}

fn recognize(expr: &[Value]) -> Option<Rule> {
    if let Some(rule) = source_set(expr) {
        return Some(rule);
    }
    match expr {
        [m, c, v] if is_counter(c) => {
            if let Some(target) = jump_target(v) {
                return Some(Rule::Jump {
                    iifname: Some(iifname(m)?),
                    target,
                });
            }
            single_match(m, verdict(v)?)
        }
        [c, v] if is_counter(c) => Some(Rule::Jump {
            iifname: None,
            target: jump_target(v)?,
        }),
        [m, lim, c, log, v] if is_counter(c) => {
            let (op, left, right) = match_expr(m)?;
            (op == "==").then_some(())?;
            let set = right.as_str()?.strip_prefix('@')?;
            let (p, field) = payload(left)?;
            (field == "dport").then_some(())?;
            let (prefix, group) = log_stmt(log)?;
            Some(Rule::SetLogLimited {
                proto: proto(p)?,
                set: set.to_string(),
                limit: limit(lim)?,
                group,
                prefix,
                verdict: verdict(v)?,
            })
        }
        [l4, th, c, v] if is_counter(c) => {
            l4proto_all(l4)?;
            Some(Rule::Counted {
                ports: th_dport(th)?,
                verdict: verdict(v)?,
            })
        }
        [l4, th, lim, c, log, v] if is_counter(c) => {
            l4proto_all(l4)?;
            let (prefix, group) = log_stmt(log)?;
            Some(Rule::LogLimited {
                ports: th_dport(th)?,
                limit: limit(lim)?,
                group,
                prefix,
                verdict: verdict(v)?,
            })
        }
        _ => None,
    }
}

/// `ip saddr @set [meta l4proto P | P dport R] [limit ...] counter [log ...] <verdict>`
/// (an address-list rule).
fn source_set(expr: &[Value]) -> Option<Rule> {
    let (first, rest) = expr.split_first()?;
    let (op, left, right) = match_expr(first)?;
    (op == "==").then_some(())?;
    let set = right.as_str()?.strip_prefix('@')?;
    let l3 = match payload(left)? {
        ("ip", "saddr") => L3::Ip,
        ("ip6", "saddr") => L3::Ip6,
        _ => return None,
    };
    let (proto_match, ports, rest) = match rest {
        [m, more @ ..] if match_expr(m).is_some() => {
            let (op, left, right) = match_expr(m)?;
            (op == "==").then_some(())?;
            if meta(left) == Some("l4proto") {
                (Some(l4proto_one(right)?), None, more)
            } else {
                let (p, field) = payload(left)?;
                (field == "dport").then_some(())?;
                (Some(proto(p)?), Some(port_range(right)?), more)
            }
        }
        _ => (None, None, rest),
    };
    let log = match rest {
        [c, _] if is_counter(c) => None,
        [lim, c, log, _] if is_counter(c) => {
            let (prefix, group) = log_stmt(log)?;
            Some(LogSpec {
                limit: limit(lim)?,
                group,
                prefix,
            })
        }
        _ => return None,
    };
    Some(Rule::SourceSet {
        l3,
        set: set.to_string(),
        proto: proto_match,
        ports,
        log,
        verdict: verdict(rest.last()?)?,
    })
}

/// `meta l4proto <one protocol>`'s right side: by name or (where `/etc/protocols` lacks
/// it) by number.
fn l4proto_one(v: &Value) -> Option<Proto> {
    match v {
        Value::String(s) => Proto::from_name(s),
        Value::Number(n) => Proto::from_number(u8::try_from(n.as_u64()?).ok()?),
        _ => None,
    }
}

/// `{ "<key>": ... }` with exactly that one key.
fn single<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    let o = v.as_object()?;
    (o.len() == 1).then(|| o.get(key)).flatten()
}

/// An object with exactly `keys`.
fn exact<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a Map<String, Value>> {
    let o = v.as_object()?;
    (o.len() == keys.len() && keys.iter().all(|k| o.contains_key(*k))).then_some(o)
}

/// `{"match": {"op", "left", "right"}}` -> (op, left, right)
fn match_expr(v: &Value) -> Option<(&str, &Value, &Value)> {
    let m = exact(single(v, "match")?, &["op", "left", "right"])?;
    Some((m["op"].as_str()?, &m["left"], &m["right"]))
}

fn meta(v: &Value) -> Option<&str> {
    exact(single(v, "meta")?, &["key"])?["key"].as_str()
}

/// `{"payload": {"protocol": P, "field": F}}` -> (P, F)
fn payload(v: &Value) -> Option<(&str, &str)> {
    let p = exact(single(v, "payload")?, &["protocol", "field"])?;
    Some((p["protocol"].as_str()?, p["field"].as_str()?))
}

fn proto(s: &str) -> Option<Proto> {
    Proto::from_name(s)
}

fn is_counter(v: &Value) -> bool {
    counter_values(v).is_some()
}

fn counter_values(v: &Value) -> Option<(u64, u64)> {
    let c = exact(single(v, "counter")?, &["packets", "bytes"])?;
    Some((c["packets"].as_u64()?, c["bytes"].as_u64()?))
}

fn verdict(v: &Value) -> Option<Verdict> {
    if single(v, "accept").is_some_and(Value::is_null) {
        Some(Verdict::Accept)
    } else if single(v, "drop").is_some_and(Value::is_null) {
        Some(Verdict::Drop)
    } else {
        None
    }
}

fn jump_target(v: &Value) -> Option<String> {
    let j = exact(single(v, "jump")?, &["target"])?;
    j["target"].as_str().map(str::to_string)
}

fn iifname(v: &Value) -> Option<IfMatch> {
    let (op, left, right) = match_expr(v)?;
    let negate = match op {
        "==" => false,
        "!=" => true,
        _ => return None,
    };
    (meta(left)? == "iifname").then_some(())?;
    Some(IfMatch {
        negate,
        name: right.as_str()?.to_string(),
    })
}

/// A port or `{"range": [a, b]}`.
pub(super) fn port_range(v: &Value) -> Option<PortRange> {
    if let Some(p) = v.as_u64() {
        return Some(PortRange::single(u16::try_from(p).ok()?));
    }
    let r = single(v, "range")?.as_array()?;
    match r.as_slice() {
        [a, b] => PortRange::new(
            u16::try_from(a.as_u64()?).ok()?,
            u16::try_from(b.as_u64()?).ok()?,
        ),
        _ => None,
    }
}

/// One match + counter + verdict: set match, port range, or ct state.
fn single_match(m: &Value, verdict: Verdict) -> Option<Rule> {
    let (op, left, right) = match_expr(m)?;
    if op == "in" {
        (exact(single(left, "ct")?, &["key"])?["key"].as_str()? == "state").then_some(())?;
        let states: BTreeSet<String> = match right {
            Value::String(s) => [s.clone()].into(),
            Value::Array(a) => a
                .iter()
                .map(|s| s.as_str().map(str::to_string))
                .collect::<Option<_>>()?,
            _ => return None,
        };
        return Some(Rule::CtState { states, verdict });
    }
    if op == "!=" {
        return fragment(left, right).map(|l3| Rule::Fragment { l3, verdict });
    }
    (op == "==").then_some(())?;
    if let Some(set) = right.as_str().and_then(|s| s.strip_prefix('@')) {
        let (saddr, dport) = match single(left, "concat").and_then(Value::as_array) {
            Some(parts) => match parts.as_slice() {
                [addr, port] => {
                    let l3 = match payload(addr)? {
                        ("ip", "saddr") => L3::Ip,
                        ("ip6", "saddr") => L3::Ip6,
                        _ => return None,
                    };
                    (Some(l3), port)
                }
                _ => return None,
            },
            None => (None, left),
        };
        let (p, field) = payload(dport)?;
        (field == "dport").then_some(())?;
        return Some(Rule::SetMatch {
            saddr,
            proto: proto(p)?,
            set: set.to_string(),
            verdict,
        });
    }
    let (p, field) = payload(left)?;
    (field == "dport").then_some(())?;
    Some(Rule::Ports {
        proto: proto(p)?,
        ports: port_range(right)?,
        verdict,
    })
}

/// `meta l4proto { tcp, udp, udplite, sctp, dccp }`: exactly every [`Proto`], each once,
/// by name or (where `/etc/protocols` lacks it) by number.
fn l4proto_all(v: &Value) -> Option<()> {
    let (op, left, right) = match_expr(v)?;
    (op == "==" && meta(left)? == "l4proto").then_some(())?;
    let items = single(right, "set")?.as_array()?;
    let set: BTreeSet<Proto> = items
        .iter()
        .map(|i| match i {
            Value::String(s) => Proto::from_name(s),
            Value::Number(n) => Proto::from_number(u8::try_from(n.as_u64()?).ok()?),
            _ => None,
        })
        .collect::<Option<_>>()?;
    (items.len() == Proto::ALL.len() && set == BTreeSet::from(Proto::ALL)).then_some(())
}

/// `ip frag-off & 8191 != 0` or `frag frag-off != 0` (left and right of the `!=`).
fn fragment(left: &Value, right: &Value) -> Option<L3> {
    (right.as_u64()? == 0).then_some(())?;
    if let Some(e) = single(left, "exthdr") {
        let e = exact(e, &["name", "field"])?;
        return (e["name"].as_str()? == "frag" && e["field"].as_str()? == "frag-off")
            .then_some(L3::Ip6);
    }
    match single(left, "&")?.as_array()?.as_slice() {
        [p, mask] if payload(p)? == ("ip", "frag-off") && mask.as_u64()? == 0x1fff => Some(L3::Ip),
        _ => None,
    }
}

fn th_dport(v: &Value) -> Option<PortRange> {
    let (op, left, right) = match_expr(v)?;
    (op == "==" && payload(left)? == ("th", "dport")).then_some(())?;
    port_range(right)
}

fn limit(v: &Value) -> Option<LogLimit> {
    let l = exact(single(v, "limit")?, &["rate", "burst", "per"])?;
    let per = match l["per"].as_str()? {
        "second" => RateUnit::Second,
        "minute" => RateUnit::Minute,
        "hour" => RateUnit::Hour,
        "day" => RateUnit::Day,
        _ => return None,
    };
    Some(LogLimit {
        rate: u32::try_from(l["rate"].as_u64()?).ok()?,
        per,
        burst: u32::try_from(l["burst"].as_u64()?).ok()?,
    })
}

fn log_stmt(v: &Value) -> Option<(String, u16)> {
    let l = exact(single(v, "log")?, &["prefix", "group"])?;
    Some((
        l["prefix"].as_str()?.to_string(),
        u16::try_from(l["group"].as_u64()?).ok()?,
    ))
}

/// Drop what changes without anyone editing: counter and quota values, handles.
pub(super) fn strip_volatile(v: Value) -> Value {
    match v {
        Value::Array(a) => Value::Array(a.into_iter().map(strip_volatile).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .filter(|(k, _)| k != "handle")
                .map(|(k, v)| match (k.as_str(), v) {
                    ("counter" | "quota", Value::Object(mut inner)) => {
                        for volatile in ["packets", "bytes", "used"] {
                            inner.remove(volatile);
                        }
                        (k, strip_volatile(Value::Object(inner)))
                    }
                    (_, v) => (k, strip_volatile(v)),
                })
                .collect(),
        ),
        v => v,
    }
}

/// JSON with object keys sorted and no whitespace, whatever `serde_json` features are on.
pub(super) fn canonical(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&o[k], out);
            }
            out.push('}');
        }
        v => out.push_str(&v.to_string()),
    }
}
