//! Rollouts on the controller: waves (`--serial`, `--max-fail`), commit-confirmed hosts
//! (`--confirm-timeout`), halt + automatic rollback, abort, history, and the anti-lockout
//! check that runs before anything is sent.
//!
//! - [`Rollouts`]: the in-memory view (the one running rollout, hosts in flight, the
//!   addresses agents reach the controller at, `Reverted` reports) kept in [`Shared`].
//! - [`lockout`]: the anti-lockout check over the compiled rulesets.
//! - [`engine`]: drives a [`portcullis_policy::rollout::Rollout`] wave by wave, each
//!   host's steps being a [`portcullis_policy::protocol::exchange::Exchange`] (pure), on
//!   whichever controller its session is.
//! - [`relay`]: what this controller does for a rollout another controller runs (a shared
//!   store): sends its waves to the sessions held here, reports what it sees of them.
//! - [`settings`]: what an `Apply` asks of a rollout (waves, max-fail, gates).
//! - [`start`]: `Apply` with waves/confirmation and `Rollback` store the rollout and spawn
//!   the engine; the operator's stream only follows it (a client going away does not stop
//!   a rollout; `rollout abort` does). A plain apply never goes through it
//!   ([`crate::server::apply`]).
//!
//! The durable record is in the store (`store::rollout`); a rollout left `running` by a
//! stopped controller is marked `interrupted` at the next start ([`recover`]).

mod desired;
pub mod engine;
pub mod gates;
pub mod lockout;
pub mod relay;
pub mod settings;
pub mod start;

use super::Shared;
use crate::store::{self, Store};
use portcullis_proto::v1;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::broadcast;

/// The running rollout, as the session and admin services need to see it.
#[derive(Debug)]
struct Active {
    id: u64,
    abort: Arc<AtomicBool>,
    /// Hosts sent the revision and not settled yet: a reconnect must not push anything.
    in_flight: BTreeSet<String>,
}

#[derive(Debug)]
pub struct Rollouts {
    active: Mutex<Option<Active>>,
    /// Local addresses agents connected to (the controller's address as agents see it).
    controller_addrs: Mutex<BTreeSet<SocketAddr>>,
    reverted: broadcast::Sender<(String, v1::Reverted)>,
}

impl Default for Rollouts {
    fn default() -> Self {
        Self {
            active: Mutex::new(None),
            controller_addrs: Mutex::new(BTreeSet::new()),
            reverted: broadcast::channel(1024).0,
        }
    }
}

impl Rollouts {
    fn active(&self) -> std::sync::MutexGuard<'_, Option<Active>> {
        // Single-operation critical sections: a poisoned lock still holds a valid value.
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `host` is mid-rollout (sent, not settled): its session must not be sent
    /// its desired revision on reconnect, the rollout decides.
    pub fn holds(&self, host: &str) -> bool {
        self.active()
            .as_ref()
            .is_some_and(|a| a.in_flight.contains(host))
    }

    /// The id of the running rollout, if any.
    pub fn running(&self) -> Option<u64> {
        self.active().as_ref().map(|a| a.id)
    }

    /// Claim the single rollout slot; `Err(id)` when another one runs.
    fn begin(&self, id: u64) -> Result<Arc<AtomicBool>, u64> {
        let mut a = self.active();
        if let Some(cur) = a.as_ref() {
            return Err(cur.id);
        }
        let abort = Arc::new(AtomicBool::new(false));
        *a = Some(Active {
            id,
            abort: abort.clone(),
            in_flight: BTreeSet::new(),
        });
        Ok(abort)
    }

    fn end(&self, id: u64) {
        let mut a = self.active();
        if a.as_ref().is_some_and(|x| x.id == id) {
            *a = None;
        }
    }

    fn set_in_flight(&self, host: &str, on: bool) {
        if let Some(a) = self.active().as_mut() {
            if on {
                a.in_flight.insert(host.to_string());
            } else {
                a.in_flight.remove(host);
            }
        }
    }

    /// Ask the running rollout (`id` 0 = whichever) to stop before its next wave.
    pub fn abort(&self, id: u64) -> Option<u64> {
        let a = self.active();
        let cur = a.as_ref()?;
        if id != 0 && id != cur.id {
            return None;
        }
        cur.abort.store(true, Ordering::SeqCst);
        Some(cur.id)
    }

    /// An agent session reached the controller at `local`.
    pub fn seen_local_addr(&self, local: Option<SocketAddr>) {
        // A dual-stack listener sees IPv4 agents as `::ffff:a.b.c.d`: compare as IPv4.
        if let Some(a) = local.map(|a| SocketAddr::new(a.ip().to_canonical(), a.port())) {
            self.controller_addrs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(a);
        }
    }

    pub fn controller_addrs(&self) -> Vec<SocketAddr> {
        self.controller_addrs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect()
    }

