//! The policy model: what one host must enforce, after plays have been merged.
//!
//! Values only; parsing lives in `site`/`parse`, compiling in `compile`.

use crate::addrlist::AddrList;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// Transport protocol of an allow entry: every port-based transport the kernel parses
/// (the destination port is at offset 2 of all five headers). The seed rule (replies to
/// 1024-65535, a whitelist below) applies to each of them; ICMP/ICMPv6 have no ports
/// and are never denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Udplite,
    Sctp,
    Dccp,
}

impl Proto {
    /// Every port-based transport, in rule order.
    pub const ALL: [Proto; 5] = [
        Proto::Tcp,
        Proto::Udp,
        Proto::Udplite,
        Proto::Sctp,
        Proto::Dccp,
    ];

    /// The nft / `/etc/protocols` name (`tcp`, `udplite`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Udplite => "udplite",
            Proto::Sctp => "sctp",
            Proto::Dccp => "dccp",
        }
    }

    /// The IP protocol number (`meta l4proto`).
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Udplite => 136,
            Proto::Sctp => 132,
            Proto::Dccp => 33,
        }
    }

    /// The protocol named `name` (lowercase, as nft spells it).
    pub fn from_name(name: &str) -> Option<Proto> {
        Proto::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The protocol with IP protocol number `n`.
    pub fn from_number(n: u8) -> Option<Proto> {
        Proto::ALL.into_iter().find(|p| p.number() == n)
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An inclusive port range; `start <= end`. A single port has `start == end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    pub fn single(port: u16) -> Self {
        Self {
            start: port,
            end: port,
        }
    }
    pub fn new(start: u16, end: u16) -> Option<Self> {
        (start <= end).then_some(Self { start, end })
    }
    pub fn contains(&self, port: u16) -> bool {
        self.start <= port && port <= self.end
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// Which inbound interface the guard applies to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InterfaceSel {
    /// Every interface except loopback.
    All,
    /// The interface of the default route, resolved from facts at compile time.
    Default,
    /// A named interface (`iifname`, so it loads even when the interface is absent).
    Named(String),
}

/// How replies to our own outbound connections are let back in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Replies {
    /// The seed rule: every transport to 1024-65535 accepted (except restricted ports).
    Ports,
    /// conntrack: `ct state established,related` accepted instead.
    Stateful,
}

/// Enforce (drop) or audit (log what would be dropped, accept it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enforce,
    Audit,
}

/// What the agent does when the kernel differs from the compiled ruleset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriftMode {
    Heal,
    Report,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateUnit {
    Second,
    Minute,
    Hour,
    Day,
}

impl fmt::Display for RateUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RateUnit::Second => "second",
            RateUnit::Minute => "minute",
            RateUnit::Hour => "hour",
            RateUnit::Day => "day",
        })
    }
}

/// Rate limit of the deny log rule: `rate` packets per `per`, `burst` packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LogLimit {
    pub rate: u32,
    pub per: RateUnit,
    pub burst: u32,
}

impl Default for LogLimit {
    fn default() -> Self {
        Self {
            rate: 50,
            per: RateUnit::Second,
            burst: 100,
        }
    }
}

/// One whitelisted service: a port range on one protocol, optionally only from some sources.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AllowEntry {
    pub proto: Proto,
    pub ports: PortRange,
    /// Empty (and `lists` empty): from anywhere. Otherwise only from these networks
    /// (v4 and/or v6) and those of `lists`.
    pub from: Vec<IpNet>,
    /// Address-list files (`from: { file: x }`) by name, their content in
    /// [`HostPolicy::lists`]. Sorted, de-duplicated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lists: Vec<String>,
    /// What the operator wrote, e.g. `smtp/tcp` or `22/tcp`, for messages and diffs.
    pub label: String,
}

impl AllowEntry {
    /// Only from some sources (`from:` networks or list files).
    pub fn is_restricted(&self) -> bool {
        !self.from.is_empty() || !self.lists.is_empty()
    }
}

/// A `deny:` entry (blocklist): traffic from these sources is dropped and logged before
/// any accept, on every protocol (`proto: None`, ICMP included), on one protocol, or on
/// some of its ports.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DenyEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<Proto>,
    /// Only with `proto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<PortRange>,
    /// Inline networks, sorted and de-duplicated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<IpNet>,
    /// List files by name, as in [`AllowEntry::lists`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lists: Vec<String>,
    pub label: String,
}

/// The NFLOG group our log rule uses unless the policy says otherwise.
pub const DEFAULT_LOG_GROUP: u16 = 7;

/// Everything one host must enforce: the merge of every play that targets it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HostPolicy {
    pub interface: InterfaceSel,
    pub replies: Replies,
    /// Sorted and de-duplicated by the loader.
    pub allow: Vec<AllowEntry>,
    /// Blocklists, in site order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<DenyEntry>,
    /// The content of every list file named by `allow`/`deny` entries (and only those),
    /// shared between the hosts of one revision.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lists: BTreeMap<String, Arc<AddrList>>,
    pub log: LogLimit,
    pub log_group: u16,
    pub mode: Mode,
    pub drift: DriftMode,
    /// The site's `management:` entries for this host in `--keep` syntax
    /// (`tcp/22 from 10.0.0.0/8`), stored with the revision so that every push (apply,
    /// rollout wave, reconnect) gives the agent what its fail-closed policy must keep
    /// open. `None`: not known (a one-host policy file, a revision stored before this
    /// field). Not an input of `compile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub management: Option<Vec<String>>,
}

impl Default for HostPolicy {
    fn default() -> Self {
        Self {
            interface: InterfaceSel::All,
            replies: Replies::Ports,
            allow: Vec::new(),
            deny: Vec::new(),
            lists: BTreeMap::new(),
            log: LogLimit::default(),
            log_group: DEFAULT_LOG_GROUP,
            mode: Mode::Enforce,
            drift: DriftMode::Heal,
            management: None,
        }
    }
}
