//! Typing one `policy:` mapping (from a play or a one-host file) into a [`PolicySpec`]:
//! allow entries (`smtp/tcp`, `25/tcp`, `1000-1010/udp`, `ssh`, or a mapping with
//! port/service/proto/from), interface, replies, log, mode, drift.
//!
//! Every problem is pushed to the caller's [`Diagnostics`] with the offending node's
//! location, and parsing goes on. This module must not merge plays, look at the inventory,
//! or do I/O.

use crate::addrlist::AddrLists;
use crate::diag::Diagnostics;
use crate::model::{
    AllowEntry, DenyEntry, DriftMode, HostPolicy, InterfaceSel, LogLimit, Mode, RateUnit, Replies,
};
use crate::yaml::{Node, NodeKind};

/// A value and the node (line, column) it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located<T> {
    pub value: T,
    pub line: usize,
    pub column: usize,
}

impl<T> Located<T> {
    fn at(value: T, node: &Node) -> Self {
        Self {
            value,
            line: node.line,
            column: node.column,
        }
    }
}

/// The deny-log settings of one `log:` mapping, missing fields filled with defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogSpec {
    pub limit: LogLimit,
    pub group: u16,
}

/// What one `policy:` mapping says. Unset scalars are `None` (merging fills defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicySpec {
    pub interface: Option<Located<InterfaceSel>>,
    pub replies: Option<Located<Replies>>,
    /// Sorted and de-duplicated (see [`normalize_allow`]).
    pub allow: Vec<AllowEntry>,
    /// Every entry as written, with where: for the refusals of `restrict` (which name
    /// both entries of a conflict).
    pub allow_at: Vec<Located<AllowEntry>>,
    /// Blocklists as written, in order.
    pub deny: Vec<DenyEntry>,
    pub log: Option<Located<LogSpec>>,
    pub mode: Option<Located<Mode>>,
    pub drift: Option<Located<DriftMode>>,
}

impl PolicySpec {
    /// This spec alone as a host policy, defaults for what it leaves unset.
    pub fn into_policy(self) -> HostPolicy {
        let d = HostPolicy::default();
        let log = self.log.map(|l| l.value);
        HostPolicy {
            interface: self.interface.map_or(d.interface, |l| l.value),
            replies: self.replies.map_or(d.replies, |l| l.value),
            allow: self.allow,
            deny: self.deny,
            lists: Default::default(),
            log: log.map_or(d.log, |l| l.limit),
            log_group: log.map_or(d.log_group, |l| l.group),
            mode: self.mode.map_or(d.mode, |l| l.value),
            drift: self.drift.map_or(d.drift, |l| l.value),
            management: None,
        }
    }
}

pub const POLICY_KEYS: &[&str] = &[
    "interface",
    "replies",
    "allow",
    "deny",
    "log",
    "mode",
    "drift",
];
const ALLOW_KEYS: &[&str] = &["port", "service", "proto", "from"];
const DENY_KEYS: &[&str] = &["from", "port", "service", "proto"];
const LOG_KEYS: &[&str] = &["rate", "burst", "group"];

/// Collects diagnostics for one file.
pub struct Ctx<'a> {
    pub file: &'a str,
    pub diags: &'a mut Diagnostics,
    /// The list files `from: { file: ... }` may name ([`crate::addrlist::NO_LISTS`]: none).
    pub lists: &'a AddrLists,
}

impl Ctx<'_> {
    pub fn err(&mut self, node: &Node, message: impl Into<String>) {
        self.diags.push(node.diag(self.file, message));
    }

    /// "unknown key" with a did-you-mean when a known key is within edit distance 2.
    pub fn unknown_key(&mut self, key: &Node, place: &str, known: &[&str]) {
        let k = key.as_str().unwrap_or("?");
        let hint = suggest(k, known.iter().copied())
            .map(|s| format!("did you mean `{s}`? "))
            .unwrap_or_default();
        self.err(
            key,
            format!(
                "unknown key `{k}` in {place}: {hint}expected one of {}",
                known.join(", ")
            ),
        );
    }

    /// The node as a mapping, or an error saying what `what` should be.
    pub fn map<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n [(Node, Node)]> {
        let m = node.as_map();
        if m.is_none() {
            self.err(
                node,
                format!("{what} must be a mapping, found {}", node.type_name()),
            );
        }
        m
    }

    fn scalar<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n str> {
        let s = node.as_str();
        if s.is_none() {
            self.err(
                node,
                format!("{what} must be a single value, found {}", node.type_name()),
            );
        }
        s
    }
}

