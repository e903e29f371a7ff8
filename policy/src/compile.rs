//! `compile(policy, facts, revision) -> Ruleset`: the one place the seed rule becomes the
//! layout of `table inet portcullis` (see ARCHITECTURE.md, "Compiled ruleset").
//!
//! Deterministic and pure: the same inputs always give the same `Ruleset` (and hash). It
//! must not look at anything but its arguments, and never emits `Rule::Unknown`.
//!
//! Layout:
//! - sets `allow_tcp` / `allow_udp` (`inet_service`) are always emitted, even when empty,
//!   with their accept rules, so the rule positions are stable across revisions and a
//!   changed whitelist shows up as element changes only. The `from:` sets
//!   `allow_{tcp,udp}_{v4,v6}` (`addr . inet_service`) and their rules are emitted only
//!   when non-empty.
//! - base chain `input` (filter, priority -10, policy accept) jumps to `guard` for the
//!   selected interface (`iifname "x"`), or for everything but `lo`.
//! - chain `guard`: set accepts, the replies rule, then a rate-limited logging deny and an
//!   unlogged counted deny for what the limit let through. `replies: stateful` accepts
//!   `ct state established,related` and denies every other tcp/udp port (0-65535);
//!   `replies: ports` accepts 1024-65535 and denies 0-1023. `mode: audit` ends both deny
//!   rules in `accept`. Non-tcp/udp traffic (ICMP, ND) is never matched.

use crate::facts::Facts;
use crate::model::{HostPolicy, InterfaceSel, Mode, PortRange, Proto, Replies};
use crate::ruleset::{BaseChain, Chain, Element, IfMatch, L3, Rule, Ruleset, Set, SetKey, Verdict};
use std::collections::BTreeSet;

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
    let iifname = match &policy.interface {
        InterfaceSel::All => IfMatch {
            negate: true,
            name: "lo".to_string(),
        },
        InterfaceSel::Default => match &facts.default_route_interface {
            Some(name) => checked_ifname(name)?,
            None => {
                return Err(CompileError::NoDefaultRoute {
                    hostname: facts.hostname.clone(),
                });
            }
        },
        InterfaceSel::Named(name) => checked_ifname(name)?,
    };

    let mut rs = Ruleset::default();
    let mut guard = Vec::new();
    for proto in [Proto::Tcp, Proto::Udp] {
        let plain = policy
            .allow
            .iter()
            .filter(|a| a.proto == proto && a.from.is_empty())
            .map(|a| Element::Port(a.ports));
        add_set(
            &mut rs,
            &mut guard,
            proto,
            None,
            Set::new(SetKey::Port, plain),
            true,
        );
    }
    for proto in [Proto::Tcp, Proto::Udp] {
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

    let deny_ports = match policy.replies {
        Replies::Ports => {
            for proto in [Proto::Tcp, Proto::Udp] {
                guard.push(Rule::Ports {
                    proto,
                    ports: PortRange {
                        start: 1024,
                        end: 65535,
                    },
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
    let verdict = match policy.mode {
        Mode::Enforce => Verdict::Drop,
        Mode::Audit => Verdict::Accept,
    };
    guard.push(Rule::LogLimited {
        ports: deny_ports,
        limit: policy.log,
        group: policy.log_group,
        prefix: log_prefix(revision, policy.mode),
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
