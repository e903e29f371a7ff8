//! Coexistence findings: other tables' base chains on the hooks our traffic passes through
//! (ingress, prerouting, input), read from `nft -j list ruleset`.
//!
//! A `drop` in any base chain on a hook is final whatever our table accepted, and an
//! `accept` elsewhere does not skip our chain; so Docker, fail2ban, iptables-nft or
//! firewalld chains can deny what our policy allows. We report them, with where they run
//! relative to us; we never touch them. Pure: parses JSON, no I/O.

use portcullis_policy::TABLE_NAME;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Our input chain's priority (`filter - 10`).
pub const OUR_PRIORITY: i64 = -10;

/// Hooks whose chains see the packets our input chain sees.
const HOOKS: &[&str] = &["ingress", "prerouting", "input"];
/// Families whose hooks see IPv4/IPv6 packets to this host.
const FAMILIES: &[&str] = &["ip", "ip6", "inet", "bridge", "netdev"];

/// One foreign base chain that can affect traffic we filter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Finding {
    pub family: String,
    pub table: String,
    pub chain: String,
    pub hook: String,
    pub priority: i64,
    pub policy: String,
    pub rules: u32,
    /// A drop/reject verdict (directly or through jumps/gotos), or policy drop.
    pub has_drop: bool,
    pub note: String,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot parse `nft -j list ruleset`: {0}")]
pub struct CoexistError(String);

/// Findings from `nft -j list ruleset` output, sorted (deterministic).
pub fn findings(json: &str) -> Result<Vec<Finding>, CoexistError> {
    let doc: Value = serde_json::from_str(json).map_err(|e| CoexistError(e.to_string()))?;
    let items = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| CoexistError("no \"nftables\" array".to_owned()))?;
    // (family, table, chain) -> rules' expressions
    type Key = (String, String, String);
    let mut bases: Vec<(Key, &Value)> = Vec::new();
    let mut rules: BTreeMap<Key, Vec<&Value>> = BTreeMap::new();
    for item in items {
        if let Some(c) = item.get("chain") {
            if let (Some(key), Some(_)) = (key_of(c, "name"), c.get("hook")) {
                bases.push((key, c));
            }
        } else if let Some(r) = item.get("rule")
            && let Some(key) = key_of(r, "chain")
        {
            rules
                .entry(key)
                .or_default()
                .push(r.get("expr").unwrap_or(&Value::Null));
        }
    }
    let mut out = Vec::new();
    for ((family, table, chain), c) in bases {
        let hook = c.get("hook").and_then(Value::as_str).unwrap_or_default();
        if (family == "inet" && table == TABLE_NAME)
            || !HOOKS.contains(&hook)
            || !FAMILIES.contains(&family.as_str())
        {
            continue;
        }
        let priority = c.get("prio").and_then(Value::as_i64).unwrap_or(0);
        let policy = c
            .get("policy")
            .and_then(Value::as_str)
            .unwrap_or("accept")
            .to_owned();
        let key = (family.clone(), table.clone(), chain.clone());
        let count = rules.get(&key).map_or(0, Vec::len);
        let has_drop = policy == "drop" || can_drop(&rules, &key, &mut BTreeSet::new());
        let note = note(&family, hook, priority, has_drop);
        out.push(Finding {
            family,
            table,
            chain,
            hook: hook.to_owned(),
            priority,
            policy,
            rules: u32::try_from(count).unwrap_or(u32::MAX),
            has_drop,
            note,
        });
    }
    out.sort();
    Ok(out)
}

fn key_of(obj: &Value, name_field: &str) -> Option<(String, String, String)> {
    let s = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);
    Some((s("family")?, s("table")?, s(name_field)?))
}

/// Whether a chain's rules (or chains it jumps to, in the same table) can drop or reject.
fn can_drop(
    rules: &BTreeMap<(String, String, String), Vec<&Value>>,
    key: &(String, String, String),
    seen: &mut BTreeSet<(String, String, String)>,
) -> bool {
    if !seen.insert(key.clone()) {
        return false;
    }
    let Some(exprs) = rules.get(key) else {
        return false;
    };
    let mut targets = Vec::new();
    let dropping = exprs.iter().any(|e| scan(e, &mut targets));
    dropping
        || targets.into_iter().any(|t| {
            let next = (key.0.clone(), key.1.clone(), t);
            can_drop(rules, &next, seen)
        })
}

