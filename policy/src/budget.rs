//! Input budgets: how much a site file, an inventory or a host pattern may cost to read.
//!
//! Every limit is checked while the input is read (before the memory is spent), so a
//! hostile 750-byte file with nested aliases is refused in microseconds with one error
//! instead of being expanded to gigabytes. The defaults are sized so that a real
//! 100,000-host inventory (about 8 YAML nodes and 60 bytes per host, ranges such as
//! `web[00000:99999]`) passes with room to spare; see `docs/SECURITY.md`.
//! This module holds numbers only: no parsing, no I/O.

/// The limits applied to one YAML document and what is built from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Bytes of YAML text in one document.
    pub max_document_bytes: usize,
    /// Nested sequences/mappings (a policy needs about 6, an inventory one per group level).
    pub max_depth: usize,
    /// Nodes of the built tree, counting every copy an alias makes.
    pub max_nodes: usize,
    /// Nodes copied by aliases (`*name`), summed over the document.
    pub max_alias_expansions: usize,
    /// Host names produced by `name[a:b]` ranges in one inventory (each listing counts).
    pub max_range_hosts: usize,
    /// Bytes in one host pattern (`hosts:` of a play).
    pub max_pattern_bytes: usize,
    /// Terms (`a:b:&c:!d` has four) in one host pattern.
    pub max_pattern_terms: usize,
}

/// 32 MiB of YAML: a 100,000-host inventory with a few variables each is about 6-10 MiB.
pub const MAX_DOCUMENT_BYTES: usize = 32 << 20;
/// Nesting depth of sequences and mappings.
pub const MAX_DEPTH: usize = 64;
/// 4 million nodes (a 100,000-host inventory with 3 variables a host is ~800,000).
pub const MAX_NODES: usize = 4_000_000;
/// 1 million nodes copied by aliases (enough for `*defaults` on each of 100,000 hosts).
pub const MAX_ALIAS_EXPANSIONS: usize = 1_000_000;
/// 1 million host listings in one inventory (a range counts every name it expands to;
/// `h[0:9999][0:9999]` would be 100 million).
pub const MAX_RANGE_HOSTS: usize = 1_000_000;
/// 4 KiB of host pattern (each term is matched against every group and host name).
pub const MAX_PATTERN_BYTES: usize = 4096;
/// 256 terms in one host pattern.
pub const MAX_PATTERN_TERMS: usize = 256;

impl Default for Budget {
    fn default() -> Self {
        Self {
            max_document_bytes: MAX_DOCUMENT_BYTES,
            max_depth: MAX_DEPTH,
            max_nodes: MAX_NODES,
            max_alias_expansions: MAX_ALIAS_EXPANSIONS,
            max_range_hosts: MAX_RANGE_HOSTS,
            max_pattern_bytes: MAX_PATTERN_BYTES,
            max_pattern_terms: MAX_PATTERN_TERMS,
        }
    }
}
