//! Ansible host patterns over an [`Inventory`], as ansible-core 2.19 evaluates them:
//! names, `all`/`*`, fnmatch globs (`*`, `?`, `[a-c]`, `[!a]`), regexes (`~db-[ab]`,
//! matched from the start of the name like Python's `re.match`), subscripts on a term
//! (`web[0]`, `web[-1]`, `web[1:2]`, `web[2:]`, in Ansible's host order), terms separated
//! by `,` or `:` (see [`crate::pattern_syntax::split`]), intersections `&b` and exclusions
//! `!b`.
//!
//! Ansible's order, whatever the position of the terms: first every plain term (union),
//! then every `&` term, then every `!` term; with no plain term the union is `all`. So
//! `!staging:web` is `web` minus `staging`. This module must not read the site file or
//! report diagnostics itself; the caller locates [`PatternError`]s.

use crate::inventory::{GroupNode, Inventory};
use crate::pattern_syntax::{self, Subscript};
use std::collections::{BTreeSet, HashMap, HashSet};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("the host pattern is empty")]
    Empty,
    #[error("pattern `{pattern}` has an empty term (a lone `&` or `!`)")]
    EmptyTerm { pattern: String },
    #[error("pattern `{pattern}`: `{term}` is not a valid {kind}: {error}")]
    Invalid {
        pattern: String,
        term: String,
        kind: &'static str,
        error: String,
    },
    #[error(
        "pattern `{pattern}`: no host at subscript `{term}` (the term selects {count} host(s); Ansible stops here too)"
    )]
    Subscript {
        pattern: String,
        term: String,
        count: usize,
    },
    #[error(
        "the host pattern is too long: {bytes} bytes and {terms} terms (limits {} bytes, {} terms)",
        crate::budget::MAX_PATTERN_BYTES,
        crate::budget::MAX_PATTERN_TERMS
    )]
    TooLong { bytes: usize, terms: usize },
    #[error("pattern `{pattern}` matches no host{}", unknown_note(.unknown))]
    NoMatch {
        pattern: String,
        /// Terms that name no group or host in the inventory.
        unknown: Vec<String>,
    },
}

fn unknown_note(unknown: &[String]) -> String {
    if unknown.is_empty() {
        String::new()
    } else {
        let names: Vec<String> = unknown.iter().map(|u| format!("`{u}`")).collect();
        format!(" (no group or host named {})", names.join(", "))
    }
}

/// Hosts selected by `pattern`. An unknown name is only an error when nothing matches.
pub fn select(inv: &Inventory, pattern: &str) -> Result<BTreeSet<String>, PatternError> {
    let (hosts, unknown) = evaluate(inv, pattern)?;
    if hosts.is_empty() {
        return Err(PatternError::NoMatch {
            pattern: pattern.to_string(),
            unknown,
        });
    }
    Ok(hosts.into_iter().collect())
}

/// Hosts selected by `pattern` in Ansible's order (maybe none), and the terms that named
/// no group or host (Ansible's "Could not match supplied host pattern" warnings).
pub fn select_ordered(
    inv: &Inventory,
    pattern: &str,
) -> Result<(Vec<String>, Vec<String>), PatternError> {
    evaluate(inv, pattern)
}

fn evaluate(inv: &Inventory, pattern: &str) -> Result<(Vec<String>, Vec<String>), PatternError> {
    let p = pattern.trim();
    if p.is_empty() {
        return Err(PatternError::Empty);
    }
    if p.len() > crate::budget::MAX_PATTERN_BYTES {
        return Err(PatternError::TooLong {
            bytes: p.len(),
            terms: p.matches([',', ':']).count() + 1,
        });
    }
    let terms = pattern_syntax::split(p);
    if terms.len() > crate::budget::MAX_PATTERN_TERMS {
        return Err(PatternError::TooLong {
            bytes: p.len(),
            terms: terms.len(),
        });
    }
    if terms.is_empty() {
        // Ansible would read `,` as `all`; a pattern of separators is refused here.
        return Err(PatternError::Empty);
    }
    let mut ordered: Vec<&str> = terms
        .iter()
        .map(String::as_str)
        .filter(|t| !t.starts_with(['&', '!']))
        .collect();
    if ordered.is_empty() {
        ordered.push("all");
    }
    ordered.extend(
        terms
            .iter()
            .map(String::as_str)
            .filter(|t| t.starts_with('&')),
    );
    ordered.extend(
        terms
            .iter()
            .map(String::as_str)
            .filter(|t| t.starts_with('!')),
    );
    let cx = Cx::new(inv);
    let mut hosts: Vec<String> = Vec::new();
    let mut unknown = Vec::new();
    for term in ordered {
        if inv.hosts.contains_key(term) {
            hosts.push(term.to_string());
            continue;
        }
        let name = term.strip_prefix(['&', '!']).unwrap_or(term);
        if name.is_empty() {
            return Err(PatternError::EmptyTerm {
                pattern: pattern.to_string(),
            });
        }
        let (that, known) = cx.match_one(name, pattern)?;
        if !known {
            unknown.push(name.to_string());
        }
        match term.as_bytes().first() {
            Some(b'!') => {
                let that: HashSet<&String> = that.iter().collect();
                hosts.retain(|h| !that.contains(h));
            }
            Some(b'&') => {
                let that: HashSet<&String> = that.iter().collect();
                hosts.retain(|h| that.contains(h));
            }
            _ => {
                let existing: HashSet<String> = hosts.iter().cloned().collect();
                hosts.extend(that.into_iter().filter(|h| !existing.contains(h)));
            }
        }
    }
    let mut seen = HashSet::new();
    hosts.retain(|h| seen.insert(h.clone()));
    Ok((hosts, unknown))
}

