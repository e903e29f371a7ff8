//! The compiled ruleset: a normalized, structured model of `table inet portcullis`.
//!
//! The same type is produced by `compile` (what we want) and by `readback` (what the kernel
//! has), so drift is a structural comparison, not a string one. Counter *values* are not
//! part of it (they change with traffic); they come from readback separately.
//! Ordered containers only (`BTreeMap`/`BTreeSet`), so serialization and hash are
//! deterministic.

use crate::model::{LogLimit, PortRange, Proto};
use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

pub(crate) mod normalize;

/// The one table Portcullis owns (family `inet`).
pub const TABLE_NAME: &str = "portcullis";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ruleset {
    /// Named sets by name.
    pub sets: BTreeMap<String, Set>,
    /// Chains by name; rule order inside a chain matters.
    pub chains: BTreeMap<String, Chain>,
    /// Objects readback found in our table but cannot model (a set of another type or with
    /// other flags, a map, a named counter, a non-filter chain, ...), keyed by
    /// `"<kind> <name>"`, valued by their canonical JSON (handles and counter values
    /// stripped). `compile` never fills it, so anything here is drift. Omitted from the
    /// serialized form (and so from the hash) when empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unknown: BTreeMap<String, String>,
}

/// A named set. Port and `addr . port` sets and address-prefix sets have `flags
/// interval`; single-address sets (`SetKey::V4Addr`/`V6Addr`) are hash sets (no flags).
///
/// Serialized as `{"key", "elements": [...]}`, except address sets (a list of a million):
/// `{"key", "packed": "<base64>"}` (5 bytes per v4 element, address and prefix length;
/// 17 per v6), which is what the hash and the last-known-good record hold.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SetRepr")]
pub struct Set {
    pub key: SetKey,
    /// Normalized: ranges merged where adjacent/overlapping (what the kernel stores).
    /// Shared: a ruleset clone (a list delta patches one shard of a million-element list)
    /// copies no elements; change them with `Arc::make_mut`.
    pub elements: Arc<BTreeSet<Element>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetKey {
    /// `type inet_service`
    Port,
    /// `type ipv4_addr . inet_service`
    V4Port,
    /// `type ipv6_addr . inet_service`
    V6Port,
    /// `type ipv4_addr` (hash: single addresses of an address list)
    V4Addr,
    /// `type ipv4_addr; flags interval` (prefixes of an address list)
    V4Net,
    /// `type ipv6_addr` (hash)
    V6Addr,
    /// `type ipv6_addr; flags interval`
    V6Net,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Element {
    Port(PortRange),
    V4Port(Ipv4Net, PortRange),
    V6Port(Ipv6Net, PortRange),
    /// An address (`/32`, in a `V4Addr` set) or a prefix (in a `V4Net` set).
    V4(Ipv4Net),
    V6(Ipv6Net),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    /// `Some` for a base chain (hooked), `None` for a regular chain (jump target).
    pub base: Option<BaseChain>,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseChain {
    /// Only `input` is used by Portcullis; others appear only in readback.
    pub hook: String,
    /// Numeric priority (`filter - 10` is -10).
    pub priority: i32,
    pub policy: Verdict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Accept,
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum L3 {
    Ip,
    Ip6,
}

/// An `iifname` match: `iifname "eth2"` or `iifname != "lo"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IfMatch {
    pub negate: bool,
    pub name: String,
}

/// The closed set of rule shapes Portcullis generates. Readback maps anything else to
/// `Unknown`, so a foreign edit always shows up as a difference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// `[iifname [!=] "x"] jump <target>`
    Jump {
        iifname: Option<IfMatch>,
        target: String,
    },
    /// `tcp dport @allow_tcp counter accept`, or with `saddr`:
    /// `ip saddr . tcp dport @allow_tcp_v4 counter accept`
    SetMatch {
        saddr: Option<L3>,
        proto: Proto,
        set: String,
        verdict: Verdict,
    },
    /// `ip frag-off & 8191 != 0 counter accept` (`L3::Ip`) / `frag frag-off != 0 counter
    /// accept` (`L3::Ip6`): a non-first fragment. It has no transport header, so port
    /// rules would read ports out of its payload (IPv6: out of the flow label); without
    /// conntrack nothing reassembles before us, and the first fragment, which carries
    /// the ports, decides for the whole datagram.
    Fragment { l3: L3, verdict: Verdict },
    /// `tcp dport 1024-65535 counter accept`
    Ports {
        proto: Proto,
        ports: PortRange,
        verdict: Verdict,
    },
    /// A match on the source address against an address-list set, optionally on one
    /// protocol and its destination ports: `ip saddr @l1a2b3c4d5e_v4a tcp dport 22
    /// counter accept` (allow from a list file), or a blocklist's deny `ip saddr @set
    /// [limit rate R/U burst B packets] counter [log prefix "P" group G] drop`.
    SourceSet {
        l3: L3,
        set: String,
        /// `Some`: only this protocol (`meta l4proto tcp`), and with `ports` only these
        /// destination ports (`tcp dport 80-90`).
        proto: Option<Proto>,
        ports: Option<PortRange>,
        /// `Some`: the rate-limited, logged twin of a deny.
        log: Option<LogSpec>,
        verdict: Verdict,
    },
    /// `ct state established,related counter accept` (states sorted, lowercase)
    CtState {
        states: BTreeSet<String>,
        verdict: Verdict,
    },
    /// `tcp dport @restrict_tcp limit rate R/U burst B packets counter log prefix "P"
    ///  group G <verdict>`: the logged deny of a restricted port (its unlogged twin is a
    ///  [`Rule::SetMatch`] with the same set).
    SetLogLimited {
        proto: Proto,
        set: String,
        limit: LogLimit,
        group: u16,
        prefix: String,
        verdict: Verdict,
    },
    /// `meta l4proto { tcp, udp, udplite, sctp, dccp } th dport 0-1023 limit rate R/U
    ///  burst B packets counter log prefix "P" group G <verdict>` (every [`Proto::ALL`])
    LogLimited {
        ports: PortRange,
        limit: LogLimit,
        group: u16,
        prefix: String,
        verdict: Verdict,
    },
    /// `meta l4proto { tcp, udp, udplite, sctp, dccp } th dport 0-1023 counter <verdict>`
    /// (over the log limit)
    Counted { ports: PortRange, verdict: Verdict },
    /// Anything readback could not map: canonical JSON of the rule's expressions.
    Unknown { expr: String },
}

/// The logging of a deny rule: `limit rate R/U burst B packets counter log prefix "P"
/// group G`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSpec {
    pub limit: LogLimit,
    pub group: u16,
    pub prefix: String,
}

/// Lowercase hex SHA-256 of the ruleset's canonical JSON.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RulesetHash(pub String);

impl fmt::Display for RulesetHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Rule {
    /// A deny rule of the seed layout (logging or counted; in audit mode its verdict is
    /// accept): the low-port denies and those of restricted ports (`restrict_<proto>`).
    pub fn is_deny(&self) -> bool {
        match self {
            Rule::LogLimited { .. } | Rule::Counted { .. } | Rule::SetLogLimited { .. } => true,
            Rule::SourceSet { set, .. } => set.starts_with(DENY_SET_PREFIX),
            Rule::SetMatch {
                saddr: None, set, ..
            } => set.starts_with(RESTRICT_SET_PREFIX),
            _ => false,
        }
    }

