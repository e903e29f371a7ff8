//! Conversions between wire messages and `portcullis-policy` types, and the mapping of
//! conversion errors to `tonic::Status` (the only place that decides those codes).

use crate::v1;
use portcullis_policy::{
    AllowEntry, DriftMode, Facts, HostPolicy, InterfaceFacts, InterfaceSel, LogLimit, Mode,
    PortRange, Proto, RateUnit, Replies,
};

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
                })
                .collect(),
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

impl TryFrom<&v1::HostPolicy> for HostPolicy {
    type Error = ProtoError;

    fn try_from(p: &v1::HostPolicy) -> Result<Self, ProtoError> {
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
                label: a.label.clone(),
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
                label: "22/tcp".into(),
            }],
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
