//! Guarded from boot: `portcullis-agent restore` (the oneshot unit that runs before the
//! network is configured) and the fail-closed minimal policy.
//!
//! [`restore`] needs no controller, no default route and none of the interfaces the policy
//! names. In order:
//! 1. last-known-good recompiled with the facts of now and applied (verified by readback);
//! 2. if it does not compile here (e.g. `interface: default` and no default route yet),
//!    the ruleset stored with it (the one the kernel verified, its hash checked) is
//!    applied as it is;
//! 3. if neither can be applied (no record, unreadable record, nft refuses), the host
//!    fails closed to [`minimal_policy`]: every interface but loopback, `replies:
//!    stateful` (replies to this host's own connections come back, so the agent still
//!    reaches its controller), inbound tcp/udp (and every other port-based transport the
//!    compiler guards) to any port denied and logged, except the management entries;
//!    ICMP/ICMPv6 (neighbour discovery) accepted as in every policy. The management entries
//!    are the site's `management:` for this host as last sent by the controller with an
//!    `apply` (`<state>/management.json`) plus `PORTCULLIS_MANAGEMENT`. It is recorded as
//!    last-known-good revision 0, so the daemon keeps it, verifies it and heals it, and a
//!    record `fail-closed.json` says why, until a real revision is applied (`show`, the
//!    daemon's `Hello`/`Heartbeat` conditions and the controller's `status` say so).
//!
//! A record that could not be used (unreadable, or refused) is kept beside as
//! `last-known-good.json.unusable` (for forensics, or to put back by hand once the cause is
//! fixed); the minimal policy becomes last-known-good.

use crate::durable;
use crate::state::StateDir;
use crate::{Agent, AgentError, LastKnownGood};
use portcullis_policy::lockout::parse_keep;
use portcullis_policy::{
    AllowEntry, DriftMode, Facts, HostPolicy, InterfaceSel, LogLimit, Mode, Replies, RulesetHash,
    diff,
};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

const MARKER_FILE: &str = "fail-closed.json";
const MANAGEMENT_FILE: &str = "management.json";

/// How to restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreConfig {
    /// Management access kept by the minimal policy besides the site's `management:`
    /// entries last received from the controller (`management.json`), `--keep` syntax
    /// (`tcp/22 from 10.0.0.0/8`).
    pub management: Vec<String>,
    /// NFLOG group of the minimal policy's log rule (the agent's `--nflog-group`).
    pub log_group: u16,
}

/// The record of a host that failed closed (`<state>/fail-closed.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailClosed {
    /// Why last-known-good could not be applied.
    pub reason: String,
    /// RFC 3339, UTC.
    pub since: String,
    /// The management entries the minimal policy keeps open.
    pub management: Vec<String>,
}

impl std::fmt::Display for FailClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fail-closed since {}: minimal policy enforced (management kept: {}): {}",
            self.since,
            if self.management.is_empty() {
                "none".to_owned()
            } else {
                self.management.join(", ")
            },
            self.reason
        )
    }
}

/// What [`restore`] enforced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RestoreReport {
    /// Last-known-good, recompiled with today's facts.
    Recompiled { revision: u64, hash: RulesetHash },
    /// Last-known-good's stored ruleset, as verified when it was applied.
    Stored {
        revision: u64,
        hash: RulesetHash,
        why: String,
    },
    /// The minimal policy.
    FailClosed {
        hash: RulesetHash,
        record: FailClosed,
    },
}

impl std::fmt::Display for RestoreReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Recompiled { revision, hash } => {
                write!(f, "restored last-known-good revision {revision} ({hash})")
            }
            Self::Stored {
                revision,
                hash,
                why,
            } => write!(
                f,
                "restored last-known-good revision {revision} ({hash}) as stored: {why}"
            ),
            Self::FailClosed { hash, record } => write!(f, "{record} ({hash})"),
        }
    }
}

fn marker_path(state: &StateDir) -> PathBuf {
    state.path().join(MARKER_FILE)
}

fn management_path(state: &StateDir) -> PathBuf {
    state.path().join(MANAGEMENT_FILE)
}

