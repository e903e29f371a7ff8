//! One `deny:` entry (a blocklist): `{ from: <networks and list files> }`, optionally
//! limited to one protocol (`proto: tcp`) and its ports (`port: 80` or `port: 8000-8080`,
//! or `service: http`). Traffic from those sources is dropped and logged before any
//! accept.
//!
//! Part of `parse` (a child module). Must not merge, de-duplicate or do I/O.

use super::allow::{Sources, looks_numeric, networks, resolve};
use super::{Ctx, DENY_KEYS};
use crate::model::{DenyEntry, Proto};
use crate::yaml::{Node, NodeKind};

pub(super) fn deny_entry(node: &Node, cx: &mut Ctx<'_>) -> Option<DenyEntry> {
    let NodeKind::Map(entries) = &node.kind else {
        cx.err(
            node,
            format!(
                "a deny entry must be a mapping such as `{{ from: {{ file: lists/blocked.txt }} }}` or `{{ from: [192.0.2.0/24], port: 22, proto: tcp }}`, found {}",
                node.type_name()
            ),
        );
        return None;
    };
    let (mut from, mut port, mut service, mut proto) = (None, None, None, None);
    let mut ok = true;
    for (k, v) in entries {
        let slot = match k.as_str() {
            Some("from") => &mut from,
            Some("port") => &mut port,
            Some("service") => &mut service,
            Some("proto") => &mut proto,
            _ => {
                cx.unknown_key(k, "deny entry", DENY_KEYS);
                ok = false;
                continue;
            }
        };
        *slot = Some(v);
    }
    let Some(from_node) = from else {
        cx.err(
            node,
            "a deny entry needs `from:` (networks or `{ file: ... }` lists): a deny of every source would cut the host off",
        );
        return None;
    };
    let sources: Sources = networks(from_node, cx)?;
    let text = |n: &Node, what: &str, cx: &mut Ctx<'_>| -> Option<String> {
        let s = n.as_str().map(|s| s.trim().to_string());
        if s.is_none() {
            cx.err(
                n,
                format!("`{what}` must be a single value, found {}", n.type_name()),
            );
        }
        s
    };
    let proto_s = match proto {
        Some(n) => Some(text(n, "proto", cx)?),
        None => None,
    };
    let what = match (port, service) {
        (Some(_), Some(s)) => {
            cx.err(s, "a deny entry has either `port` or `service`, not both");
            return None;
        }
        (Some(n), None) => {
            let p = text(n, "port", cx)?;
            if !looks_numeric(&p) {
                cx.err(
                    n,
                    format!("`port`: `{p}` is not a port number or range; for a service name use `service: {p}`"),
                );
                return None;
            }
            if proto_s.is_none() {
                cx.err(
                    n,
                    format!("deny entry with `port: {p}` needs `proto` (tcp, udp, udplite, sctp or dccp)"),
                );
                return None;
            }
            Some((p, n))
        }
        (None, Some(n)) => Some((text(n, "service", cx)?, n)),
        (None, None) => None,
    };
    if !ok {
        return None;
    }
    let (proto_v, ports, label) = match what {
        Some((w, at)) => {
            let proto_at = proto.unwrap_or(at);
            let (pv, ports) = resolve(&w, proto_s.as_deref(), at, proto_at, cx)?;
            (Some(pv), Some(ports), format!("deny {w}/{pv}"))
        }
        None => match proto_s {
            Some(p) => match Proto::from_name(&p.to_ascii_lowercase()) {
                Some(pv) => (Some(pv), None, format!("deny {pv}")),
                None => {
                    let at = proto.unwrap_or(node);
                    cx.err(
                        at,
                        format!("`proto`: unknown protocol `{p}`; expected tcp, udp, udplite, sctp or dccp"),
                    );
                    return None;
                }
            },
            None => (None, None, "deny".to_string()),
        },
    };
    let mut nets = sources.nets;
    nets.iter_mut().for_each(|n| *n = n.trunc());
    nets.sort();
    nets.dedup();
    let mut lists = sources.lists;
    lists.sort();
    lists.dedup();
    Some(DenyEntry {
        proto: proto_v,
        ports,
        from: nets,
        lists,
        label,
    })
}
