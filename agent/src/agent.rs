//! [`Agent`]: the reconcile loop's operations over a [`Dataplane`] and a [`StateDir`].
//!
//! `reconcile` = compile -> apply (one transaction, only if needed) -> read back -> parse ->
//! compare semantically (must be equal) -> hash -> persist last-known-good. The kernel is
//! read before applying only when the compiled ruleset equals last-known-good (is there
//! drift to heal?); then that one readback is also the verification when nothing changed.
//! While nft applies, a second thread hashes the ruleset and writes (and syncs) the record
//! it becomes to a temporary file; the record is replaced by it only once the readback
//! verified the kernel. `verify` compares the kernel with last-known-good; `show` reports
//! our table and counters; `remove` deletes our table.
//!
//! Synchronous on purpose (nft is a short-lived process); async callers use the `*_async`
//! wrappers, which gather facts from the agent's [`FactSource`] (rtnetlink unless
//! [`Agent::with_facts`] replaced it) and run the rest on a blocking thread.
//! Nothing here touches a table other than ours, and nothing is persisted unless the kernel
//! was verified to hold it.

use crate::dataplane::{Dataplane, DataplaneError, KernelTable};
use crate::facts::{FactSource, NetlinkFacts};
use crate::report::{
    AppliedReport, LkgSummary, RuleStatus, ShowReport, VerifyReport, VerifyStatus,
};
use crate::state::{LastKnownGood, PreparedRecord, StateDir, StateError};
use portcullis_policy::ruleset::SetDigests;
use portcullis_policy::{
    CompileError, Facts, HostPolicy, Mode, Plan, ReadbackError, RuleCounter, Ruleset, RulesetDiff,
    RulesetHash, compile, diff, plan,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// Why an agent operation failed. Whatever the cause, a failed apply leaves the kernel as
/// it was (the transaction is atomic) and last-known-good untouched.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("compile: {0}")]
    Compile(#[from] CompileError),
    #[error("nftables: {0}")]
    Dataplane(#[from] DataplaneError),
    #[error("cannot parse the kernel's table: {0}")]
    Readback(#[from] ReadbackError),
    #[error("state: {0}")]
    State(#[from] StateError),
    #[error("facts: {0}")]
    Facts(#[from] crate::facts::FactsError),
    #[error("table inet portcullis is missing right after a successful apply")]
    MissingAfterApply,
    /// The kernel accepted the batch but reads back different from what was compiled.
    #[error("the kernel's table differs from the compiled ruleset after apply:\n  {}",
            .diff.join("\n  "))]
    Mismatch { diff: Vec<String> },
    #[error("background task failed: {0}")]
    Join(String),
}

/// File in the state directory: `<boot id> <generation>` verified last.
const GENERATION_FILE: &str = "verified-generation";

/// This boot's id (`/proc/sys/kernel/random/boot_id`).
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Whether `rs`'s jump rule selects the interface `policy` selects with `facts`.
fn same_interface(rs: &Ruleset, policy: &HostPolicy, facts: &Facts) -> bool {
    let jump = rs
        .chains
        .get(portcullis_policy::compile::CHAIN_INPUT)
        .and_then(|c| c.rules.first());
    let Some(portcullis_policy::ruleset::Rule::Jump {
        iifname: Some(m), ..
    }) = jump
    else {
        return false;
    };
    portcullis_policy::compile::input_interface(policy, facts).is_ok_and(|want| want == *m)
}

/// The agent's operations. Cheap to clone (shared dataplane, a path).
#[derive(Debug, Clone)]
pub struct Agent {
    dataplane: Arc<dyn Dataplane>,
    state: StateDir,
    /// Serializes kernel operations (apply, verify, heal) of every clone, so a drift check
    /// never sees an apply half done, and a heal never overwrites a newer revision.
    op: Arc<Mutex<()>>,
    /// The NFLOG group of the policy last applied (`None` before the first apply): what
    /// the denial pipeline reads.
    log_group: Arc<tokio::sync::watch::Sender<Option<u16>>>,
    /// Apply and verify durations (Prometheus, `run --metrics-listen`).
    metrics: crate::metrics::Instruments,
    /// The ruleset generation right after our last verified change (a full readback, or
    /// a list delta of ours with its elements checked): a list delta is taken only while
    /// the kernel is still at it, i.e. nobody committed anything since.
    verified_generation: Arc<Mutex<Option<u32>>>,
    /// The set digests of the ruleset last applied, with its hash: a list delta rehashes
    /// only the sets it changed ([`Ruleset::hash_with`]).
    digests: Arc<Mutex<Option<(RulesetHash, SetDigests)>>>,
    /// Where facts come from for the async operations (rtnetlink unless replaced).
    facts: Arc<dyn FactSource>,
}

impl Agent {
    pub fn new(dataplane: Arc<dyn Dataplane>, state: StateDir) -> Self {
        Self {
            dataplane,
            state,
            op: Arc::new(Mutex::new(())),
            log_group: Arc::new(tokio::sync::watch::channel(None).0),
            metrics: crate::metrics::Instruments::default(),
            verified_generation: Arc::new(Mutex::new(None)),
            digests: Arc::default(),
            facts: Arc::new(NetlinkFacts),
        }
    }

    /// The same agent, gathering facts from `facts` (e.g. [`crate::facts::FixedFacts`]
    /// for tests and simulated agents) instead of rtnetlink.
    pub fn with_facts(mut self, facts: Arc<dyn FactSource>) -> Self {
        self.facts = facts;
        self
    }

    /// Where this agent's facts come from.
    pub fn facts(&self) -> &Arc<dyn FactSource> {
        &self.facts
    }

    /// Apply and verify durations of every clone.
    pub fn metrics(&self) -> &crate::metrics::Instruments {
        &self.metrics
    }

    /// The NFLOG group of the policy last applied by any clone, updated on every
    /// successful apply (revert and heal included).
    pub fn log_group(&self) -> tokio::sync::watch::Receiver<Option<u16>> {
        self.log_group.subscribe()
    }

    /// Holds the operation lock (a panic while holding it leaves nothing half-written:
    /// the kernel transaction is atomic and the state file is replaced atomically).
    fn exclusive(&self) -> MutexGuard<'_, ()> {
        self.op.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The dataplane (read-only uses such as coexistence findings).
    pub fn dataplane(&self) -> &Arc<dyn Dataplane> {
        &self.dataplane
    }

    pub fn state(&self) -> &StateDir {
        &self.state
    }

    /// The last-known-good record, if any.
    pub fn last_known_good(&self) -> Result<Option<LastKnownGood>, AgentError> {
        Ok(self.state.load()?)
    }

    fn read_kernel(&self) -> Result<Option<KernelTable>, AgentError> {
        self.dataplane.read_table().map_err(|e| match e {
            DataplaneError::Readback(e) => AgentError::Readback(e),
            e => AgentError::Dataplane(e),
        })
    }

    /// [`Agent::read_kernel`], except that a table we cannot even parse reads as absent
    /// (it is replaced like any other drift).
    fn read_kernel_tolerant(&self) -> Result<Option<KernelTable>, AgentError> {
        match self.read_kernel() {
            Err(AgentError::Readback(e)) => {
                tracing::warn!(error = %e, "unparseable table in the kernel; replacing it");
                Ok(None)
            }
            other => other,
        }
    }

    /// Makes the kernel hold `policy` compiled against `facts` at `revision`, verifies it
    /// by readback and records it as last-known-good.
    pub fn reconcile(
        &self,
        policy: &HostPolicy,
        facts: &Facts,
        revision: u64,
    ) -> Result<AppliedReport, AgentError> {
        let _op = self.exclusive();
        let started = Instant::now();
        let result = self.reconcile_locked(policy, facts, revision);
        self.metrics.applied(&result, started.elapsed());
        result
    }

    /// [`Agent::reconcile`] for a caller that holds the operation lock.
    fn reconcile_locked(
        &self,
        policy: &HostPolicy,
        facts: &Facts,
        revision: u64,
    ) -> Result<AppliedReport, AgentError> {
        let started = Instant::now();
        let _lock = self.state.lock()?;
        // What the kernel was last verified to hold (a corrupt record counts as none).
        let current = self.state.load_shared().ok().flatten();
        // Only list contents changed, and the kernel is as we left it: element deltas.
        if let Some(c) = current.as_ref()
            && c.revision != revision
            && same_interface(&c.ruleset, policy, facts)
            && let Some(d) = delta::list_delta(&c.policy, &c.ruleset, policy)
            && !d.sets.is_empty()
            && self.kernel_as_verified()
        {
            match self.apply_delta(c, d, policy, revision, started) {
                Ok(report) => return Ok(report),
                Err(e) => {
                    tracing::warn!(error = %e, "list delta not applied; replacing the table");
                }
            }
        }
        let desired = compile(policy, facts, revision)?;
        let (changes, previous_hash, readback, prepared) =
            match current.as_ref().filter(|c| c.ruleset == desired) {
                // The same ruleset as last verified: one readback decides whether a
                // transaction is needed (drift) and, when it is not, is the verification.
                Some(_) => {
                    let before = self.read_kernel_tolerant()?;
                    let previous_hash = before.as_ref().map(|k| k.ruleset.hash());
                    match plan(&desired, before.as_ref().map(|k| &k.ruleset)) {
                        Plan::Unchanged => (Vec::new(), previous_hash, before, None),
                        Plan::Create(to) => {
                            let prepared = self.apply_preparing(&to, policy, revision)?;
                            (
                                vec![CREATED.to_owned()],
                                previous_hash,
                                None,
                                Some(prepared),
                            )
                        }
                        Plan::Replace { to, diff } => {
                            let prepared = self.apply_preparing(&to, policy, revision)?;
                            (lines(&diff), previous_hash, None, Some(prepared))
                        }
                    }
                }
                // A different ruleset is applied whatever the kernel holds, so no readback
                // before it (on a hand-edited table it is `nft -j list`, which at 10k
                // elements costs more than the apply): the diff and previous hash are
                // against the last verified ruleset, and the readback below verifies the
                // kernel.
                None => {
                    let prepared = self.apply_preparing(&desired, policy, revision)?;
                    match &current {
                        Some(c) => (
                            lines(&diff(&desired, &c.ruleset)),
                            Some(c.hash.clone()),
                            None,
                            Some(prepared),
                        ),
                        None => (vec![CREATED.to_owned()], None, None, Some(prepared)),
                    }
                }
            };
        let changed = prepared.is_some();
        // Unchanged: the readback before is the verification, and its hash is known.
        let (actual, known_hash) = match readback {
            Some(k) => (k.ruleset, previous_hash.clone()),
            None => (
                self.read_kernel()?
                    .ok_or(AgentError::MissingAfterApply)?
                    .ruleset,
                None,
            ),
        };
        let mismatch = diff(&desired, &actual);
        if !mismatch.is_empty() {
            // `prepared` is dropped: the record stays what it was.
            return Err(AgentError::Mismatch {
                diff: lines(&mismatch),
            });
        }
        // Equal rulesets hash equal: the prepared record's hash (the compiled ruleset's,
        // computed during the apply) is the kernel's when they are identical.
        let prepared = prepared.filter(|p| p.record().ruleset == actual);
        let hash = match (&prepared, known_hash) {
            (Some(p), _) => p.record().hash.clone(),
            (None, Some(h)) => h,
            (None, None) => actual.hash(),
        };
        if actual != desired {
            tracing::warn!(%hash, compiled = %desired.hash(),
                "readback equal to compiled ruleset but not identical");
        }
        let same = current
            .as_ref()
            .is_some_and(|c| c.revision == revision && c.hash == hash && c.policy == *policy);
        match prepared {
            Some(p) => p.commit()?,
            None if changed || !same => {
                let lkg = LastKnownGood::with_hash(policy.clone(), revision, actual, hash.clone());
                self.state.store_shared(Arc::new(lkg))?;
            }
            None => {}
        }
        // Verified and recorded: list deltas may start from here.
        self.note_generation();
        self.log_group.send_if_modified(|g| {
            let changed = *g != Some(policy.log_group);
            *g = Some(policy.log_group);
            changed
        });
        // A real revision is in force: no longer failed closed (revision 0 is the
        // minimal policy itself).
        if revision != 0
            && let Err(e) = crate::restore::clear_fail_closed(&self.state)
        {
            tracing::warn!(error = %e, "cannot clear the fail-closed record");
        }
        let report = AppliedReport {
            revision,
            hash,
            changed,
            previous_hash,
            diff: changes,
            rules: desired.rule_count(),
            set_elements: desired.element_count(),
            elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        tracing::info!(revision, hash = %report.hash, changed, elapsed_ms = report.elapsed_ms,
            "reconciled");
        Ok(report)
    }

    /// Whether the kernel's ruleset generation is still the one we last verified (in
    /// this process, or recorded by an earlier one in this boot).
    fn kernel_as_verified(&self) -> bool {
        let mut known = *self
            .verified_generation
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if known.is_none() {
            known = self.recorded_generation();
        }
        known.is_some() && matches!(self.dataplane.generation(), Ok(g) if g == known)
    }

    /// Remember the generation the kernel is at now, after a verification.
    fn note_generation(&self) {
        self.set_generation(self.dataplane.generation().ok().flatten());
    }

    /// Keep `g` as the verified generation, in memory and in the state directory (with
    /// the boot id: generations restart at boot), so a later `apply` process can take a
    /// list delta too. `None` forgets it.
    fn set_generation(&self, g: Option<u32>) {
        *self
            .verified_generation
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = g;
        let path = self.state.path().join(GENERATION_FILE);
        // Meaningful only within this boot, so not synced (a power cut starts a new
        // boot); replaced by rename, so another process never reads half of it.
        let result = match (g, boot_id()) {
            (Some(g), Some(boot)) => {
                crate::durable::replace_unsynced(&path, format!("{boot} {g}\n").as_bytes(), 0o600)
            }
            _ => crate::durable::remove(&path),
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "cannot record the verified ruleset generation");
        }
    }

    /// The generation an earlier process of this boot recorded.
    fn recorded_generation(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.state.path().join(GENERATION_FILE)).ok()?;
        let (boot, g) = text.trim().split_once(' ')?;
        (Some(boot) == boot_id().as_deref()).then(|| g.parse().ok())?
    }

    /// A list delta: `changes` in one transaction, the changed elements checked in the
    /// kernel, then last-known-good is `current`'s table with them (rules unchanged).
    /// Any failure forgets the verified generation, so the caller's full apply follows.
    fn apply_delta(
        &self,
        current: &Arc<LastKnownGood>,
        delta: delta::ListDelta,
        policy: &HostPolicy,
        revision: u64,
        started: Instant,
    ) -> Result<AppliedReport, AgentError> {
        let forget = || {
            *self
                .verified_generation
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = None
        };
        let changes = &delta.sets;
        let generation = self
            .dataplane
            .update_elements(changes)
            .inspect_err(|_| forget())?;
        let mut wrong = Vec::new();
        for c in changes {
            let present = self
                .dataplane
                .has_elements(&c.set, c.key, &c.add)
                .inspect_err(|_| forget())?;
            let gone = self
                .dataplane
                .has_elements(&c.set, c.key, &c.remove)
                .inspect_err(|_| forget())?;
            let missing = c.add.iter().zip(&present).filter(|(_, p)| !**p);
            let stayed = c.remove.iter().zip(&gone).filter(|(_, p)| **p);
            wrong.extend(
                missing.map(|(e, _)| format!("set {}: {e} missing after the delta", c.set)),
            );
            wrong.extend(
                stayed.map(|(e, _)| format!("set {}: {e} still there after the delta", c.set)),
            );
        }
        if !wrong.is_empty() {
            forget();
            return Err(AgentError::Mismatch { diff: wrong });
        }
        let ruleset = delta
            .record
            .patch_ruleset(&current.ruleset)
            .map_err(|why| {
                forget();
                AgentError::Mismatch {
                    diff: vec![format!(
                        "the delta does not fit the verified ruleset: {why}"
                    )],
                }
            })?;
        // Only the changed sets are rehashed (one shard of a big list).
        let mut digests = self.set_digests(&current.ruleset, &current.hash);
        for name in delta.record.sets.keys() {
            if let Some(set) = ruleset.sets.get(name) {
                digests.insert(name.clone(), set.digest());
            }
        }
        let hash = ruleset.hash_with(&digests);
        self.keep_digests(&hash, digests);
        let (rules, set_elements) = (ruleset.rule_count(), ruleset.element_count());
        let lkg = LastKnownGood::with_hash(policy.clone(), revision, ruleset, hash.clone());
        self.state
            .store_delta(current, delta.record, Arc::new(lkg))?;
        self.set_generation(generation);
        if revision != 0
            && let Err(e) = crate::restore::clear_fail_closed(&self.state)
        {
            tracing::warn!(error = %e, "cannot clear the fail-closed record");
        }
        let report = AppliedReport {
            revision,
            hash,
            changed: true,
            previous_hash: Some(current.hash.clone()),
            diff: delta::describe(changes),
            rules,
            set_elements,
            elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        tracing::info!(revision, hash = %report.hash, changes = changes.len(),
            elapsed_ms = report.elapsed_ms, "list delta applied");
        Ok(report)
    }

    /// The set digests of `ruleset` (whose hash is `hash`): those kept from the last
    /// apply when they are its, else computed.
    fn set_digests(&self, ruleset: &Ruleset, hash: &RulesetHash) -> SetDigests {
        let kept = self.digests.lock().unwrap_or_else(|p| p.into_inner());
        match kept.as_ref() {
            Some((h, d)) if h == hash => d.clone(),
            _ => ruleset.set_digests(),
        }
    }

    /// Keep `digests` (of the ruleset hashing to `hash`) for the next list delta.
    fn keep_digests(&self, hash: &RulesetHash, digests: SetDigests) {
        *self.digests.lock().unwrap_or_else(|p| p.into_inner()) = Some((hash.clone(), digests));
    }

    /// Applies `ruleset` and meanwhile (nft works in its own process) hashes it and writes
    /// the last-known-good record it becomes once verified, as a [`PreparedRecord`] (not
    /// the record yet; dropped, it is deleted). A failed apply drops it.
    fn apply_preparing(
        &self,
        ruleset: &Ruleset,
        policy: &HostPolicy,
        revision: u64,
    ) -> Result<PreparedRecord<'_>, AgentError> {
        std::thread::scope(|s| {
            let preparing = s.spawn(|| {
                let digests = ruleset.set_digests();
                let hash = ruleset.hash_with(&digests);
                self.keep_digests(&hash, digests);
                let lkg = LastKnownGood::with_hash(policy.clone(), revision, ruleset.clone(), hash);
                self.state.prepare(Arc::new(lkg))
            });
            let applied = self.dataplane.replace(ruleset);
            let prepared = preparing
                .join()
                .map_err(|_| AgentError::Join("preparing last-known-good panicked".to_owned()))?;
            applied?;
            Ok(prepared?)
        })
    }

    /// [`Agent::reconcile`] with facts gathered now; for async callers (the session).
    pub async fn apply_policy(
        &self,
        policy: &HostPolicy,
        revision: u64,
    ) -> Result<AppliedReport, AgentError> {
        let facts = self.facts.gather().await?;
        let (agent, policy) = (self.clone(), policy.clone());
        tokio::task::spawn_blocking(move || agent.reconcile(&policy, &facts, revision))
            .await
            .map_err(|e| AgentError::Join(e.to_string()))?
    }

    /// Boot (fail-static): re-applies last-known-good, recompiled with today's facts.
    /// `Ok(None)` when there is none.
    pub async fn restore_last_known_good(&self) -> Result<Option<AppliedReport>, AgentError> {
        match self.state.load()? {
            None => Ok(None),
            Some(lkg) => self.apply_policy(&lkg.policy, lkg.revision).await.map(Some),
        }
    }

    /// The kernel table's hash and rule counters, one readback (`None`: no table).
    pub fn kernel_snapshot(&self) -> Result<Option<(String, Vec<RuleCounter>)>, AgentError> {
        let _op = self.exclusive();
        Ok(self
            .read_kernel()?
            .map(|k| (k.ruleset.hash().0, k.counters)))
    }

    /// Compares the kernel's table with last-known-good.
    pub fn verify(&self) -> Result<VerifyReport, AgentError> {
        let _op = self.exclusive();
        let started = Instant::now();
        let result = self.verify_locked();
        self.metrics.verified(&result, started.elapsed());
        result
    }

    /// [`Agent::verify`] for a caller that holds the operation lock.
    fn verify_locked(&self) -> Result<VerifyReport, AgentError> {
        let Some(lkg) = self.state.load_shared()? else {
            return Ok(VerifyReport {
                status: VerifyStatus::NothingApplied,
                revision: None,
                expected_hash: None,
                actual_hash: None,
                diff: Vec::new(),
            });
        };
        let kernel = self.read_kernel()?;
        let (actual_hash, changes) = match &kernel {
            None => (None, vec!["table inet portcullis is missing".to_owned()]),
            Some(k) => (
                Some(k.ruleset.hash()),
                lines(&diff(&lkg.ruleset, &k.ruleset)),
            ),
        };
        let status = if changes.is_empty() {
            VerifyStatus::InSync
        } else {
            VerifyStatus::Drifted
        };
        Ok(VerifyReport {
            status,
            revision: Some(lkg.revision),
            expected_hash: Some(lkg.hash.clone()),
            actual_hash,
            diff: changes,
        })
    }

    /// Our table in the kernel with counters and set sizes, and last-known-good.
    pub fn show(&self) -> Result<ShowReport, AgentError> {
        let lkg = self.state.load()?;
        let kernel = self.read_kernel()?;
        let mut chains: BTreeMap<String, Vec<RuleStatus>> = BTreeMap::new();
        let mut sets = BTreeMap::new();
        let mut deny_packets = 0;
        if let Some(k) = &kernel {
            for (name, set) in &k.ruleset.sets {
                sets.insert(name.clone(), set.elements.len());
            }
            let counters: BTreeMap<(&str, usize), &RuleCounter> = k
                .counters
                .iter()
                .map(|c| ((c.chain.as_str(), c.index), c))
                .collect();
            for (name, chain) in &k.ruleset.chains {
                let rules = chains.entry(name.clone()).or_default();
                for (index, rule) in chain.rules.iter().enumerate() {
                    let (packets, bytes) = counters
                        .get(&(name.as_str(), index))
                        .map_or((0, 0), |c| (c.packets, c.bytes));
                    if rule.is_deny() {
                        deny_packets += packets;
                    }
                    rules.push(RuleStatus {
                        index,
                        rule: rule.to_string(),
                        packets,
                        bytes,
                    });
                }
            }
        }
        let in_sync = lkg.as_ref().map(|l| {
            kernel
                .as_ref()
                .is_some_and(|k| diff(&l.ruleset, &k.ruleset).is_empty())
        });
        Ok(ShowReport {
            table_present: kernel.is_some(),
            kernel_hash: kernel.as_ref().map(|k| k.ruleset.hash()),
            in_sync,
            mode: lkg.as_ref().map(|l| mode_name(l.policy.mode).to_owned()),
            last_known_good: lkg.map(|l| LkgSummary {
                revision: l.revision,
                hash: l.hash,
                applied_at: l.applied_at,
            }),
            deny_packets,
            chains,
            sets,
            fail_closed: crate::restore::fail_closed(&self.state),
        })
    }

    /// Deletes our table (only ours). With `forget`, also clears last-known-good, so a
    /// restart does not re-apply it and `verify` reports "nothing applied".
    pub fn remove(&self, forget: bool) -> Result<bool, AgentError> {
        let _op = self.exclusive();
        let _lock = self.state.lock()?;
        // The netlink read (a table we cannot parse exists too): `nft -j list` of a
        // million-element table takes longer than nft's deadline.
        let existed = match self.dataplane.read_table() {
            Ok(t) => t.is_some(),
            Err(DataplaneError::Readback(_)) => true,
            Err(e) => return Err(e.into()),
        };
        self.dataplane.remove()?;
        if forget {
            self.state.clear()?;
            if let Err(e) = crate::restore::clear_fail_closed(&self.state) {
                tracing::warn!(error = %e, "cannot clear the fail-closed record");
            }
        }
        tracing::info!(existed, forget, "removed table inet portcullis");
        Ok(existed)
    }
}

/// The change line when there was no table (or no record of one).
const CREATED: &str = "table inet portcullis created";

/// One line per semantic change, in the diff's (deterministic) order.
fn lines(diff: &RulesetDiff) -> Vec<String> {
    diff.changes.iter().map(ToString::to_string).collect()
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Enforce => "enforce",
        Mode::Audit => "audit",
    }
}

pub(crate) mod delta;
mod drift;

pub use drift::DriftCheck;

#[cfg(test)]
mod tests;
