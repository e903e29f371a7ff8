//! Rollout arithmetic and state machine: `--serial 1,10%,50%` (Ansible's `serial`: a list
//! of batch sizes, numbers or percentages of the targeted hosts, the last one repeating),
//! `--max-fail N|N%`, and the [`Rollout`] that says which wave to start next, when to
//! halt and which hosts to roll back.
//!
//! Pure: no clock, no I/O. The controller's engine feeds it host results and executes the
//! [`Step`]s it returns.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RolloutError {
    #[error("--serial {input:?}: {reason} (expected sizes like `1,10%,50%`)")]
    Serial { input: String, reason: String },
    #[error("--max-fail {input:?}: {reason} (expected `N` or `N%`, e.g. `0`, `2`, `10%`)")]
    MaxFail { input: String, reason: String },
}

/// One batch size: a host count or a percentage of the targeted hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSize {
    Count(u32),
    /// 1..=100
    Percent(u8),
}

impl BatchSize {
    /// Hosts in a batch of this size out of `total` (at least 1, like Ansible).
    pub fn resolve(self, total: usize) -> usize {
        let n = match self {
            BatchSize::Count(n) => usize::try_from(n).unwrap_or(usize::MAX),
            BatchSize::Percent(p) => total.saturating_mul(usize::from(p)) / 100,
        };
        n.max(1)
    }
}

impl fmt::Display for BatchSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchSize::Count(n) => write!(f, "{n}"),
            BatchSize::Percent(p) => write!(f, "{p}%"),
        }
    }
}

fn parse_amount(s: &str) -> Result<BatchSize, String> {
    let s = s.trim();
    if let Some(p) = s.strip_suffix('%') {
        let p: u8 = p
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a percentage"))?;
        if p > 100 {
            return Err(format!("{s:?} is over 100%"));
        }
        Ok(BatchSize::Percent(p))
    } else {
        s.parse()
            .map(BatchSize::Count)
            .map_err(|_| format!("{s:?} is not a number or percentage"))
    }
}

/// `--serial`: batch sizes; the last one repeats until every host is in a wave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Serial(pub Vec<BatchSize>);

impl Default for Serial {
    /// One wave with every host.
    fn default() -> Self {
        Serial(vec![BatchSize::Percent(100)])
    }
}

impl FromStr for Serial {
    type Err = RolloutError;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| RolloutError::Serial {
            input: input.to_string(),
            reason,
        };
        if input.trim().is_empty() {
            return Err(err("empty".into()));
        }
        let sizes = input
            .split(',')
            .map(|s| match parse_amount(s) {
                Ok(BatchSize::Count(0) | BatchSize::Percent(0)) => Err(format!(
                    "{:?}: a wave must have at least one host",
                    s.trim()
                )),
                other => other,
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        Ok(Serial(sizes))
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

impl Serial {
    /// Cut `hosts` (in the given order; the caller sorts) into waves.
    pub fn waves(&self, hosts: &[String]) -> Vec<Vec<String>> {
        let total = hosts.len();
        let mut waves = Vec::new();
        let mut at = 0;
        let mut i = 0;
        while at < total {
            let size = self
                .0
                .get(i)
                .or(self.0.last())
                .map_or(total, |s| s.resolve(total));
            let end = at.saturating_add(size).min(total);
            waves.push(hosts[at..end].to_vec());
            at = end;
            i += 1;
        }
        waves
    }
}

/// `--max-fail`: how many failed hosts are tolerated before the rollout halts. `N` counts
/// failures over the whole rollout; `N%` is per wave (Ansible's `max_fail_percentage`:
/// halt when the wave's failed share is *above* N%).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MaxFail(pub BatchSizeOrZero);

/// Like [`BatchSize`] but 0 is allowed (the default: no failure tolerated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSizeOrZero {
    Count(u32),
    Percent(u8),
}

impl Default for BatchSizeOrZero {
    fn default() -> Self {
        BatchSizeOrZero::Count(0)
    }
}

impl FromStr for MaxFail {
    type Err = RolloutError;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        match parse_amount(input) {
            Ok(BatchSize::Count(n)) => Ok(MaxFail(BatchSizeOrZero::Count(n))),
            Ok(BatchSize::Percent(p)) => Ok(MaxFail(BatchSizeOrZero::Percent(p))),
            Err(reason) => Err(RolloutError::MaxFail {
                input: input.to_string(),
                reason,
            }),
        }
    }
}

impl fmt::Display for MaxFail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            BatchSizeOrZero::Count(n) => write!(f, "{n}"),
            BatchSizeOrZero::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl MaxFail {
    /// Whether the failures seen so far halt the rollout.
    pub fn exceeded(self, failed_total: usize, failed_in_wave: usize, wave_size: usize) -> bool {
        match self.0 {
            BatchSizeOrZero::Count(n) => failed_total > usize::try_from(n).unwrap_or(usize::MAX),
            BatchSizeOrZero::Percent(p) => {
                failed_in_wave.saturating_mul(100) > usize::from(p).saturating_mul(wave_size)
            }
        }
    }
}

/// Where a rollout stands; the strings are what the store and the CLI show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RolloutStatus {
    Running,
    Succeeded,
    /// Stopped on failures; the hosts it changed could not all be rolled back.
    Halted,
    /// Stopped on failures; every host it changed is back on its previous revision.
    RolledBack,
    /// Stopped by `portcullis rollout abort`; every host is on a known revision.
    Aborted,
    /// The controller stopped while it ran.
    Interrupted,
}

