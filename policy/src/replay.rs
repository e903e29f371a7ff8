//! "Who would be denied": replay the traffic a host has seen against a new ruleset.
//!
//! Two kinds of evidence, both from the running (current) ruleset:
//! - **logged packets** (the denial log): each `(proto, source, port, interface)` group is
//!   evaluated against both rulesets; it is newly denied when the current ruleset accepts
//!   it (audit mode logs what it would deny but accepts) and the new one drops it.
//! - **accept-rule counters**: a rule of the current ruleset that accepted packets covers
//!   a space of flows (its protocol, ports, sources, the interfaces that reach it); every
//!   flow of that space the current ruleset gives to *that rule* and the new ruleset drops
//!   is newly denied. Counters are per rule, not per port: the finding names the ports the
//!   new ruleset drops inside the rule, and says the counter cannot tell which of them saw
//!   the packets.
//!
//! Exact like the anti-lockout check: verdicts change only at the boundaries of the ranges
//! and networks either ruleset names, so those boundaries (and one point inside each gap)
//! are what gets evaluated. Pure: takes values, returns values.

use crate::lockout::{self, Decider, Flow, addr_points, decide, port_points, verdict};
use crate::model::{PortRange, Proto};
use crate::ruleset::normalize::merge_ports;
use crate::ruleset::{Element, L3, Rule, Ruleset, Verdict};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Packets of one `(proto, source, port, interface)` group from the denial log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub proto: Proto,
    pub src: IpAddr,
    pub dport: u16,
    pub iif: String,
    pub packets: u64,
    pub last_ms: i64,
}

/// An accept rule's counter in the current ruleset (`chain`, rule `index` from 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleHits {
    pub chain: String,
    pub index: usize,
    pub packets: u64,
    pub last_ms: i64,
}

/// Where a finding's evidence comes from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Evidence {
    /// Logged and accepted (audit mode) by the current ruleset.
    Logged,
    /// The counter of this accept rule (its nft text).
    Counter(String),
}

/// Traffic the new ruleset would deny that the current one accepted, on one protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub proto: Proto,
    /// Ports the new ruleset drops (merged ranges).
    pub ports: Vec<PortRange>,
    /// Sources seen (logged evidence: the addresses, most packets first, at most
    /// [`MAX_SOURCES`]); for counter evidence the networks the rule accepted from.
    pub sources: Vec<String>,
    /// More sources than listed.
    pub more_sources: usize,
    pub packets: u64,
    pub last_ms: i64,
    pub evidence: Evidence,
    /// One packet the new ruleset would drop.
    pub example: Flow,
}

/// Sources listed per finding.
pub const MAX_SOURCES: usize = 5;

/// Every newly denied flow the evidence shows, sorted by protocol and first port.
/// `interfaces`: where traffic can arrive (see [`lockout::inbound_interfaces`]).
pub fn replay(
    current: &Ruleset,
    new: &Ruleset,
    logged: &[Logged],
    hits: &[RuleHits],
    interfaces: &[String],
) -> Vec<Finding> {
    let mut out = from_logs(current, new, logged);
    for h in hits.iter().filter(|h| h.packets > 0) {
        out.extend(from_counter(current, new, h, interfaces));
    }
    out.sort_by(|a, b| {
        (a.proto, a.ports.first().map(|p| p.start), &a.evidence).cmp(&(
            b.proto,
            b.ports.first().map(|p| p.start),
            &b.evidence,
        ))
    });
    out
}

fn from_logs(current: &Ruleset, new: &Ruleset, logged: &[Logged]) -> Vec<Finding> {
    // (proto, port) -> packets per source, last seen, one flow.
    type Acc = (BTreeMap<IpAddr, u64>, i64, Flow);
    let mut by_port: BTreeMap<(Proto, u16), Acc> = BTreeMap::new();
    for l in logged {
        let flow = Flow {
            proto: l.proto,
            src: l.src,
            dport: l.dport,
            iif: l.iif.clone(),
            established: false,
        };
        if verdict(current, &flow) != Verdict::Accept || verdict(new, &flow) != Verdict::Drop {
            continue;
        }
        let e = by_port
            .entry((l.proto, l.dport))
            .or_insert_with(|| (BTreeMap::new(), l.last_ms, flow));
        *e.0.entry(l.src).or_default() += l.packets;
        e.1 = e.1.max(l.last_ms);
    }
    by_port
        .into_iter()
        .map(|((proto, port), (srcs, last_ms, example))| {
            let mut ranked: Vec<(IpAddr, u64)> = srcs.into_iter().collect();
            ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            Finding {
                proto,
                ports: vec![PortRange::single(port)],
                packets: ranked.iter().map(|(_, n)| n).sum(),
                more_sources: ranked.len().saturating_sub(MAX_SOURCES),
                sources: ranked
                    .iter()
                    .take(MAX_SOURCES)
                    .map(|(a, _)| a.to_string())
                    .collect(),
                last_ms,
                evidence: Evidence::Logged,
                example,
            }
        })
        .collect()
}

