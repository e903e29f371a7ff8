//! `compile(policy, facts, revision) -> Ruleset`: the one place the seed rule becomes the
//! layout of `table inet portcullis` (see ARCHITECTURE.md, "Compiled ruleset").
//!
//! Deterministic and pure: the same inputs always give the same `Ruleset` (and hash). It
//! must not look at anything but its arguments, and never emits `Rule::Unknown`.
//!
//! Layout (the rendered script explains it in `#` comments too):
//! - sets `allow_tcp` / `allow_udp` (`inet_service`) are always emitted, even when empty,
//!   with their accept rules, so the rule positions are stable across revisions and a
//!   changed whitelist shows up as element changes only; `allow_{udplite,sctp,dccp}` only
//!   when used. The `from:` sets `allow_<proto>_{v4,v6}` (`addr . inet_service`) and
//!   their rules are emitted only when non-empty.
//! - base chain `input` (filter, priority -10, policy accept) jumps to `guard` for the
//!   selected interface (`iifname "x"`), or for everything but `lo`.
//! - chain `guard`: in `replies: ports`, first an accept of IPv6 non-first fragments:
//!   they carry no ports, nothing reassembled them before us (IPv4 is reassembled before
//!   the input hook), and port rules would judge them by the flow label; their first
//!   fragment decides. Then set accepts;
//!   in `replies: ports`, for each protocol with `from:`
//!   entries on ports >= 1024, a set `restrict_<proto>` of those ports and a logging +
//!   a counted deny on it (so the replies rule cannot accept other sources there); the
//!   replies rule per protocol (1024-65535); then a rate-limited logging deny and an
//!   unlogged counted deny for what the limit let through, over
//!   `meta l4proto { tcp, udp, udplite, sctp, dccp }` 0-1023. `replies: stateful`
//!   accepts `ct state established,related` and denies every port (0-65535), so it
//!   needs no restrict sets. `mode: audit` ends every deny rule in `accept`. Traffic
//!   without ports (ICMP, ND) is never matched.
//! - refused: an unrestricted entry overlapping a restricted one (no silent widening),
//!   and in `replies: ports` a restricted entry on the ephemeral range 32768-60999.

use crate::addrlist::AddrList;
use crate::facts::Facts;
use crate::lockout::EPHEMERAL;
use crate::model::{HostPolicy, InterfaceSel, Mode, PortRange, Proto, Replies};
use crate::ruleset::{
    BaseChain, Chain, DENY_SET_PREFIX, Element, IfMatch, L3, LIST_SET_PREFIX, LogSpec,
    RESTRICT_SET_PREFIX, Rule, Ruleset, Set, SetKey, Verdict,
};
use ipnet::{Ipv4Net, Ipv6Net};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

/// The hooked chain.
pub const CHAIN_INPUT: &str = "input";
/// The regular chain holding the policy.
pub const CHAIN_GUARD: &str = "guard";
/// Priority of `input`: `filter - 10`, so we see packets before a default filter chain.
pub const INPUT_PRIORITY: i32 = -10;
/// Prefix of every log prefix we emit: `pc r<revision> <deny|audit> `.
pub const LOG_PREFIX_TAG: &str = "pc";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("interface: default, but host {hostname:?} has no default route")]
    NoDefaultRoute { hostname: String },
    #[error("interface name {name:?} is not a valid Linux interface name: {reason}")]
    InvalidInterface { name: String, reason: &'static str },
    #[error("log rate must be at least 1 packet per {per}, found 0")]
    ZeroLogRate { per: crate::model::RateUnit },
    #[error("log burst must be at least 1 packet (nft rejects `burst 0 packets`), found 0")]
    ZeroLogBurst,
    #[error(
        "allow entry `{open}` (from anywhere) overlaps `{restricted}` (with `from:`): remove `from:` from one, or restrict both"
    )]
    WidenedRestriction { open: String, restricted: String },
    #[error("address list `{name}` is named by an entry but missing from the policy")]
    MissingList { name: String },
    #[error("address lists `{a}` and `{b}` would share the set name {set}: rename one")]
    ListNameClash { a: String, b: String, set: String },
    #[error(
        "allow entry `{label}` restricts ports in 32768-60999 (the Linux ephemeral range) under `replies: ports`, which would also drop replies to this host's own connections: restrict ports outside 32768-60999, or use `replies: stateful`"
    )]
    RestrictedEphemeral { label: String },
}