/// Parse a `policy:` mapping. Problems go to `cx`; what could be read is returned.
pub fn parse_policy(node: &Node, cx: &mut Ctx<'_>) -> PolicySpec {
    let mut spec = PolicySpec::default();
    let Some(entries) = cx.map(node, "`policy`") else {
        return spec;
    };
    for (key, v) in entries {
        match key.as_str() {
            Some("interface") => spec.interface = interface(v, cx).map(|x| Located::at(x, v)),
            Some("replies") => {
                let r = choice(
                    v,
                    "replies",
                    &[("ports", Replies::Ports), ("stateful", Replies::Stateful)],
                    cx,
                );
                spec.replies = r.map(|x| Located::at(x, v));
            }
            Some("mode") => {
                let r = choice(
                    v,
                    "mode",
                    &[("enforce", Mode::Enforce), ("audit", Mode::Audit)],
                    cx,
                );
                spec.mode = r.map(|x| Located::at(x, v));
            }
            Some("drift") => {
                let r = choice(
                    v,
                    "drift",
                    &[("heal", DriftMode::Heal), ("report", DriftMode::Report)],
                    cx,
                );
                spec.drift = r.map(|x| Located::at(x, v));
            }
            Some("log") => spec.log = log(v, cx).map(|x| Located::at(x, v)),
            Some("allow") => match &v.kind {
                NodeKind::Null => {}
                NodeKind::Seq(items) => {
                    spec.allow_at = items
                        .iter()
                        .filter_map(|i| allow_entry(i, cx).map(|a| Located::at(a, i)))
                        .collect();
                    spec.allow = spec.allow_at.iter().map(|l| l.value.clone()).collect();
                }
                _ => cx.err(
                    v,
                    format!("`allow` must be a list, found {}", v.type_name()),
                ),
            },
            Some("deny") => match &v.kind {
                NodeKind::Null => {}
                NodeKind::Seq(items) => {
                    spec.deny = items.iter().filter_map(|i| deny_entry(i, cx)).collect();
                }
                _ => cx.err(
                    v,
                    format!(
                        "`deny` must be a list such as [{{ from: {{ file: lists/blocked.txt }} }}], found {}",
                        v.type_name()
                    ),
                ),
            },
            _ => cx.unknown_key(key, "policy", POLICY_KEYS),
        }
    }
    normalize_allow(&mut spec.allow);
    spec
}

/// Sort by (proto, ports, from, lists) and drop entries equal on those, whatever their
/// labels.
pub fn normalize_allow(allow: &mut Vec<AllowEntry>) {
    for a in allow.iter_mut() {
        a.from.sort();
        a.from.dedup();
        a.lists.sort();
        a.lists.dedup();
    }
    allow.sort();
    allow.dedup_by(|b, a| {
        (a.proto, a.ports, &a.from, &a.lists) == (b.proto, b.ports, &b.from, &b.lists)
    });
}

/// Blocklists of several plays in play order, exact repeats (labels aside) dropped.
pub fn normalize_deny(deny: &mut Vec<DenyEntry>) {
    let mut seen = std::collections::BTreeSet::new();
    deny.retain(|d| seen.insert((d.proto, d.ports, d.from.clone(), d.lists.clone())));
}

fn interface(v: &Node, cx: &mut Ctx<'_>) -> Option<InterfaceSel> {
    let s = cx.scalar(v, "`interface`")?;
    match s {
        "default" => Some(InterfaceSel::Default),
        "all" => Some(InterfaceSel::All),
        _ if s.is_empty()
            || s.len() > 15
            || s.contains(|c: char| c == '/' || c.is_whitespace()) =>
        {
            cx.err(v, format!("`interface`: `{s}` is not an interface name (1-15 characters, no `/` or spaces), `default` or `all`"));
            None
        }
        _ => Some(InterfaceSel::Named(s.to_string())),
    }
}

fn choice<T: Copy>(v: &Node, field: &str, options: &[(&str, T)], cx: &mut Ctx<'_>) -> Option<T> {
    let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
    let s = cx.scalar(v, &format!("`{field}`"))?;
    if let Some((_, x)) = options.iter().find(|(n, _)| *n == s) {
        return Some(*x);
    }
    let hint = suggest(s, names.iter().copied())
        .map(|x| format!(" (did you mean `{x}`?)"))
        .unwrap_or_default();
    cx.err(
        v,
        format!(
            "`{field}`: unknown value `{s}`{hint}; expected {}",
            names.join(" or ")
        ),
    );
    None
}

