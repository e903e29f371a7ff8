//! The wave engine: executes the steps of a [`Rollout`] against the fleet's agents,
//! whichever controller holds their sessions.
//!
//! A wave makes the revision the desired one of its hosts and sends `Desired` (with the
//! confirm deadline). A host counts as confirmed when it applied with the expected hash
//! and — with a deadline — came back on a *new* session whose `Hello` attests the new
//! revision and hash (its stream was re-established through the new rules); only then is
//! `Confirm` sent. The controller gives up at 80% of the deadline, so it has put the
//! previous revision back as desired before the agent reverts by itself. A failed host
//! gets its previous desired revision back at once. On halt, confirmed hosts are sent
//! their previous revision and must report it applied.
//!
//! Each host's steps are the pure [`Exchange`](portcullis_policy::protocol::exchange::Exchange),
//! driven by [`wave`]; the engine only turns I/O into its events and its actions into I/O.
//! Hosts whose sessions
//! another controller holds (a shared store) are driven through it: the wave, `Confirm`,
//! `Revert` and the rollback are announced through the database and carried out by that
//! controller ([`super::relay`]), which stores what it saw of the host; [`remote`] reads
//! those reports back as the same events a session of this controller would give.

use super::super::Shared;
use crate::store::{self, relay};
use portcullis_policy::protocol::outcome::{HostOutcome, HostState};
use portcullis_policy::rollout::{HostResult, MaxFail, Rollout, Step};
use portcullis_proto::v1;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
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
mod remote;
mod rollback;
mod wave;

struct Ctx<'a> {
    shared: &'a Arc<Shared>,
    plan: &'a Plan,
    tx: &'a Tx,
    /// Host states not written yet: flushed in one transaction per burst of events.
    pending: std::sync::Mutex<Vec<(String, HostState, String)>>,
    /// Steps for hosts whose sessions other controllers hold, announced after the host
    /// states are written ([`Ctx::flush`]).
    outbox: std::sync::Mutex<BTreeMap<relay::Step, BTreeSet<String>>>,
}

/// How a message for a host went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// Into the session this controller holds.
    Sent,
    /// Its session here closed meanwhile.
    Closed,
    /// Announced to the controller holding the session (shared store).
    Relayed,
    /// Nowhere to send it (not connected here, and no other controller to ask).
    Nowhere,
}

async fn emit(tx: &Tx, event: v1::apply_event::Event) {
    // The operator may have gone away; the rollout goes on.
    let _ = tx.send(Ok(v1::ApplyEvent { event: Some(event) })).await;
}

fn host_result(host: &str, outcome: HostOutcome, wave: usize, error: &str) -> v1::HostResult {
    v1::HostResult {
        host: host.to_string(),
        outcome: v1::HostOutcome::from(outcome) as i32,
        error: error.to_string(),
        wave: u32::try_from(wave).unwrap_or(u32::MAX),
        ..Default::default()
    }
}

impl Ctx<'_> {
    /// Queue a host state; [`Ctx::flush`] writes the queue in one transaction.
    async fn record(&self, host: &str, state: HostState, detail: &str) {
        let full = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.push((host.to_string(), state, detail.to_string()));
            p.len() >= 512
        };
        if full {
            self.flush().await;
        }
    }

    /// Write the queued host states, then announce the queued steps (a `Revert` relayed
    /// carries the state's detail as its reason).
    async fn flush(&self) {
        self.flush_states().await;
        self.flush_outbox().await;
    }

    async fn flush_states(&self) {
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

    /// Whether other controllers may hold sessions (a shared store).
    fn shared_store(&self) -> bool {
        self.shared.store.dialect() == store::Dialect::Postgres
    }

    /// Into the host's session here, if it has one.
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

    /// Queue `step` for `host`, announced at the next [`Ctx::flush`].
    fn queue(&self, step: relay::Step, host: &str) {
        if self.shared_store() {
            self.outbox
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(step)
                .or_default()
                .insert(host.to_string());
        }
    }

    /// `Confirm` or `Revert` for the host: into its session here, else through the
    /// controller that holds it.
    async fn deliver(&self, host: &str, msg: v1::controller_message::Msg) -> Delivery {
        if self.shared.registry.is_connected(host) {
            return if self.send(host, msg).await {
                Delivery::Sent
            } else {
                Delivery::Closed
            };
        }
        if !self.shared_store() {
            return Delivery::Nowhere;
        }
        let step = match msg {
            v1::controller_message::Msg::Confirm(_) => relay::Step::Confirm,
            _ => relay::Step::Revert,
        };
        self.queue(step, host);
        Delivery::Relayed
    }

    async fn flush_outbox(&self) {
        let outbox = std::mem::take(&mut *self.outbox.lock().unwrap_or_else(|e| e.into_inner()));
        if outbox.is_empty() {
            return;
        }
        let (id, rev, me) = (
            self.plan.id,
            self.plan.revision,
            self.shared.controller_id.clone(),
        );
        if let Err(e) = self
            .shared
            .store
            .call(move |c| {
                let tx = c.transaction()?;
                for (step, hosts) in &outbox {
                    let hosts: Vec<String> = hosts.iter().cloned().collect();
                    relay::publish_rollout(&tx, &me, id, *step, rev, &hosts)?;
                }
                tx.commit()
            })
            .await
        {
            // The other controller then never acts: its hosts time out and revert.
            tracing::error!(rollout = id, error = %format!("{e:#}"), "announcing rollout steps failed");
        }
    }

    /// A host of the wave settled: store, report, release it.
    async fn settle(
        &self,
        wave: usize,
        host: &str,
        outcome: HostOutcome,
        detail: &str,
    ) -> HostResult {
        let ok = outcome.is_ok();
        if !ok {
            // Never push the refused revision again on reconnect.
            self.set_desired(host, self.plan.previous.get(host).copied().unwrap_or(0))
                .await;
        }
        self.record(host, outcome.into(), detail).await;
        self.shared.rollouts.set_in_flight(host, false);
        // Other controllers stop following it (those that held it on to this point).
        self.queue(relay::Step::Release, host);
        tracing::info!(rollout = self.plan.id, %host, outcome = outcome.as_str(), %detail, "rollout host settled");
        emit(
            self.tx,
            v1::apply_event::Event::Host(host_result(host, outcome, wave, detail)),
        )
        .await;
        if ok {
            HostResult::Confirmed
        } else if outcome == HostOutcome::Skipped {
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
        outbox: std::sync::Mutex::new(BTreeMap::new()),
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
                    wave::wave(&ctx, index, &hosts, &mut events, &mut reverted).await;
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
                        ctx.record(h, HostState::GateFailed, why).await;
                        tracing::warn!(rollout = plan.id, host = %h, %why, "health gate failed");
                        emit(
                            &tx,
                            v1::apply_event::Event::Host(host_result(
                                h,
                                HostOutcome::GateFailed,
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
                let (done, failed) = rollback::roll_back(&ctx, &rollback, &mut events).await;
                let st = sm.rolled_back(failed.is_empty());
                break (
                    st,
                    reason,
                    done,
                    failed.iter().map(ToString::to_string).collect(),
                );
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
    let (id, r) = (plan.id, reason.clone());
    let me = shared.controller_id.clone();
    if let Err(e) = shared
        .store
        .call(move |c| store::rollout::finish_rollout(c, id, status, &r, &me))
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
