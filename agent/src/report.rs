//! What the agent's operations return: plain serializable values, printed by the CLI
//! (`Display` for people, `--json` for machines) and sent by the session to the controller.
//!
//! Values only; no I/O here. Every collection is ordered so output is deterministic.

use portcullis_policy::RulesetHash;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// Result of applying a policy: the kernel now holds this revision, verified by readback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppliedReport {
    pub revision: u64,
    /// Hash of the ruleset read back from the kernel (equal to the compiled one).
    pub hash: RulesetHash,
    /// `false` when the kernel already matched: no transaction was run.
    pub changed: bool,
    /// Hash of what the kernel held before, if our table existed. When the compiled
    /// ruleset differs from last-known-good it is applied without reading the kernel
    /// first, and this is last-known-good's hash (what the kernel was last verified to hold).
    pub previous_hash: Option<RulesetHash>,
    /// Semantic changes from the previous table (as for `previous_hash`) to the new one
    /// (empty if unchanged; `table created` when there was none).
    pub diff: Vec<String>,
    pub rules: usize,
    pub set_elements: usize,
    /// Wall time of the whole reconcile, milliseconds.
    pub elapsed_ms: u64,
}

impl fmt::Display for AppliedReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.changed { "applied" } else { "unchanged" };
        writeln!(
            f,
            "{what}: revision {} hash {} ({} rules, {} set elements, {} ms)",
            self.revision, self.hash, self.rules, self.set_elements, self.elapsed_ms
        )?;
        for line in &self.diff {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// Outcome of comparing the kernel with last-known-good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyStatus {
    /// The kernel holds exactly the last-known-good ruleset.
    InSync,
    /// The kernel differs (or our table is gone).
    Drifted,
    /// Nothing was ever applied (no last-known-good record).
    NothingApplied,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub status: VerifyStatus,
    pub revision: Option<u64>,
    pub expected_hash: Option<RulesetHash>,
    /// `None` when our table is absent.
    pub actual_hash: Option<RulesetHash>,
    /// Semantic differences, expected -> actual.
    pub diff: Vec<String>,
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            VerifyStatus::NothingApplied => writeln!(f, "nothing applied yet"),
            VerifyStatus::InSync => writeln!(
                f,
                "in sync: revision {} hash {}",
                opt(&self.revision),
                opt(&self.expected_hash)
            ),
            VerifyStatus::Drifted => {
                writeln!(
                    f,
                    "DRIFT: revision {} expected hash {}, kernel has {}",
                    opt(&self.revision),
                    opt(&self.expected_hash),
                    self.actual_hash
                        .as_ref()
                        .map_or("no table".to_owned(), ToString::to_string)
                )?;
                for line in &self.diff {
                    writeln!(f, "  {line}")?;
                }
                Ok(())
            }
        }
    }
}

/// One rule of our table with its counter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleStatus {
    pub index: usize,
    pub rule: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Last-known-good, as shown by `show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LkgSummary {
    pub revision: u64,
    pub hash: RulesetHash,
    pub applied_at: String,
}

/// What `show` prints: our table in the kernel, its counters and sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShowReport {
    pub table_present: bool,
    pub last_known_good: Option<LkgSummary>,
    /// Hash of the kernel's table (`None` when absent).
    pub kernel_hash: Option<RulesetHash>,
    /// Whether the kernel matches last-known-good (`None` when nothing was applied).
    pub in_sync: Option<bool>,
    /// `enforce` or `audit`, from last-known-good.
    pub mode: Option<String>,
    /// Packets that hit the deny rules (in audit mode: that *would* have been denied).
    pub deny_packets: u64,
    /// Rules per chain, in order.
    pub chains: BTreeMap<String, Vec<RuleStatus>>,
    /// Element count per set.
    pub sets: BTreeMap<String, usize>,
    /// Set when `restore` failed closed and no real revision was applied since.
    pub fail_closed: Option<crate::restore::FailClosed>,
}

impl fmt::Display for ShowReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(fc) = &self.fail_closed {
            writeln!(f, "FAIL-CLOSED: {fc}")?;
        }
        if !self.table_present {
            writeln!(f, "table inet portcullis: absent")?;
        } else {
            writeln!(
                f,
                "table inet portcullis: present, hash {}",
                opt(&self.kernel_hash)
            )?;
        }
        match &self.last_known_good {
            Some(l) => writeln!(
                f,
                "last-known-good: revision {} hash {} applied {} ({})",
                l.revision,
                l.hash,
                l.applied_at,
                match self.in_sync {
                    Some(true) => "in sync",
                    _ => "DRIFT",
                }
            )?,
            None => writeln!(f, "last-known-good: none")?,
        }
        if let Some(mode) = &self.mode {
            writeln!(f, "mode: {mode}, deny packets: {}", self.deny_packets)?;
        }
        for (name, size) in &self.sets {
            writeln!(f, "set {name}: {size} elements")?;
        }
        for (chain, rules) in &self.chains {
            writeln!(f, "chain {chain}:")?;
            for r in rules {
                writeln!(
                    f,
                    "  [{}] {:>10} pkts {:>12} bytes  {}",
                    r.index, r.packets, r.bytes, r.rule
                )?;
            }
        }
        Ok(())
    }
}

fn opt<T: fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or("-".to_owned(), ToString::to_string)
}
