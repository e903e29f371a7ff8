//! The other side of a rollout across controllers on one PostgreSQL store: what this
//! controller does for a rollout another controller runs (see [`crate::store::relay`]
//! for the notices and reports).
//!
//! - A notice is taken only from the controller holding the rollout's live lease, for
//!   the rollout's revision, and only for hosts the rollout targets in the right state
//!   (`send`: staged on the revision; `confirm`: not settled; `rollback`: desired on its
//!   previous revision). Anything else is ignored and logged. Messages go only to
//!   sessions this controller holds, and carry what the store says (the staged
//!   revision's policy, the rollout's confirm timeout), never what a notice says.
//! - Every host of a wave is followed (also those whose sessions are elsewhere: an agent
//!   may come back on any controller) until the rollout is done with it: `Applied`
//!   answering the `Desired` sent here, a `Hello` on a new session (its attested
//!   revision and hash), a `Reverted`, a `Confirm` handed over. Each is stored as a
//!   report, which the rollout's controller reads.
//!
//! Not the decisions: confirming, reverting, halting are the rollout's controller's.

use super::super::Shared;
use crate::store::{
    self,
    relay::{Lease, Step, Target},
};
use portcullis_policy::protocol::outcome::HostState;
use portcullis_policy::rollout::RolloutStatus;

mod follow;

pub use follow::run;

/// A rollout notice: `rollout <id> <step> <revision>[ <host>,<host>,...]` (after the
/// sending controller's id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub rollout: u64,
    pub step: Step,
    pub revision: u64,
    pub hosts: Vec<String>,
}

impl Notice {
    /// Parse what follows `rollout `.
    pub fn parse(rest: &str) -> Option<Self> {
        let mut parts = rest.splitn(4, ' ');
        let rollout = parts.next()?.parse().ok()?;
        let step = Step::parse(parts.next()?)?;
        let revision = parts.next()?.parse().ok()?;
        let hosts: Vec<String> = match parts.next() {
            Some(list) => list.split(',').map(str::to_owned).collect(),
            None => Vec::new(),
        };
        if step.has_hosts() && (hosts.is_empty() || hosts.iter().any(String::is_empty)) {
            return None;
        }
        Some(Self {
            rollout,
            step,
            revision,
            hosts,
        })
    }
}

/// Whether a notice from `from` may be acted on, given its rollout as stored.
pub fn check(lease: Option<&Lease>, from: &str, n: &Notice, now_ms: i64) -> Result<(), String> {
    let Some(l) = lease else {
        return Err(format!("rollout {} is unknown", n.rollout));
    };
    if l.controller != from {
        return Err(format!(
            "rollout {} is run by controller {}, not {from}",
            l.id, l.controller
        ));
    }
    if n.step == Step::Done {
        return Ok(());
    }
    if l.status != RolloutStatus::Running {
        return Err(format!("rollout {} is {}", l.id, l.status));
    }
    if l.lease_ms < now_ms {
        return Err(format!(
            "rollout {}'s lease expired {} ms ago",
            l.id,
            now_ms - l.lease_ms
        ));
    }
    if n.revision != l.revision {
        return Err(format!(
            "rollout {} rolls out r{}, not r{}",
            l.id, l.revision, n.revision
        ));
    }
    Ok(())
}

/// Whether `step` may be carried out for a host of a rollout of `revision` (its row).
pub fn check_host(step: Step, revision: u64, target: Option<&Target>) -> Result<(), String> {
    let Some(t) = target else {
        return Err("not a host of this rollout".to_string());
    };
    let ok = match step {
        Step::Send => t.state == HostState::Sent && t.desired_revision == revision,
        Step::Confirm => t.state.in_flight(),
        Step::Rollback => t.previous_revision != 0 && t.desired_revision == t.previous_revision,
        Step::Revert | Step::Release | Step::Done | Step::Abort => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} refused: its state is {:?}, desired r{}",
            step.as_str(),
            t.state.as_str(),
            t.desired_revision
        ))
    }
}

/// What the relay gets from the publish listener.
#[derive(Debug)]
pub enum Input {
    Notice {
        from: String,
        notice: Notice,
    },
    /// The listener (re)connected: follow what other controllers' rollouts have in flight.
    CatchUp,
}

/// Whether a revision about to be pushed to `host` is one a running rollout is staging on
/// it (shared store): only the rollout sends that, with its confirm deadline. Errs
/// towards "staged" (nothing pushed) when the store cannot say.
pub async fn staged(shared: &Shared, host: &str, revision: u64) -> bool {
    if shared.store.dialect() != store::Dialect::Postgres {
        return false;
    }
    let h = host.to_owned();
    shared
        .store
        .call(move |c| store::relay::staged(c, &h, revision, store::now_ms()))
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(%host, error = %format!("{e:#}"), "cannot tell whether a rollout stages this host's revision; not pushing it");
            true
        })
}

#[cfg(test)]
mod tests;