/// The ports `replies: ports` accepts as replies to our own connections.
pub const REPLY_PORTS: PortRange = PortRange {
    start: 1024,
    end: 65535,
};

/// Name of the set of restricted high ports of `proto` (`replies: ports` only).
pub fn restrict_set_name(proto: Proto) -> String {
    format!("{RESTRICT_SET_PREFIX}{proto}")
}

/// `a` ∩ `b`, if not empty.
fn clip(a: PortRange, b: PortRange) -> Option<PortRange> {
    PortRange::new(a.start.max(b.start), a.end.min(b.end))
}

/// The two refusals the loader reports with locations (`site::restrictions`), checked
/// again here for policies that come from elsewhere (the wire): an unrestricted entry
/// overlapping a restricted one (the accept of the first would silently widen the
/// second), and in `replies: ports` a restricted entry on the ephemeral range.
fn check_restrictions(policy: &HostPolicy) -> Result<(), CompileError> {
    for r in policy.allow.iter().filter(|a| a.is_restricted()) {
        if let Some(u) = policy
            .allow
            .iter()
            .find(|u| !u.is_restricted() && u.proto == r.proto && clip(u.ports, r.ports).is_some())
        {
            return Err(CompileError::WidenedRestriction {
                open: u.label.clone(),
                restricted: r.label.clone(),
            });
        }
        if policy.replies == Replies::Ports && clip(r.ports, EPHEMERAL).is_some() {
            return Err(CompileError::RestrictedEphemeral {
                label: r.label.clone(),
            });
        }
    }
    Ok(())
}

/// Name of the set for `proto`, restricted to sources of `l3` when `Some`.
pub fn set_name(proto: Proto, l3: Option<L3>) -> String {
    match l3 {
        None => format!("allow_{proto}"),
        Some(L3::Ip) => format!("allow_{proto}_v4"),
        Some(L3::Ip6) => format!("allow_{proto}_v6"),
    }
}

/// `pc r42 deny ` / `pc r42 audit ` (the trailing space separates it from the kernel's
/// own `IN=... ` text in syslog-style output).
pub fn log_prefix(revision: u64, mode: Mode) -> String {
    let word = match mode {
        Mode::Enforce => "deny",
        Mode::Audit => "audit",
    };
    format!("{LOG_PREFIX_TAG} r{revision} {word} ")
}

/// Inverse of [`log_prefix`], for the denial reader: `(revision, mode)`.
pub fn parse_log_prefix(prefix: &str) -> Option<(u64, Mode)> {
    let mut words = prefix.split_whitespace();
    if words.next()? != LOG_PREFIX_TAG {
        return None;
    }
    let revision = words.next()?.strip_prefix('r')?.parse().ok()?;
    let mode = match words.next()? {
        "deny" => Mode::Enforce,
        "audit" => Mode::Audit,
        _ => return None,
    };
    words.next().is_none().then_some((revision, mode))
}

