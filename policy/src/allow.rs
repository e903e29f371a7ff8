//! One `allow:` entry: `smtp/tcp`, `25/tcp`, `1000-1010/udp`, `5000/sctp`, a bare
//! single-protocol service name (`ssh`), or a mapping `{ port | service, proto, from }`
//! (proto: tcp, udp, udplite, sctp or dccp; service names are IANA's tcp/udp ones). Also
//! port ranges and CIDRs.
//!
//! Part of `parse` (a child module). Must not merge, de-duplicate or do I/O.

use super::{ALLOW_KEYS, Ctx, suggest};
use crate::model::{AllowEntry, PortRange, Proto};
use crate::services;
use crate::yaml::{Node, NodeKind};
use ipnet::IpNet;
use std::net::IpAddr;

pub(super) fn allow_entry(node: &Node, cx: &mut Ctx<'_>) -> Option<AllowEntry> {
    match &node.kind {
        NodeKind::Scalar(s) => from_text(s.trim(), node, cx),
        NodeKind::Map(entries) => from_map(entries, node, cx),
        _ => {
            cx.err(
                node,
                format!(
                    "an allow entry must be `service/proto`, `port/proto` or a mapping with port|service, proto, from; found {}",
                    node.type_name()
                ),
            );
            None
        }
    }
}

fn from_text(s: &str, node: &Node, cx: &mut Ctx<'_>) -> Option<AllowEntry> {
    let (what, proto) = match s.split_once('/') {
        Some((w, p)) => (w.trim(), Some(p.trim())),
        None => (s, None),
    };
    let (proto, ports) = resolve(what, proto, node, node, cx)?;
    Some(AllowEntry {
        proto,
        ports,
        from: Vec::new(),
        lists: Vec::new(),
        label: s.to_string(),
    })
}

pub(super) fn looks_numeric(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_digit() || c == '-')
}

/// Turn (port-or-service, optional proto) into (proto, ports). `at` locates the port or
/// service, `proto_at` the protocol.
pub(super) fn resolve(
    what: &str,
    proto: Option<&str>,
    at: &Node,
    proto_at: &Node,
    cx: &mut Ctx<'_>,
) -> Option<(Proto, PortRange)> {
    let numeric = looks_numeric(what);
    let proto = match proto {
        None => None,
        Some(p) => match Proto::from_name(&p.to_ascii_lowercase()) {
            Some(proto) => Some(proto),
            None => {
                let known = services::protos_for(what);
                let extra = if !numeric && !known.is_empty() {
                    format!(
                        " (service `{what}` exists for {}, not {p})",
                        describe(&known)
                    )
                } else {
                    String::new()
                };
                cx.err(
                    proto_at,
                    format!(
                        "unknown protocol `{p}`: expected tcp, udp, udplite, sctp or dccp{extra}"
                    ),
                );
                return None;
            }
        },
    };
    if numeric {
        let ports = match parse_ports(what) {
            Ok(p) => p,
            Err(e) => {
                cx.err(at, e);
                return None;
            }
        };
        return match proto {
            Some(p) => Some((p, ports)),
            None => {
                cx.err(
                    at,
                    format!("port `{what}` needs a protocol: write {what}/tcp or {what}/udp"),
                );
                None
            }
        };
    }
    let known = services::protos_for(what);
    if known.is_empty() {
        let hint = suggest(what, services::all_names())
            .map(|s| format!(" (did you mean `{s}`?)"))
            .unwrap_or_default();
        cx.err(
            at,
            format!("unknown service `{what}`{hint}; use a port number like 8080/tcp"),
        );
        return None;
    }
    match proto {
        Some(p) => match services::lookup(what, p) {
            Some(port) => Some((p, PortRange::single(port))),
            None => {
                // The service table is IANA's tcp/udp registry: other transports take
                // the port number.
                let instead = known
                    .first()
                    .filter(|_| !matches!(p, Proto::Tcp | Proto::Udp))
                    .map(|(_, port)| format!("; for {p} write the port: {port}/{p}"))
                    .unwrap_or_default();
                cx.err(
                    proto_at,
                    format!(
                        "service `{what}` is {} only ({}), not {p}{instead}",
                        only(&known),
                        describe(&known)
                    ),
                );
                None
            }
        },
        None => {
            let protos: Vec<Proto> = dedup_protos(&known);
            if let [p] = protos.as_slice() {
                let port = services::lookup(what, *p)?;
                Some((*p, PortRange::single(port)))
            } else {
                cx.err(
                    at,
                    format!(
                        "service `{what}` exists for {}: write {what}/tcp or {what}/udp",
                        describe(&known)
                    ),
                );
                None
            }
        }
    }
}

fn dedup_protos(known: &[(Proto, u16)]) -> Vec<Proto> {
    let mut v: Vec<Proto> = known.iter().map(|(p, _)| *p).collect();
    v.dedup();
    v
}