/// Records the site's `management:` entries the controller sent with the revision just
/// applied (durably; a failure is logged: the previous set stays).
pub fn keep_management(state: &StateDir, entries: &[String]) {
    if stored_management(state) == entries {
        return;
    }
    let written = serde_json::to_vec_pretty(entries)
        .map_err(|e| e.to_string())
        .and_then(|body| {
            durable::write_atomic(&management_path(state), &body, 0o600).map_err(|e| e.to_string())
        });
    if let Err(e) = written {
        tracing::error!(error = %e, "cannot record the management entries for fail-closed");
    }
}

/// The management entries last received from the controller (none if unreadable).
pub fn stored_management(state: &StateDir) -> Vec<String> {
    std::fs::read(management_path(state))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The fail-closed record, if the host is failed closed.
pub fn fail_closed(state: &StateDir) -> Option<FailClosed> {
    let bytes = std::fs::read(marker_path(state)).ok()?;
    Some(
        serde_json::from_slice(&bytes).unwrap_or_else(|e| FailClosed {
            reason: format!("unreadable {MARKER_FILE}: {e}"),
            since: String::new(),
            management: Vec::new(),
        }),
    )
}

/// A real revision is in force: the host is no longer failed closed.
pub fn clear_fail_closed(state: &StateDir) -> Result<(), durable::DurableError> {
    durable::remove(&marker_path(state))
}

/// The minimal policy (see the module docs) keeping `management` open. Entries that do
/// not parse are left out and returned as errors (the rest is still enforced).
pub fn minimal_policy(management: &[String], log_group: u16) -> (HostPolicy, Vec<String>) {
    let mut allow = Vec::new();
    let mut errors = Vec::new();
    for text in management {
        match parse_keep(text) {
            Ok(reqs) => {
                // Without `from`: one requirement per address family, both /0.
                let anywhere = reqs.len() == 2 && reqs.iter().all(|r| r.from.prefix_len() == 0);
                for r in reqs.iter().filter(|r| !anywhere || r.from.addr().is_ipv4()) {
                    allow.push(AllowEntry {
                        proto: r.proto,
                        ports: r.ports,
                        from: if anywhere { Vec::new() } else { vec![r.from] },
                        lists: Vec::new(),
                        label: format!("management {text}"),
                    });
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    allow.sort();
    allow.dedup();
    let policy = HostPolicy {
        interface: InterfaceSel::All,
        replies: Replies::Stateful,
        allow,
        log: LogLimit::default(),
        log_group,
        mode: Mode::Enforce,
        drift: DriftMode::Heal,
        ..HostPolicy::default()
    };
    (policy, errors)
}

/// Enforce last-known-good, or fail closed (see the module docs). `Err` only when even
/// the minimal policy could not be applied.
pub async fn restore(agent: &Agent, config: &RestoreConfig) -> Result<RestoreReport, AgentError> {
    let facts = match agent.facts().gather().await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "no facts; restoring with none");
            Facts::default()
        }
    };
    let reason = match agent.state().load() {
        Ok(Some(lkg)) if lkg.revision != 0 => match enforce_lkg(agent, &lkg, &facts).await {
            Ok(report) => return Ok(report),
            Err(why) => {
                set_aside(agent.state());
                why
            }
        },
        // Revision 0 is the minimal policy itself: still failed closed.
        Ok(Some(_)) => fail_closed(agent.state()).map_or_else(
            || "last-known-good is the minimal policy".to_owned(),
            |r| r.reason,
        ),
        Ok(None) => "no last-known-good record".to_owned(),
        Err(e) => {
            set_aside(agent.state());
            format!("last-known-good unreadable: {e}")
        }
    };
    fail_closed_now(agent, config, &facts, reason).await
}

/// Last-known-good recompiled, else as stored; `Err(reason)` when neither applies.
async fn enforce_lkg(
    agent: &Agent,
    lkg: &LastKnownGood,
    facts: &Facts,
) -> Result<RestoreReport, String> {
    let why = match portcullis_policy::compile(&lkg.policy, facts, lkg.revision) {
        Ok(_) => match reconcile(agent, &lkg.policy, facts, lkg.revision).await {
            Ok(hash) => {
                return Ok(RestoreReport::Recompiled {
                    revision: lkg.revision,
                    hash,
                });
            }
            Err(e) => format!("recompiled last-known-good failed: {e}"),
        },
        Err(e) => format!("last-known-good does not compile here: {e}"),
    };
    tracing::warn!(%why, "applying last-known-good's stored ruleset");
    match apply_stored(agent, lkg) {
        Ok(hash) => Ok(RestoreReport::Stored {
            revision: lkg.revision,
            hash,
            why,
        }),
        Err(e) => Err(format!("{why}; its stored ruleset failed too: {e}")),
    }
}

async fn reconcile(
    agent: &Agent,
    policy: &HostPolicy,
    facts: &Facts,
    revision: u64,
) -> Result<RulesetHash, AgentError> {
    let (agent, policy, facts) = (agent.clone(), policy.clone(), facts.clone());
    tokio::task::spawn_blocking(move || agent.reconcile(&policy, &facts, revision))
        .await
        .map_err(|e| AgentError::Join(e.to_string()))?
        .map(|r| r.hash)
}

/// The record's verified ruleset, applied and read back, the record left as it is.
fn apply_stored(agent: &Agent, lkg: &LastKnownGood) -> Result<RulesetHash, String> {
    if lkg.ruleset.hash() != lkg.hash {
        return Err("the stored ruleset does not match the record's hash".to_owned());
    }
    let _lock = agent.state().lock().map_err(|e| e.to_string())?;
    agent
        .dataplane()
        .replace(&lkg.ruleset)
        .map_err(|e| e.to_string())?;
    let kernel = agent
        .dataplane()
        .read_table()
        .map_err(|e| e.to_string())?
        .ok_or("table missing right after apply")?;
    let d = diff(&lkg.ruleset, &kernel.ruleset);
    if !d.changes.is_empty() {
        return Err(format!(
            "the kernel reads back different: {} changes",
            d.changes.len()
        ));
    }
    Ok(lkg.hash.clone())
}

/// Keeps an unusable record beside (best effort: it is replaced anyway).
fn set_aside(state: &StateDir) {
    let path = state.path().join("last-known-good.json");
    let aside = state.path().join("last-known-good.json.unusable");
    if let Err(e) = std::fs::rename(&path, &aside) {
        tracing::warn!(error = %e, "cannot set the unreadable last-known-good aside");
    }
}

async fn fail_closed_now(
    agent: &Agent,
    config: &RestoreConfig,
    facts: &Facts,
    reason: String,
) -> Result<RestoreReport, AgentError> {
    // The site's entries last received with a revision, and the local ones.
    let mut management = stored_management(agent.state());
    for m in &config.management {
        if !management.contains(m) {
            management.push(m.clone());
        }
    }
    let (policy, errors) = minimal_policy(&management, config.log_group);
    let reason = if errors.is_empty() {
        reason
    } else {
        format!(
            "{reason}; management entries left out: {}",
            errors.join("; ")
        )
    };
    tracing::error!(%reason, "failing closed to the minimal policy");
    let record = FailClosed {
        reason,
        since: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        management,
    };
    // The marker first: if the apply is then interrupted, status still says why.
    let body = serde_json::to_vec_pretty(&record).map_err(|e| {
        AgentError::State(crate::state::StateError::Durable(durable::DurableError {
            path: marker_path(agent.state()),
            action: "serialize",
            source: std::io::Error::other(e),
        }))
    })?;
    std::fs::create_dir_all(agent.state().path()).map_err(|source| {
        AgentError::State(crate::state::StateError::Io {
            path: agent.state().path().to_path_buf(),
            source,
        })
    })?;
    if let Err(e) = durable::write_atomic(&marker_path(agent.state()), &body, 0o600) {
        tracing::error!(error = %e, "cannot record the fail-closed state; enforcing anyway");
    }
    let hash = reconcile(agent, &policy, facts, 0).await?;
    Ok(RestoreReport::FailClosed { hash, record })
}

#[cfg(test)]
mod tests;
