//! What the simulated agents did (answered, reconnected, confirmed, ...), for `STATS`.

use std::sync::atomic::{AtomicU64, Ordering};

/// What the simulated agents did, for `STATS`.
#[derive(Debug, Default)]
pub(super) struct Counters {
    /// `Desired` answered with `Applied`.
    pub(super) answered: AtomicU64,
    /// Sessions re-opened after applying under commit-confirmed.
    pub(super) reconnects: AtomicU64,
    /// Re-opening failed (retried).
    pub(super) reconnect_errors: AtomicU64,
    /// `Confirm` received.
    pub(super) confirmed: AtomicU64,
    /// `Revert` received.
    pub(super) reverts: AtomicU64,
    /// `VerifyNow` answered.
    pub(super) verified: AtomicU64,
    /// Address lists received in full / as a delta (`base_digest` set).
    pub(super) lists_full: AtomicU64,
    pub(super) lists_delta: AtomicU64,
    /// `Desired` answered with `need_full` (a delta against a base not held).
    pub(super) need_full: AtomicU64,
    /// `Desired` answered with `ok: false` for another reason.
    pub(super) failed: AtomicU64,
}

impl Counters {
    pub(super) fn line(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "{} {} {} {} {} {} {} {} {} {}",
            g(&self.answered),
            g(&self.reconnects),
            g(&self.confirmed),
            g(&self.reverts),
            g(&self.reconnect_errors),
            g(&self.verified),
            g(&self.lists_full),
            g(&self.lists_delta),
            g(&self.need_full),
            g(&self.failed)
        )
    }
}
