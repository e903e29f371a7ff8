//! Starting a rollout from `Apply` (validated, compiled and past the anti-lockout check,
//! see [`crate::server::apply`]) when waves or confirmation are asked for, or for a
//! rollback: store the revision *without* making it anyone's desired revision yet (each
//! wave does that), record the rollout, claim the single rollout slot and spawn the
//! engine. Plain applies never come here. Also `Rollback` (the request it becomes) and
//! `RolloutAbort`.

use super::engine::{self, Plan};
use super::settings::Settings;
use crate::server::Shared;
use crate::store::{self, RevisionHost};
use portcullis_proto::v1;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::Status;

pub type EventStream = Pin<Box<dyn Stream<Item = Result<v1::ApplyEvent, Status>> + Send>>;

/// Start the rollout of `rows` (the revision's hosts, policies and expected hashes,
/// compiled for `compiled_for`: the caller holds `Shared::apply_lock`, so it is the
/// revision stored). `kind` is "apply" or "rollback" (stored and audited).
pub async fn start(
    shared: &Arc<Shared>,
    author: &str,
    kind: &str,
    req: &v1::ApplyRequest,
    settings: Settings,
    rows: &[RevisionHost],
    compiled_for: u64,
) -> Result<EventStream, Status> {
    let Settings {
        serial,
        max_fail,
        gates,
    } = settings;
    let hosts: Vec<String> = rows.iter().map(|r| r.host.clone()).collect();
    let waves = serial.waves(&hosts);
    let (rev, id, previous) = {
        let (author, req, rows, waves, kind) = (
            author.to_string(),
            req.clone(),
            rows.to_vec(),
            waves.clone(),
            kind.to_string(),
        );
        let (serial_s, max_fail_s) = (serial.to_string(), max_fail.to_string());
        let gates_s = gates.describe();
        let me = shared.controller_id.clone();
        shared
            .store
            .call(move |c| {
                let tx = c.transaction()?;
                let mut previous = BTreeMap::new();
                for r in &rows {
                    previous.insert(r.host.clone(), store::rollout::desired_revision(&tx, &r.host)?);
                }
                let rev = store::insert_revision(
                    &tx,
                    &crate::server::new_revision(&author, &req, &rows),
                )?;
                anyhow::ensure!(
                    rev == compiled_for,
                    "revision {rev} stored, but its hashes were compiled for {compiled_for}"
                );
                // Staged: each wave makes it the desired revision of its hosts.
                for (h, p) in &previous {
                    store::rollout::set_desired(&tx, h, *p)?;
                }
                let id = store::rollout::insert_rollout(
                    &tx,
                    &store::rollout::NewRollout {
                        revision: rev,
                        kind: &kind,
                        author: &author,
                        serial: &serial_s,
                        max_fail: &max_fail_s,
                        confirm_timeout_ms: req.confirm_timeout_ms,
                        gates: store::rollout::Gates {
                            max_denial_increase: req.max_denial_increase,
                            denial_window_ms: req.denial_window_ms,
                            denial_baseline_ms: req.denial_baseline_ms,
                        },
                        waves: &waves,
                        previous: &previous,
                        controller: &me,
                    },
                )?;
                store::audit(
                    &tx,
                    &author,
                    &kind,
                    &format!(
                        "rollout {id}: revision {rev} to {} host(s) in {} wave(s), serial {serial_s}, \
                         max-fail {max_fail_s}, confirm {} ms, gates: {gates_s}",
                        rows.len(),
                        waves.len(),
                        req.confirm_timeout_ms
                    ),
                )?;
                tx.commit()?;
                Ok((rev, id, previous))
            })
            .await
            .map_err(|e| match e.downcast_ref::<store::rollout::Busy>() {
                Some(busy) => Status::failed_precondition(busy.to_string()),
                None => crate::server::wire::internal(e),
            })?
    };
    let abort = shared.rollouts.begin(id).map_err(|other| {
        Status::failed_precondition(format!("rollout {other} started meanwhile; retry"))
    })?;
    tracing::info!(rollout = id, revision = rev, %author, waves = waves.len(), "rollout started");
    let (tx, rx) = mpsc::channel(256);
    let elsewhere = connected_elsewhere(shared).await;
    let accepted = v1::ApplyEvent {
        event: Some(v1::apply_event::Event::Accepted(v1::ApplyAccepted {
            revision: rev,
            hosts: hosts.clone(),
            offline: hosts
                .iter()
                .filter(|h| !shared.registry.is_connected(h) && !elsewhere.contains(*h))
                .cloned()
                .collect(),
            rollout_id: id,
            waves: waves
                .iter()
                .enumerate()
                .map(|(i, w)| v1::Wave {
                    index: u32::try_from(i).unwrap_or(u32::MAX),
                    hosts: w.clone(),
                })
                .collect(),
        })),
    };
    let _ = tx.send(Ok(accepted)).await;
    let plan = Plan {
        id,
        revision: rev,
        waves,
        max_fail,
        confirm: Duration::from_millis(req.confirm_timeout_ms),
        previous,
        abort,
        gates,
    };
    tokio::spawn(engine::run(shared.clone(), plan, tx));
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// Hosts whose sessions other controllers hold (shared store; the rollout drives them
/// through those controllers).
async fn connected_elsewhere(shared: &Shared) -> std::collections::BTreeSet<String> {
    if shared.store.dialect() != store::Dialect::Postgres {
        return Default::default();
    }
    let now = store::now_ms();
    match shared.store.call(store::list_hosts).await {
        Ok(hosts) => hosts
            .into_iter()
            .filter(|h| shared.elsewhere(h, now))
            .map(|h| h.name)
            .collect(),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "reading where hosts are connected failed");
            Default::default()
        }
    }
}

