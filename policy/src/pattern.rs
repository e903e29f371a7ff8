//! Ansible host patterns over an [`Inventory`]: `all`/`*`, a group, a host, `a:b` or `a,b`
//! (union), `a:&b` (intersection), `a:!b` (exclusion), and `*`/`?` globs on names.
//!
//! Evaluated Ansible's way: the union of the plain terms in order, then each intersection,
//! then each exclusion (only `&`/`!` terms start from `all`). This module must not read the
//! site file or report diagnostics itself; the caller locates [`PatternError`]s.

use crate::inventory::Inventory;
use std::collections::BTreeSet;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("the host pattern is empty")]
    Empty,
    #[error("pattern `{pattern}` has an empty term (check for `::` or a trailing `:`)")]
    EmptyTerm { pattern: String },
    #[error(
        "pattern `{pattern}`: `{term}` is not supported (regexes `~` and subscripts `[..]` are not; use names, globs, `:&` and `:!`)"
    )]
    Unsupported { pattern: String, term: String },
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Union,
    Intersect,
    Exclude,
}

/// Hosts selected by `pattern`. An unknown name is only an error when nothing matches.
pub fn select(inv: &Inventory, pattern: &str) -> Result<BTreeSet<String>, PatternError> {
    let terms = split(pattern)?;
    let mut unknown = Vec::new();
    let mut resolved: Vec<(Op, BTreeSet<String>)> = Vec::new();
    for term in &terms {
        let (op, name) = match term.as_bytes().first() {
            Some(b'&') => (Op::Intersect, &term[1..]),
            Some(b'!') => (Op::Exclude, &term[1..]),
            _ => (Op::Union, term.as_str()),
        };
        if name.is_empty() {
            return Err(PatternError::EmptyTerm {
                pattern: pattern.to_string(),
            });
        }
        if name.starts_with('~') || name.contains('[') {
            return Err(PatternError::Unsupported {
                pattern: pattern.to_string(),
                term: term.clone(),
            });
        }
        let (hosts, known) = matching(inv, name);
        if !known {
            unknown.push(name.to_string());
        }
        resolved.push((op, hosts));
    }
    let mut out: BTreeSet<String> = if resolved.iter().any(|(op, _)| *op == Op::Union) {
        BTreeSet::new()
    } else {
        inv.host_names()
    };
    for (_, hosts) in resolved.iter().filter(|(op, _)| *op == Op::Union) {
        out.extend(hosts.iter().cloned());
    }
    for (_, hosts) in resolved.iter().filter(|(op, _)| *op == Op::Intersect) {
        out.retain(|h| hosts.contains(h));
    }
    for (_, hosts) in resolved.iter().filter(|(op, _)| *op == Op::Exclude) {
        out.retain(|h| !hosts.contains(h));
    }
    if out.is_empty() {
        return Err(PatternError::NoMatch {
            pattern: pattern.to_string(),
            unknown,
        });
    }
    Ok(out)
}

/// Split on `,` if present, else on `:` (Ansible's rule); trims each term. A pattern over
/// the budget (each term scans every group and host) is refused before any matching.
fn split(pattern: &str) -> Result<Vec<String>, PatternError> {
    let p = pattern.trim();
    if p.is_empty() {
        return Err(PatternError::Empty);
    }
    let sep = if p.contains(',') { ',' } else { ':' };
    let terms = p.matches(sep).count() + 1;
    if p.len() > crate::budget::MAX_PATTERN_BYTES || terms > crate::budget::MAX_PATTERN_TERMS {
        return Err(PatternError::TooLong {
            bytes: p.len(),
            terms,
        });
    }
    Ok(p.split(sep).map(|t| t.trim().to_string()).collect())
}

/// Hosts matched by one name or glob, and whether it matched any group or host name.
fn matching(inv: &Inventory, name: &str) -> (BTreeSet<String>, bool) {
    if name == "all" || name == "*" {
        return (inv.host_names(), true);
    }
    let mut out = BTreeSet::new();
    let mut known = false;
    let is_glob = name.contains(['*', '?']);
    for (group, hosts) in &inv.groups {
        if (is_glob && glob(name, group)) || group == name {
            known = true;
            out.extend(hosts.iter().cloned());
        }
    }
    for host in inv.hosts.keys() {
        if (is_glob && glob(name, host)) || host == name {
            known = true;
            out.insert(host.clone());
        }
    }
    (out, known)
}

