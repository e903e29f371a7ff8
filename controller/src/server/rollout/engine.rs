//! The wave engine: executes the steps of a [`Rollout`] against connected agents.
//!
//! A wave makes the revision the desired one of its hosts and sends `Desired` (with the
//! confirm deadline). A host counts as confirmed when it applied with the expected hash
//! and — with a deadline — came back on a *new* session whose `Hello` attests the new
//! revision and hash (its stream was re-established through the new rules); only then is
//! `Confirm` sent. The controller gives up at 80% of the deadline, so it has put the
//! previous revision back as desired before the agent reverts by itself. A failed host
//! gets its previous desired revision back at once. On halt, confirmed hosts are sent
//! their previous revision and must report it applied.

use super::super::Shared;
use super::super::registry::HostEvent;
use crate::store;
use portcullis_policy::rollout::{HostResult, MaxFail, Rollout, Step};
use portcullis_proto::v1;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tonic::Status;

/// How long a host has to answer `Desired` when no confirmation is asked for.
const APPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a rolled-back host has to report its previous revision applied.
const ROLLBACK_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Plan {
    pub id: u64,
    pub revision: u64,
    pub waves: Vec<Vec<String>>,
    pub max_fail: MaxFail,
    pub confirm: Duration,
    pub previous: BTreeMap<String, u64>,
    pub abort: Arc<AtomicBool>,
    pub gates: super::gates::Gates,
}

type Tx = mpsc::Sender<Result<v1::ApplyEvent, Status>>;

mod lag;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Applying,
    AwaitReconnect,
}

struct Ctx<'a> {
    shared: &'a Arc<Shared>,
    plan: &'a Plan,
    tx: &'a Tx,
    /// Host states not written yet: flushed in one transaction per burst of events.
    pending: std::sync::Mutex<Vec<(String, String, String)>>,
}

async fn emit(tx: &Tx, event: v1::apply_event::Event) {
    // The operator may have gone away; the rollout goes on.
    let _ = tx.send(Ok(v1::ApplyEvent { event: Some(event) })).await;
}

fn host_result(host: &str, outcome: v1::HostOutcome, wave: usize, error: &str) -> v1::HostResult {
    v1::HostResult {
        host: host.to_string(),
        outcome: outcome as i32,
        error: error.to_string(),
        wave: u32::try_from(wave).unwrap_or(u32::MAX),
        ..Default::default()
    }
}

fn state_name(o: v1::HostOutcome) -> &'static str {
    match o {
        v1::HostOutcome::Confirmed | v1::HostOutcome::Applied => "confirmed",
        v1::HostOutcome::Reverted => "reverted",
        v1::HostOutcome::Offline => "offline",
        v1::HostOutcome::Unconfirmed => "unconfirmed",
        v1::HostOutcome::RolledBack => "rolled_back",
        v1::HostOutcome::HashMismatch => "hash_mismatch",
        v1::HostOutcome::GateFailed => "gate_failed",
        v1::HostOutcome::Skipped => "skipped",
        _ => "failed",
    }
}

