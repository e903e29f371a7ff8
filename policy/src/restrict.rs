//! Refusals of allow entries the compiled ruleset could not enforce as written, located
//! at `file:line:column` by the loader (`site`), before anything is compiled:
//!
//! - an entry from anywhere overlapping (same protocol, a common port) an entry with
//!   `from:` — in one play or across the plays of a host. Its accept would take every
//!   source on the common ports, silently widening the restriction; the loader refuses
//!   instead of taking the union (write `from:` on both, or on neither).
//! - under `replies: ports`, an entry with `from:` on ports in 32768-60999 (the Linux
//!   default `ip_local_port_range`): a restricted port drops every other source, and so
//!   also the replies to this host's own connections that land on it.
//!
//! `compile` checks both again (without locations) for policies that come from elsewhere.
//! Pure: values in, findings (or the loader's diagnostics) out; no I/O.

use crate::diag::{Diagnostic, Diagnostics};
use crate::lockout::EPHEMERAL;
use crate::model::{AllowEntry, HostPolicy, PortRange, Proto, Replies};
use crate::parse::{Located, PolicySpec};
use std::collections::{BTreeMap, BTreeSet};

/// Where an entry was written: the play (its index in the site file; `None` for a
/// one-host policy file) and the entry.
#[derive(Debug, Clone, Copy)]
pub struct Placed<'a> {
    pub play: Option<usize>,
    pub entry: &'a Located<AllowEntry>,
}

/// One refusal. Entries are identified by (play, line, column) so findings from many
/// hosts with the same plays collapse into one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Finding {
    /// `open` (from anywhere) overlaps `restricted` on `common`.
    Widens {
        open: Key,
        restricted: Key,
        proto: Proto,
        common: PortRange,
    },
    /// `restricted` covers ephemeral ports under `replies: ports`.
    Ephemeral { restricted: Key, common: PortRange },
}

/// (play, line, column) of an entry.
pub type Key = (Option<usize>, usize, usize);

fn key(p: &Placed<'_>) -> Key {
    (p.play, p.entry.line, p.entry.column)
}

fn overlap(a: PortRange, b: PortRange) -> Option<PortRange> {
    PortRange::new(a.start.max(b.start), a.end.min(b.end))
}

/// Every refusal among the entries one host gets, with the host's `replies`.
pub fn check(entries: &[Placed<'_>], replies: Replies) -> Vec<Finding> {
    let mut out = Vec::new();
    for r in entries.iter().filter(|p| p.entry.value.is_restricted()) {
        let rv = &r.entry.value;
        for o in entries.iter().filter(|p| !p.entry.value.is_restricted()) {
            let ov = &o.entry.value;
            if ov.proto != rv.proto {
                continue;
            }
            if let Some(common) = overlap(ov.ports, rv.ports) {
                out.push(Finding::Widens {
                    open: key(o),
                    restricted: key(r),
                    proto: rv.proto,
                    common,
                });
            }
        }
        if replies == Replies::Ports
            && let Some(common) = overlap(rv.ports, EPHEMERAL)
        {
            out.push(Finding::Ephemeral {
                restricted: key(r),
                common,
            });
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The text of a refusal: `at(key)` names an entry (`site.yml:5:9, play `mail``),
/// `label(key)` is what the operator wrote.
pub fn message(
    f: &Finding,
    at: impl Fn(&Key) -> String,
    label: impl Fn(&Key) -> String,
) -> (Key, String) {
    match f {
        Finding::Widens {
            open,
            restricted,
            proto,
            common,
        } => (
            *restricted,
            format!(
                "`{}` ({}) is restricted with `from:`, but `{}` ({}) allows the same {} port{} {common} from anywhere, which would accept every source there: an unrestricted and a restricted entry may not overlap; remove `from:` from one of them, or give both a `from:` list",
                label(restricted),
                at(restricted),
                label(open),
                at(open),
                proto,
                if common.start == common.end { "" } else { "s" },
            ),
        ),
        Finding::Ephemeral { restricted, common } => (
            *restricted,
            format!(
                "`{}` ({}) restricts {common} with `from:` under `replies: ports`, inside 32768-60999, where replies to this host's own connections arrive (Linux's default ip_local_port_range); a restricted port drops every other source, replies included: restrict ports outside 32768-60999, or set `replies: stateful` for these hosts",
                label(restricted),
                at(restricted),
            ),
        ),
    }
}

/// The refusals of a one-host policy file, as diagnostics of `file`.
pub(crate) fn file_refusals(spec: &PolicySpec, file: &str, diags: &mut Diagnostics) {
    let placed: Vec<Placed<'_>> = spec
        .allow_at
        .iter()
        .map(|entry| Placed { play: None, entry })
        .collect();
    let replies = spec
        .replies
        .as_ref()
        .map_or(HostPolicy::default().replies, |l| l.value);
    for f in check(&placed, replies) {
        let label = |k: &Key| {
            placed
                .iter()
                .find(|p| (p.entry.line, p.entry.column) == (k.1, k.2))
                .map(|p| p.entry.value.label.clone())
                .unwrap_or_default()
        };
        let at = |k: &Key| format!("{file}:{}:{}", k.1, k.2);
        let ((_, line, column), text) = message(&f, at, label);
        diags.push(Diagnostic {
            file: file.to_string(),
            line,
            column,
            message: text,
        });
    }
}

/// The refusals for each group of hosts with the same plays (`plays`: name and policy
/// of every play, by index; `groups`: the plays of a group and its `replies`), one
/// diagnostic per finding, at the restricted entry, naming the hosts concerned.
pub(crate) fn fleet_refusals(
    plays: &[(&str, Option<&PolicySpec>)],
    groups: &BTreeMap<(Vec<usize>, Replies), BTreeSet<&str>>,
    file: &str,
    diags: &mut Diagnostics,
) {
    let mut found: BTreeMap<Finding, BTreeSet<&str>> = BTreeMap::new();
    for ((played, replies), hosts) in groups {
        let entries: Vec<Placed<'_>> = played
            .iter()
            .filter_map(|i| plays[*i].1.map(|s| (*i, s)))
            .flat_map(|(i, s)| {
                s.allow_at.iter().map(move |entry| Placed {
                    play: Some(i),
                    entry,
                })
            })
            .collect();
        for f in check(&entries, *replies) {
            found.entry(f).or_default().extend(hosts.iter().copied());
        }
    }
    let entry = |k: &Key| {
        let spec = k.0.and_then(|i| plays[i].1);
        spec.and_then(|s| s.allow_at.iter().find(|l| (l.line, l.column) == (k.1, k.2)))
    };
    for (f, hosts) in found {
        let at = |k: &Key| {
            let play = k.0.map(|i| plays[i].0).unwrap_or("?");
            format!("{file}:{}:{}, play `{play}`", k.1, k.2)
        };
        let label = |k: &Key| entry(k).map(|l| l.value.label.clone()).unwrap_or_default();
        let ((_, line, column), text) = message(&f, at, label);
        let names: Vec<&str> = hosts.iter().copied().take(5).collect();
        let more = hosts.len().saturating_sub(names.len());
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        diags.push(Diagnostic {
            file: file.to_string(),
            line,
            column,
            message: format!("{text} (host {}{more})", names.join(", ")),
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "restrict_tests.rs"]
mod tests;
