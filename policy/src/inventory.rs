//! Ansible's YAML inventory: `all:` with `hosts:`, `children:` (nested groups) and `vars:`.
//!
//! Produces the host -> groups and group -> hosts relations (a host belongs to every ancestor
//! of the groups it is listed in, to `all`, and to `ungrouped` if nothing else), with every
//! error located. Variables are parsed but not interpreted, except `ansible_host`, which is
//! kept. This module must not read files, resolve names, or evaluate patterns.

use crate::budget::Budget;
use crate::diag::{Diagnostics, Source};
use crate::parse::suggest;
use crate::yaml::{self, Node, NodeKind};
use std::collections::{BTreeMap, BTreeSet};

/// One inventory host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostEntry {
    /// Every group the host belongs to, including ancestors, `all` and maybe `ungrouped`.
    pub groups: BTreeSet<String>,
    /// Scalar host variables (last definition wins); nested values are skipped.
    pub vars: BTreeMap<String, String>,
    /// The `ansible_host` variable, if set.
    pub ansible_host: Option<String>,
    /// Where the host is first listed.
    pub line: usize,
    pub column: usize,
}

/// A parsed inventory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub hosts: BTreeMap<String, HostEntry>,
    /// Group name -> every host in it (transitively). Always has `all` and `ungrouped`.
    pub groups: BTreeMap<String, BTreeSet<String>>,
}

const GROUP_KEYS: &[&str] = &["hosts", "children", "vars"];

#[derive(Default)]
struct Builder<'a> {
    file: &'a str,
    diags: Diagnostics,
    /// child group -> its parent groups.
    parents: BTreeMap<String, BTreeSet<String>>,
    /// group -> child groups with the node that names the child.
    children: BTreeMap<String, Vec<(String, &'a Node)>>,
    direct: BTreeMap<String, BTreeSet<String>>,
    hosts: BTreeMap<String, HostEntry>,
    budget: Budget,
    /// Host listings so far (a range counts every name it expands to).
    listed: usize,
    /// The listing budget was exceeded (reported once; later hosts are skipped).
    over_budget: bool,
}

impl Inventory {
    /// Parse an Ansible YAML inventory. Every problem is reported, sorted by location.
    pub fn parse(src: &Source) -> Result<Inventory, Diagnostics> {
        Self::parse_with(src, &Budget::default())
    }

    /// [`Inventory::parse`] within `budget` (YAML limits and host listings).
    pub fn parse_with(src: &Source, budget: &Budget) -> Result<Inventory, Diagnostics> {
        let root = yaml::parse_with(src, budget)?;
        let mut b = Builder {
            file: &src.name,
            budget: *budget,
            ..Builder::default()
        };
        b.direct.insert("all".into(), BTreeSet::new());
        match &root.kind {
            NodeKind::Null => {}
            NodeKind::Map(entries) => {
                for (key, body) in entries {
                    let Some(name) = b.group_name(key) else {
                        continue;
                    };
                    if name != "all" {
                        b.link("all", name, key);
                    }
                    b.group(name, body);
                }
            }
            _ => b.diags.push(root.diag(
                b.file,
                format!(
                    "an inventory must be a mapping of groups (`all:`), found {}",
                    root.type_name()
                ),
            )),
        }
        b.check_cycles();
        if !b.diags.is_empty() {
            return Err(b.diags.finish());
        }
        Ok(b.finish())
    }

    /// All host names.
    pub fn host_names(&self) -> BTreeSet<String> {
        self.hosts.keys().cloned().collect()
    }
}