pub fn compile(policy: &HostPolicy, facts: &Facts, revision: u64) -> Result<Ruleset, CompileError> {
    if policy.log.rate == 0 {
        return Err(CompileError::ZeroLogRate {
            per: policy.log.per,
        });
    }
    if policy.log.burst == 0 {
        return Err(CompileError::ZeroLogBurst);
    }
    let iifname = input_interface(policy, facts)?;

    check_restrictions(policy)?;

    let mut rs = Ruleset::default();
    let mut guard = Vec::new();
    if policy.replies == Replies::Ports {
        // IPv6 only: IPv4 reassembles before the input hook (ip_local_deliver), IPv6 after
        // it; with `stateful`, conntrack reassembles both before our hook.
        guard.push(Rule::Fragment {
            l3: L3::Ip6,
            verdict: Verdict::Accept,
        });
    }
    let deny_verdict = match policy.mode {
        Mode::Enforce => Verdict::Drop,
        Mode::Audit => Verdict::Accept,
    };
    let log = LogSpec {
        limit: policy.log,
        group: policy.log_group,
        prefix: log_prefix(revision, policy.mode),
    };
    let mut names = BTreeMap::new();
    // Blocklists first: a listed source is dropped before any accept.
    for (i, d) in policy.deny.iter().enumerate() {
        let mut sources = Vec::new();
        if !d.from.is_empty() {
            let nets = AddrList::from_nets(d.from.iter().copied());
            let base = address_set_base(DENY_SET_PREFIX, &format!("#{i}"), &mut names)?;
            sources.extend(add_address_sets(&mut rs, &base, &nets));
        }
        for name in &d.lists {
            let list = list_of(policy, name)?;
            let base = address_set_base(DENY_SET_PREFIX, name, &mut names)?;
            sources.extend(add_address_sets(&mut rs, &base, list));
        }
        for (l3, set) in sources {
            for log in [Some(log.clone()), None] {
                guard.push(Rule::SourceSet {
                    l3,
                    set: set.clone(),
                    proto: d.proto,
                    ports: d.ports,
                    log,
                    verdict: deny_verdict,
                });
            }
        }
    }
    for proto in Proto::ALL {
        let plain = policy
            .allow
            .iter()
            .filter(|a| a.proto == proto && !a.is_restricted())
            .map(|a| Element::Port(a.ports));
        // tcp/udp always (stable rule positions), the others only when used.
        let always = matches!(proto, Proto::Tcp | Proto::Udp);
        let set = Set::new(SetKey::Port, plain);
        add_set(&mut rs, &mut guard, proto, None, set, always);
    }
    for proto in Proto::ALL {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for a in policy.allow.iter().filter(|a| a.proto == proto) {
            for net in &a.from {
                match net {
                    ipnet::IpNet::V4(n) => v4.push(Element::V4Port(n.trunc(), a.ports)),
                    ipnet::IpNet::V6(n) => v6.push(Element::V6Port(n.trunc(), a.ports)),
                }
            }
        }
        let v4 = Set::new(SetKey::V4Port, v4);
        let v6 = Set::new(SetKey::V6Port, v6);
        add_set(&mut rs, &mut guard, proto, Some(L3::Ip), v4, false);
        add_set(&mut rs, &mut guard, proto, Some(L3::Ip6), v6, false);
    }
    // Allow entries' list files: one address set per list and kind, matched with the
    // entry's protocol and ports in the rule.
    for a in &policy.allow {
        for name in &a.lists {
            let list = list_of(policy, name)?;
            let base = address_set_base(LIST_SET_PREFIX, name, &mut names)?;
            for (l3, set) in add_address_sets(&mut rs, &base, list) {
                guard.push(Rule::SourceSet {
                    l3,
                    set,
                    proto: Some(a.proto),
                    ports: Some(a.ports),
                    log: None,
                    verdict: Verdict::Accept,
                });
            }
        }
    }
    let verdict = match policy.mode {
        Mode::Enforce => Verdict::Drop,
        Mode::Audit => Verdict::Accept,
    };
    let prefix = log_prefix(revision, policy.mode);

    let deny_ports = match policy.replies {
        Replies::Ports => {
            // Restricted high ports: what the source-restricted accepts above did not
            // take is denied (logged like the low ports) before the replies rule.
            for proto in Proto::ALL {
                let high = policy
                    .allow
                    .iter()
                    .filter(|a| a.proto == proto && a.is_restricted())
                    .filter_map(|a| clip(a.ports, REPLY_PORTS));
                let set = Set::new(SetKey::Port, high.map(Element::Port));
                if set.elements.is_empty() {
                    continue;
                }
                let name = restrict_set_name(proto);
                guard.push(Rule::SetLogLimited {
                    proto,
                    set: name.clone(),
                    limit: policy.log,
                    group: policy.log_group,
                    prefix: prefix.clone(),
                    verdict,
                });
                guard.push(Rule::SetMatch {
                    saddr: None,
                    proto,
                    set: name.clone(),
                    verdict,
                });
                rs.sets.insert(name, set);
            }
            for proto in Proto::ALL {
                guard.push(Rule::Ports {
                    proto,
                    ports: REPLY_PORTS,
                    verdict: Verdict::Accept,
                });
            }
            PortRange {
                start: 0,
                end: 1023,
            }
        }
        Replies::Stateful => {
            guard.push(Rule::CtState {
                states: BTreeSet::from(["established".to_string(), "related".to_string()]),
                verdict: Verdict::Accept,
            });
            PortRange {
                start: 0,
                end: 65535,
            }
        }
    };
    guard.push(Rule::LogLimited {
        ports: deny_ports,
        limit: policy.log,
        group: policy.log_group,
        prefix,
        verdict,
    });
    guard.push(Rule::Counted {
        ports: deny_ports,
        verdict,
    });

    rs.chains.insert(
        CHAIN_GUARD.to_string(),
        Chain {
            base: None,
            rules: guard,
        },
    );
    rs.chains.insert(
        CHAIN_INPUT.to_string(),
        Chain {
            base: Some(BaseChain {
                hook: "input".to_string(),
                priority: INPUT_PRIORITY,
                policy: Verdict::Accept,
            }),
            rules: vec![Rule::Jump {
                iifname: Some(iifname),
                target: CHAIN_GUARD.to_string(),
            }],
        },
    );
    Ok(rs)
}

