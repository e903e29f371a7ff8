//! Health gates, run on a wave's confirmed hosts before the next wave starts:
//!
//! - **attested hash**: already required to confirm a host (its `Hello` attests the
//!   revision and the expected kernel hash);
//! - **no drift**: each host verifies now (`VerifyNow`, through the controller holding
//!   its session if it is another); its kernel must hold the rollout's revision with the
//!   expected hash, nothing else changed;
//! - **denial rate** (with `--max-denial-increase F`): over `--denial-window` after the
//!   wave, a host must not deny more than F times its rate over `--denial-baseline`
//!   before the rollout started (rates under [`FLOOR_PER_S`] count as that floor). The
//!   window counts logged denials plus the log limit's suppressed ones; the baseline only
//!   logged ones, so the gate errs on the side of halting.
//!
//! Pure decisions ([`denial_verdict`]) are unit-tested; the rest reads the store and the
//! sessions.

use super::super::Shared;
use crate::store;
use std::collections::BTreeMap;
use std::time::Duration;

/// Denials per second under which a baseline counts as this (a quiet host must not halt
/// a rollout on its first few scans).
pub const FLOOR_PER_S: f64 = 1.0;
/// How long a host has to answer the drift gate's `VerifyNow`.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(10);
/// Extra wait after the denial window for the agents' last batches (they flush every
/// `--denial-interval`, 1 s by default).
const DELIVERY_SLACK: Duration = Duration::from_millis(2500);

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gates {
    /// 0 = no denial gate.
    pub max_denial_increase: f64,
    pub denial_window: Duration,
    pub denial_baseline: Duration,
    /// When the rollout started (end of the baseline window), ms since the epoch.
    pub started_ms: i64,
}

impl Gates {
    pub fn from_request(
        max_denial_increase: f64,
        window_ms: u64,
        baseline_ms: u64,
    ) -> Result<Self, String> {
        if !(max_denial_increase == 0.0 || max_denial_increase > 1.0)
            || !max_denial_increase.is_finite()
        {
            return Err(format!(
                "--max-denial-increase {max_denial_increase}: must be above 1 (e.g. 10x)"
            ));
        }
        let or = |ms: u64, d: u64| Duration::from_millis(if ms == 0 { d } else { ms });
        Ok(Self {
            max_denial_increase,
            denial_window: or(window_ms, 10_000),
            denial_baseline: or(baseline_ms, 600_000),
            started_ms: store::now_ms(),
        })
    }

    pub fn describe(&self) -> String {
        if self.max_denial_increase > 0.0 {
            format!(
                "drift; denials <= {}x the rate over {} before, observed {} per wave",
                self.max_denial_increase,
                humantime::format_duration(self.denial_baseline),
                humantime::format_duration(self.denial_window)
            )
        } else {
            "drift".to_owned()
        }
    }
}

/// The denial gate for one host: `Some(why)` when it fails.
pub fn denial_verdict(
    baseline_events: u64,
    baseline: Duration,
    window_events: u64,
    window: Duration,
    factor: f64,
) -> Option<String> {
    let per_s = |n: u64, d: Duration| n as f64 / d.as_secs_f64().max(0.001);
    let before = per_s(baseline_events, baseline);
    let after = per_s(window_events, window);
    let limit = before.max(FLOOR_PER_S) * factor;
    (after > limit).then(|| {
        format!(
            "denial rate {after:.1}/s over {} after the wave, above {factor}x the pre-rollout \
             {before:.2}/s (limit {limit:.1}/s)",
            humantime::format_duration(window)
        )
    })
}

