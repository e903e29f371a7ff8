//! What the server's modules share on the wire, so none of them imports another service
//! for it: the one mapping of store errors to a gRPC [`Status`], and the `Desired`
//! message of a host built from the store (session on connect, a published revision's
//! push, a rollout's rollback).
//!
//! Depends on the store, the question registry and the list tracker only; never on the
//! services (`session`, `admin`) or on `drift`/`logs`/`check`, which all use it.

use super::Shared;
use super::compile::CompileCache;
use crate::store;
use portcullis_policy::{Facts, HostPolicy};
use portcullis_proto::v1;
use tonic::Status;

/// A store error as the caller sees it: `Unavailable` when the database is unreachable
/// (nothing was changed, retry), else `Internal` (details only in the log).
pub(crate) fn internal(e: anyhow::Error) -> Status {
    if store::is_unavailable(&e) {
        tracing::error!(error = %format!("{e:#}"), "the store is unavailable");
        return Status::unavailable(
            "the controller's database is unreachable: nothing was changed (hosts keep \
             enforcing what they have); retry when it is back",
        );
    }
    tracing::error!(error = %e, "internal error");
    Status::internal("controller store error")
}

/// The site's `management:` entries stored with `policy`, as every `Desired` carries them
/// (apply, rollout wave, reconnect) for the agent's fail-closed policy; `None` when the
/// revision predates them (the agent keeps what it has).
pub(crate) fn management_message(policy: &HostPolicy) -> Option<v1::Management> {
    policy
        .management
        .clone()
        .map(|entries| v1::Management { entries })
}

impl Shared {
    /// The `Desired` message for `host` from the store, with the expected hash computed
    /// against the facts the agent just reported.
    pub(crate) async fn desired_message(
        &self,
        host: &str,
        facts: &Facts,
    ) -> Result<Option<v1::Desired>, Status> {
        self.desired_message_with(host, facts, None).await
    }

    /// [`Shared::desired_message`], compiling through `cache` when the host's desired
    /// revision is the cache's (the pushes of one published revision share it).
    pub(crate) async fn desired_message_with(
        &self,
        host: &str,
        facts: &Facts,
        cache: Option<&tokio::sync::Mutex<CompileCache<String>>>,
    ) -> Result<Option<v1::Desired>, Status> {
        let h = host.to_string();
        let Some((revision, policy_json, stored_hash)) = self
            .store
            .call(move |c| store::desired_for(c, &h))
            .await
            .map_err(internal)?
        else {
            return Ok(None);
        };
        let policy: HostPolicy = serde_json::from_str(&policy_json)
            .map_err(|e| Status::internal(format!("stored policy of {host} unreadable: {e}")))?;
        let hash = match cache {
            Some(cache) => {
                let mut cache = cache.lock().await;
                if cache.revision() == revision {
                    cache.expected_hash(policy_json, &policy, facts)
                } else {
                    super::expected_hash(&policy, facts, revision)
                }
            }
            None => super::expected_hash(&policy, facts, revision),
        };
        if hash != stored_hash {
            let (h, hh) = (host.to_string(), hash.clone());
            self.store
                .call(move |c| store::set_expected_hash(c, &h, revision, &hh))
                .await
                .map_err(internal)?;
        }
        if super::lists::needs_lists(&policy) && !self.lists.capable(host) {
            let why = super::lists::Unsupported.to_string();
            tracing::warn!(%host, revision, "{why}");
            let (h, hh) = (host.to_string(), hash.clone());
            self.store
                .call(move |c| store::host_reported(c, &h, revision, &hh, Some(&why)))
                .await
                .map_err(internal)?;
            return Ok(None);
        }
        let desired = v1::Desired {
            revision,
            policy: Some(super::lists::wire_without_lists(&policy)),
            expected_hash: hash,
            confirm_timeout_ms: 0,
            request_id: self.asked.ask(host, revision),
            management: management_message(&policy),
        };
        Ok(self.lists.outgoing(host, desired, &policy).ok())
    }
}
