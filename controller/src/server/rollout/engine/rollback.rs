//! A halted rollout rolls back: every host it changed gets its previous revision as the
//! desired one and is sent it — by this controller for the sessions it holds, by the
//! controller holding the session for the others (announced, then followed through its
//! reports) — and must report it applied with the expected hash.

use super::super::desired::Desireds;
use super::{Ctx, ROLLBACK_TIMEOUT, emit, host_result, remote};
use crate::server::registry::HostEvent;
use crate::store::{self, relay};
use portcullis_policy::Facts;
use portcullis_policy::protocol::outcome::{HostOutcome, HostState};
use portcullis_proto::v1;
use std::collections::BTreeMap;
use tokio::sync::broadcast;
use tokio::time::Instant;

/// A host that could not be put back on its previous revision, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Failure {
    pub host: String,
    pub why: String,
}

impl Failure {
    fn new(host: &str, why: impl Into<String>) -> Self {
        Self {
            host: host.to_owned(),
            why: why.into(),
        }
    }
}

/// As `RolloutFinished.rollback_failed` lists it: `host: why`.
impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.host, self.why)
    }
}

/// Send each host its previous revision and wait for it to be applied with the expected
/// hash. Returns (rolled back, could not be rolled back).
pub(super) async fn roll_back(
    ctx: &Ctx<'_>,
    hosts: &[String],
    events: &mut broadcast::Receiver<HostEvent>,
) -> (Vec<String>, Vec<Failure>) {
    let mut pending: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut failed = Vec::new();
    let far = remote::elsewhere(ctx, hosts).await;
    let mut relayed: Vec<(String, u64)> = Vec::new();
    for host in hosts {
        let prev = ctx.plan.previous.get(host).copied().unwrap_or(0);
        if prev == 0 {
            failed.push(Failure::new(host, "no previous revision to go back to"));
            continue;
        }
        ctx.set_desired(host, prev).await;
        let Some(handle) = ctx.shared.registry.get(host) else {
            if far.contains_key(host) {
                relayed.push((host.clone(), prev));
            } else {
                let why = format!("offline (gets r{prev} when it connects)");
                failed.push(Failure::new(host, why));
            }
            continue;
        };
        match ctx.shared.desired_message(host, &handle.facts).await {
            Ok(Some(d)) if d.revision == prev => {
                let exp = d.expected_hash.clone();
                if ctx
                    .send(host, v1::controller_message::Msg::Desired(d))
                    .await
                {
                    pending.insert(host.clone(), (prev, exp));
                } else {
                    failed.push(Failure::new(host, "session closed"));
                }
            }
            _ => failed.push(Failure::new(host, format!("no stored r{prev}"))),
        }
    }
    if !relayed.is_empty() {
        for (host, prev, exp) in expected_elsewhere(ctx, &relayed, &far).await {
            match exp {
                Some(exp) => {
                    ctx.queue(relay::Step::Rollback, &host);
                    pending.insert(host, (prev, exp));
                }
                None => failed.push(Failure::new(&host, format!("no stored r{prev}"))),
            }
        }
        ctx.flush_outbox().await;
    }
    let mut done = Vec::new();
    let deadline = Instant::now() + ROLLBACK_TIMEOUT;
    let mut follower = remote::Follower::new();
    let mut poll = tokio::time::interval(remote::POLL);
    while !pending.is_empty() {
        let seen = tokio::select! {
            ev = events.recv() => Seen::Event(ev),
            _ = poll.tick(), if ctx.shared_store() => Seen::Poll,
            () = tokio::time::sleep_until(deadline) => break,
        };
        let answers = match seen {
            Seen::Event(Ok(HostEvent::Applied { host, report })) => vec![(host, report)],
            Seen::Event(Ok(_)) => Vec::new(),
            Seen::Event(Err(broadcast::error::RecvError::Lagged(n))) => {
                tracing::warn!(
                    rollout = ctx.plan.id,
                    skipped = n,
                    "rollback lagged behind host events; re-checking its hosts from the store"
                );
                for (host, prev) in super::lag::recheck_rollback(ctx, &mut pending).await {
                    rolled_back(ctx, &host, prev).await;
                    done.push(host);
                }
                Vec::new()
            }
            Seen::Event(Err(broadcast::error::RecvError::Closed)) => break,
            Seen::Poll => reported(ctx, &mut follower, &pending).await,
        };
        for (host, report) in answers {
            let Some((prev, exp)) = pending.get(&host).cloned() else {
                continue;
            };
            if report.revision != prev {
                continue;
            }
            pending.remove(&host);
            if report.ok && (exp.is_empty() || report.hash == exp) {
                rolled_back(ctx, &host, prev).await;
                done.push(host);
            } else if report.ok {
                let why = format!(
                    "rollback to r{prev} failed: kernel hash {} != expected {exp}",
                    report.hash
                );
                failed.push(Failure::new(&host, why));
            } else {
                let why = format!("rollback to r{prev} failed: {}", report.error);
                failed.push(Failure::new(&host, why));
            }
        }
    }
    failed.extend(
        pending
            .keys()
            .map(|h| Failure::new(h, "no answer to the rollback in time")),
    );
    for f in &failed {
        ctx.record(&f.host, HostState::RollbackFailed, &f.to_string())
            .await;
    }
    (done, failed)
}