/// Runs the gates for `hosts` (confirmed on `revision` with `expected` kernel hashes).
/// Returns the hosts that failed, with why. `abort` set: the denial window ends early.
pub async fn check(
    shared: &Shared,
    gates: &Gates,
    revision: u64,
    hosts: &[String],
    expected: &BTreeMap<String, String>,
    abort: &std::sync::atomic::AtomicBool,
) -> Vec<(String, String)> {
    if hosts.is_empty() {
        return Vec::new();
    }
    // Denial counters at the start of the window (the window runs while drift is checked).
    let start = if gates.max_denial_increase > 0.0 {
        Some((store::now_ms(), suppressed(shared, hosts).await))
    } else {
        None
    };
    let mut failed = Vec::new();
    for (host, answer) in super::super::drift::verify_anywhere(shared, hosts, VERIFY_TIMEOUT).await
    {
        let why = match answer {
            Err(why) => Some(format!("drift gate: cannot verify: {why}")),
            Ok((r, _)) => {
                let want = expected.get(&host).map_or("", String::as_str);
                if r.revision != revision {
                    Some(format!(
                        "drift gate: enforces r{}, not r{revision}",
                        r.revision
                    ))
                } else if !r.in_sync || !r.diff.is_empty() || r.healed {
                    Some(format!("drift gate: kernel drifted: {}", r.diff.join("; ")))
                } else if !want.is_empty() && r.kernel_hash != want {
                    Some(format!(
                        "drift gate: kernel hash {} is not the expected {want}",
                        r.kernel_hash
                    ))
                } else {
                    None
                }
            }
        };
        if let Some(why) = why {
            failed.push((host, why));
        }
    }
    if let Some((from_ms, before)) = start {
        let sleep = gates
            .denial_window
            .saturating_sub(Duration::from_millis(
                u64::try_from(store::now_ms() - from_ms).unwrap_or(0),
            ))
            .saturating_add(DELIVERY_SLACK);
        // An abort ends the observation early: the wave's hosts stay on the revision they
        // were confirmed on, and nothing further is judged.
        let until = tokio::time::Instant::now() + sleep;
        while tokio::time::Instant::now() < until {
            if abort.load(std::sync::atomic::Ordering::SeqCst) {
                return failed;
            }
            tokio::time::sleep(Duration::from_millis(100).min(until - tokio::time::Instant::now()))
                .await;
        }
        let to_ms = from_ms + i64::try_from(gates.denial_window.as_millis()).unwrap_or(i64::MAX);
        let after = suppressed(shared, hosts).await;
        let (b_from, b_to) = (
            gates.started_ms - i64::try_from(gates.denial_baseline.as_millis()).unwrap_or(i64::MAX),
            gates.started_ms,
        );
        let hs = hosts.to_vec();
        let counts = shared
            .store
            .call(move |c| {
                let mut out = BTreeMap::new();
                for h in &hs {
                    let base = store::logged_between(c, h, b_from, b_to)?;
                    let win = store::logged_between(c, h, from_ms, to_ms)?;
                    out.insert(h.clone(), (base, win));
                }
                Ok(out)
            })
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "denial gate: reading the denial log failed");
                BTreeMap::new()
            });
        for h in hosts {
            let Some((base, win)) = counts.get(h) else {
                failed.push((h.clone(), "denial gate: denial log unreadable".to_owned()));
                continue;
            };
            let extra = after
                .get(h)
                .copied()
                .unwrap_or(0)
                .saturating_sub(before.get(h).copied().unwrap_or(0));
            if let Some(why) = denial_verdict(
                *base,
                gates.denial_baseline,
                win + extra,
                gates.denial_window,
                gates.max_denial_increase,
            ) {
                failed.push((h.clone(), format!("denial gate: {why}")));
            }
        }
    }
    failed.sort();
    failed
}

/// Denials suppressed by the log limit so far, per host (agents' cumulative counters).
async fn suppressed(shared: &Shared, hosts: &[String]) -> BTreeMap<String, u64> {
    let hs = hosts.to_vec();
    shared
        .store
        .call(move |c| {
            Ok(store::denial_totals(c, Some(&hs))?
                .into_iter()
                .map(|t| (t.host, t.kernel_suppressed))
                .collect())
        })
        .await
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn quiet_hosts_use_the_floor_and_busy_hosts_their_rate() {
        // Quiet before (floor 1/s): 10x allows 10/s.
        assert!(denial_verdict(0, 600 * S, 90, 10 * S, 10.0).is_none());
        let why = denial_verdict(0, 600 * S, 200, 10 * S, 10.0).expect("fails");
        assert!(
            why.contains("20.0/s") && why.contains("limit 10.0/s"),
            "{why}"
        );
        // 5/s before: 10x allows 50/s.
        assert!(denial_verdict(3000, 600 * S, 400, 10 * S, 10.0).is_none());
        assert!(denial_verdict(3000, 600 * S, 600, 10 * S, 10.0).is_some());
    }

    #[test]
    fn factor_must_be_above_one() {
        assert!(Gates::from_request(0.0, 0, 0).is_ok());
        assert!(Gates::from_request(10.0, 0, 0).is_ok());
        assert!(Gates::from_request(1.0, 0, 0).is_err());
        assert!(Gates::from_request(f64::NAN, 0, 0).is_err());
        let g = Gates::from_request(2.0, 0, 0).expect("ok");
        assert_eq!(g.denial_window, 10 * S);
    }
}