impl<'a> Builder<'a> {
    fn group_name(&mut self, key: &'a Node) -> Option<&'a str> {
        match key.as_str() {
            Some(s) if !s.trim().is_empty() && !s.contains(char::is_whitespace) => Some(s),
            _ => {
                self.diags.push(key.diag(
                    self.file,
                    "expected a group name (a word without spaces) as key",
                ));
                None
            }
        }
    }

    fn link(&mut self, parent: &str, child: &str, at: &'a Node) {
        self.parents
            .entry(child.to_string())
            .or_default()
            .insert(parent.to_string());
        self.children
            .entry(parent.to_string())
            .or_default()
            .push((child.to_string(), at));
    }

    fn group(&mut self, name: &str, body: &'a Node) {
        self.direct.entry(name.to_string()).or_default();
        let entries = match &body.kind {
            NodeKind::Null => return,
            NodeKind::Map(e) => e,
            _ => {
                self.diags.push(body.diag(
                    self.file,
                    format!(
                        "group `{name}`: expected a mapping with hosts/children/vars, found {}",
                        body.type_name()
                    ),
                ));
                return;
            }
        };
        for (key, value) in entries {
            match key.as_str() {
                Some("hosts") => self.hosts_of(name, value),
                Some("children") => self.children_of(name, value),
                Some("vars") => {
                    if !value.is_null() && value.as_map().is_none() {
                        self.diags.push(value.diag(
                            self.file,
                            format!("group `{name}`: `vars` must be a mapping"),
                        ));
                    }
                }
                other => {
                    let k = other.unwrap_or("?");
                    let hint = suggest(k, GROUP_KEYS.iter().copied())
                        .map(|s| format!(" (did you mean `{s}`?)"))
                        .unwrap_or_default();
                    self.diags.push(key.diag(
                        self.file,
                        format!(
                            "group `{name}`: unknown key `{k}`{hint}; expected hosts, children or vars"
                        ),
                    ));
                }
            }
        }
    }

    fn hosts_of(&mut self, group: &str, value: &'a Node) {
        let entries = match &value.kind {
            NodeKind::Null => return,
            NodeKind::Map(e) => e,
            _ => {
                self.diags.push(value.diag(
                    self.file,
                    format!(
                        "group `{group}`: `hosts` must be a mapping of host names, found {}",
                        value.type_name()
                    ),
                ));
                return;
            }
        };
        for (key, vars) in entries {
            let Some(pattern) = key.as_str().filter(|s| !s.trim().is_empty()) else {
                self.diags
                    .push(key.diag(self.file, "expected a host name as key"));
                continue;
            };
            if self.over_budget {
                return;
            }
            let limit = self.budget.max_range_hosts;
            let names = match expand_range(pattern, limit.saturating_sub(self.listed), limit) {
                Ok(n) => n,
                Err(RangeError::Malformed(e)) => {
                    self.diags.push(key.diag(self.file, e));
                    continue;
                }
                Err(RangeError::OverBudget(e)) => {
                    self.over_budget = true;
                    self.diags.push(key.diag(self.file, e));
                    return;
                }
            };
            self.listed = self.listed.saturating_add(names.len());
            for host in names {
                self.direct
                    .entry(group.to_string())
                    .or_default()
                    .insert(host.clone());
                let entry = self.hosts.entry(host).or_insert_with(|| HostEntry {
                    line: key.line,
                    column: key.column,
                    ..HostEntry::default()
                });
                match &vars.kind {
                    NodeKind::Null => {}
                    NodeKind::Map(vs) => {
                        for (k, v) in vs {
                            if let (Some(k), Some(v)) = (k.as_str(), v.as_str()) {
                                if k == "ansible_host" {
                                    entry.ansible_host = Some(v.to_string());
                                }
                                entry.vars.insert(k.to_string(), v.to_string());
                            }
                        }
                    }
                    _ => self.diags.push(vars.diag(
                        self.file,
                        format!(
                            "host `{pattern}`: expected a mapping of host variables or nothing, found {}",
                            vars.type_name()
                        ),
                    )),
                }
            }
        }
    }

    fn children_of(&mut self, group: &str, value: &'a Node) {
        let entries = match &value.kind {
            NodeKind::Null => return,
            NodeKind::Map(e) => e,
            _ => {
                self.diags.push(value.diag(
                    self.file,
                    format!(
                        "group `{group}`: `children` must be a mapping of groups, found {}",
                        value.type_name()
                    ),
                ));
                return;
            }
        };
        for (key, body) in entries {
            let Some(child) = self.group_name(key) else {
                continue;
            };
            if child == "all" {
                self.diags
                    .push(key.diag(self.file, "`all` cannot be a child of another group"));
                continue;
            }
            self.link(group, child, key);
            self.group(child, body);
        }
    }

    /// A group that is its own descendant is an error at the reference closing the loop.
    fn check_cycles(&mut self) {
        let mut found = Vec::new();
        for (parent, kids) in &self.children {
            for (child, at) in kids {
                if self.descends(child, parent) {
                    found.push(at.diag(
                        self.file,
                        format!("group `{child}` is a child of `{parent}` and also contains it (a cycle)"),
                    ));
                }
            }
        }
        for d in found {
            self.diags.push(d);
        }
    }

    /// Whether `to` is `from` or below it.
    fn descends(&self, from: &str, to: &str) -> bool {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(g) = todo.pop() {
            if g == to {
                return true;
            }
            if seen.insert(g.clone())
                && let Some(kids) = self.children.get(&g)
            {
                todo.extend(kids.iter().map(|(c, _)| c.clone()));
            }
        }
        false
    }

    fn ancestors(&self, group: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![group.to_string()];
        while let Some(g) = todo.pop() {
            if seen.insert(g.clone())
                && let Some(ps) = self.parents.get(&g)
            {
                todo.extend(ps.iter().cloned());
            }
        }
        seen
    }

    fn finish(mut self) -> Inventory {
        let mut groups: BTreeMap<String, BTreeSet<String>> = self
            .direct
            .keys()
            .map(|g| (g.clone(), BTreeSet::new()))
            .collect();
        groups.entry("ungrouped".into()).or_default();
        for (group, members) in &self.direct {
            let ancestors = self.ancestors(group);
            for host in members {
                if let Some(entry) = self.hosts.get_mut(host) {
                    entry.groups.extend(ancestors.iter().cloned());
                }
            }
        }
        for (host, entry) in &mut self.hosts {
            entry.groups.insert("all".into());
            if entry.groups.iter().all(|g| g == "all" || g == "ungrouped") {
                entry.groups.insert("ungrouped".into());
            }
            for g in &entry.groups {
                groups.entry(g.clone()).or_default().insert(host.clone());
            }
        }
        Inventory {
            hosts: self.hosts,
            groups,
        }
    }
}

/// Why a host key could not be expanded (the message says which host and why).
enum RangeError {
    Malformed(String),
    OverBudget(String),
}

/// Expand Ansible host ranges: `web[01:03].x` -> web01.x, web02.x, web03.x (numeric only,
/// zero padding kept when the start has leading zeros; several ranges multiply). The count
/// is computed before anything is built: more than `limit` names is an error.
fn expand_range(pattern: &str, remaining: usize, limit: usize) -> Result<Vec<String>, RangeError> {
    let mut parts: Vec<(&str, u32, u32, usize)> = Vec::new();
    let mut rest = pattern;
    while let Some(open) = rest.find('[') {
        let bad = || {
            RangeError::Malformed(format!(
                "host `{pattern}`: a range must look like `name[1:9]` or `name[01:20]`"
            ))
        };
        let close = rest[open..].find(']').map(|i| open + i).ok_or_else(bad)?;
        let (a, b) = rest[open + 1..close].split_once(':').ok_or_else(bad)?;
        let (start, end): (u32, u32) = match (a.parse(), b.parse()) {
            (Ok(s), Ok(e)) if s <= e => (s, e),
            _ => return Err(bad()),
        };
        let width = if a.starts_with('0') && a.len() > 1 {
            a.len()
        } else {
            0
        };
        parts.push((&rest[..open], start, end, width));
        rest = &rest[close + 1..];
    }
    let count = parts.iter().fold(1usize, |n, (_, s, e, _)| {
        n.saturating_mul((e - s) as usize + 1)
    });
    if count > remaining {
        return Err(RangeError::OverBudget(format!(
            "host `{pattern}`: expands to {count} host names, too many host listings (limit {limit} per inventory)"
        )));
    }
    let mut out = vec![String::new()];
    for (prefix, start, end, width) in parts {
        let mut next = Vec::with_capacity(out.len() * ((end - start) as usize + 1));
        for head in &out {
            for n in start..=end {
                next.push(format!("{head}{prefix}{n:0width$}"));
            }
        }
        out = next;
    }
    for name in &mut out {
        name.push_str(rest);
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "inventory_tests.rs"]
mod tests;
