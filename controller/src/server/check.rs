//! `apply --check`: per targeted host, the semantic diff between the revision it runs (as
//! attested) and what this apply would install. Stores nothing, sends nothing.
//!
//! Both sides are compiled here, against the host's facts (live from its session, else
//! last reported) and with the *same* revision number, so the revision embedded in log
//! prefixes is not reported as a change: only policy changes are. A host that never
//! applied anything gets "table inet portcullis created".

use super::Shared;
use super::session::internal;
use crate::store;
use portcullis_policy::{Facts, HostPolicy, Plan, Source, compile, pattern, plan, site};
use portcullis_proto::v1;
use std::collections::BTreeMap;
use tonic::Status;

/// The check result for an `ApplyRequest` with `check` set.
pub async fn check(shared: &Shared, req: &v1::ApplyRequest) -> Result<v1::CheckResult, Status> {
    let fleet = site::load_fleet(
        &Source::new(&req.site_name, &req.site_yaml),
        &Source::new(&req.inventory_name, &req.inventory_yaml),
    )
    .map_err(|d| Status::invalid_argument(format!("invalid policy:\n{d}")))?;
    let mut targets: BTreeMap<String, HostPolicy> = fleet.hosts.clone();
    if !req.limit.is_empty() {
        let selected = pattern::select(&fleet.inventory, &req.limit)
            .map_err(|e| Status::invalid_argument(format!("--limit {:?}: {e}", req.limit)))?;
        targets.retain(|h, _| selected.contains(h));
    }
    let names: Vec<String> = targets.keys().cloned().collect();
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
                out.insert(name, (h.clone(), applied));
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
                .map(|(r, _)| r.facts_json.as_str())
                .filter(|j| !j.is_empty())
                .and_then(|j| serde_json::from_str(j).ok()),
        };
        let applied_revision = record.map_or(0, |(r, _)| r.applied_revision);
        let reported = record.map(|(r, _)| r.reported_hash.as_str()).unwrap_or("");
        let applied_policy = record
            .and_then(|(_, p)| p.as_deref())
            .and_then(|p| serde_json::from_str::<HostPolicy>(p).ok());
        hosts.push(host_check(
            host,
            policy,
            facts.as_ref(),
            applied_revision,
            applied_policy.as_ref(),
            reported,
        ));
    }
    Ok(v1::CheckResult { hosts })
}

/// One host's check: compile both sides and diff them (pure; unit-tested).
pub fn host_check(
    host: &str,
    new: &HostPolicy,
    facts: Option<&Facts>,
    applied_revision: u64,
    applied: Option<&HostPolicy>,
    reported_hash: &str,
) -> v1::HostCheck {
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

    #[test]
    fn same_policy_is_no_change_and_attested() {
        let p = policy(&[25]);
        let hash = compile(&p, &facts(), 4).unwrap().hash().0;
        let c = host_check("h1", &p, Some(&facts()), 4, Some(&p), &hash);
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
            4,
            Some(&policy(&[25])),
            "",
        );
        assert_eq!(c.changes.len(), 1, "{:?}", c.changes);
        assert!(c.changes[0].contains("80"), "{:?}", c.changes);
        assert!(!c.attested);
        let n = host_check("h9", &policy(&[25]), Some(&facts()), 0, None, "");
        assert!(
            n.changes[0].starts_with("table inet portcullis created"),
            "{n:?}"
        );
        let u = host_check("h9", &policy(&[25]), None, 0, None, "");
        assert!(u.error.contains("never connected"));
    }
}
