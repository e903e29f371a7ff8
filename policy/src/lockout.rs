//! Anti-lockout: would a compiled [`Ruleset`] deny a flow that must stay open?
//!
//! Evaluates the structured rules (no kernel): base chains on the `input` hook in priority
//! order, jumps, set lookups, port ranges, `ct state`. A [`Requirement`] (e.g. "tcp/22 from
//! 10.0.0.0/8", "replies from the controller to ephemeral ports") holds when *every*
//! source address and port it covers is accepted on every interface checked; the check
//! is exact because verdicts only change at the boundaries of the ranges the ruleset
//! names, and those boundaries are what it evaluates.
//!
//! Pure: takes values, returns values.

use crate::model::{PortRange, Proto};
use crate::ruleset::{Element, L3, Rule, Ruleset, Verdict};
use ipnet::IpNet;
use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

/// The Linux default `ip_local_port_range`: where replies to an agent's connections land.
pub const EPHEMERAL: PortRange = PortRange {
    start: 32768,
    end: 60999,
};

/// One packet, as the guard sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub proto: Proto,
    pub src: IpAddr,
    pub dport: u16,
    pub iif: String,
    /// Part of an established connection (a reply), vs. a new connection.
    pub established: bool,
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} -> port {} on {}{}",
            self.proto,
            self.src,
            self.dport,
            self.iif,
            if self.established {
                " (established)"
            } else {
                " (new)"
            }
        )
    }
}

/// Traffic that must stay accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// What it is, for the explanation (e.g. `--keep tcp/22 from 10.0.0.0/8`).
    pub what: String,
    pub proto: Proto,
    pub ports: PortRange,
    pub from: IpNet,
    pub established: bool,
}

impl Requirement {
    /// The requirement in `--keep` syntax: `tcp/22 from 10.0.0.0/8`.
    pub fn keep_syntax(&self) -> String {
        format!("{}/{} from {}", self.proto, self.ports, self.from)
    }
}

/// A requirement the ruleset breaks, with one packet it would drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub what: String,
    pub denied: Flow,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: would drop {}", self.what, self.denied)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("keep {input:?}: {reason} (expected e.g. `tcp/22`, `22/tcp`, `tcp/22 from 10.0.0.0/8`)")]
pub struct KeepError {
    pub input: String,
    pub reason: String,
}

/// Parse a management entry: `tcp/22`, `22/tcp`, `ssh/tcp`, `tcp/8000-8010 from 10.0.0.0/8`.
/// Without `from`, from anywhere (both address families: two requirements).
pub fn parse_keep(input: &str) -> Result<Vec<Requirement>, KeepError> {
    let err = |reason: &str| KeepError {
        input: input.to_string(),
        reason: reason.to_string(),
    };
    let mut words = input.split_whitespace();
    let spec = words.next().ok_or_else(|| err("empty"))?;
    let from: Vec<IpNet> = match (words.next(), words.next(), words.next()) {
        (None, _, _) => vec![
            IpNet::V4(ipnet::Ipv4Net::default()),
            IpNet::V6(ipnet::Ipv6Net::default()),
        ],
        (Some("from"), Some(cidr), None) => {
            vec![
                cidr.parse::<IpNet>()
                    .map_err(|_| err(&format!("{cidr:?} is not a CIDR")))?,
            ]
        }
        _ => return Err(err("only `from CIDR` may follow the port")),
    };
    let (a, b) = spec
        .split_once('/')
        .ok_or_else(|| err("missing `/` between protocol and port"))?;
    let proto_of = Proto::from_name;
    let (proto, port) = match (proto_of(a), proto_of(b)) {
        (Some(p), _) => (p, b),
        (None, Some(p)) => (p, a),
        (None, None) => {
            return Err(err("protocol must be tcp, udp, udplite, sctp or dccp"));
        }
    };
    let number = |s: &str| s.parse::<u16>().ok();
    let ports = match port.split_once('-') {
        Some((a, b)) => number(a)
            .zip(number(b))
            .and_then(|(a, b)| PortRange::new(a, b)),
        None => number(port)
            .or_else(|| crate::services::lookup(port, proto))
            .map(PortRange::single),
    }
    .ok_or_else(|| err(&format!("{port:?} is not a port, range or service name")))?;
    Ok(from
        .into_iter()
        .map(|net| Requirement {
            what: format!("keep {input}"),
            proto,
            ports,
            from: net,
            established: false,
        })
        .collect())
}