/// True if `v` holds a drop/reject/queue verdict anywhere (incl. verdict maps); collects
/// jump/goto targets into `targets`.
fn scan(v: &Value, targets: &mut Vec<String>) -> bool {
    match v {
        Value::Object(m) => {
            let mut found = false;
            for (k, inner) in m {
                match k.as_str() {
                    "drop" | "reject" | "queue" => found = true,
                    "jump" | "goto" => {
                        if let Some(t) = inner.get("target").and_then(Value::as_str) {
                            targets.push(t.to_owned());
                        }
                    }
                    _ => found |= scan(inner, targets),
                }
            }
            found
        }
        Value::Array(a) => a.iter().fold(false, |acc, x| scan(x, targets) | acc),
        _ => false,
    }
}

fn note(family: &str, hook: &str, priority: i64, has_drop: bool) -> String {
    let when = match hook {
        "ingress" | "prerouting" => format!("runs before portcullis ({hook} hook)"),
        _ if family == "bridge" => "bridge input hook: sees bridged traffic".to_owned(),
        _ if priority < OUR_PRIORITY => {
            format!("runs before portcullis (priority {priority} < {OUR_PRIORITY})")
        }
        _ if priority > OUR_PRIORITY => {
            format!("runs after portcullis (priority {priority} > {OUR_PRIORITY})")
        }
        _ => format!("same priority as portcullis ({priority}): order not defined"),
    };
    let scope = match family {
        "ip" => "; IPv4 only",
        "ip6" => "; IPv6 only",
        _ => "",
    };
    let effect = if has_drop {
        "; can drop what portcullis allows"
    } else {
        "; accepts only (cannot override our drops)"
    };
    format!("{when}{scope}{effect}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const RULESET: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
 {"table": {"family": "ip", "name": "filter", "handle": 1}},
 {"chain": {"family": "ip", "table": "filter", "name": "INPUT", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}},
 {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 2, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
 {"chain": {"family": "ip", "table": "filter", "name": "f2b", "handle": 3}},
 {"rule": {"family": "ip", "table": "filter", "chain": "INPUT", "handle": 4, "expr": [{"jump": {"target": "f2b"}}]}},
 {"rule": {"family": "ip", "table": "filter", "chain": "f2b", "handle": 5, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}}, {"reject": null}]}},
 {"table": {"family": "inet", "name": "portcullis", "handle": 2}},
 {"chain": {"family": "inet", "table": "portcullis", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": -10, "policy": "accept"}},
 {"table": {"family": "inet", "name": "docker", "handle": 3}},
 {"chain": {"family": "inet", "table": "docker", "name": "pre", "handle": 1, "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}},
 {"rule": {"family": "inet", "table": "docker", "chain": "pre", "handle": 2, "expr": [{"counter": {"packets": 0, "bytes": 0}}, {"accept": null}]}}
]}"#;

    #[test]
    fn finds_foreign_input_and_prerouting_chains_but_not_ours() {
        let f = findings(RULESET).unwrap();
        let names: Vec<_> = f
            .iter()
            .map(|x| format!("{} {} {}", x.family, x.table, x.chain))
            .collect();
        assert_eq!(names, ["inet docker pre", "ip filter INPUT"]);
        let filter = &f[1];
        assert!(filter.has_drop, "reject reached through a jump: {filter:?}");
        assert_eq!(
            (filter.hook.as_str(), filter.priority, filter.rules),
            ("input", 0, 1)
        );
        assert!(
            filter.note.contains("runs after portcullis"),
            "{}",
            filter.note
        );
        assert!(filter.note.contains("IPv4 only"), "{}", filter.note);
        let docker = &f[0];
        assert!(!docker.has_drop);
        assert!(docker.note.contains("before portcullis"), "{}", docker.note);
    }

    #[test]
    fn policy_drop_and_jumps_to_harmless_chains() {
        let json = r#"{"nftables": [
 {"chain": {"family": "inet", "table": "t", "name": "in", "hook": "input", "prio": -200, "policy": "drop"}},
 {"chain": {"family": "inet", "table": "t", "name": "a"}},
 {"chain": {"family": "inet", "table": "t", "name": "b"}},
 {"chain": {"family": "inet", "table": "u", "name": "in", "hook": "input", "prio": 10, "policy": "accept"}},
 {"rule": {"family": "inet", "table": "u", "chain": "in", "expr": [{"jump": {"target": "a"}}]}}
]}"#;
        let f = findings(json).unwrap();
        assert_eq!(f.len(), 2);
        assert!(f[0].has_drop && f[0].note.contains("before"));
        assert!(!f[1].has_drop);
        assert!(findings("not json").is_err());
    }
}
