//! One wave: stage the revision on its hosts (one transaction, which also announces the
//! wave to the other controllers), send `Desired` to the sessions this controller holds
//! (the controllers holding the others send theirs), then drive every host's
//! [`Exchange`] from what is seen of it — this controller's session events, or the
//! reports of the controller holding its session — until each one settled or the
//! controller's give-up time passed.

use super::super::desired::Desireds;
use super::{APPLY_TIMEOUT, Ctx, Delivery, lag, remote};
use crate::server::registry::HostEvent;
use crate::store;
use portcullis_policy::Facts;
use portcullis_policy::protocol::exchange::{Action, Event, Exchange};
use portcullis_policy::protocol::outcome::HostOutcome;
use portcullis_policy::rollout::HostResult;
use portcullis_proto::v1;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::time::Instant;

/// Runs wave `index`; returns each host's result and the expected kernel hashes.
pub(super) async fn wave(
    ctx: &Ctx<'_>,
    index: usize,
    hosts: &[String],
    events: &mut broadcast::Receiver<HostEvent>,
    reverted: &mut broadcast::Receiver<(String, v1::Reverted)>,
) -> (BTreeMap<String, HostResult>, BTreeMap<String, String>) {
    let (rev, confirm) = (ctx.plan.revision, ctx.plan.confirm);
    // The controller's share of the confirm deadline (it gives up first).
    let window = if confirm.is_zero() {
        Duration::ZERO
    } else {
        confirm.mul_f64(0.8)
    };
    let mut results = BTreeMap::new();
    let mut local: Vec<(String, Facts)> = Vec::with_capacity(hosts.len());
    for host in hosts {
        // Only the facts: a held session handle would keep that session's stream open
        // after the agent closed it to reconnect through its new rules.
        if let Some(handle) = ctx.shared.registry.get(host) {
            local.push((host.clone(), handle.facts));
        }
    }
    let mut far = remote::elsewhere(ctx, hosts).await;
    for host in hosts {
        if !far.contains_key(host) && !local.iter().any(|(h, _)| h == host) {
            let why = "not connected when its wave started";
            let r = ctx.settle(index, host, HostOutcome::Offline, why).await;
            results.insert(host.clone(), r);
        }
    }
    if ctx.plan.abort.load(Ordering::SeqCst) {
        // Nothing of the wave staged yet: hosts elsewhere are not asked at all.
        for host in std::mem::take(&mut far).into_keys() {
            let why = "not sent: the rollout was aborted";
            let r = ctx.settle(index, &host, HostOutcome::Skipped, why).await;
            results.insert(host, r);
        }
    }
    // One transaction for the whole wave: desired revision, "sent", the stored targets,
    // and the announcement to the controllers holding the other sessions (every
    // controller follows every host of the wave: an agent may come back anywhere).
    let staged: Vec<String> = hosts
        .iter()
        .filter(|h| far.contains_key(*h) || local.iter().any(|(l, _)| l == *h))
        .cloned()
        .collect();
    let (id, me) = (ctx.plan.id, ctx.shared.controller_id.clone());
    let announce = staged.clone();
    let rows = match ctx
        .shared
        .store
        .call(move |c| {
            store::rollout::start_wave(c, id, rev, &announce, Some((&me, announce.as_slice())))
        })
        .await
    {
        Ok(rows) => rows,
        Err(e) => {
            tracing::error!(rollout = id, error = %e, "starting the wave failed");
            BTreeMap::new()
        }
    };
    let confirm_timeout_ms = u64::try_from(confirm.as_millis()).unwrap_or(u64::MAX);
    let mut desireds = Desireds::new(rev, confirm_timeout_ms);
    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    // The hosts sent the revision, with the hash each must report.
    let mut sent: Vec<(String, String)> = Vec::new();
    // The session each host got the revision on here (a newer one means it came back).
    let mut sent_on: BTreeMap<String, Option<u64>> = BTreeMap::new();
    // Hosts elsewhere: their controllers send; this one knows what they must report.
    for (host, facts) in &far {
        ctx.shared.rollouts.set_in_flight(host, true);
        let (_, hash) = match stored_expected(&rows, &mut desireds, host, facts, rev) {
            Ok(found) => found,
            Err(why) => {
                let r = ctx.settle(index, host, HostOutcome::Failed, &why).await;
                results.insert(host.clone(), r);
                continue;
            }
        };
        expected.insert(host.clone(), hash.clone());
        sent.push((host.clone(), hash));
    }
    for (host, facts) in &local {
        // Abort stops between hosts: the rest of the wave keeps its previous revision.
        if ctx.plan.abort.load(Ordering::SeqCst) {
            let why = "not sent: the rollout was aborted";
            let r = ctx.settle(index, host, HostOutcome::Skipped, why).await;
            results.insert(host.clone(), r);
            continue;
        }
        ctx.shared.rollouts.set_in_flight(host, true);
        let (policy_json, hash) = match stored_expected(&rows, &mut desireds, host, facts, rev) {
            Ok(found) => found,
            Err(why) => {
                let r = ctx.settle(index, host, HostOutcome::Failed, &why).await;
                results.insert(host.clone(), r);
                continue;
            }
        };
        expected.insert(host.clone(), hash.clone());
        let d = match desireds.message(ctx.shared, host, policy_json, hash.clone()) {
            Ok(d) => d,
            Err(why) => {
                let r = ctx.settle(index, host, HostOutcome::Failed, &why).await;
                results.insert(host.clone(), r);
                continue;
            }
        };
        if !ctx
            .send(host, v1::controller_message::Msg::Desired(d))
            .await
        {
            let why = "session closed while sending";
            let r = ctx
                .settle(index, host, HostOutcome::Disconnected, why)
                .await;
            results.insert(host.clone(), r);
            continue;
        }
        sent.push((host.clone(), hash));
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
            window
        };
    let give_up_at = deadline.into_std();
    let mut machines: BTreeMap<String, Exchange> = sent
        .into_iter()
        .map(|(host, hash)| (host, Exchange::sent(rev, hash, window, give_up_at)))
        .collect();
    let mut follower = remote::Follower::new();
    let mut poll = tokio::time::interval(remote::POLL);
    while !machines.is_empty() {
        let wake = tokio::select! {
            ev = events.recv() => Wake::Event(ev),
            r = reverted.recv() => Wake::Reverted(r.ok()),
            _ = poll.tick(), if ctx.shared_store() => Wake::Poll,
            () = tokio::time::sleep_until(deadline) => Wake::Deadline,
        };
        let mut lagged = false;
        let seen: Vec<(String, Event)> = match wake {
            Wake::Event(Ok(ev)) => seen_here(ctx, &machines, ev).await.into_iter().collect(),
            Wake::Event(Err(broadcast::error::RecvError::Lagged(n))) => {
                tracing::warn!(
                    rollout = ctx.plan.id,
                    skipped = n,
                    "rollout lagged behind host events; re-checking its hosts from the store"
                );
                lagged = true;
                Vec::new()
            }
            Wake::Event(Err(broadcast::error::RecvError::Closed)) => break,
            Wake::Reverted(Some((host, rv))) => vec![(
                host,
                Event::Reverted {
                    revision: rv.revision,
                    reason: rv.reason,
                },
            )],
            Wake::Reverted(None) => Vec::new(),
            Wake::Poll => follower
                .poll(ctx, machines.keys())
                .await
                .iter()
                .map(|r| (r.host.clone(), remote::event(r)))
                .collect(),
            Wake::Deadline => machines.keys().map(|h| (h.clone(), Event::Tick)).collect(),
        };
        for (host, event) in seen {
            step(ctx, index, &mut machines, &mut results, &host, event).await;
        }
        if lagged {
            for (host, event) in lag::recheck_wave(ctx, &machines, &expected, &sent_on).await {
                step(ctx, index, &mut machines, &mut results, &host, event).await;
            }
        }
        if events.is_empty() {
            ctx.flush().await;
        }
    }
    ctx.flush().await;
    (results, expected)
}

