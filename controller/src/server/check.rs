//! `apply --check`: per targeted host, the semantic diff between the revision it runs (as
//! attested) and what this apply would install. Stores nothing, sends nothing.
//!
//! Both sides are compiled here, against the host's facts (live from its session, else
//! last reported) and with the *same* revision number, so the revision embedded in log
//! prefixes is not reported as a change: only policy changes are. A host that never
//! applied anything gets "table inet portcullis created".

use super::Shared;
use super::wire::internal;
use crate::store;
use portcullis_policy::replay::{self, Evidence as Seen, Logged, RuleHits};
use portcullis_policy::{Facts, HostPolicy, Plan, Proto, compile, lockout, pattern, plan};
use portcullis_proto::v1;
use std::collections::BTreeMap;
use tonic::Status;

/// The check result for an `ApplyRequest` with `check` set.
pub async fn check(shared: &Shared, req: &v1::ApplyRequest) -> Result<v1::CheckResult, Status> {
    let fleet = super::load_request_fleet(req).await?;
    let mut targets: BTreeMap<String, HostPolicy> = fleet.hosts;
    if !req.limit.is_empty() {
        let selected = pattern::select(&fleet.inventory, &req.limit)
            .map_err(|e| Status::invalid_argument(format!("--limit {:?}: {e}", req.limit)))?;
        targets.retain(|h, _| selected.contains(h));
    }
    let names: Vec<String> = targets.keys().cloned().collect();
    let since = (req.replay_window_ms > 0).then(|| {
        store::now_ms().saturating_sub(i64::try_from(req.replay_window_ms).unwrap_or(i64::MAX))
    });
    let stored = shared
        .store
        .call(move |c| {
            let hosts: BTreeMap<String, store::HostRecord> = store::list_hosts(c)?
                .into_iter()
                .map(|h| (h.name.clone(), h))
                .collect();
            let mut out = BTreeMap::new();
            for name in names {
                let Some(h) = hosts.get(&name) else { continue };
                let applied = match h.applied_revision {
                    0 => None,
                    rev => store::drift::policy_at(c, &name, rev)?,
                };
                let evidence = match since {
                    Some(since) => Some(evidence(c, &name, h.applied_revision, since)?),
                    None => None,
                };
                out.insert(name, (h.clone(), applied, evidence));
            }
            Ok(out)
        })
        .await
        .map_err(internal)?;
    let mut hosts = Vec::with_capacity(targets.len());
    for (host, policy) in &targets {
        let record = stored.get(host);
        let facts: Option<Facts> = match shared.registry.get(host) {
            Some(h) => Some(h.facts),
            None => record
                .map(|(r, _, _)| r.facts_json.as_str())
                .filter(|j| !j.is_empty())
                .and_then(|j| serde_json::from_str(j).ok()),
        };
        let applied_revision = record.map_or(0, |(r, _, _)| r.applied_revision);
        let reported = record
            .map(|(r, _, _)| r.reported_hash.as_str())
            .unwrap_or("");
        let applied_policy = record
            .and_then(|(_, p, _)| p.as_deref())
            .and_then(|p| serde_json::from_str::<HostPolicy>(p).ok());
        let evidence = record.and_then(|(_, _, e)| e.as_ref());
        hosts.push(host_check(
            host,
            policy,
            facts.as_ref(),
            Applied {
                revision: applied_revision,
                policy: applied_policy.as_ref(),
                reported_hash: reported,
            },
            evidence,
        ));
    }
    Ok(v1::CheckResult { hosts })
}

/// What a host runs, as the controller knows it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Applied<'a> {
    /// 0 = nothing applied.
    pub revision: u64,
    pub policy: Option<&'a HostPolicy>,
    /// Kernel hash from its last report.
    pub reported_hash: &'a str,
}

/// Stored traffic evidence of one host for `--replay`.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    pub logged: Vec<Logged>,
    pub hits: Vec<RuleHits>,
    /// More denial-log groups than replayed.
    pub truncated: bool,
}

