//! Conversions between wire messages and `portcullis-policy` types, and the mapping of
//! conversion errors to `tonic::Status` (the only place that decides those codes).

use crate::v1;
use portcullis_policy::{
    AddrList, AllowEntry, DenyEntry, DriftMode, Facts, HostPolicy, InterfaceFacts, InterfaceSel,
    LogLimit, Mode, PortRange, Proto, RateUnit, Replies,
};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A wire message that does not describe a valid policy value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("missing field `{0}`")]
    Missing(&'static str),
    #[error("field `{field}`: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

impl From<ProtoError> for tonic::Status {
    fn from(e: ProtoError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> ProtoError {
    ProtoError::Invalid {
        field,
        message: message.into(),
    }
}

impl From<Proto> for v1::Proto {
    fn from(p: Proto) -> Self {
        match p {
            Proto::Tcp => v1::Proto::Tcp,
            Proto::Udp => v1::Proto::Udp,
            Proto::Udplite => v1::Proto::Udplite,
            Proto::Sctp => v1::Proto::Sctp,
            Proto::Dccp => v1::Proto::Dccp,
        }
    }
}

fn proto_from_wire(v: i32) -> Result<Proto, ProtoError> {
    match v1::Proto::try_from(v) {
        Ok(v1::Proto::Tcp) => Ok(Proto::Tcp),
        Ok(v1::Proto::Udp) => Ok(Proto::Udp),
        Ok(v1::Proto::Udplite) => Ok(Proto::Udplite),
        Ok(v1::Proto::Sctp) => Ok(Proto::Sctp),
        Ok(v1::Proto::Dccp) => Ok(Proto::Dccp),
        Ok(v1::Proto::Unspecified) | Err(_) => {
            Err(invalid("proto", format!("unknown protocol {v}")))
        }
    }
}

fn port(v: u32, field: &'static str) -> Result<u16, ProtoError> {
    u16::try_from(v).map_err(|_| invalid(field, format!("port {v} out of range 0-65535")))
}

impl From<&HostPolicy> for v1::HostPolicy {
    fn from(p: &HostPolicy) -> Self {
        let sel = match &p.interface {
            InterfaceSel::All => v1::interface::Sel::All(true),
            InterfaceSel::Default => v1::interface::Sel::DefaultRoute(true),
            InterfaceSel::Named(n) => v1::interface::Sel::Named(n.clone()),
        };
        v1::HostPolicy {
            interface: Some(v1::Interface { sel: Some(sel) }),
            replies: match p.replies {
                Replies::Ports => v1::Replies::Ports,
                Replies::Stateful => v1::Replies::Stateful,
            } as i32,
            allow: p
                .allow
                .iter()
                .map(|a| v1::AllowEntry {
                    proto: v1::Proto::from(a.proto) as i32,
                    ports: Some(v1::PortRange {
                        start: a.ports.start.into(),
                        end: a.ports.end.into(),
                    }),
                    from: a.from.iter().map(ToString::to_string).collect(),
                    label: a.label.clone(),
                    lists: a.lists.clone(),
                })
                .collect(),
            deny: p
                .deny
                .iter()
                .map(|d| v1::DenyEntry {
                    proto: d.proto.map_or(v1::Proto::Unspecified, v1::Proto::from) as i32,
                    ports: d.ports.map(|r| v1::PortRange {
                        start: r.start.into(),
                        end: r.end.into(),
                    }),
                    from: d.from.iter().map(ToString::to_string).collect(),
                    lists: d.lists.clone(),
                    label: d.label.clone(),
                })
                .collect(),
            lists: p.lists.iter().map(|(name, l)| full_list(name, l)).collect(),
            log: Some(v1::LogLimit {
                rate: p.log.rate,
                per: match p.log.per {
                    RateUnit::Second => v1::RateUnit::Second,
                    RateUnit::Minute => v1::RateUnit::Minute,
                    RateUnit::Hour => v1::RateUnit::Hour,
                    RateUnit::Day => v1::RateUnit::Day,
                } as i32,
                burst: p.log.burst,
            }),
            log_group: p.log_group.into(),
            mode: match p.mode {
                Mode::Enforce => v1::Mode::Enforce,
                Mode::Audit => v1::Mode::Audit,
            } as i32,
            drift: match p.drift {
                DriftMode::Heal => v1::DriftMode::Heal,
                DriftMode::Report => v1::DriftMode::Report,
            } as i32,
        }
    }
}

/// A list as full content on the wire.
pub fn full_list(name: &str, l: &AddrList) -> v1::AddressList {
    let (v4, v6) = l.pack();
    v1::AddressList {
        name: name.to_string(),
        v4: v4.into(),
        v6: v6.into(),
        digest: l.digest(),
        ..Default::default()
    }
}

/// A list as a delta against `base` (what the agent holds), when that is smaller than the
/// full content; else the full content.
pub fn list_against(name: &str, l: &AddrList, base: Option<&AddrList>) -> v1::AddressList {
    let Some(base) = base else {
        return full_list(name, l);
    };
    let (added, removed) = base.diff(l);
    if added.len() + removed.len() >= l.len() {
        return full_list(name, l);
    }
    let (v4, v6) = added.pack();
    let (removed_v4, removed_v6) = removed.pack();
    v1::AddressList {
        name: name.to_string(),
        v4: v4.into(),
        v6: v6.into(),
        base_digest: base.digest(),
        removed_v4: removed_v4.into(),
        removed_v6: removed_v6.into(),
        digest: l.digest(),
        in_parts: false,
    }
}

/// Why a policy's lists could not be taken from the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    #[error("address list {name:?}: the delta's base {base} is not the list this agent holds")]
    BaseMismatch { name: String, base: String },
    #[error("address list {name:?}: {reason}")]
    Invalid { name: String, reason: String },
}

/// The lists of a wire policy, deltas resolved against `held` (the lists of the policy
/// the agent applied, by name). Every list's result must match its digest.
pub fn lists_from_wire(
    p: &v1::HostPolicy,
    held: &BTreeMap<String, Arc<AddrList>>,
) -> Result<BTreeMap<String, Arc<AddrList>>, ListError> {
    let mut out = BTreeMap::new();
    for w in &p.lists {
        let bad = |reason: String| ListError::Invalid {
            name: w.name.clone(),
            reason,
        };
        if w.in_parts {
            return Err(bad(
                "sent in parts that were not put back together".to_string()
            ));
        }
        let list = if w.base_digest.is_empty() {
            AddrList::unpack(&w.v4, &w.v6).map_err(bad)?
        } else {
            let base = held
                .get(&w.name)
                .filter(|b| b.digest() == w.base_digest)
                .ok_or_else(|| ListError::BaseMismatch {
                    name: w.name.clone(),
                    base: w.base_digest.clone(),
                })?;
            let added = AddrList::unpack(&w.v4, &w.v6).map_err(bad)?;
            let removed = AddrList::unpack(&w.removed_v4, &w.removed_v6).map_err(bad)?;
            base.apply_delta(&added, &removed).map_err(bad)?
        };
        if !w.digest.is_empty() && list.digest() != w.digest {
            return Err(bad("content does not match its digest".to_string()));
        }
        if out.insert(w.name.clone(), Arc::new(list)).is_some() {
            return Err(bad("given twice".to_string()));
        }
    }
    Ok(out)
}

/// A wire policy whose lists may be deltas against `held` (see [`lists_from_wire`]).
pub fn policy_from_wire(
    p: &v1::HostPolicy,
    held: &BTreeMap<String, Arc<AddrList>>,
) -> Result<HostPolicy, PolicyFromWire> {
    let lists = lists_from_wire(p, held).map_err(PolicyFromWire::Lists)?;
    let mut policy = policy_fields(p).map_err(PolicyFromWire::Proto)?;
    policy.lists = lists;
    check_list_names(&policy).map_err(PolicyFromWire::Proto)?;
    Ok(policy)
}

/// [`policy_from_wire`]'s failure: a bad message, or a list delta against another base.
#[derive(Debug, thiserror::Error)]
pub enum PolicyFromWire {
    #[error(transparent)]
    Proto(ProtoError),
    #[error(transparent)]
    Lists(ListError),
}

/// Every list an entry names is in the policy, and no other.
fn check_list_names(p: &HostPolicy) -> Result<(), ProtoError> {
    let named: std::collections::BTreeSet<&String> = p
        .allow
        .iter()
        .flat_map(|a| &a.lists)
        .chain(p.deny.iter().flat_map(|d| &d.lists))
        .collect();
    if let Some(n) = named.iter().find(|n| !p.lists.contains_key(n.as_str())) {
        return Err(invalid("lists", format!("{n:?} is named but not given")));
    }
    if let Some(n) = p.lists.keys().find(|n| !named.contains(n)) {
        return Err(invalid("lists", format!("{n:?} is given but not named")));
    }
    Ok(())
}

impl TryFrom<&v1::HostPolicy> for HostPolicy {
    type Error = ProtoError;

    /// A policy whose lists are all full content (a delta is refused).
    fn try_from(p: &v1::HostPolicy) -> Result<Self, ProtoError> {
        policy_from_wire(p, &BTreeMap::new()).map_err(|e| match e {
            PolicyFromWire::Proto(e) => e,
            PolicyFromWire::Lists(e) => invalid("lists", e.to_string()),
        })
    }
}

fn policy_fields(p: &v1::HostPolicy) -> Result<HostPolicy, ProtoError> {
    {
        let interface = match p.interface.as_ref().and_then(|i| i.sel.as_ref()) {
            Some(v1::interface::Sel::All(_)) | None => InterfaceSel::All,
            Some(v1::interface::Sel::DefaultRoute(_)) => InterfaceSel::Default,
            Some(v1::interface::Sel::Named(n)) if !n.is_empty() => InterfaceSel::Named(n.clone()),
            Some(v1::interface::Sel::Named(_)) => {
                return Err(invalid("interface", "empty interface name"));
            }
        };
        let replies = match v1::Replies::try_from(p.replies) {
            Ok(v1::Replies::Ports) => Replies::Ports,
            Ok(v1::Replies::Stateful) => Replies::Stateful,
            _ => return Err(invalid("replies", format!("unknown value {}", p.replies))),
        };
        let mut allow = Vec::with_capacity(p.allow.len());
        for a in &p.allow {
            let r = a.ports.as_ref().ok_or(ProtoError::Missing("allow.ports"))?;
            let ports = PortRange::new(port(r.start, "allow.ports")?, port(r.end, "allow.ports")?)
                .ok_or_else(|| {
                    invalid("allow.ports", format!("{}-{}: start > end", r.start, r.end))
                })?;
            let from = a
                .from
                .iter()
                .map(|c| {
                    c.parse()
                        .map_err(|e| invalid("allow.from", format!("{c:?}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            allow.push(AllowEntry {
                proto: proto_from_wire(a.proto)?,
                ports,
                from,
                lists: a.lists.clone(),
                label: a.label.clone(),
            });
        }
        let mut deny = Vec::with_capacity(p.deny.len());
        for d in &p.deny {
            let proto = match d.proto {
                0 => None,
                x => Some(proto_from_wire(x)?),
            };
            let ports = match &d.ports {
                None => None,
                Some(_) if proto.is_none() => {
                    return Err(invalid("deny.ports", "ports without a protocol"));
                }
                Some(r) => Some(
                    PortRange::new(port(r.start, "deny.ports")?, port(r.end, "deny.ports")?)
                        .ok_or_else(|| {
                            invalid("deny.ports", format!("{}-{}: start > end", r.start, r.end))
                        })?,
                ),
            };
            let from = d
                .from
                .iter()
                .map(|c| {
                    c.parse()
                        .map_err(|e| invalid("deny.from", format!("{c:?}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if from.is_empty() && d.lists.is_empty() {
                return Err(invalid("deny", "an entry without sources"));
            }
            deny.push(DenyEntry {
                proto,
                ports,
                from,
                lists: d.lists.clone(),
                label: d.label.clone(),
            });
        }
        let log = p.log.as_ref().ok_or(ProtoError::Missing("log"))?;
        let per = match v1::RateUnit::try_from(log.per) {
            Ok(v1::RateUnit::Second) => RateUnit::Second,
            Ok(v1::RateUnit::Minute) => RateUnit::Minute,
            Ok(v1::RateUnit::Hour) => RateUnit::Hour,
            Ok(v1::RateUnit::Day) => RateUnit::Day,
            _ => return Err(invalid("log.per", format!("unknown unit {}", log.per))),
        };
        if log.rate == 0 || log.burst == 0 {
            return Err(invalid("log", "rate and burst must be positive"));
        }
        Ok(HostPolicy {
            interface,
            replies,
            allow,
            deny,
            lists: BTreeMap::new(),
            log: LogLimit {
                rate: log.rate,
                per,
                burst: log.burst,
            },
            log_group: u16::try_from(p.log_group)
                .map_err(|_| invalid("log_group", format!("{} > 65535", p.log_group)))?,
            mode: match v1::Mode::try_from(p.mode) {
                Ok(v1::Mode::Enforce) => Mode::Enforce,
                Ok(v1::Mode::Audit) => Mode::Audit,
                _ => return Err(invalid("mode", format!("unknown value {}", p.mode))),
            },
            drift: match v1::DriftMode::try_from(p.drift) {
                Ok(v1::DriftMode::Heal) => DriftMode::Heal,
                Ok(v1::DriftMode::Report) => DriftMode::Report,
                _ => return Err(invalid("drift", format!("unknown value {}", p.drift))),
            },
            // Travels beside the policy (`Desired.management`), not inside it.
            management: None,
        })
    }
}

impl From<&Facts> for v1::Facts {
    fn from(f: &Facts) -> Self {
        v1::Facts {
            hostname: f.hostname.clone(),
            interfaces: f
                .interfaces
                .iter()
                .map(|i| v1::InterfaceFacts {
                    name: i.name.clone(),
                    index: i.index,
                    up: i.up,
                    addrs: i.addrs.iter().map(ToString::to_string).collect(),
                })
                .collect(),
            default_route_interface: f.default_route_interface.clone().unwrap_or_default(),
        }
    }
}

impl TryFrom<&v1::Facts> for Facts {
    type Error = ProtoError;

    fn try_from(f: &v1::Facts) -> Result<Self, ProtoError> {
        let mut interfaces = f
            .interfaces
            .iter()
            .map(|i| {
                Ok(InterfaceFacts {
                    name: i.name.clone(),
                    index: i.index,
                    up: i.up,
                    addrs: i
                        .addrs
                        .iter()
                        .map(|a| {
                            a.parse()
                                .map_err(|e| invalid("facts.addrs", format!("{a:?}: {e}")))
                        })
                        .collect::<Result<_, _>>()?,
                })
            })
            .collect::<Result<Vec<_>, ProtoError>>()?;
        interfaces.sort();
        Ok(Facts {
            hostname: f.hostname.clone(),
            interfaces,
            default_route_interface: (!f.default_route_interface.is_empty())
                .then(|| f.default_route_interface.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_policy_round_trips() {
        let p = HostPolicy {
            interface: InterfaceSel::Named("eth2".into()),
            replies: Replies::Stateful,
            allow: vec![AllowEntry {
                proto: Proto::Tcp,
                ports: PortRange::single(22),
                from: vec![
                    "10.77.0.0/24".parse().unwrap(),
                    "fd77::/64".parse().unwrap(),
                ],
                lists: vec!["partners.txt".into()],
                label: "22/tcp".into(),
            }],
            deny: vec![
                DenyEntry {
                    proto: None,
                    ports: None,
                    from: vec![],
                    lists: vec!["blocked.txt".into()],
                    label: "deny".into(),
                },
                DenyEntry {
                    proto: Some(Proto::Udp),
                    ports: Some(PortRange::single(53)),
                    from: vec!["192.0.2.0/24".parse().unwrap()],
                    lists: vec![],
                    label: "deny 53/udp".into(),
                },
            ],
            lists: [
                (
                    "partners.txt",
                    list(&["10.0.0.1/32", "10.1.0.0/16", "fd77::1/128"]),
                ),
                ("blocked.txt", list(&["198.51.100.0/24"])),
            ]
            .into_iter()
            .map(|(n, l)| (n.to_string(), Arc::new(l)))
            .collect(),
            log: LogLimit {
                rate: 5,
                per: RateUnit::Minute,
                burst: 9,
            },
            log_group: 9,
            mode: Mode::Audit,
            drift: DriftMode::Report,
            management: None,
        };
        let wire = v1::HostPolicy::from(&p);
        assert_eq!(HostPolicy::try_from(&wire).unwrap(), p);
    }

    fn list(nets: &[&str]) -> AddrList {
        AddrList::from_nets(nets.iter().map(|s| s.parse().unwrap()))
    }

    fn with_lists(lists: &[(&str, &AddrList)]) -> HostPolicy {
        let mut p = HostPolicy::default();
        p.deny.push(DenyEntry {
            proto: None,
            ports: None,
            from: vec![],
            lists: lists.iter().map(|(n, _)| n.to_string()).collect(),
            label: "deny".into(),
        });
        p.lists = lists
            .iter()
            .map(|(n, l)| (n.to_string(), Arc::new((*l).clone())))
            .collect();
        p
    }

    #[test]
    fn a_list_delta_applies_to_its_base_only() {
        let old = list(&["10.0.0.1/32", "10.0.0.2/32", "10.0.0.3/32", "fd77::/16"]);
        let new = list(&["10.0.0.1/32", "10.0.0.3/32", "10.0.0.4/32", "fd77::/16"]);
        let mut wire = v1::HostPolicy::from(&with_lists(&[("b", &new)]));
        wire.lists = vec![list_against("b", &new, Some(&old))];
        assert!(!wire.lists[0].base_digest.is_empty(), "smaller as a delta");
        assert_eq!(wire.lists[0].v4.len(), 5, "one added entry");
        // With the base held: the new list. Without it, or with another: need the full.
        let held = BTreeMap::from([("b".to_string(), Arc::new(old.clone()))]);
        let got = policy_from_wire(&wire, &held).unwrap();
        assert_eq!(*got.lists["b"], new);
        for held in [
            BTreeMap::new(),
            BTreeMap::from([("b".to_string(), Arc::new(new.clone()))]),
        ] {
            let e = policy_from_wire(&wire, &held).unwrap_err();
            assert!(
                matches!(e, PolicyFromWire::Lists(ListError::BaseMismatch { .. })),
                "{e}"
            );
        }
        assert!(
            HostPolicy::try_from(&wire).is_err(),
            "a delta is not a full policy"
        );
        // A tampered result digest is refused, not applied.
        wire.lists[0].digest = old.digest();
        assert!(policy_from_wire(&wire, &held).is_err());
        // A list named but not given, or given but not named, is refused.
        let mut wire = v1::HostPolicy::from(&with_lists(&[("b", &new)]));
        wire.lists.clear();
        assert!(HostPolicy::try_from(&wire).is_err());
        let mut wire = v1::HostPolicy::from(&with_lists(&[("b", &new)]));
        wire.deny[0].lists.clear();
        wire.deny[0].from.push("192.0.2.1/32".into());
        assert!(HostPolicy::try_from(&wire).is_err());
    }

    #[test]
    fn every_transport_round_trips_and_keeps_its_wire_number() {
        let numbers = [1, 2, 3, 4, 5];
        for (proto, n) in Proto::ALL.into_iter().zip(numbers) {
            assert_eq!(v1::Proto::from(proto) as i32, n, "{proto}");
            assert_eq!(proto_from_wire(n).unwrap(), proto);
        }
        assert!(proto_from_wire(0).is_err());
        assert!(proto_from_wire(6).is_err());
    }

    #[test]
    fn bad_wire_values_are_invalid_argument() {
        let mut wire = v1::HostPolicy::from(&HostPolicy::default());
        wire.allow.push(v1::AllowEntry {
            proto: 1,
            ports: Some(v1::PortRange {
                start: 70000,
                end: 70000,
            }),
            from: vec![],
            label: String::new(),
            lists: vec![],
        });
        let err = HostPolicy::try_from(&wire).unwrap_err();
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("70000"), "{}", status.message());
    }

    #[test]
    fn facts_round_trip_sorted() {
        let f = Facts {
            hostname: "h1".into(),
            interfaces: vec![InterfaceFacts {
                name: "eth0".into(),
                index: 2,
                up: true,
                addrs: vec!["10.77.1.2/24".parse().unwrap()],
            }],
            default_route_interface: Some("eth0".into()),
        };
        assert_eq!(Facts::try_from(&v1::Facts::from(&f)).unwrap(), f);
    }
}
