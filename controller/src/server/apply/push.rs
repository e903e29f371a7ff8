//! The push step of a plain apply: the revision's `Desired` into each session held here.

use super::super::Shared;
use super::follow::Watch;
use crate::server::wire::management_message;
use crate::store;
use portcullis_policy::HostPolicy;
use portcullis_proto::v1;
use std::collections::{BTreeMap, HashMap};

/// What the push step did.
pub(super) struct Pushed {
    /// When the revision was pushed (a remote host's error reported after it is this
    /// apply's).
    pub(super) at_ms: i64,
    /// Targeted hosts connected nowhere (they get it when they connect).
    pub(super) offline: Vec<String>,
    /// Hosts not sent it (an agent too old for the policy), with why.
    pub(super) unsupported: Vec<(String, String)>,
}

/// Send each targeted host whose session is here its `Desired`, built from what was
/// compiled (hosts with the same policy share one wire policy).
pub(super) async fn push(
    shared: &Shared,
    revision: u64,
    targets: &BTreeMap<String, HostPolicy>,
    expected: &BTreeMap<String, String>,
    watch: &Watch,
) -> Pushed {
    let mut pushed = Pushed {
        at_ms: store::now_ms(),
        offline: Vec::new(),
        unsupported: Vec::new(),
    };
    let mut wire: HashMap<&HostPolicy, v1::HostPolicy> = HashMap::new();
    for (host, hash) in expected {
        let Some(handle) = shared.registry.get(host) else {
            if !watch.remote.contains(host) {
                pushed.offline.push(host.clone());
            }
            continue;
        };
        let Some(policy) = targets.get(host) else {
            continue;
        };
        let expected_hash = if hash.is_empty() {
            crate::server::expected_hash(policy, &handle.facts, revision)
        } else {
            hash.clone()
        };
        let desired = v1::Desired {
            revision,
            policy: Some(
                wire.entry(policy)
                    .or_insert_with(|| crate::server::lists::wire_without_lists(policy))
                    .clone(),
            ),
            expected_hash,
            confirm_timeout_ms: 0,
            request_id: shared.asked.ask(host, revision),
            management: management_message(policy),
        };
        let desired = match shared.lists.outgoing(host, desired, policy) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(%host, revision, "{e}");
                pushed.unsupported.push((host.clone(), e.to_string()));
                continue;
            }
        };
        let msg = v1::ControllerMessage {
            msg: Some(v1::controller_message::Msg::Desired(desired)),
        };
        if handle.tx.send(Ok(msg)).await.is_err() {
            pushed.offline.push(host.clone());
        }
    }
    pushed
}
