//! Rendering a [`Ruleset`] as nft syntax: `Display` for rules, and the `nft -f` script
//! that replaces `table inet portcullis` in one atomic transaction.
//!
//! Text only: this module never runs `nft`. The script never contains `flush ruleset` or
//! `flush table` (a flush keeps sets and their elements); it is always `add table` +
//! `delete table` + the full table, which the kernel applies as one batch or not at all.

use crate::ruleset::{L3, Rule, Ruleset, TABLE_NAME};
use std::fmt::{self, Write as _};

/// Elements per line in a rendered set (readability only; nft does not care).
const ELEMENTS_PER_LINE: usize = 8;

/// nft syntax, e.g. `tcp dport 1024-65535 counter accept`. `Rule::Unknown` renders as an
/// nft comment (`# unrecognized: <json>`): it describes, it cannot be applied.
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const TH: &str = "meta l4proto { tcp, udp, udplite, sctp, dccp } th dport";
        match self {
            Rule::Jump { iifname, target } => {
                if let Some(m) = iifname {
                    let op = if m.negate { "!= " } else { "" };
                    write!(f, "iifname {op}\"{}\" ", m.name)?;
                }
                write!(f, "counter jump {target}")
            }
            Rule::SetMatch {
                saddr,
                proto,
                set,
                verdict,
            } => {
                if let Some(l3) = saddr {
                    write!(f, "{l3} saddr . ")?;
                }
                write!(f, "{proto} dport @{set} counter {verdict}")
            }
            Rule::Fragment { l3, verdict } => match l3 {
                L3::Ip => write!(f, "ip frag-off & 8191 != 0 counter {verdict}"),
                L3::Ip6 => write!(f, "frag frag-off != 0 counter {verdict}"),
            },
            Rule::Ports {
                proto,
                ports,
                verdict,
            } => write!(f, "{proto} dport {ports} counter {verdict}"),
            Rule::CtState { states, verdict } => {
                let states: Vec<&str> = states.iter().map(String::as_str).collect();
                write!(f, "ct state {} counter {verdict}", states.join(","))
            }
            Rule::LogLimited {
                ports,
                limit,
                group,
                prefix,
                verdict,
            } => write!(
                f,
                "{TH} {ports} limit rate {}/{} burst {} packets counter log prefix \"{prefix}\" group {group} {verdict}",
                limit.rate, limit.per, limit.burst
            ),
            Rule::SetLogLimited {
                proto,
                set,
                limit,
                group,
                prefix,
                verdict,
            } => write!(
                f,
                "{proto} dport @{set} limit rate {}/{} burst {} packets counter log prefix \"{prefix}\" group {group} {verdict}",
                limit.rate, limit.per, limit.burst
            ),
            Rule::Counted { ports, verdict } => write!(f, "{TH} {ports} counter {verdict}"),
            Rule::Unknown { expr } => write!(f, "# unrecognized: {expr}"),
        }
    }
}

impl Ruleset {
    /// A complete `nft -f` script replacing our table atomically: `add table` (so the
    /// `delete` cannot fail when the table is absent), `delete table`, then the whole
    /// table. Regular chains come before base chains so jump targets exist first.
    pub fn to_nft_script(&self) -> String {
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_script(&mut s);
        s
    }

    fn write_script(&self, s: &mut String) -> fmt::Result {
        writeln!(s, "add table inet {TABLE_NAME}")?;
        writeln!(s, "delete table inet {TABLE_NAME}")?;
        writeln!(s, "table inet {TABLE_NAME} {{")?;
        for (name, set) in &self.sets {
            writeln!(s, "\tset {name} {{")?;
            writeln!(s, "\t\ttype {}", set.key)?;
            writeln!(s, "\t\tflags interval")?;
            let elems: Vec<String> = set.elements.iter().map(ToString::to_string).collect();
            for (i, line) in elems.chunks(ELEMENTS_PER_LINE).enumerate() {
                let lead = if i == 0 {
                    "\t\telements = { "
                } else {
                    "\t\t\t     "
                };
                let last = (i + 1) * ELEMENTS_PER_LINE >= elems.len();
                let tail = if last { " }" } else { "," };
                writeln!(s, "{lead}{}{tail}", line.join(", "))?;
            }
            writeln!(s, "\t}}")?;
        }
        let regular = self.chains.iter().filter(|(_, c)| c.base.is_none());
        let base = self.chains.iter().filter(|(_, c)| c.base.is_some());
        for (name, chain) in regular.chain(base) {
            writeln!(s, "\tchain {name} {{")?;
            if let Some(b) = &chain.base {
                writeln!(s, "\t\t{b}")?;
            }
            let mut prev = None;
            for rule in &chain.rules {
                if let Some(note) = section(rule, prev) {
                    writeln!(s, "\t\t# {note}")?;
                }
                writeln!(s, "\t\t{rule}")?;
                prev = Some(rule);
            }
            writeln!(s, "\t}}")?;
        }
        writeln!(s, "}}")
    }
}

/// The `#` comment that opens a section of the guard chain, where `rule` starts one
/// (nft drops comments, so they are in the script, never in the readback).
fn section(rule: &Rule, prev: Option<&Rule>) -> Option<&'static str> {
    let kind = |r: &Rule| match r {
        Rule::SetMatch {
            saddr: None, set, ..
        } if set.starts_with("allow_") => 1,
        Rule::SetMatch { saddr: Some(_), .. } => 2,
        Rule::SetLogLimited { .. } | Rule::SetMatch { .. } => 3,
        Rule::Ports { .. } | Rule::CtState { .. } => 4,
        Rule::LogLimited { .. } | Rule::Counted { .. } => 5,
        Rule::Fragment { .. } => 6,
        Rule::Jump { .. } | Rule::Unknown { .. } => 0,
    };
    if prev.is_some_and(|p| kind(p) == kind(rule)) {
        return None;
    }
    Some(match rule {
        Rule::SetMatch {
            saddr: None, set, ..
        } if set.starts_with("allow_") => "whitelist: these ports are accepted from anywhere",
        Rule::SetMatch { saddr: Some(_), .. } => {
            "whitelist with `from:`: these (source, port) pairs are accepted"
        }
        Rule::SetLogLimited { .. } | Rule::SetMatch { .. } => {
            "restricted ports >= 1024 (`from:` entries, replies: ports): every other source is denied here, before the replies rule; so are replies to this host's own connections that land on these ports"
        }
        Rule::Ports { .. } => {
            "replies (replies: ports): 1024-65535 is taken as replies to our own connections"
        }
        Rule::CtState { .. } => "replies (replies: stateful): conntrack's established/related",
        Rule::LogLimited { .. } | Rule::Counted { .. } => {
            "deny every other port of every transport: logged within the rate limit, counted over it (ICMP/ICMPv6 have no ports and never match)"
        }
        Rule::Fragment { .. } => {
            "non-first fragments (replies: ports, no reassembly before us): no ports to judge; the first fragment decides for the datagram"
        }
        Rule::Jump { .. } | Rule::Unknown { .. } => return None,
    })
}

/// Idempotent removal of our table (and only ours): `add table` + `delete table`.
pub fn delete_script() -> String {
    format!("add table inet {TABLE_NAME}\ndelete table inet {TABLE_NAME}\n")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