    pub fn subscribe_reverted(&self) -> broadcast::Receiver<(String, v1::Reverted)> {
        self.reverted.subscribe()
    }
}

/// An agent reverted an unconfirmed revision by itself: the rollout waiting on it (if
/// any) counts it as failed; the host's desired revision goes back to what it restored,
/// so a reconnect does not push the refused revision again.
///
/// Only a `Reverted` that answers a question put to this host is taken: a rollout sent
/// it `revision` under commit-confirmed, with `restored_revision` as its previous one
/// (durable, so it holds across a controller restart). Anything else is ignored and
/// counted: a host must not move its own desired revision where no rollout put it.
pub async fn on_reverted(shared: &Shared, host: &str, r: v1::Reverted) -> anyhow::Result<()> {
    let (h, rev, restored) = (host.to_string(), r.revision, r.restored_revision);
    let asked = shared
        .store
        .call(move |c| store::rollout::was_sent_for_confirm(c, &h, rev, restored))
        .await?;
    if !asked {
        shared
            .unmatched
            .count(super::answers::Kind::Reverted, host, r.revision);
        return Ok(());
    }
    tracing::warn!(%host, revision = r.revision, restored = r.restored_revision, reason = %r.reason,
        "agent reverted an unconfirmed revision");
    let (h, rev, restored) = (host.to_string(), r.revision, r.restored_revision);
    let reason = format!("reverted by its agent: {}", r.reason);
    shared
        .store
        .call(move |c| {
            if store::rollout::desired_revision(c, &h)? == rev {
                store::rollout::set_desired(c, &h, restored)?;
            }
            store::rollout::reverted_after_interrupt(c, &h, rev, &reason)?;
            store::audit(
                c,
                &format!("agent:{h}"),
                "reverted",
                &format!("r{rev} -> r{restored}"),
            )
        })
        .await?;
    let _ = shared.rollouts.reverted.send((host.to_string(), r));
    Ok(())
}

/// At start: mark rollouts a stopped controller left running as `interrupted`. With
/// SQLite every one (this is the only controller); with a shared store only those whose
/// lease expired ([`sweep`] takes the rest when their controller is gone).
pub async fn recover(store: &Store) -> anyhow::Result<()> {
    let before = match store.dialect() {
        store::Dialect::Sqlite => i64::MAX,
        store::Dialect::Postgres => store::now_ms(),
    };
    interrupt(store, before).await
}

/// Shared store: every few seconds, interrupt rollouts whose controller stopped renewing
/// their lease (it died mid-rollout): unconfirmed hosts get their previous revision back
/// in the store, and their agents revert by themselves (commit-confirmed).
pub async fn sweep(store: Store) {
    if store.dialect() == store::Dialect::Sqlite {
        return;
    }
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(
        u64::try_from(store::rollout::LEASE_MS / 3).unwrap_or(5_000),
    ));
    loop {
        tick.tick().await;
        if let Err(e) = interrupt(&store, store::now_ms()).await {
            tracing::warn!(error = %format!("{e:#}"), "checking rollout leases failed");
        }
    }
}

async fn interrupt(store: &Store, before: i64) -> anyhow::Result<()> {
    let ids = store
        .call(move |db| store::rollout::interrupt_running(db, before))
        .await?;
    for id in ids {
        tracing::warn!(
            rollout = id,
            "rollout was interrupted by a controller stop; \
            unconfirmed hosts keep (or revert to) their previous revision"
        );
    }
    Ok(())
}

/// `Rollouts` RPC: history of rollouts with per-host results.
pub async fn list(
    shared: &Shared,
    req: v1::RolloutsRequest,
) -> anyhow::Result<v1::RolloutsResponse> {
    let rows = shared
        .store
        .call(move |c| store::rollout::list_rollouts(c, req.limit, req.id))
        .await?;
    Ok(v1::RolloutsResponse {
        rollouts: rows
            .into_iter()
            .map(|r| v1::RolloutInfo {
                id: r.id,
                revision: r.revision,
                kind: r.kind,
                author: r.author,
                started_unix_ms: r.started_ms,
                finished_unix_ms: r.finished_ms,
                status: r.status.as_str().to_owned(),
                reason: r.reason,
                serial: r.serial,
                max_fail: r.max_fail,
                confirm_timeout_ms: r.confirm_timeout_ms,
                max_denial_increase: r.gates.max_denial_increase,
                denial_window_ms: r.gates.denial_window_ms,
                denial_baseline_ms: r.gates.denial_baseline_ms,
                hosts: r
                    .hosts
                    .into_iter()
                    .map(|h| v1::RolloutHost {
                        host: h.host,
                        wave: h.wave,
                        previous_revision: h.previous_revision,
                        state: h.state.as_str().to_owned(),
                        detail: h.detail,
                    })
                    .collect(),
            })
            .collect(),
    })
}
