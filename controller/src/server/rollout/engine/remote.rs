//! Hosts of this controller's rollout whose sessions other controllers hold (a shared
//! store): which ones they are, and what those controllers reported of them
//! (`rollout_reports`, written by [`crate::server::rollout::relay`]), read back every
//! [`POLL`] as the same [`Event`]s a session of this controller would give. Each report
//! is taken once; only reports about the hosts still waiting are read.

use super::Ctx;
use crate::store::{self, relay};
use portcullis_policy::Facts;
use portcullis_policy::protocol::exchange::Event;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How often the reports of other controllers are read.
pub(super) const POLL: Duration = Duration::from_millis(250);

/// Those of `hosts` not connected here whose sessions another controller holds, as far
/// as the store knows, with the facts of their last `Hello` (empty on SQLite).
pub(super) async fn elsewhere(ctx: &Ctx<'_>, hosts: &[String]) -> BTreeMap<String, Facts> {
    if !ctx.shared_store() {
        return BTreeMap::new();
    }
    let wanted: BTreeSet<&String> = hosts
        .iter()
        .filter(|h| !ctx.shared.registry.is_connected(h))
        .collect();
    if wanted.is_empty() {
        return BTreeMap::new();
    }
    let records = match ctx.shared.store.call(store::list_hosts).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(rollout = ctx.plan.id, error = %format!("{e:#}"),
                "reading where the rollout's hosts are connected failed");
            return BTreeMap::new();
        }
    };
    let now = store::now_ms();
    records
        .into_iter()
        .filter(|h| wanted.contains(&h.name) && ctx.shared.elsewhere(h, now))
        .map(|h| {
            let facts = serde_json::from_str(&h.facts_json).unwrap_or_default();
            (h.name, facts)
        })
        .collect()
}

/// The reports read so far (by id).
pub(super) struct Follower {
    seen: BTreeSet<i64>,
}

impl Follower {
    pub(super) fn new() -> Self {
        Self {
            seen: BTreeSet::new(),
        }
    }

    /// Reports about `hosts` not taken yet, in the order they were stored.
    pub(super) async fn poll<'h>(
        &mut self,
        ctx: &Ctx<'_>,
        hosts: impl Iterator<Item = &'h String>,
    ) -> Vec<relay::Report> {
        let names: Vec<String> = hosts.cloned().collect();
        if names.is_empty() || !ctx.shared_store() {
            return Vec::new();
        }
        let id = ctx.plan.id;
        let rows = ctx
            .shared
            .store
            .call(move |c| relay::reports(c, id, &names))
            .await;
        match rows {
            Ok(rows) => rows
                .into_iter()
                .filter(|r| self.seen.insert(r.id))
                .collect(),
            Err(e) => {
                // Read again at the next poll; the hosts' deadlines still hold.
                tracing::warn!(rollout = id, error = %format!("{e:#}"), "reading rollout reports failed");
                Vec::new()
            }
        }
    }
}

/// A report as the event a session of this controller would have given.
pub(super) fn event(r: &relay::Report) -> Event {
    match r.kind {
        relay::ReportKind::Applied => Event::Applied {
            revision: r.revision,
            ok: true,
            hash: r.hash.clone(),
            error: String::new(),
        },
        relay::ReportKind::Failed => Event::Applied {
            revision: r.revision,
            ok: false,
            hash: r.hash.clone(),
            error: r.detail.clone(),
        },
        relay::ReportKind::Back => Event::Back {
            revision: r.revision,
            hash: r.hash.clone(),
        },
        relay::ReportKind::Reverted => Event::Reverted {
            revision: r.revision,
            reason: r.detail.clone(),
        },
        relay::ReportKind::Confirmed => Event::ConfirmSent,
    }
}
