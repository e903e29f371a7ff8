//! The site file (a YAML list of plays: name, hosts pattern, policy) against an inventory:
//! validation with every error located, and merging of the plays into one [`HostPolicy`]
//! per targeted host (allow = union; scalars must agree, else an error naming both plays).
//!
//! Also the one-host policy file of `portcullis-agent apply --policy`. This module must not
//! read files (callers pass [`Source`]s) or know about nftables.

use crate::addrlist::{AddrLists, NO_LISTS};
use crate::diag::{Diagnostics, Source};
use crate::inventory::Inventory;
use crate::lockout::{self, Requirement};
use crate::model::{DriftMode, HostPolicy, InterfaceSel, Mode, Replies};
use crate::parse::{
    Ctx, Located, LogSpec, PolicySpec, normalize_allow, normalize_deny, parse_policy,
};
use crate::pattern;
use crate::restrict;
use crate::yaml::{self, Node, NodeKind};
use std::collections::{BTreeMap, BTreeSet};

/// One play as loaded, for `plan`/`status` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaySummary {
    pub name: String,
    /// The host pattern as written.
    pub hosts: String,
    pub matched: BTreeSet<String>,
    pub line: usize,
}

/// The whole desired state: inventory, every targeted host's merged policy, the plays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fleet {
    pub inventory: Inventory,
    /// Only hosts targeted by at least one play.
    pub hosts: BTreeMap<String, HostPolicy>,
    pub plays: Vec<PlaySummary>,
    /// Per host: access that must stay open (`management:` of the plays matching it),
    /// checked by the controller's anti-lockout guard before anything is sent.
    pub management: BTreeMap<String, Vec<Requirement>>,
}

const PLAY_KEYS: &[&str] = &["name", "hosts", "policy", "management"];

struct Play {
    name: String,
    line: usize,
    pattern: Option<(String, Node)>,
    spec: Option<PolicySpec>,
    management: Vec<Requirement>,
}

/// Load and validate a site file against an inventory. Every problem in either file is
/// reported, sorted by file and location.
pub fn load_fleet(site: &Source, inventory: &Source) -> Result<Fleet, Diagnostics> {
    load_fleet_with_lists(site, inventory, &NO_LISTS)
}

/// [`load_fleet`] for a site whose `from:` entries may name list files (`{ file: x }`),
/// parsed by [`AddrLists::parse`] from the files [`crate::addrlist::list_references`]
/// names. A named file missing from `lists` is an error at the `file:` value.
pub fn load_fleet_with_lists(
    site: &Source,
    inventory: &Source,
    lists: &AddrLists,
) -> Result<Fleet, Diagnostics> {
    let mut diags = Diagnostics::default();
    let inv = match Inventory::parse(inventory) {
        Ok(i) => Some(i),
        Err(e) => {
            diags.extend(e);
            None
        }
    };
    let plays = match yaml::parse(site) {
        Ok(root) => read_plays(
            &root,
            &mut Ctx {
                file: &site.name,
                diags: &mut diags,
                lists,
            },
        ),
        Err(e) => {
            diags.extend(e);
            Vec::new()
        }
    };
    let Some(inv) = inv else {
        return Err(diags.finish());
    };
    let mut summaries = Vec::new();
    let mut targeted: Vec<(usize, BTreeSet<String>)> = Vec::new();
    let mut management: BTreeMap<String, Vec<Requirement>> = BTreeMap::new();
    for (i, play) in plays.iter().enumerate() {
        let mut matched = BTreeSet::new();
        if let Some((pat, node)) = &play.pattern {
            match pattern::select(&inv, pat) {
                Ok(hosts) => matched = hosts,
                Err(e) => diags.push(node.diag(&site.name, e.to_string())),
            }
        }
        if play.spec.is_some() {
            targeted.push((i, matched.clone()));
        }
        for host in &matched {
            let reqs = management.entry(host.clone()).or_default();
            for r in &play.management {
                let same = |o: &Requirement| {
                    (o.proto, o.ports, o.from, o.established)
                        == (r.proto, r.ports, r.from, r.established)
                };
                if !reqs.iter().any(same) {
                    reqs.push(r.clone());
                }
            }
        }
        summaries.push(PlaySummary {
            name: play.name.clone(),
            hosts: play
                .pattern
                .as_ref()
                .map(|(p, _)| p.clone())
                .unwrap_or_default(),
            matched,
            line: play.line,
        });
    }
    let mut hosts = merge(&plays, &targeted, &site.name, &mut diags);
    for policy in hosts.values_mut() {
        lists.attach(policy);
    }
    if !diags.is_empty() {
        return Err(diags.finish());
    }
    for (host, policy) in &mut hosts {
        let reqs = management.get(host).map(Vec::as_slice).unwrap_or_default();
        policy.management = Some(reqs.iter().map(Requirement::keep_syntax).collect());
    }
    Ok(Fleet {
        inventory: inv,
        hosts,
        plays: summaries,
        management: management
            .into_iter()
            .filter(|(_, r)| !r.is_empty())
            .collect(),
    })
}

