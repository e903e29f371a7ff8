//! The follow step of a plain apply: the `Accepted` event, then each targeted host's
//! result for the revision until all answered or the operator left. Results come from
//! the sessions held here (the registry's host events) and, for hosts whose sessions
//! other controllers hold (a shared store), from the store every [`REMOTE_POLL`].

use super::super::Shared;
use super::super::registry::HostEvent;
use super::super::rollout::start::EventStream;
use super::push::Pushed;
use crate::store;
use portcullis_proto::v1;
use std::collections::{BTreeMap, BTreeSet};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

/// Watching the hosts' results, from before the revision is pushed so no report is
/// missed.
pub(super) struct Watch {
    events: broadcast::Receiver<HostEvent>,
    /// Hosts whose sessions another controller holds (shared store): it pushes to them
    /// when the revision is published; their results are read from the store.
    pub(super) remote: BTreeSet<String>,
}

impl Watch {
    pub(super) async fn begin(shared: &Shared) -> Result<Self, Status> {
        let events = shared.registry.subscribe();
        let hosts = shared
            .store
            .call(store::list_hosts)
            .await
            .map_err(super::internal)?;
        Ok(Self {
            events,
            remote: super::remote_hosts(shared, hosts),
        })
    }
}

/// The operator's stream for `revision`, sent to `expected` (host -> expected hash; ""
/// when compiled by the agent).
pub(super) async fn follow(
    shared: &Shared,
    revision: u64,
    mut expected: BTreeMap<String, String>,
    pushed: Pushed,
    watch: Watch,
) -> EventStream {
    let (tx, rx) = mpsc::channel(64);
    let accepted = v1::ApplyEvent {
        event: Some(v1::apply_event::Event::Accepted(v1::ApplyAccepted {
            revision,
            hosts: expected.keys().cloned().collect(),
            offline: pushed.offline,
            ..Default::default()
        })),
    };
    let _ = tx.send(Ok(accepted)).await;
    // Not sent (an agent too old for the policy): failed now, nothing to wait for.
    for (host, error) in pushed.unsupported {
        expected.remove(&host);
        let r = v1::HostResult {
            host: host.clone(),
            outcome: v1::HostOutcome::Failed as i32,
            error: error.clone(),
            ..Default::default()
        };
        let _ = tx
            .send(Ok(v1::ApplyEvent {
                event: Some(v1::apply_event::Event::Host(r)),
            }))
            .await;
        let _ = shared
            .store
            .call(move |c| store::host_reported(c, &host, 0, "", Some(&error)))
            .await;
    }
    let remote = Remote {
        store: shared.store.clone(),
        hosts: watch
            .remote
            .into_iter()
            .filter(|h| expected.contains_key(h) && !shared.registry.is_connected(h))
            .collect(),
        since_ms: pushed.at_ms,
    };
    tokio::spawn(follow_rollout(revision, expected, watch.events, remote, tx));
    Box::pin(ReceiverStream::new(rx))
}

fn result_of(host: &str, expected: &str, report: &v1::Applied) -> v1::HostResult {
    let outcome = if !report.ok {
        v1::HostOutcome::Failed
    } else if !expected.is_empty() && report.hash != expected {
        v1::HostOutcome::HashMismatch
    } else {
        v1::HostOutcome::Applied
    };
    v1::HostResult {
        host: host.to_string(),
        outcome: outcome as i32,
        hash: report.hash.clone(),
        expected_hash: expected.to_string(),
        error: report.error.clone(),
        duration_us: report.duration_us,
        changes: report.changes.clone(),
        ..Default::default()
    }
}

/// Targeted hosts whose sessions other controllers hold: their reports are read from the
/// store every [`REMOTE_POLL`].
struct Remote {
    store: store::Store,
    hosts: BTreeSet<String>,
    /// When the revision was pushed: a remote host's error reported after it is this
    /// apply's.
    since_ms: i64,
}

const REMOTE_POLL: std::time::Duration = std::time::Duration::from_millis(250);

impl Remote {
    /// Reports stored for `revision` by remote hosts still pending (as `Applied`s).
    async fn reports(
        &self,
        revision: u64,
        pending: &BTreeSet<String>,
    ) -> Vec<(String, v1::Applied)> {
        let hosts: BTreeSet<String> = self.hosts.intersection(pending).cloned().collect();
        if hosts.is_empty() {
            return Vec::new();
        }
        let names: Vec<String> = hosts.into_iter().collect();
        let rows = self
            .store
            .call(move |c| store::host_states(c, &names))
            .await;
        let Ok(rows) = rows else {
            return Vec::new();
        };
        rows.into_iter()
            .filter_map(|h| {
                let report = if h.applied_revision == revision && !h.reported_hash.is_empty() {
                    v1::Applied {
                        revision,
                        ok: true,
                        hash: h.reported_hash.clone(),
                        ..Default::default()
                    }
                } else if !h.last_error.is_empty() && h.last_seen_ms >= self.since_ms {
                    v1::Applied {
                        revision,
                        ok: false,
                        error: h.last_error.clone(),
                        ..Default::default()
                    }
                } else {
                    return None;
                };
                Some((h.name, report))
            })
            .collect()
    }
}

/// Forward each targeted host's result for `revision` until all answered or the client left.
async fn follow_rollout(
    revision: u64,
    expected: BTreeMap<String, String>,
    mut events: broadcast::Receiver<HostEvent>,
    remote: Remote,
    tx: mpsc::Sender<Result<v1::ApplyEvent, Status>>,
) {
    let mut pending: BTreeSet<String> = expected.keys().cloned().collect();
    let mut poll = tokio::time::interval(REMOTE_POLL);
    let mut polled: Vec<(String, v1::Applied)> = Vec::new();
    while !pending.is_empty() {
        let event = if let Some((host, report)) = polled.pop() {
            Ok(HostEvent::Applied { host, report })
        } else {
            tokio::select! {
                e = events.recv() => e,
                _ = poll.tick(), if !remote.hosts.is_disjoint(&pending) => {
                    polled = remote.reports(revision, &pending).await;
                    continue;
                }
                () = tx.closed() => return,
            }
        };
        let (host, result) = match event {
            Ok(HostEvent::Applied { host, report }) if report.revision == revision => {
                let Some(exp) = expected.get(&host) else {
                    continue;
                };
                let r = result_of(&host, exp, &report);
                (host, r)
            }
            Ok(HostEvent::Disconnected { host }) if pending.contains(&host) => {
                let r = v1::HostResult {
                    host: host.clone(),
                    outcome: v1::HostOutcome::Disconnected as i32,
                    ..Default::default()
                };
                // Still pending: it gets the revision when it reconnects.
                if tx
                    .send(Ok(v1::ApplyEvent {
                        event: Some(v1::apply_event::Event::Host(r)),
                    }))
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                // Its results are lost; waiting on would only hold events for a client that
                // does not read them. The revision itself is stored and pushed regardless.
                tracing::warn!(revision, skipped = n, "apply follower fell behind; dropped");
                let why = format!(
                    "this apply's progress stream fell behind ({n} host events skipped) and \
                     was stopped; r{revision} is stored and pushed: see `portcullis status`"
                );
                let _ = tx.send(Err(Status::resource_exhausted(why))).await;
                return;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if !pending.remove(&host) {
            continue;
        }
        let ev = v1::ApplyEvent {
            event: Some(v1::apply_event::Event::Host(result)),
        };
        if tx.send(Ok(ev)).await.is_err() {
            return;
        }
    }
}
