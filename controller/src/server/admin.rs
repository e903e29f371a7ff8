//! The `Admin` service: operator calls, authorized by an admin certificate.
//!
//! `Apply` validates and compiles for every targeted host before anything is stored or
//! sent; then stores the revision (and an audit entry) in one transaction, pushes it to
//! connected hosts and streams their results. Offline hosts get it when they connect.

use super::Shared;
use super::registry::HostEvent;
use crate::identity::Role;
use crate::store::{self, RevisionHost};
use portcullis_policy::{Facts, HostPolicy, Ruleset, compile, pattern, site};
use portcullis_proto::v1;
use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

#[derive(Debug, Clone)]
pub struct AdminService {
    pub(crate) shared: Arc<Shared>,
}

type ApplyStream = Pin<Box<dyn Stream<Item = Result<v1::ApplyEvent, Status>> + Send>>;

impl AdminService {
    fn admin<T>(&self, req: &Request<T>) -> Result<String, Status> {
        match self.shared.authenticate(req)?.role {
            Role::Admin(name) => Ok(name),
            other => {
                tracing::warn!(role = ?other, "Admin call refused: not an admin certificate");
                Err(Status::permission_denied(
                    "only admin certificates may call the Admin service",
                ))
            }
        }
    }

    /// Facts for `host`: live from its session, else the last stored.
    async fn facts_of(&self, host: &str) -> Result<Option<Facts>, Status> {
        if let Some(h) = self.shared.registry.get(host) {
            return Ok(Some(h.facts));
        }
        let h = host.to_string();
        let json = self
            .shared
            .store
            .call(move |c| store::host_facts(c, &h))
            .await
            .map_err(super::wire::internal)?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }
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

#[tonic::async_trait]
impl v1::admin_server::Admin for AdminService {
    type ApplyStream = ApplyStream;
    type RollbackStream = ApplyStream;
    type LogsStream = super::logs::LogsStream;