/// Shell-style match of `*` (any run) and `?` (one character).
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::diag::Source;

    fn inv() -> Inventory {
        let text = "\
all:
  hosts:
    lonely:
  children:
    mail:
      hosts: { h1: , h2: }
    web:
      hosts: { h3: , web1: , web2: }
    europe:
      children: { mail: , web: }
      hosts: { h4: }
    staging:
      hosts: { h2: , web2: }
";
        Inventory::parse(&Source::new("inv.yml", text)).unwrap()
    }

    fn sel(p: &str) -> Vec<String> {
        select(&inv(), p).unwrap().into_iter().collect()
    }

    #[test]
    fn names_and_all() {
        assert_eq!(sel("mail"), ["h1", "h2"]);
        assert_eq!(sel("h3"), ["h3"]);
        assert_eq!(sel("all").len(), 7);
        assert_eq!(sel("*").len(), 7);
        assert_eq!(sel("ungrouped"), ["lonely"]);
    }

    #[test]
    fn union_intersection_exclusion() {
        assert_eq!(sel("mail:h3"), ["h1", "h2", "h3"]);
        assert_eq!(sel("mail, h3"), ["h1", "h2", "h3"]);
        assert_eq!(sel("europe:&staging"), ["h2", "web2"]);
        assert_eq!(sel("europe:!staging"), ["h1", "h3", "h4", "web1"]);
        assert_eq!(sel("europe,!staging"), ["h1", "h3", "h4", "web1"]);
        // Order of terms does not matter: unions, then intersections, then exclusions.
        assert_eq!(sel("!staging:mail:web"), ["h1", "h3", "web1"]);
        assert_eq!(sel("&staging:mail:web"), ["h2", "web2"]);
        // Only exclusions start from all.
        assert_eq!(sel("!europe"), ["lonely"]);
    }

    #[test]
    fn globs() {
        assert_eq!(sel("web*"), ["h3", "web1", "web2"]); // group `web` and hosts web1, web2
        assert_eq!(sel("web?"), ["web1", "web2"]);
        assert_eq!(sel("h*:!h2"), ["h1", "h3", "h4"]);
        assert!(glob("*", "") && glob("a*b*c", "aXbYc") && !glob("a*b", "ac"));
    }

    #[test]
    fn unknown_names_only_fail_when_nothing_matches() {
        assert_eq!(sel("mail:nosuch"), ["h1", "h2"]);
        let e = select(&inv(), "nosuch").unwrap_err();
        assert_eq!(
            e.to_string(),
            "pattern `nosuch` matches no host (no group or host named `nosuch`)"
        );
        let e = select(&inv(), "mail:&web").unwrap_err();
        assert_eq!(e.to_string(), "pattern `mail:&web` matches no host");
    }

    #[test]
    fn malformed() {
        assert_eq!(select(&inv(), " "), Err(PatternError::Empty));
        assert!(matches!(
            select(&inv(), "mail:"),
            Err(PatternError::EmptyTerm { .. })
        ));
        assert!(matches!(
            select(&inv(), "~web.*"),
            Err(PatternError::Unsupported { .. })
        ));
        assert!(matches!(
            select(&inv(), "web[0]"),
            Err(PatternError::Unsupported { .. })
        ));
    }

    #[test]
    fn oversized_patterns_are_refused_before_matching() {
        let many = vec!["web"; 257].join(":");
        assert_eq!(
            select(&inv(), &many).unwrap_err().to_string(),
            "the host pattern is too long: 1027 bytes and 257 terms (limits 4096 bytes, 256 terms)"
        );
        let long = format!("{}x", "*".repeat(4096));
        assert!(matches!(
            select(&inv(), &long),
            Err(PatternError::TooLong {
                bytes: 4097,
                terms: 1
            })
        ));
        assert!(select(&inv(), &vec!["web"; 256].join(":")).is_ok());
    }
}