impl Ctx<'_> {
    /// Queue a host state; [`Ctx::flush`] writes the queue in one transaction.
    async fn record(&self, host: &str, state: &str, detail: &str) {
        let full = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.push((host.to_string(), state.to_string(), detail.to_string()));
            p.len() >= 512
        };
        if full {
            self.flush().await;
        }
    }

    async fn flush(&self) {
        let states = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if states.is_empty() {
            return;
        }
        let id = self.plan.id;
        let n = states.len();
        if let Err(e) = self
            .shared
            .store
            .call(move |c| store::rollout::set_host_states(c, id, &states))
            .await
        {
            tracing::error!(rollout = id, hosts = n, error = %e, "recording rollout host states failed");
        }
    }

    async fn set_desired(&self, host: &str, revision: u64) {
        let h = host.to_string();
        if let Err(e) = self
            .shared
            .store
            .call(move |c| store::rollout::set_desired(c, &h, revision))
            .await
        {
            tracing::error!(%host, revision, error = %e, "setting the desired revision failed");
        }
    }

    async fn send(&self, host: &str, msg: v1::controller_message::Msg) -> bool {
        match self.shared.registry.get(host) {
            Some(h) => {
                h.tx.send(Ok(v1::ControllerMessage { msg: Some(msg) }))
                    .await
                    .is_ok()
            }
            None => false,
        }
    }

    /// A host of the wave settled: store, report, release it.
    async fn settle(
        &self,
        wave: usize,
        host: &str,
        outcome: v1::HostOutcome,
        detail: &str,
    ) -> HostResult {
        let ok = matches!(
            outcome,
            v1::HostOutcome::Confirmed | v1::HostOutcome::Applied
        );
        if !ok {
            // Never push the refused revision again on reconnect.
            self.set_desired(host, self.plan.previous.get(host).copied().unwrap_or(0))
                .await;
        }
        self.record(host, state_name(outcome), detail).await;
        self.shared.rollouts.set_in_flight(host, false);
        tracing::info!(rollout = self.plan.id, %host, outcome = state_name(outcome), %detail, "rollout host settled");
        emit(
            self.tx,
            v1::apply_event::Event::Host(host_result(host, outcome, wave, detail)),
        )
        .await;
        if ok {
            HostResult::Confirmed
        } else if outcome == v1::HostOutcome::Skipped {
            HostResult::Skipped
        } else {
            HostResult::Failed(detail.to_string())
        }
    }

    /// Store the expected hashes computed for this wave (one transaction).
    async fn store_expected(&self, expected: &BTreeMap<String, String>) {
        let rev = self.plan.revision;
        let rows: Vec<(String, String)> = expected
            .iter()
            .filter(|(_, h)| !h.is_empty())
            .map(|(h, x)| (h.clone(), x.clone()))
            .collect();
        if let Err(e) = self
            .shared
            .store
            .call(move |c| {
                let tx = c.transaction()?;
                for (h, x) in &rows {
                    store::set_expected_hash(&tx, h, rev, x)?;
                }
                tx.commit()?;
                Ok(())
            })
            .await
        {
            tracing::error!(revision = rev, error = %e, "storing expected hashes failed");
        }
    }

    /// Attested by the host's latest `Hello`: (applied revision, kernel hash).
    async fn attested(&self, host: &str) -> Option<(u64, String)> {
        let h = host.to_string();
        self.shared
            .store
            .call(move |c| store::rollout::host_applied(c, &h))
            .await
            .ok()
            .flatten()
    }
}

/// Renew the rollout's lease while it runs (other controllers leave it alone).
async fn keep_lease(shared: Arc<Shared>, id: u64) {
    let every = std::time::Duration::from_millis(
        u64::try_from(store::rollout::LEASE_MS / 3).unwrap_or(5_000),
    );
    loop {
        tokio::time::sleep(every).await;
        let me = shared.controller_id.clone();
        match shared
            .store
            .call(move |c| store::rollout::renew_lease(c, id, &me))
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!(
                    rollout = id,
                    "the rollout's lease was lost (interrupted by another controller?)"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(rollout = id, error = %format!("{e:#}"), "renewing the rollout's lease failed")
            }
        }
    }
}

