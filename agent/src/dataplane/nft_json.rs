//! Render a [`Ruleset`] the way `nft -j list table inet portcullis` prints it (nft 1.0.6).
//!
//! Used by [`super::FakeDataplane`] to answer `read_back` with what the real kernel would
//! print, so the agent's logic (readback parsing included) runs unchanged against the fake.
//! The integration tests check this rendering against the real `nft` output.

use portcullis_policy::ruleset::{Element, L3, Rule, SetKey, Verdict};
use portcullis_policy::{PortRange, Proto};
use portcullis_policy::{Ruleset, TABLE_NAME};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Counter values by (chain, rule index); missing entries are zero.
pub type Counters = BTreeMap<(String, usize), (u64, u64)>;

/// The `nft -j list table inet portcullis` document for `ruleset`.
pub fn render(ruleset: &Ruleset, counters: &Counters) -> String {
    let mut items = vec![json!({"metainfo": {
        "version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}})];
    let mut handle = 1u64;
    let mut next = || {
        handle += 1;
        handle
    };
    items.push(json!({"table": {"family": "inet", "name": TABLE_NAME, "handle": next()}}));
    for (name, set) in &ruleset.sets {
        let mut obj = json!({"family": "inet", "name": name, "table": TABLE_NAME,
            "type": set_type(set.key), "handle": next()});
        if set.key.interval()
            && let Some(map) = obj.as_object_mut()
        {
            map.insert("flags".into(), json!(["interval"]));
        }
        if !set.elements.is_empty()
            && let Some(map) = obj.as_object_mut()
        {
            map.insert(
                "elem".into(),
                set.elements.iter().map(element).collect::<Vec<_>>().into(),
            );
        }
        items.push(json!({ "set": obj }));
    }
    for (name, chain) in &ruleset.chains {
        let mut obj = json!({"family": "inet", "table": TABLE_NAME, "name": name,
            "handle": next()});
        if let (Some(base), Some(map)) = (&chain.base, obj.as_object_mut()) {
            map.insert("type".into(), "filter".into());
            map.insert("hook".into(), base.hook.clone().into());
            map.insert("prio".into(), base.priority.into());
            map.insert("policy".into(), verdict_name(base.policy).into());
        }
        items.push(json!({ "chain": obj }));
    }
    for (name, chain) in &ruleset.chains {
        for (index, rule) in chain.rules.iter().enumerate() {
            let counter = counters
                .get(&(name.clone(), index))
                .copied()
                .unwrap_or_default();
            items.push(json!({"rule": {"family": "inet", "table": TABLE_NAME,
                "chain": name, "handle": next(), "expr": exprs(rule, counter)}}));
        }
    }
    json!({ "nftables": items }).to_string()
}

fn set_type(key: SetKey) -> Value {
    match key {
        SetKey::Port => json!("inet_service"),
        SetKey::V4Port => json!(["ipv4_addr", "inet_service"]),
        SetKey::V6Port => json!(["ipv6_addr", "inet_service"]),
        SetKey::V4Addr | SetKey::V4Net => json!("ipv4_addr"),
        SetKey::V6Addr | SetKey::V6Net => json!("ipv6_addr"),
    }
}

fn ports(p: &PortRange) -> Value {
    if p.start == p.end {
        json!(p.start)
    } else {
        json!({"range": [p.start, p.end]})
    }
}

fn prefix(addr: String, len: u8, full: u8) -> Value {
    if len == full {
        json!(addr)
    } else {
        json!({"prefix": {"addr": addr, "len": len}})
    }
}

fn element(e: &Element) -> Value {
    match e {
        Element::Port(p) => ports(p),
        Element::V4Port(net, p) => json!({"concat": [
            prefix(net.addr().to_string(), net.prefix_len(), 32), ports(p)]}),
        Element::V6Port(net, p) => json!({"concat": [
            prefix(net.addr().to_string(), net.prefix_len(), 128), ports(p)]}),
        Element::V4(net) => prefix(net.addr().to_string(), net.prefix_len(), 32),
        Element::V6(net) => prefix(net.addr().to_string(), net.prefix_len(), 128),
    }
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Accept => "accept",
        Verdict::Drop => "drop",
    }
}

fn verdict(v: Verdict) -> Value {
    json!({ verdict_name(v): null })
}

fn payload(protocol: &str, field: &str) -> Value {
    json!({"payload": {"protocol": protocol, "field": field}})
}

fn matches(op: &str, left: Value, right: Value) -> Value {
    json!({"match": {"op": op, "left": left, "right": right}})
}

/// `meta l4proto { tcp, udp, udplite, sctp, dccp }`, in the order nft 1.0.6 prints the
/// anonymous set (its hash order, by protocol number: 6, 17, 33, 132, 136).
fn l4_any() -> Value {
    let mut every = Proto::ALL;
    every.sort_by_key(|p| p.number());
    let names: Vec<&str> = every.iter().map(|p| p.name()).collect();
    matches(
        "==",
        json!({"meta": {"key": "l4proto"}}),
        json!({ "set": names }),
    )
}

fn exprs(rule: &Rule, (packets, bytes): (u64, u64)) -> Value {
    let counter = json!({"counter": {"packets": packets, "bytes": bytes}});
    match rule {
        Rule::Jump { iifname, target } => {
            let mut v = Vec::new();
            if let Some(m) = iifname {
                let op = if m.negate { "!=" } else { "==" };
                v.push(matches(
                    op,
                    json!({"meta": {"key": "iifname"}}),
                    json!(m.name),
                ));
            }
            v.push(counter);
            v.push(json!({"jump": {"target": target}}));
            v.into()
        }
        Rule::SetMatch {
            saddr,
            proto,
            set,
            verdict: vd,
        } => {
            let dport = payload(&proto.to_string(), "dport");
            let left = match saddr {
                None => dport,
                Some(L3::Ip) => json!({"concat": [payload("ip", "saddr"), dport]}),
                Some(L3::Ip6) => json!({"concat": [payload("ip6", "saddr"), dport]}),
            };
            json!([
                matches("==", left, json!(format!("@{set}"))),
                counter,
                verdict(*vd)
            ])
        }
        Rule::SetLogLimited {
            proto,
            set,
            limit,
            group,
            prefix,
            verdict: vd,
        } => json!([
            matches("==", payload(&proto.to_string(), "dport"), json!(format!("@{set}"))),
            {"limit": {"rate": limit.rate, "burst": limit.burst, "per": limit.per.to_string()}},
            counter,
            {"log": {"prefix": prefix, "group": group}},
            verdict(*vd)
        ]),
        Rule::Fragment { l3, verdict: vd } => {
            let left = match l3 {
                L3::Ip => json!({"&": [payload("ip", "frag-off"), 8191]}),
                L3::Ip6 => json!({"exthdr": {"name": "frag", "field": "frag-off"}}),
            };
            json!([matches("!=", left, json!(0)), counter, verdict(*vd)])
        }
        Rule::Ports {
            proto,
            ports: p,
            verdict: vd,
        } => json!([
            matches("==", payload(&proto.to_string(), "dport"), ports(p)),
            counter,
            verdict(*vd)
        ]),
        Rule::CtState {
            states,
            verdict: vd,
        } => {
            let right = if states.len() == 1 {
                json!(states.iter().next())
            } else {
                json!(states)
            };
            json!([
                matches("in", json!({"ct": {"key": "state"}}), right),
                counter,
                verdict(*vd)
            ])
        }
        Rule::LogLimited {
            ports: p,
            limit,
            group,
            prefix,
            verdict: vd,
        } => json!([
            l4_any(),
            matches("==", payload("th", "dport"), ports(p)),
            {"limit": {"rate": limit.rate, "burst": limit.burst, "per": limit.per.to_string()}},
            counter,
            {"log": {"prefix": prefix, "group": group}},
            verdict(*vd)
        ]),
        Rule::Counted {
            ports: p,
            verdict: vd,
        } => json!([
            l4_any(),
            matches("==", payload("th", "dport"), ports(p)),
            counter,
            verdict(*vd)
        ]),
        Rule::SourceSet {
            l3,
            set,
            proto,
            ports: p,
            log,
            verdict: vd,
        } => {
            let mut v = vec![matches(
                "==",
                payload(&l3.to_string(), "saddr"),
                json!(format!("@{set}")),
            )];
            match (proto, p) {
                (Some(pr), Some(r)) => {
                    v.push(matches("==", payload(&pr.to_string(), "dport"), ports(r)));
                }
                (Some(pr), None) => v.push(matches(
                    "==",
                    json!({"meta": {"key": "l4proto"}}),
                    json!(pr.to_string()),
                )),
                (None, _) => {}
            }
            if let Some(l) = log {
                v.push(
                    json!({"limit": {"rate": l.limit.rate, "burst": l.limit.burst,
                    "per": l.limit.per.to_string()}}),
                );
                v.push(counter);
                v.push(json!({"log": {"prefix": l.prefix, "group": l.group}}));
            } else {
                v.push(counter);
            }
            v.push(verdict(*vd));
            v.into()
        }
        Rule::Unknown { expr } => serde_json::from_str(expr).unwrap_or(Value::Null),
    }
}
