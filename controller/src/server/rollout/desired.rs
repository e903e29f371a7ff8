//! The `Desired` messages of a wave, built from the revision's stored policies: hosts with
//! the same policy share its parsed and wire forms, and its expected kernel hash comes
//! from the one compile cache ([`crate::server::compile::CompileCache`], keyed by the
//! stored policy): compiled once per (policy, default-route interface). Used by the rollout's controller for the sessions it holds and by
//! another controller for the sessions it holds ([`super::relay`]).

use super::super::Shared;
use crate::server::compile::CompileCache;
use portcullis_policy::{Facts, HostPolicy};
use portcullis_proto::v1;
use std::collections::BTreeMap;

pub struct Desireds<'a> {
    revision: u64,
    confirm_timeout_ms: u64,
    parsed: Parsed<'a>,
    compiled: CompileCache<&'a str>,
}

impl<'a> Desireds<'a> {
    pub fn new(revision: u64, confirm_timeout_ms: u64) -> Self {
        Self {
            revision,
            confirm_timeout_ms,
            parsed: BTreeMap::new(),
            compiled: CompileCache::new(revision),
        }
    }

    /// The kernel hash a host with `facts` must report for this stored policy ("" if it
    /// does not compile there); `None` when the stored policy is unreadable.
    pub fn expected(&mut self, policy_json: &'a str, facts: &Facts) -> Option<String> {
        let (policy, _) = parse(&mut self.parsed, policy_json)?;
        Some(self.compiled.expected_hash(policy_json, policy, facts))
    }

    /// The `Desired` for `host` (its question registered, its lists as the host can take
    /// them), or why it cannot be sent.
    pub fn message(
        &mut self,
        shared: &Shared,
        host: &str,
        policy_json: &'a str,
        expected_hash: String,
    ) -> Result<v1::Desired, String> {
        let (rev, confirm_timeout_ms) = (self.revision, self.confirm_timeout_ms);
        let Some((policy, wire)) = parse(&mut self.parsed, policy_json) else {
            return Err("stored policy unreadable".to_string());
        };
        let d = v1::Desired {
            revision: rev,
            policy: Some(wire.clone()),
            expected_hash,
            confirm_timeout_ms,
            request_id: shared.asked.ask(host, rev),
            management: crate::server::wire::management_message(policy),
        };
        shared
            .lists
            .outgoing(host, d, policy)
            .map_err(|e| e.to_string())
    }
}

type Parsed<'a> = BTreeMap<&'a str, Option<(HostPolicy, v1::HostPolicy)>>;

/// The stored policy parsed (once) and its wire form; `None` when it is unreadable.
fn parse<'m, 'a>(
    parsed: &'m mut Parsed<'a>,
    policy_json: &'a str,
) -> Option<&'m (HostPolicy, v1::HostPolicy)> {
    parsed
        .entry(policy_json)
        .or_insert_with(|| {
            serde_json::from_str::<HostPolicy>(policy_json)
                .ok()
                .map(|p| {
                    let w = crate::server::lists::wire_without_lists(&p);
                    (p, w)
                })
        })
        .as_ref()
}