    /// An unlogged deny: what passed over the log rate limit (counted, not logged).
    pub fn is_over_limit_deny(&self) -> bool {
        self.is_deny()
            && !matches!(
                self,
                Rule::LogLimited { .. }
                    | Rule::SetLogLimited { .. }
                    | Rule::SourceSet { log: Some(_), .. }
            )
    }
}

/// Prefix of the sets of restricted ports (`restrict_tcp`, ...).
pub const RESTRICT_SET_PREFIX: &str = "restrict_";
/// Prefix of the address sets of an allow entry's list files (`list_<id>_v4a`, ...).
pub const LIST_SET_PREFIX: &str = "list_";
/// Prefix of the address sets of `deny:` entries (`deny_<id>_v4a`, ...).
pub const DENY_SET_PREFIX: &str = "deny_";

/// How a [`Set`] is written (see its docs) and read back.
#[derive(Serialize, Deserialize)]
struct SetRepr {
    key: SetKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    elements: Option<Vec<Element>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    packed: Option<String>,
}

impl Serialize for Set {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut st = s.serialize_struct("Set", 2)?;
        st.serialize_field("key", &self.key)?;
        if self.key.is_address() {
            use base64::Engine as _;
            let packed = base64::engine::general_purpose::STANDARD.encode(self.packed());
            st.serialize_field("packed", &packed)?;
        } else {
            st.serialize_field("elements", &self.elements)?;
        }
        st.end()
    }
}

impl TryFrom<SetRepr> for Set {
    type Error = String;
    fn try_from(r: SetRepr) -> Result<Self, String> {
        match (r.elements, r.packed) {
            (Some(e), None) if !r.key.is_address() => Ok(Set {
                key: r.key,
                elements: Arc::new(e.into_iter().collect()),
            }),
            (None, Some(p)) if r.key.is_address() => {
                use base64::Engine as _;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(p)
                    .map_err(|e| format!("set elements: {e}"))?;
                Set::unpack(r.key, &bytes)
            }
            _ => Err(format!("a {} set with the wrong element form", r.key)),
        }
    }
}