fn only(known: &[(Proto, u16)]) -> String {
    dedup_protos(known)
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// `tcp/udp 53`, or `25/tcp` lists when ports differ.
fn describe(known: &[(Proto, u16)]) -> String {
    let ports: Vec<u16> = known.iter().map(|(_, p)| *p).collect();
    if ports.windows(2).all(|w| w[0] == w[1]) {
        format!("{} {}", only(known), ports.first().copied().unwrap_or(0))
    } else {
        known
            .iter()
            .map(|(p, n)| format!("{n}/{p}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn from_map(entries: &[(Node, Node)], node: &Node, cx: &mut Ctx<'_>) -> Option<AllowEntry> {
    let (mut port, mut service, mut proto, mut from) = (None, None, None, None);
    let mut ok = true;
    for (k, v) in entries {
        let slot = match k.as_str() {
            Some("port") => &mut port,
            Some("service") => &mut service,
            Some("proto") => &mut proto,
            Some("from") => &mut from,
            _ => {
                cx.unknown_key(k, "allow entry", ALLOW_KEYS);
                ok = false;
                continue;
            }
        };
        *slot = Some(v);
    }
    let mut text = |n: Option<&Node>, what: &str, cx: &mut Ctx<'_>| -> Option<String> {
        let n = n?;
        let s = n.as_str().map(|s| s.trim().to_string());
        if s.is_none() {
            cx.err(
                n,
                format!("`{what}` must be a single value, found {}", n.type_name()),
            );
            ok = false;
        }
        s
    };
    let port_s = text(port, "port", cx);
    let service_s = text(service, "service", cx);
    let proto_s = text(proto, "proto", cx);
    let nets = from.map(|f| networks(f, cx));
    if !ok {
        return None;
    }
    let (what, at) = match (port_s, service_s, port, service) {
        (Some(_), Some(_), _, Some(s)) => {
            cx.err(s, "an allow entry has either `port` or `service`, not both");
            return None;
        }
        (Some(p), None, Some(n), _) => {
            if !looks_numeric(&p) {
                cx.err(
                    n,
                    format!("`port`: `{p}` is not a port number or range; for a service name use `service: {p}`"),
                );
                return None;
            }
            (p, n)
        }
        (None, Some(s), _, Some(n)) => (s, n),
        _ => {
            cx.err(node, "an allow entry mapping needs `port` or `service`");
            return None;
        }
    };
    if proto_s.is_none() && looks_numeric(&what) {
        cx.err(
            node,
            format!("allow entry with `port: {what}` needs `proto: tcp` or `proto: udp`"),
        );
        return None;
    }
    let (proto_v, ports) = resolve(&what, proto_s.as_deref(), at, proto.unwrap_or(at), cx)?;
    let from = match nets {
        None => Sources::default(),
        Some(Some(v)) => v,
        Some(None) => return None,
    };
    Some(AllowEntry {
        proto: proto_v,
        ports,
        from: from.nets,
        lists: from.lists,
        label: format!("{what}/{proto_v}"),
    })
}

/// What one `from:` names: inline networks and list files.
#[derive(Debug, Default)]
pub(super) struct Sources {
    pub nets: Vec<IpNet>,
    pub lists: Vec<String>,
}

/// `from:` — a list of networks and list files (`{ file: lists/x.txt }`), or one of
/// either. `None` when an element was invalid.
pub(super) fn networks(node: &Node, cx: &mut Ctx<'_>) -> Option<Sources> {
    let items: Vec<&Node> = match &node.kind {
        NodeKind::Seq(items) if items.is_empty() => {
            cx.err(node, "`from` is empty: omit it to allow from anywhere");
            return None;
        }
        NodeKind::Seq(items) => items.iter().collect(),
        NodeKind::Scalar(_) | NodeKind::Map(_) => vec![node],
        _ => {
            cx.err(
                node,
                format!(
                    "`from` must be a list of networks like [10.0.0.0/8, \"fd00::/64\"] or list files like {{ file: lists/partners.txt }}, found {}",
                    node.type_name()
                ),
            );
            return None;
        }
    };
    let mut out = Sources::default();
    let mut ok = true;
    for item in items {
        if let NodeKind::Map(entries) = &item.kind {
            ok &= crate::addrlist::from_file_entry(entries, item, &mut out.lists, cx);
            continue;
        }
        match item.as_str().map(|s| parse_cidr(s.trim())) {
            Some(Ok(n)) => out.nets.push(n),
            Some(Err(e)) => {
                cx.err(item, format!("`from`: {e}"));
                ok = false;
            }
            None => {
                cx.err(
                    item,
                    format!("`from`: expected a network, found {}", item.type_name()),
                );
                ok = false;
            }
        }
    }
    let listed = |name: &String| cx.lists.get(name).is_some_and(|l| !l.is_empty());
    if ok && out.nets.is_empty() && !out.lists.iter().any(listed) {
        cx.err(
            node,
            "`from` names only empty list files: it would match no source; omit it to allow from anywhere or put addresses in the files",
        );
        return None;
    }
    ok.then_some(out)
}

/// A network (`10.0.0.0/8`, `fd00::/64`) or an address (as /32 or /128). Host bits set
/// (`10.77.0.1/24`) is an error that names the network meant.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        if net.trunc() != net {
            return Err(format!(
                "`{s}` has host bits set; did you mean {}?",
                net.trunc()
            ));
        }
        return Ok(net);
    }
    if let Ok(addr) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    Err(format!(
        "`{s}` is not an IP network (expected e.g. 10.0.0.0/8, 192.0.2.7 or fd00::/64)"
    ))
}

/// `22` or `6000-6010`; ports are 1-65535 and a range's start must not exceed its end.
pub fn parse_ports(s: &str) -> Result<PortRange, String> {
    let one = |t: &str| -> Result<u16, String> {
        match t.trim().parse::<u64>() {
            Ok(0) => Err(format!("port 0 in `{s}` is not a valid port (1-65535)")),
            Ok(n) => {
                u16::try_from(n).map_err(|_| format!("port {n} in `{s}` is out of range (1-65535)"))
            }
            Err(_) => Err(format!(
                "`{s}` is not a port or port range (expected e.g. 22 or 6000-6010)"
            )),
        }
    };
    match s.split_once('-') {
        None => one(s).map(PortRange::single),
        Some((a, b)) => {
            let (a, b) = (one(a)?, one(b)?);
            PortRange::new(a, b)
                .ok_or_else(|| format!("port range `{s}` is reversed: {a} > {b} (write {b}-{a})"))
        }
    }
}