/// The verdict `rs` gives `flow` (packets not dropped by our table are accepted).
pub fn verdict(rs: &Ruleset, flow: &Flow) -> Verdict {
    decide(rs, flow).0
}

/// Where a verdict came from: the rule (chain, index from 0) or a base chain's policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decider {
    Rule(String, usize),
    Policy(String),
    /// No base chain of ours decided: not our table's doing.
    Nothing,
}

/// The verdict `rs` gives `flow` and what decided it. A base chain's accept hands the
/// packet to the next base chain on the hook; the last one that decided is reported.
pub fn decide(rs: &Ruleset, flow: &Flow) -> (Verdict, Decider) {
    let mut bases: Vec<(&String, i32, Verdict)> = rs
        .chains
        .iter()
        .filter_map(|(n, c)| c.base.as_ref().map(|b| (n, b)))
        .filter(|(_, b)| b.hook == "input")
        .map(|(n, b)| (n, b.priority, b.policy))
        .collect();
    bases.sort_by_key(|(n, p, _)| (*p, (*n).clone()));
    let mut by = Decider::Nothing;
    for (name, _, policy) in bases {
        match eval_chain(rs, name, flow, 0) {
            Some((Verdict::Drop, at)) => return (Verdict::Drop, at),
            Some((Verdict::Accept, at)) => by = at,
            None if policy == Verdict::Drop => {
                return (Verdict::Drop, Decider::Policy(name.clone()));
            }
            None => by = Decider::Policy(name.clone()),
        }
    }
    (Verdict::Accept, by)
}

fn eval_chain(rs: &Ruleset, name: &str, flow: &Flow, depth: u8) -> Option<(Verdict, Decider)> {
    // Our rulesets jump one level; the bound only guards against a looping readback.
    if depth > 16 {
        return None;
    }
    let chain = rs.chains.get(name)?;
    for (index, rule) in chain.rules.iter().enumerate() {
        let hit = match rule {
            Rule::Jump { iifname, target } => {
                let matches = iifname
                    .as_ref()
                    .is_none_or(|m| (m.name == flow.iif) != m.negate);
                if matches && let Some(v) = eval_chain(rs, target, flow, depth + 1) {
                    return Some(v);
                }
                None
            }
            Rule::SetMatch {
                saddr,
                proto,
                set,
                verdict,
            } => (*proto == flow.proto && in_set(rs, set, *saddr, flow)).then_some(*verdict),
            Rule::SetLogLimited {
                proto,
                set,
                verdict,
                ..
            } => (*proto == flow.proto && in_set(rs, set, None, flow)).then_some(*verdict),
            Rule::Ports {
                proto,
                ports,
                verdict,
            } => (*proto == flow.proto && ports.contains(flow.dport)).then_some(*verdict),
            Rule::CtState { states, verdict } => {
                (flow.established && states.contains("established")).then_some(*verdict)
            }
            // A flow is a whole datagram (its first fragment, when fragmented).
            Rule::Fragment { .. } => None,
            // `meta l4proto { every Proto }`: any flow's protocol is in it.
            Rule::LogLimited { ports, verdict, .. } | Rule::Counted { ports, verdict } => {
                ports.contains(flow.dport).then_some(*verdict)
            }
            Rule::SourceSet {
                l3,
                set,
                proto,
                ports,
                verdict,
                ..
            } => (proto.is_none_or(|p| p == flow.proto)
                && ports.is_none_or(|p| p.contains(flow.dport))
                && in_address_set(rs, set, *l3, flow.src))
            .then_some(*verdict),
            Rule::Unknown { .. } => None,
        };
        if let Some(v) = hit {
            return Some((v, Decider::Rule(name.to_string(), index)));
        }
    }
    None
}