/// `Rollback`: the stored site and inventory of the target revision (default: the one
/// before the latest), limited to `pattern`, as a new `Apply` that always runs as a
/// rollout (applied with [`crate::server::apply::Kind::Rollback`]): a new revision with
/// the old policies.
pub async fn rollback_request(
    shared: &Shared,
    mut rb: v1::RollbackRequest,
) -> Result<v1::ApplyRequest, Status> {
    // No waves, confirmation or gates asked for: those of the latest rollout.
    if rb.serial.is_empty()
        && rb.max_fail.is_empty()
        && rb.confirm_timeout_ms == 0
        && rb.max_denial_increase == 0.0
        && let Some((serial, max_fail, confirm_ms, gates)) = shared
            .store
            .call(store::rollout::latest_settings)
            .await
            .map_err(crate::server::wire::internal)?
    {
        rb.serial = serial;
        rb.max_fail = max_fail;
        rb.confirm_timeout_ms = confirm_ms;
        rb.max_denial_increase = gates.max_denial_increase;
        rb.denial_window_ms = gates.denial_window_ms;
        rb.denial_baseline_ms = gates.denial_baseline_ms;
    }
    let latest = shared
        .store
        .call(store::latest_revision)
        .await
        .map_err(crate::server::wire::internal)?;
    let to = if rb.to_revision == 0 {
        latest.saturating_sub(1)
    } else {
        rb.to_revision
    };
    if to == 0 {
        return Err(Status::failed_precondition(
            "there is no earlier revision to roll back to",
        ));
    }
    let Some((site_name, site_yaml, inventory_name, inventory_yaml)) = shared
        .store
        .call(move |c| store::rollout::revision_sources(c, to))
        .await
        .map_err(crate::server::wire::internal)?
    else {
        return Err(Status::not_found(format!("revision {to} does not exist")));
    };
    let lists = shared
        .store
        .call(move |c| store::rollout::revision_lists(c, to))
        .await
        .map_err(crate::server::wire::internal)?
        .into_iter()
        .map(|(name, content)| v1::ListFile { name, content })
        .collect();
    Ok(v1::ApplyRequest {
        site_name: format!("{site_name} (rollback to r{to})"),
        site_yaml,
        inventory_name,
        inventory_yaml,
        limit: rb.pattern,
        serial: rb.serial,
        max_fail: rb.max_fail,
        confirm_timeout_ms: rb.confirm_timeout_ms,
        max_denial_increase: rb.max_denial_increase,
        denial_window_ms: rb.denial_window_ms,
        denial_baseline_ms: rb.denial_baseline_ms,
        keep: rb.keep,
        force_lockout_risk: rb.force_lockout_risk,
        lists,
        ..Default::default()
    })
}

/// `RolloutAbort`: flag the running rollout; it stops before its next wave. A rollout
/// another controller runs (shared store) is asked to stop through the database.
pub async fn abort(
    shared: &Shared,
    author: &str,
    id: u64,
) -> Result<v1::RolloutAbortResponse, Status> {
    let id = match shared.rollouts.abort(id) {
        Some(id) => id,
        None => abort_elsewhere(shared, id).await?.ok_or_else(|| {
            Status::failed_precondition(if id == 0 {
                "no rollout is running".to_string()
            } else {
                format!("rollout {id} is not running")
            })
        })?,
    };
    let (a, detail) = (author.to_string(), format!("rollout {id}"));
    shared
        .store
        .call(move |c| store::audit(c, &a, "rollout abort", &detail))
        .await
        .map_err(crate::server::wire::internal)?;
    tracing::warn!(rollout = id, %author, "rollout abort requested");
    Ok(v1::RolloutAbortResponse { rollout_id: id })
}

/// Ask the controller running rollout `id` (0: whichever runs) to abort it: the id, or
/// `None` when no other controller runs it with a live lease.
async fn abort_elsewhere(shared: &Shared, id: u64) -> Result<Option<u64>, Status> {
    if shared.store.dialect() != store::Dialect::Postgres {
        return Ok(None);
    }
    let me = shared.controller_id.clone();
    shared
        .store
        .call(move |c| {
            let Some((running, _)) = store::relay::running_elsewhere(c, &me, store::now_ms())?
            else {
                return Ok(None);
            };
            if id != 0 && id != running {
                return Ok(None);
            }
            store::relay::publish_rollout(c, &me, running, store::relay::Step::Abort, 0, &[])?;
            Ok(Some(running))
        })
        .await
        .map_err(crate::server::wire::internal)
}