/// Load a one-host policy file: the `policy:` mapping itself (a top-level `policy:` key
/// wrapping it is accepted too). Unset fields take [`HostPolicy::default`] values.
pub fn load_host_policy(src: &Source) -> Result<HostPolicy, Diagnostics> {
    load_host_policy_with_lists(src, &NO_LISTS)
}

/// [`load_host_policy`] with the list files its `from:` entries may name.
pub fn load_host_policy_with_lists(
    src: &Source,
    lists: &AddrLists,
) -> Result<HostPolicy, Diagnostics> {
    let root = yaml::parse(src)?;
    let mut diags = Diagnostics::default();
    let mut cx = Ctx {
        file: &src.name,
        diags: &mut diags,
        lists,
    };
    if root.is_null() {
        cx.err(&root, "the policy file is empty: expected a mapping with allow, interface, replies, log, mode, drift");
        return Err(diags.finish());
    }
    let body = match root.as_map() {
        Some([(k, v)]) if k.as_str() == Some("policy") => v,
        _ => &root,
    };
    let spec = parse_policy(body, &mut cx);
    restrict::file_refusals(&spec, &src.name, &mut diags);
    if !diags.is_empty() {
        return Err(diags.finish());
    }
    let mut policy = spec.into_policy();
    lists.attach(&mut policy);
    Ok(policy)
}

fn read_plays(root: &Node, cx: &mut Ctx<'_>) -> Vec<Play> {
    let items = match &root.kind {
        NodeKind::Null => {
            cx.err(root, "the site file is empty: expected a list of plays (`- name: ..., hosts: ..., policy: ...`)");
            return Vec::new();
        }
        NodeKind::Seq(items) if items.is_empty() => {
            cx.err(root, "the site file has no plays");
            return Vec::new();
        }
        NodeKind::Seq(items) => items,
        _ => {
            cx.err(
                root,
                format!(
                    "the site file must be a list of plays, found {}",
                    root.type_name()
                ),
            );
            return Vec::new();
        }
    };
    items
        .iter()
        .enumerate()
        .filter_map(|(i, n)| read_play(i, n, cx))
        .collect()
}

fn read_play(index: usize, node: &Node, cx: &mut Ctx<'_>) -> Option<Play> {
    let entries = cx.map(node, &format!("play #{}", index + 1))?;
    let mut play = Play {
        name: format!("play #{}", index + 1),
        line: node.line,
        pattern: None,
        spec: None,
        management: Vec::new(),
    };
    let mut policy = None;
    for (k, v) in entries {
        match k.as_str() {
            Some("name") => match v.as_str() {
                Some(s) => play.name = s.to_string(),
                None => cx.err(v, format!("`name` must be text, found {}", v.type_name())),
            },
            Some("hosts") => play.pattern = hosts_pattern(v, cx).map(|p| (p, v.clone())),
            Some("policy") => policy = Some(v),
            Some("management") => play.management = management(v, cx),
            _ => cx.unknown_key(k, "play", PLAY_KEYS),
        }
    }
    let has_hosts = entries_has(entries, "hosts");
    // A play may only declare management access (e.g. `hosts: all`).
    let has_policy = policy.is_some() || entries_has(entries, "management");
    if !has_hosts {
        cx.err(
            node,
            format!(
                "play `{}` has no `hosts` (an inventory pattern such as `all` or `mail:&europe`)",
                play.name
            ),
        );
    }
    if !has_policy {
        cx.err(
            node,
            format!("play `{}` has no `policy` (nor `management`)", play.name),
        );
    }
    play.spec = policy.map(|p| parse_policy(p, cx));
    Some(play)
}

