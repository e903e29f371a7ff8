//! Rendering a [`Ruleset`] as nft syntax: `Display` for rules, and the `nft -f` script
//! that replaces `table inet portcullis` in one atomic transaction.
//!
//! Text only: this module never runs `nft`. The script never contains `flush ruleset` or
//! `flush table` (a flush keeps sets and their elements); it is always `add table` +
//! `delete table` + the full table, which the kernel applies as one batch or not at all.

use crate::ruleset::{DENY_SET_PREFIX, L3, Rule, Ruleset, TABLE_NAME};
use std::collections::BTreeSet;
use std::fmt::{self, Write as _};

/// The smallest `size` of a staged hash set ([`Ruleset::staging_set_command`]).
pub const STAGED_HASH_MIN_SIZE: usize = 1024;

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
            Rule::SourceSet {
                l3,
                set,
                proto,
                ports,
                log,
                verdict,
            } => {
                write!(f, "{l3} saddr @{set} ")?;
                match (proto, ports) {
                    (Some(p), Some(r)) => write!(f, "{p} dport {r} ")?,
                    (Some(p), None) => write!(f, "meta l4proto {p} ")?,
                    (None, _) => {}
                }
                match log {
                    Some(l) => write!(
                        f,
                        "limit rate {}/{} burst {} packets counter log prefix \"{}\" group {} {verdict}",
                        l.limit.rate, l.limit.per, l.limit.burst, l.prefix, l.group
                    ),
                    None => write!(f, "counter {verdict}"),
                }
            }
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

    /// The second step of a staged replace (the agent's dataplane): the sets named in
    /// `staged` already exist in the table, filled, referenced by nothing; this one
    /// transaction empties and deletes every other chain and set the table holds now
    /// (`chains`, `sets`: their names) and writes the rest of the ruleset, so the
    /// ruleset becomes exactly `self` at once, the staged sets as they are. Chains are
    /// all flushed before any is deleted (a jump holds its target).
    pub fn to_nft_swap_script(
        &self,
        chains: &[String],
        sets: &[String],
        staged: &BTreeSet<String>,
    ) -> String {
        let mut s = format!("add table inet {TABLE_NAME}\n");
        for c in chains {
            s.push_str(&format!("flush chain inet {TABLE_NAME} {c}\n"));
        }
        for c in chains {
            s.push_str(&format!("delete chain inet {TABLE_NAME} {c}\n"));
        }
        for set in sets {
            s.push_str(&format!("delete set inet {TABLE_NAME} {set}\n"));
        }
        // Writing to a String cannot fail.
        let _ = self.write_table(&mut s, staged);
        s
    }

    /// `add set` of `name` as [`Self::to_nft_script`] declares it, without elements, to
    /// be filled over netlink: a hash set (single addresses) also gets `size`, twice
    /// its elements rounded up to a power of two (at least [`STAGED_HASH_MIN_SIZE`]).
    /// The kernel sizes its hash table from it once; without it the table starts at
    /// four buckets and every insert of a big load takes the slow path of a resize
    /// (more than half the load's time at a million). `size` also caps the set, so the
    /// room left is for later list deltas (a shard's share stays below half of it until
    /// the list's shards double, and then the sets are new); readback takes a hash
    /// set's `size` as no part of the ruleset (it changes no verdict).
    pub fn staging_set_command(&self, name: &str) -> Option<String> {
        let set = self.sets.get(name)?;
        let extra = if set.key.interval() {
            " flags interval;".to_owned()
        } else {
            let size = set
                .elements
                .len()
                .saturating_mul(2)
                .next_power_of_two()
                .max(STAGED_HASH_MIN_SIZE);
            format!(" size {size};")
        };
        Some(format!(
            "add set inet {TABLE_NAME} {name} {{ type {};{extra} }}\n",
            set.key
        ))
    }

    fn write_script(&self, s: &mut String) -> fmt::Result {
        writeln!(s, "add table inet {TABLE_NAME}")?;
        writeln!(s, "delete table inet {TABLE_NAME}")?;
        self.write_table(s, &BTreeSet::new())
    }

    /// `table inet portcullis { ... }`: every set but those in `skip`, every chain.
    fn write_table(&self, s: &mut String, skip: &BTreeSet<String>) -> fmt::Result {
        writeln!(s, "table inet {TABLE_NAME} {{")?;
        for (name, set) in self.sets.iter().filter(|(n, _)| !skip.contains(*n)) {
            writeln!(s, "\tset {name} {{")?;
            writeln!(s, "\t\ttype {}", set.key)?;
            if set.key.interval() {
                writeln!(s, "\t\tflags interval")?;
            }
            // Written element by element (a list of a million is one pass, no strings).
            let n = set.elements.len();
            for (i, e) in set.elements.iter().enumerate() {
                if i == 0 {
                    s.push_str("\t\telements = { ");
                } else if i % ELEMENTS_PER_LINE == 0 {
                    s.push_str("\t\t\t     ");
                } else {
                    s.push_str(", ");
                }
                write!(s, "{e}")?;
                if i + 1 == n {
                    s.push_str(" }\n");
                } else if (i + 1) % ELEMENTS_PER_LINE == 0 {
                    s.push_str(",\n");
                }
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
        Rule::SourceSet { set, .. } if set.starts_with(DENY_SET_PREFIX) => 7,
        Rule::SourceSet { .. } => 8,
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
        Rule::SourceSet { set, .. } if set.starts_with(DENY_SET_PREFIX) => {
            "blocklists (`deny:`): every packet from these sources is dropped before any accept, logged within the rate limit"
        }
        Rule::SourceSet { .. } => {
            "whitelist with `from: { file }`: these ports are accepted from the sources of the list (hash sets of addresses, interval sets of prefixes)"
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