fn in_set(rs: &Ruleset, set: &str, saddr: Option<L3>, flow: &Flow) -> bool {
    let Some(set) = rs.sets.get(set) else {
        return false;
    };
    set.elements.iter().any(|e| match (e, saddr, flow.src) {
        (Element::Port(p), None, _) => p.contains(flow.dport),
        (Element::V4Port(net, p), Some(L3::Ip), IpAddr::V4(a)) => {
            net.contains(&a) && p.contains(flow.dport)
        }
        (Element::V6Port(net, p), Some(L3::Ip6), IpAddr::V6(a)) => {
            net.contains(&a) && p.contains(flow.dport)
        }
        _ => false,
    })
}

/// `src` in an address set. Its elements never overlap (compile normalizes them, the
/// kernel refuses overlapping intervals, hash sets hold single addresses), so the one
/// element that can hold `src` is the last one that starts at or below it.
fn in_address_set(rs: &Ruleset, set: &str, l3: L3, src: IpAddr) -> bool {
    let Some(set) = rs.sets.get(set) else {
        return false;
    };
    match (l3, src) {
        (L3::Ip, IpAddr::V4(a)) => {
            let probe = Element::V4(ipnet::Ipv4Net::from(a));
            set.elements
                .range(..=probe)
                .next_back()
                .is_some_and(|e| matches!(e, Element::V4(n) if n.contains(&a)))
        }
        (L3::Ip6, IpAddr::V6(a)) => {
            let probe = Element::V6(ipnet::Ipv6Net::from(a));
            set.elements
                .range(..=probe)
                .next_back()
                .is_some_and(|e| matches!(e, Element::V6(n) if n.contains(&a)))
        }
        _ => false,
    }
}

/// Every boundary of a port range the ruleset names, inside `within` (plus its ends).
pub(crate) fn port_points(rs: &Ruleset, within: PortRange) -> BTreeSet<u16> {
    let mut ranges: Vec<PortRange> = Vec::new();
    for set in rs.sets.values() {
        for e in set.elements.iter() {
            match e {
                Element::Port(p) | Element::V4Port(_, p) | Element::V6Port(_, p) => ranges.push(*p),
                Element::V4(_) | Element::V6(_) => {}
            }
        }
    }
    for chain in rs.chains.values() {
        for r in &chain.rules {
            match r {
                Rule::Ports { ports, .. }
                | Rule::LogLimited { ports, .. }
                | Rule::Counted { ports, .. }
                | Rule::SourceSet {
                    ports: Some(ports), ..
                } => ranges.push(*ports),
                _ => {}
            }
        }
    }
    let mut points = BTreeSet::from([within.start, within.end]);
    for r in ranges {
        for p in [
            Some(r.start),
            Some(r.end),
            r.start.checked_sub(1),
            r.end.checked_add(1),
        ]
        .into_iter()
        .flatten()
        {
            if within.contains(p) {
                points.insert(p);
            }
        }
    }
    points
}

/// Every boundary of a source network the ruleset names, inside `within` (plus its ends).
pub(crate) fn addr_points(rs: &Ruleset, within: IpNet) -> BTreeSet<IpAddr> {
    addr_points_for(rs, within, None)
}

