//! The anti-lockout check, run on the compiled rulesets before anything is stored or sent.
//!
//! For every targeted host with known facts: (a) replies from the controller to the agent
//! must come back in, and on the controller's own host (a host whose facts carry an
//! address agents reach the controller at) the controller's port must stay open to every
//! agent's address; (b) each `--keep` / `management:` entry must stay open on every
//! inbound interface. Pure evaluation is in `portcullis_policy::lockout`.

use crate::server::Shared;
use crate::store;
use portcullis_policy::lockout::{self, Requirement};
use portcullis_policy::{Facts, Ruleset};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use tonic::Status;

/// Parse `--keep` entries (a bad one is the operator's error).
pub fn keep_requirements(keep: &[String]) -> Result<Vec<Requirement>, Status> {
    let mut out = Vec::new();
    for k in keep {
        out.extend(lockout::parse_keep(k).map_err(|e| Status::invalid_argument(e.to_string()))?);
    }
    Ok(out)
}

/// Agents' source addresses as last seen by the controller, by host.
async fn agent_addrs(shared: &Shared) -> Result<BTreeMap<String, IpAddr>, Status> {
    let hosts = shared
        .store
        .call(store::list_hosts)
        .await
        .map_err(crate::server::wire::internal)?;
    Ok(hosts
        .into_iter()
        .filter_map(|h| {
            let addr = h.peer.parse::<SocketAddr>().ok()?.ip().to_canonical();
            Some((h.name, addr))
        })
        .collect())
}

/// Every violation, as `host: requirement: would drop ...` lines (sorted); hosts without
/// facts cannot be checked and are listed in the second vector.
pub async fn check(
    shared: &Shared,
    compiled: &BTreeMap<String, (std::sync::Arc<Ruleset>, Facts)>,
    unchecked: Vec<String>,
    keep: &[Requirement],
    management: &BTreeMap<String, Vec<Requirement>>,
) -> Result<(Vec<String>, Vec<String>), Status> {
    let controller: Vec<SocketAddr> = shared.rollouts.controller_addrs();
    let ctl_ips: BTreeSet<IpAddr> = controller.iter().map(SocketAddr::ip).collect();
    let agents = agent_addrs(shared).await?;
    let mut problems = Vec::new();
    // The verdict depends only on (ruleset, requirements, interfaces): hosts share
    // rulesets (one `Arc` per distinct compile), and scanning a 1M-element address set
    // per host made this the slowest part of an apply (0.1 s a host).
    type Verdict = (
        usize,
        Vec<Requirement>,
        Vec<String>,
        Vec<lockout::Violation>,
    );
    let mut seen: Vec<Verdict> = Vec::new();
    for (host, (rs, facts)) in compiled {
        let mut reqs: Vec<Requirement> = keep.to_vec();
        reqs.extend(management.get(host).into_iter().flatten().cloned());
        reqs.extend(ctl_ips.iter().map(|ip| lockout::agent_replies(*ip)));
        let own: BTreeSet<IpAddr> = facts
            .interfaces
            .iter()
            .flat_map(|i| i.addrs.iter().map(|a| a.addr()))
            .collect();
        for ctl in controller.iter().filter(|c| own.contains(&c.ip())) {
            let peers: BTreeSet<IpAddr> = agents
                .iter()
                .filter(|(h, _)| *h != host)
                .map(|(_, a)| *a)
                .collect();
            reqs.extend(
                peers
                    .into_iter()
                    .map(|a| lockout::controller_port(ctl.port(), a)),
            );
        }
        let ifs = lockout::inbound_interfaces(facts);
        let ptr = std::sync::Arc::as_ptr(rs) as usize;
        let i = match seen
            .iter()
            .position(|(p, r, i, _)| *p == ptr && *r == reqs && *i == ifs)
        {
            Some(i) => i,
            None => {
                let found = lockout::check(rs, &reqs, &ifs);
                seen.push((ptr, reqs, ifs, found));
                seen.len() - 1
            }
        };
        for v in &seen[i].3 {
            problems.push(format!("{host}: {v}"));
        }
    }
    problems.sort();
    Ok((problems, unchecked))
}

/// The refusal the operator sees.
pub fn refusal(problems: &[String]) -> Status {
    Status::failed_precondition(format!(
        "anti-lockout check: this policy would cut off access that must stay open; \
         nothing was stored or sent:\n  {}\nallow that traffic in the policy, or re-run with \
         --force-lockout-risk (commit-confirmed hosts still revert if they cannot reach \
         the controller)",
        problems.join("\n  ")
    ))
}