fn list_of<'p>(policy: &'p HostPolicy, name: &str) -> Result<&'p AddrList, CompileError> {
    policy
        .lists
        .get(name)
        .map(|l| &**l)
        .ok_or_else(|| CompileError::MissingList {
            name: name.to_string(),
        })
}

/// The base name of the address sets of list `name` under `prefix`
/// ([`LIST_SET_PREFIX`] for allow entries, [`DENY_SET_PREFIX`] for deny entries); the
/// sets are `<base>_v4a`, `_v4n`, `_v6a`, `_v6n` ([`ADDRESS_SET_KINDS`]).
pub fn address_set_name(prefix: &str, name: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = hex::encode(Sha256::digest(name.as_bytes()));
    format!("{prefix}{}", &digest[..10])
}

/// The four address sets of one list: how rules match them, their key, their suffix.
pub const ADDRESS_SET_KINDS: [(L3, SetKey, &str); 4] = [
    (L3::Ip, SetKey::V4Addr, "v4a"),
    (L3::Ip, SetKey::V4Net, "v4n"),
    (L3::Ip6, SetKey::V6Addr, "v6a"),
    (L3::Ip6, SetKey::V6Net, "v6n"),
];

/// `list_<id>` / `deny_<id>`: a stable set name for a list (`id`: the first 10 hex
/// digits of SHA-256 of its name), so that a list whose content changes keeps its sets
/// and the change is element additions and removals. `names` catches a clash.
fn address_set_base(
    prefix: &str,
    name: &str,
    names: &mut BTreeMap<String, String>,
) -> Result<String, CompileError> {
    let base = address_set_name(prefix, name);
    match names.get(&base) {
        Some(other) if other != name => Err(CompileError::ListNameClash {
            a: other.clone(),
            b: name.to_string(),
            set: base,
        }),
        _ => {
            names.insert(base.clone(), name.to_string());
            Ok(base)
        }
    }
}

/// The address sets of `list` under `base` (`_v4a`: single v4 addresses, a hash set;
/// `_v4n`: v4 prefixes, an interval set; `_v6a`, `_v6n`), the empty ones left out; added
/// to `rs` once (several entries may name one list). Returns what a rule matches them
/// with.
fn add_address_sets(rs: &mut Ruleset, base: &str, list: &AddrList) -> Vec<(L3, String)> {
    let mut out = Vec::new();
    for (l3, key, suffix) in ADDRESS_SET_KINDS {
        let elements = list_elements(list, key);
        let k = if key.interval() {
            1
        } else {
            shard_count(elements.len())
        };
        let mut shards: Vec<Vec<Element>> = vec![Vec::new(); k];
        for e in elements {
            shards[shard_of(&e, k)].push(e);
        }
        for (i, elements) in shards.into_iter().enumerate() {
            let name = shard_name(base, suffix, k, i);
            if !rs.sets.contains_key(&name) {
                let set = Set::new(key, elements);
                if set.elements.is_empty() {
                    continue;
                }
                rs.sets.insert(name.clone(), set);
            }
            out.push((l3, name));
        }
    }
    out
}

/// Most elements a hash set of single addresses gets before the list is spread over
/// several (`<base>_v4a_<k>_<i>`): the kernel dumps a hash set by walking it from the
/// start for every 32 KiB reply, so reading back one set of n addresses costs n²/2700
/// element visits (11 s at 600,000; a 32,768-element shard reads in milliseconds).
pub const SHARD_ELEMENTS: usize = 32_768;