/// [`addr_points`] for flows of one protocol to some ports only (`Some`): the address sets
/// only rules on other protocols or ports look at (a big partner list on tcp/443, when
/// the question is tcp/22) cannot change those flows' verdicts, so their boundaries are
/// left out.
fn addr_points_for(
    rs: &Ruleset,
    within: IpNet,
    flows: Option<(Proto, PortRange)>,
) -> BTreeSet<IpAddr> {
    let mut points = BTreeSet::from([within.network(), within.broadcast()]);
    let relevant = |name: &str| {
        let Some((proto, ports)) = flows else {
            return true;
        };
        rs.chains.values().flat_map(|c| &c.rules).any(|r| match r {
            Rule::SourceSet {
                set,
                proto: p,
                ports: pr,
                ..
            } if set == name => {
                p.is_none_or(|p| p == proto)
                    && pr.is_none_or(|pr| pr.start <= ports.end && ports.start <= pr.end)
            }
            Rule::SourceSet { .. } => false,
            Rule::SetMatch { set, .. } | Rule::SetLogLimited { set, .. } => set == name,
            _ => false,
        })
    };
    let nets = rs
        .sets
        .iter()
        .filter(|(name, set)| !set.key.is_address() || relevant(name))
        .flat_map(|(_, s)| s.elements.iter())
        .filter_map(|e| match e {
            Element::V4Port(n, _) => Some(IpNet::V4(*n)),
            Element::V6Port(n, _) => Some(IpNet::V6(*n)),
            Element::V4(n) => Some(IpNet::V4(*n)),
            Element::V6(n) => Some(IpNet::V6(*n)),
            Element::Port(_) => None,
        });
    for n in nets {
        let (lo, hi) = (n.network(), n.broadcast());
        for a in [Some(lo), Some(hi), step(lo, false), step(hi, true)]
            .into_iter()
            .flatten()
        {
            if within.contains(&a) {
                points.insert(a);
            }
        }
    }
    points
}

fn step(a: IpAddr, up: bool) -> Option<IpAddr> {
    match a {
        IpAddr::V4(v) => {
            let n = u32::from(v);
            let n = if up {
                n.checked_add(1)?
            } else {
                n.checked_sub(1)?
            };
            Some(IpAddr::V4(n.into()))
        }
        IpAddr::V6(v) => {
            let n = u128::from(v);
            let n = if up {
                n.checked_add(1)?
            } else {
                n.checked_sub(1)?
            };
            Some(IpAddr::V6(n.into()))
        }
    }
}

/// The first packet of `req` that `rs` would drop on interface `iif`, if any.
pub fn first_denied(rs: &Ruleset, req: &Requirement, iif: &str) -> Option<Flow> {
    let ports = port_points(rs, req.ports);
    let addrs = addr_points_for(rs, req.from, Some((req.proto, req.ports)));
    for src in &addrs {
        for dport in &ports {
            let flow = Flow {
                proto: req.proto,
                src: *src,
                dport: *dport,
                iif: iif.to_string(),
                established: req.established,
            };
            if verdict(rs, &flow) == Verdict::Drop {
                return Some(flow);
            }
        }
    }
    None
}

/// Every requirement broken on any of `interfaces` (one violation per requirement).
pub fn check(rs: &Ruleset, reqs: &[Requirement], interfaces: &[String]) -> Vec<Violation> {
    reqs.iter()
        .filter_map(|req| {
            interfaces
                .iter()
                .find_map(|iif| first_denied(rs, req, iif))
                .map(|denied| Violation {
                    what: req.what.clone(),
                    denied,
                })
        })
        .collect()
}

/// The interfaces traffic can arrive on, from facts: up, not loopback (`"any"` when the
/// facts list none, which every `iifname != "lo"` guard covers).
pub fn inbound_interfaces(facts: &crate::Facts) -> Vec<String> {
    let v: Vec<String> = facts
        .interfaces
        .iter()
        .filter(|i| i.up && i.name != "lo")
        .map(|i| i.name.clone())
        .collect();
    if v.is_empty() { vec!["any".into()] } else { v }
}

/// An agent's replies from the controller at `controller` must come back in.
pub fn agent_replies(controller: IpAddr) -> Requirement {
    Requirement {
        what: format!("replies from the controller {controller} to the agent"),
        proto: Proto::Tcp,
        ports: EPHEMERAL,
        from: IpNet::from(controller),
        established: true,
    }
}

/// On the controller's own host: agents at `agent` must reach its listening `port`.
pub fn controller_port(port: u16, agent: IpAddr) -> Requirement {
    Requirement {
        what: format!("agent connections from {agent} to the controller's port tcp/{port}"),
        proto: Proto::Tcp,
        ports: PortRange::single(port),
        from: IpNet::from(agent),
        established: false,
    }
}

#[cfg(test)]
#[path = "lockout_tests.rs"]
mod tests;