/// What woke the rollback's wait.
enum Seen {
    Event(Result<HostEvent, broadcast::error::RecvError>),
    Poll,
}

/// `host` is back on `prev`: store and report it.
async fn rolled_back(ctx: &Ctx<'_>, host: &str, prev: u64) {
    let why = format!("back on r{prev}");
    ctx.record(host, HostState::RolledBack, &why).await;
    let r = host_result(host, HostOutcome::RolledBack, 0, &why);
    emit(ctx.tx, v1::apply_event::Event::Host(r)).await;
}

/// The `Applied` (or failed) reports other controllers stored for the hosts waiting.
async fn reported(
    ctx: &Ctx<'_>,
    follower: &mut remote::Follower,
    pending: &BTreeMap<String, (u64, String)>,
) -> Vec<(String, v1::Applied)> {
    let mut answers = Vec::new();
    for r in follower.poll(ctx, pending.keys()).await {
        let ok = match r.kind {
            relay::ReportKind::Applied => true,
            relay::ReportKind::Failed => false,
            _ => continue,
        };
        let report = v1::Applied {
            revision: r.revision,
            ok,
            hash: r.hash,
            error: r.detail,
            ..Default::default()
        };
        answers.push((r.host, report));
    }
    answers
}

/// For hosts whose sessions other controllers hold: the hash each must report for its
/// previous revision (now its desired one), compiled with the facts of its last `Hello`;
/// `None` when that revision's policy is not stored.
async fn expected_elsewhere(
    ctx: &Ctx<'_>,
    hosts: &[(String, u64)],
    facts: &BTreeMap<String, Facts>,
) -> Vec<(String, u64, Option<String>)> {
    let names: Vec<String> = hosts.iter().map(|(h, _)| h.clone()).collect();
    let stored = ctx
        .shared
        .store
        .call(move |c| {
            let mut out = BTreeMap::new();
            for h in &names {
                if let Some(d) = store::desired_for(c, h)? {
                    out.insert(h.clone(), d);
                }
            }
            Ok(out)
        })
        .await
        .unwrap_or_else(|e| {
            tracing::error!(rollout = ctx.plan.id, error = %format!("{e:#}"), "reading the rollback's revisions failed");
            BTreeMap::new()
        });
    hosts
        .iter()
        .map(|(host, prev)| {
            let exp =
                stored
                    .get(host)
                    .filter(|(rev, _, _)| rev == prev)
                    .and_then(|(rev, json, _)| {
                        let f = facts.get(host).cloned().unwrap_or_default();
                        Desireds::new(*rev, 0).expected(json, &f)
                    });
            (host.clone(), *prev, exp)
        })
        .collect()
}