impl Set {
    /// The elements of an address set packed (see [`Set`]); empty for other sets.
    pub fn packed(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.elements.len() * 17);
        for e in self.elements.iter() {
            match e {
                Element::V4(n) => {
                    out.extend_from_slice(&n.addr().octets());
                    out.push(n.prefix_len());
                }
                Element::V6(n) => {
                    out.extend_from_slice(&n.addr().octets());
                    out.push(n.prefix_len());
                }
                _ => {}
            }
        }
        out
    }

    fn unpack(key: SetKey, b: &[u8]) -> Result<Set, String> {
        let v4 = matches!(key, SetKey::V4Addr | SetKey::V4Net);
        let width = if v4 { 5 } else { 17 };
        if !b.len().is_multiple_of(width) {
            return Err("packed set elements: a partial element".into());
        }
        let mut elements = BTreeSet::new();
        for c in b.chunks_exact(width) {
            let len = c[width - 1];
            let e = if v4 {
                let a = std::net::Ipv4Addr::new(c[0], c[1], c[2], c[3]);
                Ipv4Net::new(a, len)
                    .map(Element::V4)
                    .map_err(|e| e.to_string())?
            } else {
                let mut o = [0u8; 16];
                o.copy_from_slice(&c[..16]);
                Ipv6Net::new(o.into(), len)
                    .map(Element::V6)
                    .map_err(|e| e.to_string())?
            };
            elements.insert(e);
        }
        Ok(Set {
            key,
            elements: Arc::new(elements),
        })
    }
}

/// The log prefix with its revision masked (`pc r* deny `): the hash attests what the
/// rules do, and a list delta keeps the rules (and their prefix) of the revision that
/// built the table.
fn masked(prefix: &str) -> String {
    match prefix.strip_prefix("pc r") {
        Some(rest) => format!(
            "pc r*{}",
            rest.trim_start_matches(|c: char| c.is_ascii_digit())
        ),
        None => prefix.to_string(),
    }
}

impl Rule {
    /// This rule with the revision of its log prefix masked (see [`Ruleset::hash`]).
    pub fn masked(&self) -> Rule {
        let mut r = self.clone();
        match &mut r {
            Rule::LogLimited { prefix, .. } | Rule::SetLogLimited { prefix, .. } => {
                *prefix = masked(prefix);
            }
            Rule::SourceSet { log: Some(l), .. } => l.prefix = masked(&l.prefix),
            _ => {}
        }
        r
    }
}

/// `io::Write` into a SHA-256 (the canonical JSON is hashed as it is written).
struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.update(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Ruleset {
    /// Canonical JSON (ordered maps, no whitespace): what the hash is computed over,
    /// except that the hash masks the revision in log prefixes.
    pub fn canonical_json(&self) -> String {
        // Serialization of these plain types cannot fail (no maps with non-string keys).
        serde_json::to_string(self).unwrap_or_default()
    }

    /// SHA-256 of the canonical JSON with log-prefix revisions masked ([`Rule::masked`])
    /// and each set's elements replaced by that set's own digest ([`Set::digest`]): two
    /// tables that match the same packets the same way hash equal, whichever revision
    /// built their rules; and a caller that changed a few sets of a million-element
    /// ruleset rehashes only those ([`Ruleset::hash_with`]).
    pub fn hash(&self) -> RulesetHash {
        self.hash_with(&self.set_digests())
    }

    /// Every set's [`Set::digest`], by set name.
    pub fn set_digests(&self) -> SetDigests {
        self.sets
            .iter()
            .map(|(name, set)| (name.clone(), set.digest()))
            .collect()
    }

    /// [`Ruleset::hash`] from digests the caller kept ([`Ruleset::set_digests`] of this
    /// ruleset, or of an earlier one with the digests of changed sets recomputed).
    pub fn hash_with(&self, digests: &SetDigests) -> RulesetHash {
        #[derive(Serialize)]
        struct View<'a> {
            sets: BTreeMap<&'a str, String>,
            chains: BTreeMap<&'a str, Chain>,
            #[serde(skip_serializing_if = "BTreeMap::is_empty")]
            unknown: &'a BTreeMap<String, String>,
        }
        debug_assert!(digests.keys().eq(self.sets.keys()), "digests of other sets");
        let view = View {
            sets: digests
                .iter()
                .map(|(n, d)| (n.as_str(), hex::encode(d.0)))
                .collect(),
            chains: self
                .chains
                .iter()
                .map(|(n, c)| {
                    let chain = Chain {
                        base: c.base.clone(),
                        rules: c.rules.iter().map(Rule::masked).collect(),
                    };
                    (n.as_str(), chain)
                })
                .collect(),
            unknown: &self.unknown,
        };
        let mut w = HashWriter(Sha256::new());
        // Writing into a hasher cannot fail, nor can serializing these types.
        let _ = serde_json::to_writer(&mut w, &view);
        RulesetHash(hex::encode(w.0.finalize()))
    }

    /// Equal but for the revisions in log prefixes.
    pub fn same_rules(&self, other: &Ruleset) -> bool {
        self.chains.len() == other.chains.len()
            && self
                .chains
                .iter()
                .zip(&other.chains)
                .all(|((na, a), (nb, b))| {
                    na == nb
                        && a.base == b.base
                        && a.rules.len() == b.rules.len()
                        && a.rules
                            .iter()
                            .zip(&b.rules)
                            .all(|(x, y)| x.masked() == y.masked())
                })
    }

    /// Number of set elements over all sets (for summaries).
    pub fn element_count(&self) -> usize {
        self.sets.values().map(|s| s.elements.len()).sum()
    }

    /// Number of rules over all chains (for summaries).
    pub fn rule_count(&self) -> usize {
        self.chains.values().map(|c| c.rules.len()).sum()
    }
}

