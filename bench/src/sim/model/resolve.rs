//! The simulated agents' side of address lists: a `Desired`'s policy is resolved against
//! the lists the agent holds (`policy_from_wire`: deltas applied to their base, every
//! result checked against its digest; a delta against another base is `need_full`), then
//! compiled for the answer's hash, like the agent does minus nftables.
//!
//! A thousand agents in one process receive the same message: the result of resolving
//! and compiling is a function of (revision, wire policy, held base lists), so it is
//! computed once and shared. A cache hit still compares the whole wire policy (every
//! list byte) and the identity of the held bases, so each agent gets exactly what it
//! would have computed itself; agents holding the same list share one copy of it.

use portcullis_policy::{AddrList, HostPolicy, compile};
use portcullis_proto::convert::{ListError, PolicyFromWire, policy_from_wire};
use portcullis_proto::v1;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Lists by name, as an agent holds them (those of the policy it applied last).
pub(super) type Held = BTreeMap<String, Arc<AddrList>>;

/// How a `Desired` resolved.
#[derive(Debug, Clone)]
pub(super) enum Resolved {
    /// Applied: the ruleset hash and the lists now held.
    Ok { hash: String, lists: Held },
    /// A delta's base is not what this agent holds: ask for the full lists.
    NeedFull(String),
    /// Refused (bad message, digest mismatch, does not compile).
    Failed(String),
}

/// Entries kept before the cache is emptied (a few revisions' worth).
const MAX_ENTRIES: usize = 16;

struct Entry {
    revision: u64,
    host_facts: String,
    policy: v1::HostPolicy,
    /// The held lists the deltas of `policy` were resolved against (by identity).
    bases: Vec<Option<Arc<AddrList>>>,
    result: Resolved,
}

/// Shared by every simulated agent of the process.
#[derive(Default)]
pub(super) struct Resolver {
    entries: Mutex<Vec<Entry>>,
}

/// The held list each delta of `p` refers to (by name; `None`: not held), in wire order.
fn bases(p: &v1::HostPolicy, held: &Held) -> Vec<Option<Arc<AddrList>>> {
    p.lists
        .iter()
        .filter(|w| !w.base_digest.is_empty())
        .map(|w| held.get(&w.name).cloned())
        .collect()
}

impl Resolver {
    /// `p` (the policy of a `Desired` at `revision`) for the agent on `host` holding `held`.
    pub(super) fn resolve(
        &self,
        host: &str,
        revision: u64,
        p: &v1::HostPolicy,
        held: &Held,
    ) -> Resolved {
        let bases = bases(p, held);
        // compile reads the policy and the default-route interface: the same for every
        // simulated agent (see `sim::facts`), so the hostname is not part of the key.
        let facts = super::facts(host);
        let host_facts = facts.default_route_interface.clone().unwrap_or_default();
        // Held while computing: the agents that got the same message wait for this result
        // instead of computing it again.
        let mut g = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        {
            if let Some(e) = g.iter().find(|e| {
                e.revision == revision
                    && e.host_facts == host_facts
                    && e.bases.len() == bases.len()
                    && e.bases.iter().zip(&bases).all(|(a, b)| match (a, b) {
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                        (None, None) => true,
                        _ => false,
                    })
                    && e.policy == *p
            }) {
                return e.result.clone();
            }
        }
        let result = match policy_from_wire(p, held) {
            Err(PolicyFromWire::Lists(e @ ListError::BaseMismatch { .. })) => {
                Resolved::NeedFull(e.to_string())
            }
            Err(e) => Resolved::Failed(e.to_string()),
            Ok(policy) => resolved(policy, &facts, revision),
        };
        if g.len() >= MAX_ENTRIES {
            g.clear();
        }
        g.push(Entry {
            revision,
            host_facts,
            policy: p.clone(),
            bases,
            result: result.clone(),
        });
        result
    }
}

fn resolved(policy: HostPolicy, facts: &portcullis_policy::Facts, revision: u64) -> Resolved {
    match compile(&policy, facts, revision) {
        Ok(r) => Resolved::Ok {
            hash: r.hash().0,
            lists: policy.lists,
        },
        Err(e) => Resolved::Failed(e.to_string()),
    }
}