/// What woke the wave's wait.
enum Wake {
    /// A session event of this controller.
    Event(Result<HostEvent, broadcast::error::RecvError>),
    /// An agent reverted a revision by itself (`None`: the channel lagged).
    Reverted(Option<(String, v1::Reverted)>),
    /// Time to read the other controllers' reports.
    Poll,
    /// The controller's give-up time.
    Deadline,
}

/// A session event of this controller as an event of a waiting host's exchange: its
/// `Applied`, or — under commit-confirmed — its new session (what its `Hello` attests).
async fn seen_here(
    ctx: &Ctx<'_>,
    machines: &BTreeMap<String, Exchange>,
    ev: HostEvent,
) -> Option<(String, Event)> {
    match ev {
        HostEvent::Applied { host, report } if machines.contains_key(&host) => {
            let event = Event::Applied {
                revision: report.revision,
                ok: report.ok,
                hash: report.hash,
                error: report.error,
            };
            Some((host, event))
        }
        HostEvent::Connected { host }
            if !ctx.plan.confirm.is_zero() && machines.contains_key(&host) =>
        {
            let (revision, hash) = ctx.attested(&host).await.unwrap_or_default();
            Some((host, Event::Back { revision, hash }))
        }
        _ => None,
    }
}

/// The stored policy of `host` for revision `rev` (from `rows`, as `start_wave` returned
/// them) and its expected hash with `facts`, or why the host fails the wave.
fn stored_expected<'r>(
    rows: &'r BTreeMap<String, (String, String)>,
    desireds: &mut Desireds<'r>,
    host: &str,
    facts: &Facts,
    rev: u64,
) -> Result<(&'r str, String), String> {
    let (policy_json, _) = rows
        .get(host)
        .ok_or_else(|| format!("no desired r{rev} stored for this host"))?;
    let hash = desireds
        .expected(policy_json, facts)
        .ok_or_else(|| "stored policy unreadable".to_owned())?;
    Ok((policy_json, hash))
}

/// Feed `event` to `host`'s exchange (at the time it is handled) and carry out what it
/// says.
async fn step(
    ctx: &Ctx<'_>,
    index: usize,
    machines: &mut BTreeMap<String, Exchange>,
    results: &mut BTreeMap<String, HostResult>,
    host: &str,
    event: Event,
) {
    let rev = ctx.plan.revision;
    let mut queue = VecDeque::from([event]);
    while let Some(event) = queue.pop_front() {
        let now = Instant::now().into_std();
        let Some(actions) = machines.get_mut(host).map(|m| m.handle(event, now)) else {
            return;
        };
        for action in actions {
            match action {
                Action::Confirm => {
                    let msg = v1::controller_message::Msg::Confirm(v1::Confirm { revision: rev });
                    // Relayed: settled when its controller reports Confirm handed over.
                    if ctx.deliver(host, msg).await == Delivery::Sent {
                        queue.push_back(Event::ConfirmSent);
                    }
                }
                Action::Revert(reason) => {
                    let msg = v1::controller_message::Msg::Revert(v1::Revert {
                        revision: rev,
                        reason,
                    });
                    let _ = ctx.deliver(host, msg).await;
                }
                Action::Record(state, detail) => ctx.record(host, state, detail).await,
                Action::Settle(outcome, why) => {
                    machines.remove(host);
                    let r = ctx.settle(index, host, outcome, &why).await;
                    results.insert(host.to_string(), r);
                    return;
                }
            }
        }
    }
}