/// Lookups over one inventory for one evaluation.
struct Cx<'a> {
    inv: &'a Inventory,
    tree: HashMap<&'a str, &'a GroupNode>,
}

enum Matcher {
    Exact(String),
    Re(regex::Regex),
}

impl Matcher {
    fn is_match(&self, s: &str) -> bool {
        match self {
            Matcher::Exact(e) => e == s,
            Matcher::Re(r) => r.is_match(s),
        }
    }
}

impl<'a> Cx<'a> {
    fn new(inv: &'a Inventory) -> Self {
        Cx {
            inv,
            tree: inv.tree.iter().map(|g| (g.name.as_str(), g)).collect(),
        }
    }

    /// Group names in inventory order (groups known only by membership come last).
    fn group_names(&self) -> Vec<&'a str> {
        let mut names: Vec<&str> = self.inv.tree.iter().map(|g| g.name.as_str()).collect();
        names.extend(
            self.inv
                .groups
                .keys()
                .map(String::as_str)
                .filter(|g| !self.tree.contains_key(g)),
        );
        names
    }

    /// Host names in inventory order (hosts added without order come last, sorted).
    fn host_names(&self) -> Vec<&'a str> {
        let mut names: Vec<&str> = self.inv.host_order.iter().map(String::as_str).collect();
        let listed: HashSet<&str> = names.iter().copied().collect();
        names.extend(
            self.inv
                .hosts
                .keys()
                .map(String::as_str)
                .filter(|h| !listed.contains(h)),
        );
        names
    }

    /// Ansible's `Group.get_hosts()`: the group's own hosts, then those of its children in
    /// order, then deeper descendants level by level (Ansible's order at depth two and
    /// more depends on Python's set iteration; this one is breadth-first in inventory order).
    fn group_hosts(&self, group: &str) -> Vec<String> {
        let mut order: Vec<&str> = vec![group];
        let mut seen: HashSet<&str> = HashSet::from([group]);
        let mut k = 0;
        while k < order.len() {
            if let Some(g) = self.tree.get(order[k]) {
                for c in &g.children {
                    if seen.insert(c.as_str()) {
                        order.push(c.as_str());
                    }
                }
            }
            k += 1;
        }
        let mut out = Vec::new();
        let mut have = HashSet::new();
        for g in order {
            if let Some(node) = self.tree.get(g) {
                for h in &node.hosts {
                    if have.insert(h.as_str()) {
                        out.push(h.clone());
                    }
                }
            }
        }
        if let Some(members) = self.inv.groups.get(group) {
            for h in members {
                if have.insert(h.as_str()) {
                    out.push(h.clone());
                }
            }
        }
        out
    }

    fn matcher(&self, expr: &str, pattern: &str) -> Result<Matcher, PatternError> {
        let (re, kind) = match expr.strip_prefix('~') {
            Some(r) => (format!("^(?:{r})"), "regex"),
            None if !expr.contains(['*', '?', '[']) => return Ok(Matcher::Exact(expr.to_string())),
            None => (pattern_syntax::fnmatch_regex(expr), "glob"),
        };
        regex::RegexBuilder::new(&re)
            .size_limit(pattern_syntax::REGEX_SIZE_LIMIT)
            .build()
            .map(Matcher::Re)
            .map_err(|e| PatternError::Invalid {
                pattern: pattern.to_string(),
                term: expr.to_string(),
                kind,
                error: e
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or("")
                    .trim()
                    .to_string(),
            })
    }

    /// Ansible's `_match_one_pattern`: subscript split, matches, subscript applied.
    fn match_one(&self, term: &str, pattern: &str) -> Result<(Vec<String>, bool), PatternError> {
        let (expr, sub) = pattern_syntax::split_subscript(term);
        let m = self.matcher(expr, pattern)?;
        let mut out = Vec::new();
        let mut groups = 0;
        for g in self.group_names() {
            if m.is_match(g) {
                groups += 1;
                out.extend(self.group_hosts(g));
            }
        }
        if groups == 0 || expr.starts_with('~') || expr.contains(['.', '?', '*', '[']) {
            out.extend(
                self.host_names()
                    .into_iter()
                    .filter(|h| m.is_match(h))
                    .map(str::to_string),
            );
        }
        let known = !out.is_empty() || groups > 0;
        let Some(sub) = sub else {
            return Ok((out, known));
        };
        if out.is_empty() {
            return Ok((out, known));
        }
        let n = out.len();
        let oob = || PatternError::Subscript {
            pattern: pattern.to_string(),
            term: term.to_string(),
            count: n,
        };
        let picked = match sub {
            Subscript::Index(i) => {
                let idx = if i < 0 { n as i64 + i } else { i };
                let idx = usize::try_from(idx)
                    .ok()
                    .filter(|x| *x < n)
                    .ok_or_else(oob)?;
                vec![out.swap_remove(idx)]
            }
            Subscript::Range(s, Some(0)) => vec![out.get(s).cloned().ok_or_else(oob)?],
            Subscript::Range(s, end) => {
                let e = end.map_or(n, |e| (e + 1).min(n));
                out.get(s..e.max(s))
                    .map(<[String]>::to_vec)
                    .unwrap_or_default()
            }
        };
        Ok((picked, known))
    }
}

/// Shell-style match of `*`, `?` and `[..]` classes (fnmatch, as in host patterns).
pub fn glob(pattern: &str, text: &str) -> bool {
    if !pattern.contains(['*', '?', '[']) {
        return pattern == text;
    }
    regex::RegexBuilder::new(&pattern_syntax::fnmatch_regex(pattern))
        .size_limit(pattern_syntax::REGEX_SIZE_LIMIT)
        .build()
        .is_ok_and(|r| r.is_match(text))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "pattern_tests.rs"]
mod tests;