/// Denial-log groups replayed per host at most (the busiest first).
const REPLAY_MAX_GROUPS: usize = 100_000;

fn evidence(c: &store::Db<'_>, host: &str, revision: u64, since: i64) -> anyhow::Result<Evidence> {
    let (groups, truncated) = store::denial_groups(c, host, since, REPLAY_MAX_GROUPS)?;
    let logged = groups
        .into_iter()
        .filter_map(|g| {
            let proto = Proto::from_number(g.proto)?;
            Some(Logged {
                proto,
                src: g.src.parse().ok()?,
                dport: g.dport,
                iif: g.ifname,
                packets: g.count,
                last_ms: g.last_ms,
            })
        })
        .collect();
    let hits = store::hits::since(c, host, revision, since)?
        .into_iter()
        .map(|h| RuleHits {
            chain: h.chain,
            index: usize::try_from(h.index).unwrap_or(usize::MAX),
            packets: h.packets,
            last_ms: h.last_hit_ms,
        })
        .collect();
    Ok(Evidence {
        logged,
        hits,
        truncated,
    })
}

fn finding(f: replay::Finding, revision: u64) -> v1::ReplayFinding {
    // A counter covers every source: an example address would be arbitrary.
    let example = if matches!(f.evidence, Seen::Counter(_)) && f.sources == ["any"] {
        String::new()
    } else {
        f.example.to_string()
    };
    v1::ReplayFinding {
        proto: f.proto.to_string(),
        ports: f
            .ports
            .iter()
            .map(|p| {
                if p.start == p.end {
                    p.start.to_string()
                } else {
                    format!("{}-{}", p.start, p.end)
                }
            })
            .collect(),
        sources: f.sources,
        more_sources: f.more_sources as u64,
        packets: f.packets,
        last_seen_unix_ms: f.last_ms,
        evidence: match f.evidence {
            Seen::Logged => "denial log: logged and accepted now (audit mode)".to_string(),
            Seen::Counter(rule) => {
                format!("counter of `{rule}` since r{revision} was applied (one counter per rule)")
            }
        },
        example,
    }
}