impl RolloutStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutStatus::Running => "running",
            RolloutStatus::Succeeded => "succeeded",
            RolloutStatus::Halted => "halted",
            RolloutStatus::RolledBack => "rolled_back",
            RolloutStatus::Aborted => "aborted",
            RolloutStatus::Interrupted => "interrupted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            RolloutStatus::Running,
            RolloutStatus::Succeeded,
            RolloutStatus::Halted,
            RolloutStatus::RolledBack,
            RolloutStatus::Aborted,
            RolloutStatus::Interrupted,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

impl fmt::Display for RolloutStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RolloutStatus {
    type Err = crate::protocol::outcome::UnknownSpelling;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s).ok_or_else(|| crate::protocol::outcome::UnknownSpelling {
            what: "rollout status",
            found: s.to_owned(),
        })
    }
}

impl serde::Serialize for RolloutStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// What the engine must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Push to these hosts (wave index from 0).
    StartWave { index: usize, hosts: Vec<String> },
    /// Too many failures: roll `rollback` back (hosts that took the revision), then
    /// finish with [`Rollout::rolled_back`].
    Halt {
        reason: String,
        rollback: Vec<String>,
    },
    /// Nothing left to do.
    Finished(RolloutStatus),
}

/// The per-host outcome the engine reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostResult {
    /// Applied with the expected hash (and confirmed, when a deadline was set).
    Confirmed,
    Failed(String),
    /// Not sent: the rollout was aborted before this host's turn (not a failure).
    Skipped,
}

/// A rollout in progress.
#[derive(Debug, Clone)]
pub struct Rollout {
    waves: Vec<Vec<String>>,
    max_fail: MaxFail,
    /// Index of the wave in flight (or the next one to start).
    wave: usize,
    started: bool,
    aborted: bool,
    results: BTreeMap<String, HostResult>,
    status: RolloutStatus,
    /// A health gate failed after the wave in flight: (reason, hosts that failed it).
    gate: Option<(String, Vec<String>)>,
}

impl Rollout {
    pub fn new(waves: Vec<Vec<String>>, max_fail: MaxFail) -> Self {
        Self {
            waves,
            max_fail,
            wave: 0,
            started: false,
            aborted: false,
            results: BTreeMap::new(),
            status: RolloutStatus::Running,
            gate: None,
        }
    }

    pub fn waves(&self) -> &[Vec<String>] {
        &self.waves
    }

    pub fn status(&self) -> RolloutStatus {
        self.status
    }

    pub fn results(&self) -> &BTreeMap<String, HostResult> {
        &self.results
    }

