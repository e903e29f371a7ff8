//! The event path of drift detection: the dataplane's change events
//! ([`Dataplane::watch`]: `nft monitor` for the real one) wake the drift loop.
//!
//! Our own transactions wake it too: the loop then verifies (readback + semantic diff) and
//! finds nothing, so no pid bookkeeping is needed and no own change is ever reported as
//! drift. If the watch ends, it is restarted with backoff; the timer path covers the
//! gap. Read only: this never changes the ruleset. A watch that stops reporting is not a
//! hang (the timer path still verifies, each check bounded by the dataplane's own
//! deadline).

use crate::Dataplane;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

const RESTART_MIN: Duration = Duration::from_millis(500);
const RESTART_MAX: Duration = Duration::from_secs(30);

/// Follows `dataplane`'s change events forever, calling `wake.notify_one()` on each.
pub async fn run(dataplane: Arc<dyn Dataplane>, wake: Arc<Notify>) {
    let mut delay = RESTART_MIN;
    loop {
        match dataplane.watch(wake.clone()).await {
            Ok(()) => tracing::warn!("`nft monitor` exited; restarting"),
            Err(e) => tracing::warn!(error = %e, "`nft monitor` failed; restarting"),
        }
        // Changes may have been missed while it was down: check once more.
        wake.notify_one();
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RESTART_MAX);
    }
}