/// Stops [`keep_lease`] when the rollout ends.
struct LeaseGuard(tokio::task::JoinHandle<()>);

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub async fn run(shared: Arc<Shared>, plan: Plan, tx: Tx) {
    let _lease = LeaseGuard(tokio::spawn(keep_lease(shared.clone(), plan.id)));
    let ctx = Ctx {
        shared: &shared,
        plan: &plan,
        tx: &tx,
        pending: std::sync::Mutex::new(Vec::new()),
    };
    let mut events = shared.registry.subscribe();
    let mut reverted = shared.rollouts.subscribe_reverted();
    let mut sm = Rollout::new(plan.waves.clone(), plan.max_fail);
    let mut aborted = false;
    let (status, reason, rolled_back, rollback_failed) = loop {
        if plan.abort.load(Ordering::SeqCst) && !aborted {
            aborted = true;
            sm.abort();
        }
        match sm.advance() {
            Step::StartWave { index, hosts } => {
                emit(
                    &tx,
                    v1::apply_event::Event::WaveStarted(v1::WaveStarted {
                        index: u32::try_from(index).unwrap_or(u32::MAX),
                        hosts: hosts.clone(),
                        of: u32::try_from(plan.waves.len()).unwrap_or(u32::MAX),
                    }),
                )
                .await;
                let (results, expected) =
                    wave(&ctx, index, &hosts, &mut events, &mut reverted).await;
                let confirmed: Vec<String> = results
                    .iter()
                    .filter(|(_, r)| **r == HostResult::Confirmed)
                    .map(|(h, _)| h.clone())
                    .collect();
                let mut failed = results
                    .values()
                    .filter(|r| matches!(r, HostResult::Failed(_)))
                    .count();
                for (h, r) in results {
                    sm.record(&h, r);
                }
                // Gates only matter when the wave would otherwise let the rollout go on.
                let gate_failed = if sm.would_halt() {
                    Vec::new()
                } else {
                    super::gates::check(
                        &shared,
                        &plan.gates,
                        plan.revision,
                        &confirmed,
                        &expected,
                        &plan.abort,
                    )
                    .await
                };
                if !gate_failed.is_empty() {
                    for (h, why) in &gate_failed {
                        ctx.record(h, "gate_failed", why).await;
                        tracing::warn!(rollout = plan.id, host = %h, %why, "health gate failed");
                        emit(
                            &tx,
                            v1::apply_event::Event::Host(host_result(
                                h,
                                v1::HostOutcome::GateFailed,
                                index,
                                why,
                            )),
                        )
                        .await;
                    }
                    ctx.flush().await;
                    failed += gate_failed.len();
                    let reason = gate_failed
                        .iter()
                        .map(|(h, why)| format!("{h}: {why}"))
                        .collect::<Vec<_>>()
                        .join("; ");
                    sm.gate_failed(reason, gate_failed.into_iter().map(|(h, _)| h).collect());
                }
                emit(
                    &tx,
                    v1::apply_event::Event::WaveFinished(v1::WaveFinished {
                        index: u32::try_from(index).unwrap_or(u32::MAX),
                        ok: u32::try_from(hosts.len().saturating_sub(failed)).unwrap_or(u32::MAX),
                        failed: u32::try_from(failed).unwrap_or(u32::MAX),
                    }),
                )
                .await;
            }
            Step::Halt { reason, rollback } => {
                tracing::warn!(rollout = plan.id, %reason, hosts = rollback.len(), "rollout halted; rolling back");
                let (done, failed) = roll_back(&ctx, &rollback, &mut events).await;
                let st = sm.rolled_back(failed.is_empty());
                break (st, reason, done, failed);
            }
            Step::Finished(st) => {
                let reason = if aborted {
                    "aborted by an operator (`portcullis rollout abort`)".to_string()
                } else {
                    String::new()
                };
                break (st, reason, Vec::new(), Vec::new());
            }
        }
    };
    ctx.flush().await;
    let (id, s, r) = (plan.id, status.as_str().to_string(), reason.clone());
    if let Err(e) = shared
        .store
        .call(move |c| store::rollout::finish_rollout(c, id, &s, &r))
        .await
    {
        tracing::error!(rollout = plan.id, error = %e, "recording the rollout's end failed");
    }
    shared.rollouts.end(plan.id);
    tracing::info!(rollout = plan.id, revision = plan.revision, status = status.as_str(), %reason, "rollout finished");
    emit(
        &tx,
        v1::apply_event::Event::Finished(v1::RolloutFinished {
            rollout_id: plan.id,
            status: status.as_str().to_string(),
            reason,
            rolled_back,
            rollback_failed,
        }),
    )
    .await;
}

