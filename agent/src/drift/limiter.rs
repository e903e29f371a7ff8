//! [`HealLimiter`]: keeps a heal storm (something re-editing our table in a loop) from
//! turning the agent into a busy loop of nft transactions.
//!
//! At most `burst` heals per `window`; past that, heals are suppressed for a backoff that
//! doubles on each suppression (up to `max_backoff`) and resets once a whole window passes
//! without a heal. Pure: time is passed in, so it is unit-tested without sleeping.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct HealLimiter {
    burst: usize,
    window: Duration,
    min_backoff: Duration,
    max_backoff: Duration,
    backoff: Duration,
    recent: VecDeque<Instant>,
    suppressed_until: Option<Instant>,
}

/// Whether a heal may run now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealDecision {
    Allowed,
    /// Heal storm: retry at this instant.
    Suppressed {
        until: Instant,
    },
}

impl HealLimiter {
    /// `burst` heals per `window`, then backoff from `min_backoff` doubling to `max_backoff`.
    pub fn new(
        burst: usize,
        window: Duration,
        min_backoff: Duration,
        max_backoff: Duration,
    ) -> Self {
        Self {
            burst: burst.max(1),
            window,
            min_backoff,
            max_backoff: max_backoff.max(min_backoff),
            backoff: min_backoff,
            recent: VecDeque::new(),
            suppressed_until: None,
        }
    }

    fn expire(&mut self, now: Instant) {
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.window)
        {
            self.recent.pop_front();
        }
        if self.recent.is_empty() && self.suppressed_until.is_none_or(|u| now >= u) {
            self.backoff = self.min_backoff;
        }
    }

    /// Asks whether a heal may run at `now` (does not record one).
    pub fn decide(&mut self, now: Instant) -> HealDecision {
        self.expire(now);
        if let Some(until) = self.suppressed_until {
            if now < until {
                return HealDecision::Suppressed { until };
            }
            self.suppressed_until = None;
            // Backoff over: one heal allowed, the next storm backs off longer.
            return HealDecision::Allowed;
        }
        if self.recent.len() < self.burst {
            return HealDecision::Allowed;
        }
        let until = now + self.backoff;
        self.suppressed_until = Some(until);
        self.backoff = (self.backoff * 2).min(self.max_backoff);
        HealDecision::Suppressed { until }
    }

    /// Records a heal that ran at `now`.
    pub fn record(&mut self, now: Instant) {
        self.recent.push_back(now);
        while self.recent.len() > self.burst {
            self.recent.pop_front();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn limiter() -> HealLimiter {
        HealLimiter::new(
            3,
            Duration::from_secs(60),
            Duration::from_secs(5),
            Duration::from_secs(40),
        )
    }

    #[test]
    fn allows_a_burst_then_backs_off_exponentially() {
        let mut l = limiter();
        let t0 = Instant::now();
        for i in 0..3 {
            let now = t0 + Duration::from_secs(i);
            assert_eq!(l.decide(now), HealDecision::Allowed);
            l.record(now);
        }
        let now = t0 + Duration::from_secs(3);
        assert_eq!(
            l.decide(now),
            HealDecision::Suppressed {
                until: now + Duration::from_secs(5)
            }
        );
        // Still suppressed before the deadline.
        assert!(matches!(
            l.decide(now + Duration::from_secs(4)),
            HealDecision::Suppressed { .. }
        ));
        // One heal after the backoff, then a longer backoff.
        let later = now + Duration::from_secs(5);
        assert_eq!(l.decide(later), HealDecision::Allowed);
        l.record(later);
        assert_eq!(
            l.decide(later),
            HealDecision::Suppressed {
                until: later + Duration::from_secs(10)
            }
        );
    }

    #[test]
    fn backoff_is_capped_and_resets_after_a_quiet_window() {
        let mut l = limiter();
        let mut now = Instant::now();
        for _ in 0..3 {
            l.record(now);
        }
        let mut last = Duration::ZERO;
        for _ in 0..6 {
            match l.decide(now) {
                HealDecision::Suppressed { until } => {
                    last = until - now;
                    now = until;
                }
                HealDecision::Allowed => l.record(now),
            }
        }
        assert!(last <= Duration::from_secs(40), "{last:?}");
        // A quiet window: back to the full burst and the shortest backoff.
        now += Duration::from_secs(120);
        for _ in 0..3 {
            assert_eq!(l.decide(now), HealDecision::Allowed);
            l.record(now);
        }
        assert_eq!(
            l.decide(now),
            HealDecision::Suppressed {
                until: now + Duration::from_secs(5)
            }
        );
    }
}
