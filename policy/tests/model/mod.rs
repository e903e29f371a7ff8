//! An independent model of the seed rule, written from what a policy means (README,
//! ARCHITECTURE "Compiled ruleset"), not from `compile` or `lockout`: the verdict for a
//! new inbound packet on a guarded interface. Shared by the pure property test
//! (`policy/tests/verdicts.rs`) and the real-kernel one (`agent/tests/verdicts.rs`), with
//! the generators of enforceable policies and of packets for them.
//!
//! - an allow entry serves its protocol and ports: from anywhere, or from its `from:`
//!   networks only;
//! - `replies: ports`: any other port >= 1024 is taken as a reply to our own connections
//!   unless an entry restricts it (a `from:` entry on that protocol and port): then only
//!   its sources; every port below 1024 that no entry serves is denied;
//! - `replies: stateful`: a new packet no entry serves is denied, whatever the port;
//! - `mode: audit` accepts what it would deny.

#![allow(dead_code, clippy::unwrap_used)]

use ipnet::IpNet;
use portcullis_policy::{AllowEntry, HostPolicy, Mode, PortRange, Proto, Replies};
use proptest::prelude::*;
use std::net::IpAddr;

/// A new inbound packet: protocol, source, destination port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub proto: Proto,
    pub src: IpAddr,
    pub dport: u16,
}

/// Whether the host accepts `pkt` under `p` (its guard applies to the interface).
pub fn accepts(p: &HostPolicy, pkt: &Packet) -> bool {
    if p.mode == Mode::Audit {
        return true;
    }
    let on_port = |a: &&AllowEntry| a.proto == pkt.proto && a.ports.contains(pkt.dport);
    let served = p
        .allow
        .iter()
        .filter(on_port)
        .any(|a| a.from.is_empty() || a.from.iter().any(|n| n.contains(&pkt.src)));
    if served {
        return true;
    }
    match p.replies {
        Replies::Ports => {
            let restricted = p.allow.iter().filter(on_port).any(|a| !a.from.is_empty());
            pkt.dport >= 1024 && !restricted
        }
        Replies::Stateful => false,
    }
}

/// The sources probes come from (and policies' networks are built around).
pub const SOURCES: [&str; 8] = [
    "10.77.1.2",
    "10.77.1.3",
    "10.77.5.9",
    "10.77.200.5",
    "fd77:0:0:1::2",
    "fd77:0:0:1::3",
    "fd77:5::9",
    "fd77:200::5",
];

fn source() -> impl Strategy<Value = IpAddr> {
    prop::sample::select(SOURCES.to_vec()).prop_map(|s| s.parse().unwrap())
}

/// A network around one of [`SOURCES`]: the address itself, or its /24 (/64), /16 (/32).
fn net() -> impl Strategy<Value = IpNet> {
    (source(), 0usize..3).prop_map(|(a, k)| {
        let len = match (a, k) {
            (IpAddr::V4(_), 0) => 32,
            (IpAddr::V4(_), 1) => 24,
            (IpAddr::V4(_), _) => 16,
            (IpAddr::V6(_), 0) => 128,
            (IpAddr::V6(_), 1) => 64,
            (IpAddr::V6(_), _) => 32,
        };
        IpNet::new(a, len).unwrap().trunc()
    })
}

/// Ports near the boundaries that matter (1023/1024, the ephemeral range) and elsewhere.
fn port() -> impl Strategy<Value = u16> {
    prop_oneof![
        1u16..1100,
        prop::sample::select(vec![1, 22, 53, 137, 1023, 1024, 1025, 5432, 32767, 65535]),
        any::<u16>().prop_map(|p| p.max(1)),
    ]
}

fn entry() -> impl Strategy<Value = AllowEntry> {
    let proto = prop::sample::select(Proto::ALL.to_vec());
    let ports = (port(), prop_oneof![Just(0u16), 0u16..40])
        .prop_map(|(a, n)| PortRange::new(a, a.saturating_add(n)).unwrap());
    let from = prop_oneof![
        2 => Just(Vec::new()),
        1 => prop::collection::vec(net(), 1..3),
    ];
    (proto, ports, from).prop_map(|(proto, ports, from)| AllowEntry {
        proto,
        ports,
        from,
        lists: Vec::new(),
        label: format!("{ports}/{proto}"),
    })
}

/// Policies the loader accepts (see `restrict`): a restricted entry never overlaps an
/// unrestricted one of its protocol, nor (`replies: ports`) the ephemeral range.
pub fn policy() -> impl Strategy<Value = HostPolicy> {
    let replies = prop_oneof![3 => Just(Replies::Ports), 1 => Just(Replies::Stateful)];
    let mode = prop_oneof![6 => Just(Mode::Enforce), 1 => Just(Mode::Audit)];
    (replies, mode, prop::collection::vec(entry(), 0..10)).prop_map(|(replies, mode, allow)| {
        let meets = |a: PortRange, b: PortRange| a.start <= b.end && b.start <= a.end;
        let ephemeral = PortRange::new(32768, 60999).unwrap();
        let open: Vec<(Proto, PortRange)> = allow
            .iter()
            .filter(|a| a.from.is_empty())
            .map(|a| (a.proto, a.ports))
            .collect();
        let allow = allow
            .into_iter()
            .filter(|a| {
                a.from.is_empty()
                    || !(open
                        .iter()
                        .any(|(p, r)| *p == a.proto && meets(*r, a.ports))
                        || replies == Replies::Ports && meets(a.ports, ephemeral))
            })
            .collect();
        HostPolicy {
            replies,
            mode,
            allow,
            ..HostPolicy::default()
        }
    })
}

/// A packet aimed at what `p` names: an entry's ends and their neighbours, or anywhere.
pub fn packet_for(p: &HostPolicy) -> impl Strategy<Value = Packet> + use<> {
    let mut ports: Vec<u16> = vec![0, 1, 22, 1023, 1024, 40000, 65535];
    for a in &p.allow {
        ports.extend([a.ports.start, a.ports.end]);
        ports.extend(a.ports.start.checked_sub(1));
        ports.extend(a.ports.end.checked_add(1));
    }
    let dport = prop_oneof![3 => prop::sample::select(ports), 1 => any::<u16>()];
    let proto = prop::sample::select(Proto::ALL.to_vec());
    (proto, source(), dport).prop_map(|(proto, src, dport)| Packet { proto, src, dport })
}