    async fn drift(
        &self,
        request: Request<v1::DriftRequest>,
    ) -> Result<Response<v1::DriftResponse>, Status> {
        self.admin(&request)?;
        super::drift::drift(&self.shared, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn logs(
        &self,
        request: Request<v1::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        self.admin(&request)?;
        super::logs::logs(&self.shared, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn logs_top(
        &self,
        request: Request<v1::LogsRequest>,
    ) -> Result<Response<v1::LogsTopResponse>, Status> {
        self.admin(&request)?;
        super::logs::top(&self.shared, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn rollback(
        &self,
        request: Request<v1::RollbackRequest>,
    ) -> Result<Response<Self::ApplyStream>, Status> {
        self.admin(&request)?;
        let apply = super::rollout::start::rollback_request(&self.shared, request).await?;
        v1::admin_server::Admin::apply(self, apply).await
    }

    async fn rollout_abort(
        &self,
        request: Request<v1::RolloutAbortRequest>,
    ) -> Result<Response<v1::RolloutAbortResponse>, Status> {
        let author = self.admin(&request)?;
        super::rollout::start::abort(&self.shared, &author, request.get_ref().rollout_id)
            .await
            .map(Response::new)
    }

    async fn rollouts(
        &self,
        request: Request<v1::RolloutsRequest>,
    ) -> Result<Response<v1::RolloutsResponse>, Status> {
        self.admin(&request)?;
        super::rollout::list(&self.shared, request.into_inner())
            .await
            .map(Response::new)
            .map_err(super::wire::internal)
    }

    async fn apply(
        &self,
        request: Request<v1::ApplyRequest>,
    ) -> Result<Response<Self::ApplyStream>, Status> {
        let author = self.admin(&request)?;
        let kind = super::rollout::start::kind_of(&request);
        let req = request.into_inner();
        if req.check {
            // --check: a diff per host; nothing stored, nothing sent to agents.
            let result = super::check::check(&self.shared, &req).await?;
            let event = v1::ApplyEvent {
                event: Some(v1::apply_event::Event::Check(result)),
            };
            return Ok(Response::new(Box::pin(tokio_stream::once(Ok(event)))));
        }
        // Parsing a large inventory takes CPU seconds: off the async workers, so sessions
        // and other admins are served meanwhile (the YAML budget bounds it).
        let fleet = super::load_request_fleet(&req).await?;
        let site::Fleet {
            inventory,
            hosts: mut targets,
            management,
            ..
        } = fleet;
        if !req.limit.is_empty() {
            let selected = pattern::select(&inventory, &req.limit)
                .map_err(|e| Status::invalid_argument(format!("--limit {:?}: {e}", req.limit)))?;
            targets.retain(|h, _| selected.contains(h));
        }
        if targets.is_empty() {
            return Err(Status::invalid_argument(
                "no host is targeted: no play matches a host (within --limit)",
            ));
        }
        // One apply at a time from here until its revision is stored (and its rollout,
        // if any, claimed): the hashes below are compiled for `next_revision`.
        let _serial = self.shared.apply_lock.lock().await;
        // Compile for every host whose facts are known before anything is stored or sent.
        let next_revision = self
            .shared
            .store
            .call(store::latest_revision)
            .await
            .map_err(super::wire::internal)?
            + 1;
        let mut rows = Vec::with_capacity(targets.len());
        let mut errors = Vec::new();
        // Compiled once here, reused by the anti-lockout check.
        let mut compiled = BTreeMap::new();
        let mut unchecked = Vec::new();
        // compile reads only the policy and the default-route interface of the facts:
        // compile and hash once per distinct pair. Policies are hashed once per host into
        // an index (fleets share a handful); JSON is serialized once per distinct policy.
        let mut index: std::collections::HashMap<&HostPolicy, usize> =
            std::collections::HashMap::new();
        let mut jsons: Vec<std::sync::Arc<str>> = Vec::new();
        // Per distinct policy: its wire size when too big for one session message.
        let mut oversized: Vec<Option<usize>> = Vec::new();
        let mut cache: std::collections::HashMap<
            (usize, Option<String>),
            (std::sync::Arc<Ruleset>, String),
        > = std::collections::HashMap::new();
        for (host, policy) in &targets {
            let idx = match index.get(policy) {
                Some(i) => *i,
                None => {
                    jsons.push(
                        serde_json::to_string(policy)
                            .map_err(|e| Status::internal(e.to_string()))?
                            .into(),
                    );
                    index.insert(policy, jsons.len() - 1);
                    oversized.push(too_big_for_a_session(policy));
                    jsons.len() - 1
                }
            };
            if let Some(bytes) = oversized[idx] {
                errors.push(format!(
                    "{host}: its policy is {bytes} bytes on the wire ({} `from:` networks and list entries), more than one session message carries ({} bytes); split the lists or shorten them",
                    policy.allow.iter().map(|a| a.from.len()).sum::<usize>()
                        + policy.lists.values().map(|l| l.len()).sum::<usize>(),
                    portcullis_proto::DESIRED_MAX_MESSAGE_BYTES - DESIRED_SLACK
                ));
                continue;
            }
            let expected = match self.facts_of(host).await? {
                Some(facts) => {
                    let key = (idx, facts.default_route_interface.clone());
                    let hit = match cache.get(&key) {
                        Some((r, h)) => Ok((r.clone(), h.clone())),
                        None => compile(policy, &facts, next_revision).map(|r| {
                            let h = r.hash().0;
                            let r = std::sync::Arc::new(r);
                            cache.insert(key, (r.clone(), h.clone()));
                            (r, h)
                        }),
                    };
                    match hit {
                        Ok((r, hash)) => {
                            compiled.insert(host.clone(), (r, facts));
                            hash
                        }
                        Err(e) => {
                            errors.push(format!("{host}: {e}"));
                            continue;
                        }
                    }
                }
                None => {
                    unchecked.push(host.clone());
                    String::new()
                }
            };
            let policy_json = jsons[idx].clone();
            rows.push(RevisionHost {
                host: host.clone(),
                policy_json,
                expected_hash: expected,
            });
        }
        if !errors.is_empty() {
            return Err(Status::invalid_argument(format!(
                "the policy does not compile for {} host(s); nothing was applied:\n{}",
                errors.len(),
                errors.join("\n")
            )));
        }
        // Anti-lockout check, then waves / commit-confirmed when asked for.
        if let Some(stream) = super::rollout::start::from_apply(
            &self.shared,
            &author,
            kind,
            &req,
            super::rollout::start::Compiled {
                rows: &rows,
                rulesets: compiled,
                unchecked,
                management: &management,
                revision: next_revision,
            },
        )
        .await?
        {
            return Ok(Response::new(stream));
        }
        let expected: BTreeMap<String, String> = rows
            .iter()
            .map(|r| (r.host.clone(), r.expected_hash.clone()))
            .collect();
        // Subscribe before pushing so no report is missed.
        let events = self.shared.registry.subscribe();
        // Hosts whose sessions another controller holds (shared store): it pushes to them
        // when this revision is published; their results are read from the store.
        let remote: BTreeSet<String> = {
            let now = store::now_ms();
            self.shared
                .store
                .call(store::list_hosts)
                .await
                .map_err(super::wire::internal)?
                .into_iter()
                .filter(|h| self.shared.elsewhere(h, now))
                .map(|h| h.name)
                .collect()
        };
        let revision = {
            let (author, req, rows) = (author.clone(), req.clone(), rows);
            let me = self.shared.controller_id.clone();
            self.shared
                .store
                .call(move |c| {
                    let tx = c.transaction()?;
                    let rev =
                        store::insert_revision(&tx, &super::new_revision(&author, &req, &rows))?;
                    anyhow::ensure!(
                        rev == next_revision,
                        "revision {rev} stored, but its hashes were compiled for {next_revision}: \
                         another controller stored a revision meanwhile; apply again"
                    );
                    store::publish(&tx, &me, rev)?;
                    store::audit(
                        &tx,
                        &author,
                        "apply",
                        &format!(
                            "revision {rev} to {} host(s), limit {:?}",
                            rows.len(),
                            req.limit
                        ),
                    )?;
                    tx.commit()?;
                    Ok(rev)
                })
                .await
                .map_err(super::wire::internal)?
        };
        tracing::info!(revision, %author, hosts = expected.len(), "revision stored");
        let pushed_at = store::now_ms();

        // Build each `Desired` from what was compiled above; hosts with the same policy
        // share one wire policy.
        let mut offline = Vec::new();
        let mut unsupported: Vec<(String, String)> = Vec::new();
        let mut wire: std::collections::HashMap<&HostPolicy, v1::HostPolicy> =
            std::collections::HashMap::new();
        for (host, hash) in &expected {
            let Some(handle) = self.shared.registry.get(host) else {
                if !remote.contains(host) {
                    offline.push(host.clone());
                }
                continue;
            };
            let Some(policy) = targets.get(host) else {
                continue;
            };
            let management = super::wire::management_message(policy);
            let full = policy;
            let policy = wire
                .entry(policy)
                .or_insert_with(|| super::lists::wire_without_lists(policy))
                .clone();
            let expected_hash = if hash.is_empty() {
                super::expected_hash(&targets[host], &handle.facts, revision)
            } else {
                hash.clone()
            };
            let desired = v1::Desired {
                revision,
                policy: Some(policy),
                expected_hash,
                confirm_timeout_ms: 0,
                request_id: self.shared.asked.ask(host, revision),
                management,
            };
            let desired = match self.shared.lists.outgoing(host, desired, full) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(%host, revision, "{e}");
                    unsupported.push((host.clone(), e.to_string()));
                    continue;
                }
            };
            let msg = v1::ControllerMessage {
                msg: Some(v1::controller_message::Msg::Desired(desired)),
            };
            if handle.tx.send(Ok(msg)).await.is_err() {
                offline.push(host.clone());
            }
        }
        let (tx, rx) = mpsc::channel(64);
        let accepted = v1::ApplyEvent {
            event: Some(v1::apply_event::Event::Accepted(v1::ApplyAccepted {
                revision,
                hosts: expected.keys().cloned().collect(),
                offline,
                ..Default::default()
            })),
        };
        let _ = tx.send(Ok(accepted)).await;
        // Not sent (an agent too old for the policy): failed now, nothing to wait for.
        let mut expected = expected;
        for (host, error) in unsupported {
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
            let _ = self
                .shared
                .store
                .call(move |c| store::host_reported(c, &host, 0, "", Some(&error)))
                .await;
        }
        let remote: BTreeSet<String> = remote
            .into_iter()
            .filter(|h| expected.contains_key(h) && !self.shared.registry.is_connected(h))
            .collect();
        let remote = Remote {
            store: self.shared.store.clone(),
            hosts: remote,
            since_ms: pushed_at,
        };
        tokio::spawn(follow_rollout(revision, expected, events, remote, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn status(
        &self,
        request: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        self.admin(&request)?;
        let hosts = self
            .shared
            .store
            .call(store::list_hosts)
            .await
            .map_err(super::wire::internal)?;
        let now = store::now_ms();
        let mut hosts = hosts
            .into_iter()
            .map(|h| v1::HostStatus {
                connected: self.shared.registry.is_connected(&h.name)
                    || self.shared.elsewhere(&h, now),
                conditions: self.shared.registry.conditions(&h.name),
                hash_match: !h.expected_hash.is_empty() && h.expected_hash == h.reported_hash,
                host: h.name,
                last_seen_unix_ms: h.last_seen_ms,
                desired_revision: h.desired_revision,
                applied_revision: h.applied_revision,
                expected_hash: h.expected_hash,
                reported_hash: h.reported_hash,
                agent_version: h.agent_version,
                last_error: h.last_error,
                peer: h.peer,
                ..Default::default()
            })
            .collect::<Vec<_>>();
        super::drift::attest(&self.shared, &mut hosts).await?;
        Ok(Response::new(v1::StatusResponse {
            hosts,
            counters: Some(self.shared.counters()),
        }))
    }

    async fn history(
        &self,
        request: Request<v1::HistoryRequest>,
    ) -> Result<Response<v1::HistoryResponse>, Status> {
        self.admin(&request)?;
        let limit = request.get_ref().limit;
        let revs = self
            .shared
            .store
            .call(move |c| store::list_revisions(c, limit))
            .await
            .map_err(super::wire::internal)?;
        Ok(Response::new(v1::HistoryResponse {
            revisions: revs
                .into_iter()
                .map(|r| v1::RevisionInfo {
                    revision: r.revision,
                    created_unix_ms: r.created_ms,
                    author: r.author,
                    site_name: r.site_name,
                    inventory_name: r.inventory_name,
                    limit: r.limit,
                    hosts: r.hosts,
                    applied: r.applied,
                })
                .collect(),
        }))
    }
}

/// Forward each targeted host's result for `revision` until all answered or the client left.
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

/// Room left in a session message for the rest of a `Desired` (revision, hash,
/// management entries).
const DESIRED_SLACK: usize = 256 << 10;

/// The encoded size of `policy` when a `Desired` carrying it would exceed the session
/// message limit (the agent could not receive it: refuse the apply before storing it).
fn too_big_for_a_session(policy: &HostPolicy) -> Option<usize> {
    use prost::Message as _;
    let bytes = v1::HostPolicy::from(policy).encoded_len();
    (bytes + DESIRED_SLACK > portcullis_proto::DESIRED_MAX_MESSAGE_BYTES).then_some(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_over_one_desired_is_too_big_and_a_million_addresses_is_not() {
        let list = |n: u128| portcullis_policy::AddrList {
            v4: Vec::new(),
            v6: (0..n).map(|i| ((0x2001_0db8u128 << 96) | i, 128)).collect(),
        };
        let with = |n| HostPolicy {
            lists: [("l".to_string(), std::sync::Arc::new(list(n)))].into(),
            ..HostPolicy::default()
        };
        // 1M v6 entries pack into 17 MB: one Desired carries them.
        assert_eq!(too_big_for_a_session(&with(1_000_000)), None);
        // 4M (two full list files) are 68 MB: refused, with the size.
        let bytes = too_big_for_a_session(&with(4_000_000)).unwrap();
        assert!(bytes > 4_000_000 * 17, "{bytes}");
    }
}