/// One host's check: compile both sides and diff them; with evidence, replay it against
/// both (pure; unit-tested).
pub fn host_check(
    host: &str,
    new: &HostPolicy,
    facts: Option<&Facts>,
    applied: Applied<'_>,
    evidence: Option<&Evidence>,
) -> v1::HostCheck {
    let (applied_revision, reported_hash) = (applied.revision, applied.reported_hash);
    let applied = applied.policy;
    let mut out = v1::HostCheck {
        host: host.to_owned(),
        applied_revision,
        ..Default::default()
    };
    let Some(facts) = facts else {
        out.error = "no facts: the agent never connected, so its ruleset cannot be compiled".into();
        return out;
    };
    // The revision number only shows in log prefixes: use the applied one on both sides.
    let rev = applied_revision.max(1);
    let desired = match compile(new, facts, rev) {
        Ok(r) => r,
        Err(e) => {
            out.error = format!("does not compile: {e}");
            return out;
        }
    };
    let current = match (applied_revision, applied) {
        (0, _) => None,
        (_, None) => {
            out.error =
                format!("the policy of its applied revision r{applied_revision} is not stored");
            return out;
        }
        (_, Some(p)) => match compile(p, facts, rev) {
            Ok(r) => Some(r),
            Err(e) => {
                out.error =
                    format!("its applied revision r{applied_revision} no longer compiles: {e}");
                return out;
            }
        },
    };
    out.attested = current
        .as_ref()
        .is_some_and(|c| !reported_hash.is_empty() && c.hash().0 == reported_hash);
    out.changes = match plan(&desired, current.as_ref()) {
        Plan::Unchanged => Vec::new(),
        Plan::Create(r) => vec![format!(
            "table inet portcullis created ({} rules, {} set elements)",
            r.rule_count(),
            r.element_count()
        )],
        Plan::Replace { diff, .. } => diff.changes.iter().map(ToString::to_string).collect(),
    };
    if let (Some(ev), Some(current)) = (evidence, current.as_ref()) {
        let mut ifs = lockout::inbound_interfaces(facts);
        let logged: Vec<Logged> = ev
            .logged
            .iter()
            .cloned()
            .map(|mut l| {
                if l.iif.is_empty() {
                    l.iif.clone_from(&ifs[0]);
                }
                l
            })
            .collect();
        ifs.sort();
        out.newly_denied = replay::replay(current, &desired, &logged, &ev.hits, &ifs)
            .into_iter()
            .map(|f| finding(f, applied_revision))
            .collect();
        out.replay_log_groups = ev.logged.len() as u64;
        out.replay_counters = ev.hits.len() as u64;
        out.replay_truncated = ev.truncated;
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use portcullis_policy::{AllowEntry, InterfaceFacts, PortRange, Proto};

    fn policy(ports: &[u16]) -> HostPolicy {
        HostPolicy {
            allow: ports
                .iter()
                .map(|p| AllowEntry {
                    proto: Proto::Tcp,
                    ports: PortRange::single(*p),
                    from: Vec::new(),
                    lists: Vec::new(),
                    label: format!("{p}/tcp"),
                })
                .collect(),
            ..HostPolicy::default()
        }
    }

    fn facts() -> Facts {
        Facts {
            hostname: "h1".into(),
            interfaces: vec![InterfaceFacts {
                name: "eth0".into(),
                index: 2,
                up: true,
                addrs: Vec::new(),
            }],
            default_route_interface: Some("eth0".into()),
        }
    }

    fn applied<'a>(revision: u64, policy: Option<&'a HostPolicy>, hash: &'a str) -> Applied<'a> {
        Applied {
            revision,
            policy,
            reported_hash: hash,
        }
    }

    #[test]
    fn replay_lists_a_removed_port_that_saw_traffic() {
        let (old, new) = (policy(&[25, 80]), policy(&[80]));
        let rs = compile(&old, &facts(), 4).unwrap();
        let index = rs.chains["guard"]
            .rules
            .iter()
            .position(|r| r.to_string().contains("@"))
            .unwrap();
        let ev = Evidence {
            hits: vec![RuleHits {
                chain: "guard".into(),
                index,
                packets: 42,
                last_ms: 9,
            }],
            ..Evidence::default()
        };
        let c = host_check(
            "h1",
            &new,
            Some(&facts()),
            applied(4, Some(&old), ""),
            Some(&ev),
        );
        assert_eq!(c.newly_denied.len(), 1, "{c:?}");
        let f = &c.newly_denied[0];
        assert_eq!(
            (f.proto.as_str(), f.ports.as_slice(), f.packets),
            ("tcp", &["25".to_string()][..], 42)
        );
        assert!(f.evidence.contains("since r4"), "{f:?}");
        assert_eq!(c.replay_counters, 1);
    }

    #[test]
    fn same_policy_is_no_change_and_attested() {
        let p = policy(&[25]);
        let hash = compile(&p, &facts(), 4).unwrap().hash().0;
        let c = host_check("h1", &p, Some(&facts()), applied(4, Some(&p), &hash), None);
        assert!(
            c.changes.is_empty() && c.error.is_empty() && c.attested,
            "{c:?}"
        );
    }

    #[test]
    fn an_added_port_is_one_change_and_a_new_host_is_created() {
        let c = host_check(
            "h1",
            &policy(&[25, 80]),
            Some(&facts()),
            applied(4, Some(&policy(&[25])), ""),
            None,
        );
        assert_eq!(c.changes.len(), 1, "{:?}", c.changes);
        assert!(c.changes[0].contains("80"), "{:?}", c.changes);
        assert!(!c.attested);
        let n = host_check(
            "h9",
            &policy(&[25]),
            Some(&facts()),
            Applied::default(),
            None,
        );
        assert!(
            n.changes[0].starts_with("table inet portcullis created"),
            "{n:?}"
        );
        let u = host_check("h9", &policy(&[25]), None, Applied::default(), None);
        assert!(u.error.contains("never connected"));
    }
}
