//! Rollout bookkeeping on the controller: commit-confirmed reverts reported by agents.

use super::Shared;
use portcullis_proto::v1;

pub async fn on_reverted(_shared: &Shared, host: &str, r: v1::Reverted) -> anyhow::Result<()> {
    tracing::warn!(%host, revision = r.revision, restored = r.restored_revision, reason = %r.reason,
        "agent reverted an unconfirmed revision");
    Ok(())
}