    /// Record a host's result in the current wave (later results for a host are ignored).
    pub fn record(&mut self, host: &str, result: HostResult) {
        self.results.entry(host.to_string()).or_insert(result);
    }

    /// Stop before the next wave (the wave in flight finishes).
    pub fn abort(&mut self) {
        self.aborted = true;
    }

    /// A health gate failed for `hosts` of the wave in flight (they took the revision):
    /// they count as failed, and the next step halts and rolls back every host changed,
    /// whatever `--max-fail` allows.
    pub fn gate_failed(&mut self, reason: String, hosts: Vec<String>) {
        for h in &hosts {
            self.results
                .insert(h.clone(), HostResult::Failed(reason.clone()));
        }
        match &mut self.gate {
            Some((_, v)) => v.extend(hosts),
            None => self.gate = Some((reason, hosts)),
        }
    }

    fn failed_in(&self, hosts: &[String]) -> usize {
        hosts
            .iter()
            .filter(|h| matches!(self.results.get(*h), Some(HostResult::Failed(_))))
            .count()
    }

    /// Hosts that took the revision in this rollout, sorted.
    pub fn changed(&self) -> Vec<String> {
        self.results
            .iter()
            .filter(|(_, r)| **r == HostResult::Confirmed)
            .map(|(h, _)| h.clone())
            .collect()
    }

    /// Whether the wave in flight already fails the rollout (`--max-fail` exceeded, or a
    /// failed gate): further checks of the wave are moot.
    pub fn would_halt(&self) -> bool {
        if self.gate.is_some() {
            return true;
        }
        let hosts = self.waves.get(self.wave).map_or(&[][..], Vec::as_slice);
        let failed_total = self
            .results
            .values()
            .filter(|r| matches!(r, HostResult::Failed(_)))
            .count();
        self.started
            && self
                .max_fail
                .exceeded(failed_total, self.failed_in(hosts), hosts.len())
    }

    /// The first step (when not started) or the step after the current wave finished:
    /// every host of the wave in flight must have a result before calling this.
    pub fn advance(&mut self) -> Step {
        if self.status != RolloutStatus::Running {
            return Step::Finished(self.status);
        }
        if self.started
            && let Some((reason, failed)) = self.gate.take()
        {
            self.status = RolloutStatus::Halted;
            let mut rollback = self.changed();
            rollback.extend(failed);
            rollback.sort();
            rollback.dedup();
            return Step::Halt {
                reason: format!(
                    "wave {} of {}: health gate failed: {reason}",
                    self.wave + 1,
                    self.waves.len()
                ),
                rollback,
            };
        }
        if self.started {
            let hosts = self.waves.get(self.wave).cloned().unwrap_or_default();
            let failed_total = self
                .results
                .values()
                .filter(|r| matches!(r, HostResult::Failed(_)))
                .count();
            let in_wave = self.failed_in(&hosts);
            if self.max_fail.exceeded(failed_total, in_wave, hosts.len()) {
                self.status = RolloutStatus::Halted;
                return Step::Halt {
                    reason: format!(
                        "wave {} of {}: {in_wave} of {} host(s) failed ({failed_total} in the \
                         rollout), above --max-fail {}",
                        self.wave + 1,
                        self.waves.len(),
                        hosts.len(),
                        self.max_fail
                    ),
                    rollback: self.changed(),
                };
            }
            self.wave += 1;
        }
        self.started = true;
        if self.wave >= self.waves.len() {
            self.status = RolloutStatus::Succeeded;
            return Step::Finished(self.status);
        }
        if self.aborted {
            self.status = RolloutStatus::Aborted;
            return Step::Finished(self.status);
        }
        Step::StartWave {
            index: self.wave,
            hosts: self.waves[self.wave].clone(),
        }
    }

    /// After a [`Step::Halt`]: the rollback finished (`complete`: every changed host is back).
    pub fn rolled_back(&mut self, complete: bool) -> RolloutStatus {
        self.status = if complete {
            RolloutStatus::RolledBack
        } else {
            RolloutStatus::Halted
        };
        self.status
    }
}

#[cfg(test)]
#[path = "rollout_tests.rs"]
mod tests;
