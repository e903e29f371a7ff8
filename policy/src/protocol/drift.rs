//! The drift verdict, pure: what the agent read back from the kernel and reported
//! ([`Report`]), the hash the controller expects for the revision the agent enforces, and
//! the revision it should run give one [`DriftVerdict`] with its one spelling.
//!
//! Three readers, one type: [`reported`] is the agent's word (what the controller stores
//! of a report, and what the agent logs); [`attest`] is the controller's verdict on an
//! answered `drift` call (it does not take the agent's word for "in sync": the kernel
//! hash must be the expected one); [`status_drifted`] is the `status` view (the stored
//! word, or a hash mismatch on the desired revision). The I/O sides live in the agent's
//! drift loop, the controller's `server::drift`, the store's `drift` table columns and
//! the CLI's `drift` command; `portcullis-proto` converts to the wire enum.

use super::outcome::spelled;

/// Whether a host's kernel enforces what it should.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DriftVerdict {
    /// The kernel holds last-known-good.
    InSync,
    /// Drift found and left so (`drift: report`), or the heal failed.
    Drifted,
    /// Drift found; a heal storm backs off, left drifted for now.
    HealSuppressed,
    /// Drift found and re-applied: in sync again.
    Healed,
    /// No answer: not connected, or none in time.
    Unreachable,
}

spelled!(DriftVerdict, "drift verdict", {
    InSync => "in_sync",
    Drifted => "drifted",
    HealSuppressed => "heal_suppressed",
    Healed => "healed",
    Unreachable => "unreachable",
});

impl DriftVerdict {
    /// The kernel does not hold what it should (drifted, healing held back).
    pub fn is_drift(self) -> bool {
        matches!(self, Self::Drifted | Self::HealSuppressed)
    }

    /// The kernel holds last-known-good now (in sync, or healed).
    pub fn in_sync(self) -> bool {
        matches!(self, Self::InSync | Self::Healed)
    }

    /// Drift was found by the check (healed or not).
    pub fn found_drift(self) -> bool {
        matches!(self, Self::Drifted | Self::HealSuppressed | Self::Healed)
    }
}

/// What an agent reported of one check (a `DriftReport`'s verdict fields).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report<'a> {
    /// The revision the agent enforces (0: nothing applied).
    pub revision: u64,
    /// The agent's word: the kernel holds last-known-good (after a heal too).
    pub in_sync: bool,
    /// The kernel's hash as read back ("" = table absent).
    pub kernel_hash: &'a str,
    /// Differences found, kernel vs last-known-good (empty: none).
    pub diff: &'a [String],
    pub healed: bool,
    pub heal_suppressed: bool,
    /// Why the heal failed ("" = no failed heal).
    pub heal_error: &'a str,
}

/// The agent's word on its check: healed, held back, in sync (nothing found) or drifted.
pub fn reported(r: &Report<'_>) -> DriftVerdict {
    if r.healed {
        DriftVerdict::Healed
    } else if r.heal_suppressed {
        DriftVerdict::HealSuppressed
    } else if r.diff.is_empty() && r.in_sync {
        DriftVerdict::InSync
    } else {
        DriftVerdict::Drifted
    }
}

/// The controller's verdict on an answered check, with the lines it adds to the diff and
/// its notes for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attested {
    pub verdict: DriftVerdict,
    /// The report's diff, plus what the controller found itself.
    pub diff: Vec<String>,
    pub notes: Vec<String>,
}

/// The verdict for one answered host. `expected`: the controller's hash for the revision
/// the agent enforces ("" if it cannot say); `desired`: the revision it should run (0:
/// none). A heal the agent held back is [`DriftVerdict::HealSuppressed`].
pub fn attest(r: &Report<'_>, expected: &str, desired: u64) -> Attested {
    let mut diff = r.diff.to_vec();
    let mut notes = Vec::new();
    let verdict = if r.healed {
        DriftVerdict::Healed
    } else if !r.in_sync || !r.diff.is_empty() {
        if r.heal_suppressed {
            notes.push("heal storm: backing off, left drifted for now".to_owned());
        }
        if !r.heal_error.is_empty() {
            notes.push(format!("heal failed: {}", r.heal_error));
        }
        if r.heal_suppressed {
            DriftVerdict::HealSuppressed
        } else {
            DriftVerdict::Drifted
        }
    } else if r.revision == 0 && desired != 0 {
        diff.push(format!("nothing applied, desired revision r{desired}"));
        DriftVerdict::Drifted
    } else if !expected.is_empty() && r.kernel_hash != expected {
        // The agent says in sync, but with something the controller did not compute.
        diff.push(format!(
            "kernel hash {} is not the expected {} for r{}",
            short(r.kernel_hash),
            short(expected),
            r.revision
        ));
        DriftVerdict::Drifted
    } else {
        DriftVerdict::InSync
    };
    if !verdict.is_drift() && desired != 0 && r.revision != desired {
        notes.push(format!(
            "enforces r{}, desired r{desired} (not applied yet)",
            r.revision
        ));
    }
    Attested {
        verdict,
        diff,
        notes,
    }
}

/// What `status` knows of one host, from the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attestation<'a> {
    pub desired_revision: u64,
    pub applied_revision: u64,
    /// The controller's hash for the applied revision ("" = unknown).
    pub expected_hash: &'a str,
    /// The kernel hash the agent last read back.
    pub reported_hash: &'a str,
    /// The agent's last drift report (`None`: none yet).
    pub last_report: Option<DriftVerdict>,
}

/// Drift as the controller sees it in `status`: on the desired revision with a kernel
/// hash that is not the expected one (an absent table included), or the agent's last
/// report says so. A host still on an older revision (a rollout in progress) is not.
pub fn status_drifted(a: &Attestation<'_>) -> bool {
    let mismatch = a.desired_revision != 0
        && a.applied_revision == a.desired_revision
        && !a.expected_hash.is_empty()
        && a.reported_hash != a.expected_hash;
    mismatch || a.last_report.is_some_and(DriftVerdict::is_drift)
}

fn short(h: &str) -> String {
    if h.is_empty() {
        "(no table)".to_owned()
    } else {
        h.chars().take(12).collect()
    }
}

#[cfg(test)]
mod tests;