/// The flow space a rule matches: (proto, port range, source network, established).
fn space(rs: &Ruleset, rule: &Rule) -> Vec<(Proto, PortRange, IpNet, bool)> {
    let any = || {
        [
            IpNet::V4(ipnet::Ipv4Net::default()),
            IpNet::V6(ipnet::Ipv6Net::default()),
        ]
    };
    let (saddr, proto, set) = match rule {
        Rule::SetMatch {
            saddr, proto, set, ..
        } => (*saddr, *proto, set),
        Rule::SetLogLimited { proto, set, .. } => (None, *proto, set),
        _ => return space_of_ports(rule),
    };
    rs.sets
        .get(set)
        .into_iter()
        .flat_map(|s| s.elements.iter())
        .flat_map(|e| match (e, saddr) {
            (Element::Port(p), None) => any().map(|n| (proto, *p, n, false)).to_vec(),
            (Element::V4Port(n, p), Some(L3::Ip)) => vec![(proto, *p, IpNet::V4(*n), false)],
            (Element::V6Port(n, p), Some(L3::Ip6)) => vec![(proto, *p, IpNet::V6(*n), false)],
            _ => Vec::new(),
        })
        .collect()
}

/// [`space`] of the rules without a set.
fn space_of_ports(rule: &Rule) -> Vec<(Proto, PortRange, IpNet, bool)> {
    let any = || {
        [
            IpNet::V4(ipnet::Ipv4Net::default()),
            IpNet::V6(ipnet::Ipv6Net::default()),
        ]
    };
    let both = Proto::ALL;
    match rule {
        Rule::Ports { proto, ports, .. } => any().map(|n| (*proto, *ports, n, false)).to_vec(),
        // Replies land on the ephemeral range; established traffic to served ports is
        // covered by the counters of the rules that accepted its first packet.
        Rule::CtState { states, .. } if states.contains("established") => both
            .iter()
            .flat_map(|p| any().map(|n| (*p, lockout::EPHEMERAL, n, true)))
            .collect(),
        Rule::LogLimited { ports, .. } | Rule::Counted { ports, .. } => both
            .iter()
            .flat_map(|p| any().map(|n| (*p, *ports, n, false)))
            .collect(),
        _ => Vec::new(),
    }
}

/// Points that stand for every port of `within`: the boundaries both rulesets name, and
/// one port inside each gap between them; each with the range it stands for.
fn port_segments(a: &Ruleset, b: &Ruleset, within: PortRange) -> Vec<PortRange> {
    let points: BTreeSet<u16> = port_points(a, within)
        .into_iter()
        .chain(port_points(b, within))
        .collect();
    let points: Vec<u16> = points.into_iter().collect();
    let mut out = Vec::with_capacity(points.len() * 2);
    for (i, p) in points.iter().enumerate() {
        out.push(PortRange::single(*p));
        if let Some(next) = points.get(i + 1)
            && next - p > 1
        {
            out.push(PortRange {
                start: p + 1,
                end: next - 1,
            });
        }
    }
    out
}

fn from_counter(
    current: &Ruleset,
    new: &Ruleset,
    hits: &RuleHits,
    interfaces: &[String],
) -> Vec<Finding> {
    let Some(rule) = current
        .chains
        .get(&hits.chain)
        .and_then(|c| c.rules.get(hits.index))
    else {
        return Vec::new();
    };
    if !rule_accepts(rule) {
        return Vec::new();
    }
    let me = Decider::Rule(hits.chain.clone(), hits.index);
    // proto -> (dropped port segments, sources, example)
    type Dropped = (Vec<PortRange>, BTreeSet<String>, Option<Flow>);
    let mut per_proto: BTreeMap<Proto, Dropped> = BTreeMap::new();
    for (proto, ports, from, established) in space(current, rule) {
        let addrs: BTreeSet<IpAddr> = addr_points(current, from)
            .into_iter()
            .chain(addr_points(new, from))
            .collect();
        for seg in port_segments(current, new, ports) {
            let hit = interfaces.iter().find_map(|iif| {
                addrs.iter().find_map(|src| {
                    let flow = Flow {
                        proto,
                        src: *src,
                        dport: seg.start,
                        iif: iif.clone(),
                        established,
                    };
                    (decide(current, &flow).1 == me && verdict(new, &flow) == Verdict::Drop)
                        .then_some(flow)
                })
            });
            if let Some(flow) = hit {
                let e = per_proto.entry(proto).or_default();
                e.0.push(seg);
                e.1.insert(if from.prefix_len() == 0 {
                    "any".to_string()
                } else {
                    from.to_string()
                });
                e.2.get_or_insert(flow);
            }
        }
    }
    per_proto
        .into_iter()
        .filter_map(|(proto, (segs, sources, example))| {
            Some(Finding {
                proto,
                ports: merge_ports(segs),
                sources: sources.iter().take(MAX_SOURCES).cloned().collect(),
                more_sources: sources.len().saturating_sub(MAX_SOURCES),
                packets: hits.packets,
                last_ms: hits.last_ms,
                evidence: Evidence::Counter(rule.to_string()),
                example: example?,
            })
        })
        .collect()
}

fn rule_accepts(rule: &Rule) -> bool {
    match rule {
        Rule::SetMatch { verdict, .. }
        | Rule::SetLogLimited { verdict, .. }
        | Rule::Ports { verdict, .. }
        | Rule::Fragment { verdict, .. }
        | Rule::CtState { verdict, .. }
        | Rule::LogLimited { verdict, .. }
        | Rule::Counted { verdict, .. }
        | Rule::SourceSet { verdict, .. } => *verdict == Verdict::Accept,
        Rule::Jump { .. } | Rule::Unknown { .. } => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "replay_tests.rs"]
mod tests;