/// `management:` — a list of access entries that must stay open, in the `--keep` syntax
/// (`tcp/22`, `ssh/tcp from 10.0.0.0/8`); each error points at its entry.
fn management(v: &Node, cx: &mut Ctx<'_>) -> Vec<Requirement> {
    let items: Vec<&Node> = match &v.kind {
        NodeKind::Seq(items) => items.iter().collect(),
        NodeKind::Scalar(_) => vec![v],
        _ => {
            cx.err(
                v,
                format!(
                    "`management` must be a list of access entries such as `tcp/22 from 10.0.0.0/8`, found {}",
                    v.type_name()
                ),
            );
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for item in items {
        let Some(text) = item.as_str() else {
            cx.err(
                item,
                format!(
                    "a `management` entry must be text such as `tcp/22 from 10.0.0.0/8`, found {}",
                    item.type_name()
                ),
            );
            continue;
        };
        match lockout::parse_keep(text) {
            Ok(reqs) => out.extend(reqs.into_iter().map(|mut r| {
                r.what = format!("management `{text}` ({}:{})", cx.file, item.line);
                r
            })),
            Err(e) => cx.err(item, format!("`management`: {e}")),
        }
    }
    out
}

fn entries_has(entries: &[(Node, Node)], key: &str) -> bool {
    entries.iter().any(|(k, _)| k.as_str() == Some(key))
}

/// `hosts:` is a pattern, or a list of patterns (their union).
fn hosts_pattern(v: &Node, cx: &mut Ctx<'_>) -> Option<String> {
    match &v.kind {
        NodeKind::Scalar(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        NodeKind::Seq(items) if !items.is_empty() => {
            let parts: Option<Vec<&str>> = items.iter().map(Node::as_str).collect();
            match parts {
                Some(p) => Some(p.join(",")),
                None => {
                    cx.err(v, "`hosts` must be a pattern or a list of patterns");
                    None
                }
            }
        }
        _ => {
            cx.err(v, format!("`hosts` must be an inventory pattern (e.g. `all`, `mail`, `web:!staging`), found {}", v.type_name()));
            None
        }
    }
}

/// A value shown in conflict messages.
trait Show {
    fn show(&self) -> String;
}
impl Show for InterfaceSel {
    fn show(&self) -> String {
        match self {
            InterfaceSel::All => "all".into(),
            InterfaceSel::Default => "default".into(),
            InterfaceSel::Named(n) => n.clone(),
        }
    }
}
impl Show for Replies {
    fn show(&self) -> String {
        match self {
            Replies::Ports => "ports".into(),
            Replies::Stateful => "stateful".into(),
        }
    }
}
impl Show for Mode {
    fn show(&self) -> String {
        match self {
            Mode::Enforce => "enforce".into(),
            Mode::Audit => "audit".into(),
        }
    }
}
impl Show for DriftMode {
    fn show(&self) -> String {
        match self {
            DriftMode::Heal => "heal".into(),
            DriftMode::Report => "report".into(),
        }
    }
}
impl Show for LogSpec {
    fn show(&self) -> String {
        let l = &self.limit;
        format!(
            "{{ rate: {}/{}, burst: {}, group: {} }}",
            l.rate, l.per, l.burst, self.group
        )
    }
}

/// Conflicts keyed by (field, first play, second play): the hosts concerned, and the two
/// located values shown.
type Conflicts =
    BTreeMap<(&'static str, usize, usize), (BTreeSet<String>, Located<String>, Located<String>)>;

/// Per host: the first play that set each scalar, with its value.
#[derive(Default)]
struct Slots {
    interface: Option<(usize, Located<InterfaceSel>)>,
    replies: Option<(usize, Located<Replies>)>,
    log: Option<(usize, Located<LogSpec>)>,
    mode: Option<(usize, Located<Mode>)>,
    drift: Option<(usize, Located<DriftMode>)>,
}

fn slot<T: PartialEq + Clone + Show>(
    slot: &mut Option<(usize, Located<T>)>,
    new: &Option<Located<T>>,
    (field, play, host): (&'static str, usize, &str),
    conflicts: &mut Conflicts,
) {
    let Some(new) = new else { return };
    match slot {
        None => *slot = Some((play, new.clone())),
        Some((first, old)) if old.value != new.value => {
            let shown = |l: &Located<T>| Located {
                value: l.value.show(),
                line: l.line,
                column: l.column,
            };
            conflicts
                .entry((field, *first, play))
                .or_insert_with(|| (BTreeSet::new(), shown(old), shown(new)))
                .0
                .insert(host.to_string());
        }
        Some(_) => {}
    }
}

fn merge(
    plays: &[Play],
    targeted: &[(usize, BTreeSet<String>)],
    file: &str,
    diags: &mut Diagnostics,
) -> BTreeMap<String, HostPolicy> {
    let mut slots: BTreeMap<String, Slots> = BTreeMap::new();
    let mut host_plays: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut allows: BTreeMap<String, Vec<crate::model::AllowEntry>> = BTreeMap::new();
    let mut denies: BTreeMap<String, Vec<crate::model::DenyEntry>> = BTreeMap::new();
    let mut conflicts = Conflicts::new();
    for (i, hosts) in targeted {
        let Some(spec) = &plays[*i].spec else {
            continue;
        };
        for host in hosts {
            host_plays.entry(host).or_default().push(*i);
            let s = slots.entry(host.clone()).or_default();
            let c = &mut conflicts;
            slot(
                &mut s.interface,
                &spec.interface,
                ("interface", *i, host),
                c,
            );
            slot(&mut s.replies, &spec.replies, ("replies", *i, host), c);
            slot(&mut s.log, &spec.log, ("log", *i, host), c);
            slot(&mut s.mode, &spec.mode, ("mode", *i, host), c);
            slot(&mut s.drift, &spec.drift, ("drift", *i, host), c);
            allows
                .entry(host.clone())
                .or_default()
                .extend(spec.allow.iter().cloned());
            denies
                .entry(host.clone())
                .or_default()
                .extend(spec.deny.iter().cloned());
        }
    }
    for ((field, a, b), (hosts, va, vb)) in conflicts {
        let (pa, pb) = (&plays[a], &plays[b]);
        let names: Vec<&str> = hosts.iter().map(String::as_str).take(5).collect();
        let more = hosts.len().saturating_sub(names.len());
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        diags.push(crate::diag::Diagnostic {
            file: file.to_string(),
            line: vb.line,
            column: vb.column,
            message: format!(
                "conflicting `{field}` for host {}{more}: play `{}` ({file}:{}) sets {} at {file}:{}:{}, play `{}` ({file}:{}) sets {}",
                names.join(", "), pa.name, pa.line, va.value, va.line, va.column, pb.name, pb.line, vb.value
            ),
        });
    }
    let d = HostPolicy::default();
    // Hosts with the same plays (and so the same replies) are checked once.
    let mut groups: BTreeMap<(Vec<usize>, Replies), BTreeSet<&str>> = BTreeMap::new();
    for (host, played) in host_plays {
        let replies = slots
            .get(host)
            .and_then(|s| s.replies.as_ref())
            .map_or(d.replies, |(_, l)| l.value);
        groups.entry((played, replies)).or_default().insert(host);
    }
    let specs: Vec<(&str, Option<&PolicySpec>)> = plays
        .iter()
        .map(|p| (p.name.as_str(), p.spec.as_ref()))
        .collect();
    restrict::fleet_refusals(&specs, &groups, file, diags);
    slots
        .into_iter()
        .map(|(host, s)| {
            let mut allow = allows.remove(&host).unwrap_or_default();
            normalize_allow(&mut allow);
            let mut deny = denies.remove(&host).unwrap_or_default();
            normalize_deny(&mut deny);
            let log = s.log.map(|(_, l)| l.value);
            let p = HostPolicy {
                interface: s.interface.map_or(d.interface.clone(), |(_, l)| l.value),
                replies: s.replies.map_or(d.replies, |(_, l)| l.value),
                allow,
                deny,
                lists: BTreeMap::new(), // filled by the caller
                log: log.map_or(d.log, |l| l.limit),
                log_group: log.map_or(d.log_group, |l| l.group),
                mode: s.mode.map_or(d.mode, |(_, l)| l.value),
                drift: s.drift.map_or(d.drift, |(_, l)| l.value),
                management: None, // filled by the caller from the plays' `management:`
            };
            (host, p)
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "site_tests.rs"]
mod tests;
