//! Revocation that takes effect: a watcher re-reads `revoked.txt` (through
//! [`crate::identity::RevocationList`], one `stat` a tick) and cuts every open connection
//! whose certificate serial is revoked, so agent sessions and admin streams end within
//! [`TICK`] of `portcullis ca revoke`. New connections are checked at the handshake.

use super::Shared;
use std::sync::Arc;
use std::time::Duration;

/// How often the revocation list is checked.
pub const TICK: Duration = Duration::from_millis(500);

/// Run until aborted.
pub async fn watch(shared: Arc<Shared>) {
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let serials = shared.revoked.serials();
        if serials.is_empty() {
            continue;
        }
        let cut = shared.connections.cut_revoked(&serials);
        if cut > 0 {
            tracing::warn!(
                cut,
                revoked = serials.len(),
                "closed connections of revoked certificates"
            );
        }
    }
}