/// How many hash sets `n` single addresses are spread over (a power of two).
pub fn shard_count(n: usize) -> usize {
    n.div_ceil(SHARD_ELEMENTS).next_power_of_two().max(1)
}

/// The shard of `e` among `k` (a power of two): a multiplicative hash of the address, so
/// an address stays in its shard while the count stays.
pub fn shard_of(e: &Element, k: usize) -> usize {
    if k <= 1 {
        return 0;
    }
    let x: u64 = match e {
        Element::V4(n) => u64::from(u32::from(n.addr())),
        Element::V6(n) => {
            let a = u128::from(n.addr());
            // Folding keeps every bit of the address; the truncation is the point.
            #[allow(clippy::cast_possible_truncation)]
            let folded = (a >> 64) as u64 ^ a as u64;
            folded
        }
        _ => 0,
    };
    let h = x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
    usize::try_from(h).unwrap_or(0) & (k - 1)
}

/// The name of shard `i` of `k` of the `suffix` sets under `base` (`<base>_<suffix>` when
/// there is one).
pub fn shard_name(base: &str, suffix: &str, k: usize, i: usize) -> String {
    if k <= 1 {
        format!("{base}_{suffix}")
    } else {
        format!("{base}_{suffix}_{k}_{i}")
    }
}

/// The elements of `list` that belong in a set of `key` (addresses or prefixes of one
/// family).
pub fn list_elements(list: &AddrList, key: SetKey) -> Vec<Element> {
    match key {
        SetKey::V4Addr | SetKey::V4Net => {
            let single = key == SetKey::V4Addr;
            list.v4
                .iter()
                .filter(|&&(_, p)| (p == 32) == single)
                .filter_map(|&(a, p)| Ipv4Net::new(Ipv4Addr::from(a), p).ok())
                .map(Element::V4)
                .collect()
        }
        SetKey::V6Addr | SetKey::V6Net => {
            let single = key == SetKey::V6Addr;
            list.v6
                .iter()
                .filter(|&&(_, p)| (p == 128) == single)
                .filter_map(|&(a, p)| Ipv6Net::new(Ipv6Addr::from(a), p).ok())
                .map(Element::V6)
                .collect()
        }
        SetKey::Port | SetKey::V4Port | SetKey::V6Port => Vec::new(),
    }
}

/// The interface match of the input chain's jump: what `policy.interface` selects with
/// `facts` (the one input of the rules that comes from the host, not the policy).
pub fn input_interface(policy: &HostPolicy, facts: &Facts) -> Result<IfMatch, CompileError> {
    match &policy.interface {
        InterfaceSel::All => Ok(IfMatch {
            negate: true,
            name: "lo".to_string(),
        }),
        InterfaceSel::Default => match &facts.default_route_interface {
            Some(name) => checked_ifname(name),
            None => Err(CompileError::NoDefaultRoute {
                hostname: facts.hostname.clone(),
            }),
        },
        InterfaceSel::Named(name) => checked_ifname(name),
    }
}

/// Add `set` (and its accept rule) unless it is empty and not `always`.
fn add_set(
    rs: &mut Ruleset,
    guard: &mut Vec<Rule>,
    proto: Proto,
    saddr: Option<L3>,
    set: Set,
    always: bool,
) {
    if set.elements.is_empty() && !always {
        return;
    }
    let name = set_name(proto, saddr);
    guard.push(Rule::SetMatch {
        saddr,
        proto,
        set: name.clone(),
        verdict: Verdict::Accept,
    });
    rs.sets.insert(name, set);
}

/// `iifname "x"` for a name the kernel could have (nft would load others, but they could
/// never match, or would break our quoting).
fn checked_ifname(name: &str) -> Result<IfMatch, CompileError> {
    let bad = |reason| CompileError::InvalidInterface {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.len() > 15 {
        return Err(bad("longer than 15 bytes"));
    }
    if name == "." || name == ".." {
        return Err(bad("reserved name"));
    }
    if name
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | ':' | '"' | '\\'))
    {
        return Err(bad(
            "contains whitespace, a control character, '/', ':', '\"' or '\\'",
        ));
    }
    Ok(IfMatch {
        negate: false,
        name: name.to_string(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
