//! The persisted records of commit-confirm: `pending-confirm.json` ([`PendingConfirm`])
//! and `reverted.json` ([`RevertedReport`]). Their serde shapes are the on-disk format an
//! upgraded agent reads back, so they do not change.

use crate::HostPolicy;
use serde::{Deserialize, Serialize};

/// The confirmed revision to go back to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Previous {
    pub revision: u64,
    pub policy: HostPolicy,
}

/// The record of the revision waiting for `Confirm` (`pending-confirm.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingConfirm {
    pub revision: u64,
    pub deadline_unix_ms: i64,
    /// `None`: nothing was confirmed before; the revert removes our table.
    pub previous: Option<Previous>,
}

/// The report of a revert, kept until sent (`reverted.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevertedReport {
    pub revision: u64,
    /// 0 when our table was removed.
    pub restored_revision: u64,
    pub reason: String,
    /// The kernel's hash after the revert (empty when the table was removed).
    pub hash: String,
}