fn log(v: &Node, cx: &mut Ctx<'_>) -> Option<LogSpec> {
    let entries = cx.map(v, "`log`")?;
    let mut out = LogSpec {
        limit: LogLimit::default(),
        group: crate::model::DEFAULT_LOG_GROUP,
    };
    let mut ok = true;
    let mut burst_node = None;
    for (key, val) in entries {
        match key.as_str() {
            Some("rate") => match rate(val, cx) {
                Some((n, unit)) => (out.limit.rate, out.limit.per) = (n, unit),
                None => ok = false,
            },
            Some("burst") => match number(val, "`log.burst`", 1, u64::from(u32::MAX), cx) {
                Some(n) => {
                    out.limit.burst = n as u32;
                    burst_node = Some(val);
                }
                None => ok = false,
            },
            Some("group") => match number(val, "`log.group` (NFLOG group)", 0, 65535, cx) {
                Some(n) => out.group = n as u16,
                None => ok = false,
            },
            _ => {
                cx.unknown_key(key, "log", LOG_KEYS);
                ok = false;
            }
        }
    }
    // The kernel's limit keeps burst x unit in nanoseconds in 64 bits ("Value too large").
    let unit_ns: u64 = match out.limit.per {
        crate::model::RateUnit::Second => 1_000_000_000,
        crate::model::RateUnit::Minute => 60_000_000_000,
        crate::model::RateUnit::Hour => 3_600_000_000_000,
        crate::model::RateUnit::Day => 86_400_000_000_000,
    };
    if let Some(node) = burst_node
        && u64::from(out.limit.burst).checked_mul(unit_ns).is_none()
    {
        cx.err(
            node,
            format!(
                "`log.burst`: {} is too large for a rate per {} (the kernel allows at most {})",
                out.limit.burst,
                out.limit.per,
                u64::MAX / unit_ns
            ),
        );
        ok = false;
    }
    ok.then_some(out)
}

/// An integer in `min..=max`, written plainly or quoted.
fn number(v: &Node, what: &str, min: u64, max: u64, cx: &mut Ctx<'_>) -> Option<u64> {
    let s = cx.scalar(v, what)?;
    match s.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Some(n),
        Ok(n) => {
            cx.err(v, format!("{what}: {n} is out of range ({min}-{max})"));
            None
        }
        Err(_) => {
            cx.err(v, format!("{what}: expected a whole number, found `{s}`"));
            None
        }
    }
}

fn rate(v: &Node, cx: &mut Ctx<'_>) -> Option<(u32, RateUnit)> {
    const UNITS: &[(&str, RateUnit)] = &[
        ("second", RateUnit::Second),
        ("minute", RateUnit::Minute),
        ("hour", RateUnit::Hour),
        ("day", RateUnit::Day),
    ];
    let s = cx.scalar(v, "`log.rate`")?;
    let Some((n, unit)) = s.split_once('/') else {
        cx.err(
            v,
            format!("`log.rate`: expected N/second, N/minute, N/hour or N/day, found `{s}`"),
        );
        return None;
    };
    let n = match n.trim().parse::<u32>() {
        Ok(0) => {
            cx.err(
                v,
                "`log.rate`: the rate must be at least 1 (0 would log nothing; use a small rate)",
            );
            return None;
        }
        Ok(n) => n,
        Err(_) => {
            cx.err(
                v,
                format!("`log.rate`: `{}` is not a whole number", n.trim()),
            );
            return None;
        }
    };
    let unit = unit.trim();
    match UNITS.iter().find(|(u, _)| *u == unit) {
        Some((_, u)) => Some((n, *u)),
        None => {
            let hint = suggest(unit, UNITS.iter().map(|(u, _)| *u))
                .map(|x| format!(" (did you mean `{x}`?)"))
                .unwrap_or_default();
            cx.err(
                v,
                format!(
                    "`log.rate`: unknown unit `{unit}`{hint}; expected second, minute, hour or day"
                ),
            );
            None
        }
    }
}

#[path = "allow.rs"]
mod allow;
#[path = "deny.rs"]
mod deny;
use allow::allow_entry;
pub use allow::{parse_cidr, parse_ports};
use deny::deny_entry;

/// The closest candidate within edit distance 2 of `word` (ties: first), if any.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d <= 2 && *d < c.chars().count().max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "parse_tests.rs"]
mod tests;
