//! Drift checks on [`Agent`]: compare the kernel with last-known-good and, if the policy
//! says `drift: heal` and the caller allows it, re-apply last-known-good.
//!
//! Both steps run under the agent's operation lock, so a check never sees an apply half
//! done and a heal never overwrites a revision applied meanwhile (the heal re-reads
//! last-known-good under the lock). Nothing here decides *when* to check or whether a heal
//! storm must back off: that is the drift loop's job ([`crate::drift`]).

use super::{Agent, AgentError};
use crate::report::VerifyStatus;
use portcullis_policy::{DriftMode, Facts, RulesetHash};
use serde::Serialize;

/// The outcome of one drift check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DriftCheck {
    /// The revision last-known-good holds (`None`: nothing applied yet, nothing to drift from).
    pub revision: Option<u64>,
    pub mode: Option<DriftMode>,
    /// Hash of last-known-good (what the kernel must hold).
    pub expected_hash: Option<RulesetHash>,
    /// Hash of the kernel's table as found (`None`: table absent).
    pub found_hash: Option<RulesetHash>,
    /// Semantic differences found, expected -> kernel; empty = in sync.
    pub diff: Vec<String>,
    /// Hash of the kernel's table now (after a heal, the healed table).
    pub kernel_hash: Option<RulesetHash>,
    /// Last-known-good was re-applied and verified.
    pub healed: bool,
    /// The heal was attempted and failed (the kernel keeps the drifted table).
    pub heal_error: Option<String>,
}

impl DriftCheck {
    /// Drift was found (healed or not).
    pub fn found_drift(&self) -> bool {
        !self.diff.is_empty()
    }

    /// The kernel holds last-known-good now.
    pub fn in_sync(&self) -> bool {
        self.diff.is_empty() || self.healed
    }

    /// Drift found, the policy says heal, and it was not healed (suppressed or failed).
    pub fn wants_heal(&self) -> bool {
        self.found_drift() && !self.healed && self.mode == Some(DriftMode::Heal)
    }
}

impl Agent {
    /// Checks the kernel against last-known-good; with `heal_facts`, heals drift when the
    /// policy's drift mode is `heal` (recompiled against those facts, like a boot restore).
    pub fn check_drift(&self, heal_facts: Option<&Facts>) -> Result<DriftCheck, AgentError> {
        let _op = self.exclusive();
        let Some(lkg) = self.state.load_shared()? else {
            return Ok(DriftCheck {
                revision: None,
                mode: None,
                expected_hash: None,
                found_hash: None,
                diff: Vec::new(),
                kernel_hash: None,
                healed: false,
                heal_error: None,
            });
        };
        let (found_hash, diff) = match self.verify_locked() {
            Ok(v) if v.status == VerifyStatus::InSync => (v.actual_hash, Vec::new()),
            Ok(v) => (v.actual_hash, v.diff),
            // A table nft prints but we cannot parse is drift like any other.
            Err(AgentError::Readback(e)) => (
                None,
                vec![format!("table inet portcullis cannot be parsed: {e}")],
            ),
            Err(e) => return Err(e),
        };
        let mut check = DriftCheck {
            revision: Some(lkg.revision),
            mode: Some(lkg.policy.drift),
            expected_hash: Some(lkg.hash.clone()),
            kernel_hash: found_hash.clone(),
            found_hash,
            diff,
            healed: false,
            heal_error: None,
        };
        if let (Some(facts), true) = (heal_facts, check.wants_heal()) {
            match self.reconcile_locked(&lkg.policy, facts, lkg.revision) {
                Ok(report) => {
                    check.healed = true;
                    check.kernel_hash = Some(report.hash);
                }
                Err(e) => check.heal_error = Some(e.to_string()),
            }
        }
        Ok(check)
    }

    /// [`Agent::check_drift`] for async callers. When drift is found that the policy says
    /// to heal, `permit` decides (rate limiting); only then are facts gathered and the heal
    /// step run, which re-checks under the lock.
    pub async fn check_drift_async(
        &self,
        permit: impl FnOnce() -> bool,
    ) -> Result<DriftCheck, AgentError> {
        let agent = self.clone();
        let first = tokio::task::spawn_blocking(move || agent.check_drift(None))
            .await
            .map_err(|e| AgentError::Join(e.to_string()))??;
        if !(first.wants_heal() && permit()) {
            return Ok(first);
        }
        let facts = self.facts().gather().await?;
        let agent = self.clone();
        let second = tokio::task::spawn_blocking(move || agent.check_drift(Some(&facts)))
            .await
            .map_err(|e| AgentError::Join(e.to_string()))??;
        // Report what was found first; if it was fixed meanwhile (a newer apply), the
        // second check is in sync and nothing was healed.
        Ok(if second.found_drift() {
            second
        } else {
            DriftCheck {
                kernel_hash: second.kernel_hash,
                ..first
            }
            .settled()
        })
    }
}

impl DriftCheck {
    /// The drift found earlier is gone without our heal (e.g. a newer revision applied).
    fn settled(self) -> Self {
        Self {
            diff: Vec::new(),
            ..self
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