async fn wave(
    ctx: &Ctx<'_>,
    index: usize,
    hosts: &[String],
    events: &mut broadcast::Receiver<HostEvent>,
    reverted: &mut broadcast::Receiver<(String, v1::Reverted)>,
) -> (BTreeMap<String, HostResult>, BTreeMap<String, String>) {
    let (rev, confirm) = (ctx.plan.revision, ctx.plan.confirm);
    let mut results = BTreeMap::new();
    let mut phase: BTreeMap<String, Phase> = BTreeMap::new();
    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    // The session each host got the revision on (a newer one means it came back).
    let mut sent_on: BTreeMap<String, Option<u64>> = BTreeMap::new();
    let mut lagged = false;
    let mut connected = Vec::with_capacity(hosts.len());
    for host in hosts {
        match ctx.shared.registry.get(host) {
            // Only the facts: a held session handle would keep that session's stream
            // open after the agent closed it to reconnect through its new rules.
            Some(handle) => connected.push((host.clone(), handle.facts)),
            None => {
                let r = ctx
                    .settle(
                        index,
                        host,
                        v1::HostOutcome::Offline,
                        "not connected when its wave started",
                    )
                    .await;
                results.insert(host.clone(), r);
            }
        }
    }
    // One transaction for the whole wave: desired revision, "sent", the stored targets.
    let names: Vec<String> = connected.iter().map(|(h, _)| h.clone()).collect();
    let id = ctx.plan.id;
    let rows = match ctx
        .shared
        .store
        .call(move |c| store::rollout::start_wave(c, id, rev, &names))
        .await
    {
        Ok(rows) => rows,
        Err(e) => {
            tracing::error!(rollout = id, error = %e, "starting the wave failed");
            BTreeMap::new()
        }
    };
    let confirm_timeout_ms = u64::try_from(confirm.as_millis()).unwrap_or(u64::MAX);
    // Hosts with the same policy share its wire form; compile once per (policy, default
    // route) since that is all the facts compile reads.
    let mut wire: BTreeMap<&str, Option<(portcullis_policy::HostPolicy, v1::HostPolicy)>> =
        BTreeMap::new();
    let mut hashes: BTreeMap<(&str, Option<String>), String> = BTreeMap::new();
    for (host, facts) in &connected {
        // Abort stops between hosts: the rest of the wave keeps its previous revision.
        if ctx.plan.abort.load(Ordering::SeqCst) {
            let r = ctx
                .settle(
                    index,
                    host,
                    v1::HostOutcome::Skipped,
                    "not sent: the rollout was aborted",
                )
                .await;
            results.insert(host.clone(), r);
            continue;
        }
        ctx.shared.rollouts.set_in_flight(host, true);
        let Some((policy_json, _stored_hash)) = rows.get(host) else {
            let why = format!("no desired r{rev} stored for this host");
            results.insert(
                host.clone(),
                ctx.settle(index, host, v1::HostOutcome::Failed, &why).await,
            );
            continue;
        };
        let parsed = wire.entry(policy_json.as_str()).or_insert_with(|| {
            serde_json::from_str::<portcullis_policy::HostPolicy>(policy_json)
                .ok()
                .map(|p| {
                    let w = crate::server::lists::wire_without_lists(&p);
                    (p, w)
                })
        });
        let Some((policy, policy_wire)) = parsed.as_ref() else {
            let why = "stored policy unreadable".to_string();
            results.insert(
                host.clone(),
                ctx.settle(index, host, v1::HostOutcome::Failed, &why).await,
            );
            continue;
        };
        let hash = hashes
            .entry((policy_json.as_str(), facts.default_route_interface.clone()))
            .or_insert_with(|| super::super::expected_hash(policy, facts, rev))
            .clone();
        expected.insert(host.clone(), hash.clone());
        let d = v1::Desired {
            revision: rev,
            policy: Some(policy_wire.clone()),
            expected_hash: hash,
            confirm_timeout_ms,
            request_id: ctx.shared.asked.ask(host, rev),
            management: super::super::management_message(policy),
        };
        let d = match ctx.shared.lists.outgoing(host, d, policy) {
            Ok(d) => d,
            Err(e) => {
                let why = e.to_string();
                results.insert(
                    host.clone(),
                    ctx.settle(index, host, v1::HostOutcome::Failed, &why).await,
                );
                continue;
            }
        };
        if !ctx
            .send(host, v1::controller_message::Msg::Desired(d))
            .await
        {
            let r = ctx
                .settle(
                    index,
                    host,
                    v1::HostOutcome::Disconnected,
                    "session closed while sending",
                )
                .await;
            results.insert(host.clone(), r);
            continue;
        }
        phase.insert(host.clone(), Phase::Applying);
        sent_on.insert(
            host.clone(),
            ctx.shared.registry.get(host).map(|h| h.session),
        );
    }
    ctx.store_expected(&expected).await;
    let deadline = Instant::now()
        + if confirm.is_zero() {
            APPLY_TIMEOUT
        } else {
            confirm.mul_f64(0.8)
        };
    while !phase.is_empty() {
        let mut settled: Option<(String, v1::HostOutcome, String)> = None;
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(HostEvent::Applied { host, report }) if report.revision == rev
                    && phase.get(&host) == Some(&Phase::Applying) => {
                    let exp = expected.get(&host).cloned().unwrap_or_default();
                    if !report.ok {
                        settled = Some((host, v1::HostOutcome::Failed, report.error));
                    } else if !exp.is_empty() && report.hash != exp {
                        let _ = ctx.send(&host, v1::controller_message::Msg::Revert(v1::Revert {
                            revision: rev, reason: "hash mismatch".into() })).await;
                        settled = Some((host, v1::HostOutcome::HashMismatch,
                            format!("kernel hash {} != expected {exp}", report.hash)));
                    } else if confirm.is_zero() {
                        settled = Some((host, v1::HostOutcome::Applied, String::new()));
                    } else {
                        ctx.record(&host, "applied", "waiting for the reconnect").await;
                        phase.insert(host, Phase::AwaitReconnect);
                    }
                }
                Ok(HostEvent::Connected { host }) if !confirm.is_zero() && phase.contains_key(&host) => {
                    let exp = expected.get(&host).cloned().unwrap_or_default();
                    let attested = ctx.attested(&host).await;
                    let good = attested.as_ref().is_some_and(|(r, h)| *r == rev && (exp.is_empty() || *h == exp));
                    if good {
                        if ctx.send(&host, v1::controller_message::Msg::Confirm(v1::Confirm { revision: rev })).await {
                            settled = Some((host, v1::HostOutcome::Confirmed, String::new()));
                        }
                    } else if phase.get(&host) == Some(&Phase::AwaitReconnect) {
                        let (r, h) = attested.unwrap_or_default();
                        settled = Some((host, v1::HostOutcome::Reverted,
                            format!("came back on r{r} (kernel hash {h}), not r{rev}")));
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(rollout = ctx.plan.id, skipped = n,
                        "rollout lagged behind host events; re-checking its hosts from the store");
                    lagged = true;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            r = reverted.recv() => {
                if let Ok((host, rv)) = r && rv.revision == rev && phase.contains_key(&host) {
                    settled = Some((host, v1::HostOutcome::Reverted, rv.reason));
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                for (host, p) in std::mem::take(&mut phase) {
                    let (outcome, why) = match p {
                        Phase::Applying => (v1::HostOutcome::Failed, format!("no Applied for r{rev} in time")),
                        Phase::AwaitReconnect => (v1::HostOutcome::Unconfirmed, format!(
                            "did not come back through the new rules within {} ms",
                            confirm.mul_f64(0.8).as_millis())),
                    };
                    let _ = ctx.send(&host, v1::controller_message::Msg::Revert(v1::Revert {
                        revision: rev, reason: why.clone() })).await;
                    results.insert(host.clone(), ctx.settle(index, &host, outcome, &why).await);
                }
            }
        }
        if let Some((host, outcome, why)) = settled {
            phase.remove(&host);
            results.insert(host.clone(), ctx.settle(index, &host, outcome, &why).await);
        }
        if std::mem::take(&mut lagged) {
            for (host, outcome, why) in
                lag::recheck_wave(ctx, &mut phase, &expected, &sent_on, confirm).await
            {
                results.insert(host.clone(), ctx.settle(index, &host, outcome, &why).await);
            }
        }
        if events.is_empty() {
            ctx.flush().await;
        }
    }
    ctx.flush().await;
    (results, expected)
}

/// Send each host its previous revision and wait for it to be applied with the expected
/// hash. Returns (rolled back, could not be rolled back: `host: why`).
async fn roll_back(
    ctx: &Ctx<'_>,
    hosts: &[String],
    events: &mut broadcast::Receiver<HostEvent>,
) -> (Vec<String>, Vec<String>) {
    let mut pending: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut failed = Vec::new();
    for host in hosts {
        let prev = ctx.plan.previous.get(host).copied().unwrap_or(0);
        if prev == 0 {
            failed.push(format!("{host}: no previous revision to go back to"));
            continue;
        }
        ctx.set_desired(host, prev).await;
        let Some(handle) = ctx.shared.registry.get(host) else {
            failed.push(format!("{host}: offline (gets r{prev} when it connects)"));
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
                    failed.push(format!("{host}: session closed"));
                }
            }
            _ => failed.push(format!("{host}: no stored r{prev}")),
        }
    }
    let mut done = Vec::new();
    let deadline = Instant::now() + ROLLBACK_TIMEOUT;
    while !pending.is_empty() {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(HostEvent::Applied { host, report }) => {
                    if let Some((prev, exp)) = pending.get(&host).cloned() && report.revision == prev {
                        pending.remove(&host);
                        if report.ok && (exp.is_empty() || report.hash == exp) {
                            ctx.record(&host, "rolled_back", &format!("back on r{prev}")).await;
                            emit(ctx.tx, v1::apply_event::Event::Host(host_result(&host, v1::HostOutcome::RolledBack, 0, &format!("back on r{prev}")))).await;
                            done.push(host);
                        } else {
                            failed.push(format!("{host}: rollback to r{prev} failed: {}", report.error));
                        }
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(rollout = ctx.plan.id, skipped = n,
                        "rollback lagged behind host events; re-checking its hosts from the store");
                    for (host, prev) in lag::recheck_rollback(ctx, &mut pending).await {
                        let why = format!("back on r{prev}");
                        ctx.record(&host, "rolled_back", &why).await;
                        emit(ctx.tx, v1::apply_event::Event::Host(host_result(&host, v1::HostOutcome::RolledBack, 0, &why))).await;
                        done.push(host);
                    }
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    failed.extend(
        pending
            .keys()
            .map(|h| format!("{h}: no answer to the rollback in time")),
    );
    for f in &failed {
        let host = f.split(':').next().unwrap_or_default();
        ctx.record(host, "rollback_failed", f).await;
    }
    (done, failed)
}