/// SHA-256 of one set's canonical JSON (its key and elements, address sets packed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetDigest(pub [u8; 32]);

/// [`SetDigest`]s by set name (see [`Ruleset::hash_with`]).
pub type SetDigests = BTreeMap<String, SetDigest>;

impl Set {
    /// This set's part of [`Ruleset::hash`].
    pub fn digest(&self) -> SetDigest {
        let mut w = HashWriter(Sha256::new());
        // Writing into a hasher cannot fail, nor can serializing a set.
        let _ = serde_json::to_writer(&mut w, self);
        SetDigest(w.0.finalize().into())
    }

    /// A set of `key` holding `elements` in canonical form (see [`Set::normalize`]).
    pub fn new(key: SetKey, elements: impl IntoIterator<Item = Element>) -> Self {
        Self {
            key,
            elements: Arc::new(normalize::normalize(elements)),
        }
    }

    /// Bring the elements into the one canonical form the kernel accepts and returns for
    /// `flags interval`: port ranges merged where they overlap or touch; for
    /// `addr . port` sets, the covered (address, port) area cut into non-overlapping
    /// elements (address-major slabs, each slab as its minimal list of CIDR prefixes,
    /// ports merged). The kernel rejects overlapping elements (nft: "conflicting
    /// intervals", pipapo: EEXIST) and keeps touching ones apart, so two element lists
    /// covering the same packets normalize to the same set.
    pub fn normalize(&mut self) {
        let elements = Arc::unwrap_or_clone(std::mem::take(&mut self.elements));
        self.elements = Arc::new(normalize::normalize(elements));
    }
}

impl SetKey {
    /// The nft type expression, e.g. `ipv4_addr . inet_service`.
    pub fn nft_type(self) -> &'static str {
        match self {
            SetKey::Port => "inet_service",
            SetKey::V4Port => "ipv4_addr . inet_service",
            SetKey::V6Port => "ipv6_addr . inet_service",
            SetKey::V4Addr | SetKey::V4Net => "ipv4_addr",
            SetKey::V6Addr | SetKey::V6Net => "ipv6_addr",
        }
    }

    /// `flags interval`: every key but the single-address hash sets.
    pub fn interval(self) -> bool {
        !matches!(self, SetKey::V4Addr | SetKey::V6Addr)
    }

    /// An address set (of a list file or a deny entry).
    pub fn is_address(self) -> bool {
        matches!(
            self,
            SetKey::V4Addr | SetKey::V4Net | SetKey::V6Addr | SetKey::V6Net
        )
    }
}

impl fmt::Display for SetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.nft_type())
    }
}

/// nft element syntax: `22`, `80-90`, `10.0.0.0/24 . 22`, `fd77::/64 . 1000-2000`.
impl fmt::Display for Element {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Element::Port(p) => write!(f, "{p}"),
            Element::V4Port(n, p) => write!(f, "{n} . {p}"),
            Element::V6Port(n, p) => write!(f, "{n} . {p}"),
            Element::V4(n) if n.prefix_len() == 32 => write!(f, "{}", n.addr()),
            Element::V6(n) if n.prefix_len() == 128 => write!(f, "{}", n.addr()),
            Element::V4(n) => write!(f, "{n}"),
            Element::V6(n) => write!(f, "{n}"),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Accept => "accept",
            Verdict::Drop => "drop",
        })
    }
}

impl fmt::Display for L3 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            L3::Ip => "ip",
            L3::Ip6 => "ip6",
        })
    }
}

/// `type filter hook input priority filter - 10; policy accept;`
impl fmt::Display for BaseChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prio = match self.priority {
            0 => "filter".to_string(),
            p if p < 0 => format!("filter - {}", p.unsigned_abs()),
            p => format!("filter + {p}"),
        };
        write!(
            f,
            "type filter hook {} priority {prio}; policy {};",
            self.hook, self.policy
        )
    }
}
