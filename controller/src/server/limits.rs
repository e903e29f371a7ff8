//! Budgets of the gRPC surface: message sizes per service, HTTP/2 streams per connection,
//! and per-session token buckets on what an agent may send unasked (`Heartbeat`,
//! `DenialBatch`, `DriftReport`, `Reverted`, `Applied`). A session that exceeds a bucket is
//! ended with `RESOURCE_EXHAUSTED`; other sessions never wait for it.
//!
//! The bucket is pure (the clock is a parameter) so its edge cases are unit tests.

use std::time::{Duration, Instant};

/// Largest message an agent may send (a `DenialBatch` of 20,000 IPv6 entries is ~3 MB).
pub const SESSION_MAX_DECODE: usize = portcullis_proto::SESSION_MAX_MESSAGE_BYTES;
/// Largest message sent to an agent (`Desired` is a few KiB, up to tens of MB with full
/// address lists; deltas are small).
pub const SESSION_MAX_ENCODE: usize = portcullis_proto::DESIRED_MAX_MESSAGE_BYTES;
/// Largest admin request: `Apply` carries a site file and an inventory, each within the
/// YAML budget (32 MiB), its address-list files (within their budget), plus the rest.
pub const ADMIN_MAX_DECODE: usize = 2 * portcullis_policy::budget::MAX_DOCUMENT_BYTES
    + portcullis_policy::addrlist::MAX_TOTAL_LIST_BYTES
    + (1 << 20);
/// Largest admin response (`Status` of 100,000 hosts is ~20-30 MB).
pub const ADMIN_MAX_ENCODE: usize = 256 << 20;
/// Concurrent HTTP/2 streams per connection (an agent uses one, the CLI one or two).
pub const MAX_CONCURRENT_STREAMS: u32 = 16;
/// Bytes of request headers (HTTP/2 header list) accepted per request.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 << 10;

/// A token bucket: `burst` tokens, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

/// What one agent session may send. The agent sends a heartbeat every 15 s by default, one
/// denial batch per second (plus its spool after a reconnect: bursts), drift reports on
/// ruleset events and `VerifyNow`, and `Reverted`/`Applied` once per revision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SessionRates {
    pub heartbeat: Rate,
    pub denials: Rate,
    pub drift: Rate,
    pub reverted: Rate,
    pub applied: Rate,
}

impl Default for SessionRates {
    fn default() -> Self {
        Self {
            heartbeat: Rate {
                per_second: 2.0,
                burst: 30.0,
            },
            // A reconnecting agent resends its whole spool (64 MiB by default) at once.
            denials: Rate {
                per_second: 200.0,
                burst: 20_000.0,
            },
            drift: Rate {
                per_second: 5.0,
                burst: 300.0,
            },
            reverted: Rate {
                per_second: 1.0,
                burst: 30.0,
            },
            applied: Rate {
                per_second: 5.0,
                burst: 100.0,
            },
        }
    }
}

/// One bucket's state.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: Rate,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn new(rate: Rate, now: Instant) -> Self {
        Self {
            rate,
            tokens: rate.burst,
            at: now,
        }
    }

    /// Take one token at `now`; `false` when the bucket is empty (the sender is over its
    /// rate). A clock that went backwards refills nothing.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at);
        self.at = self.at.max(now);
        self.tokens =
            (self.tokens + elapsed.as_secs_f64() * self.rate.per_second).min(self.rate.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The buckets of one session, by message kind.
#[derive(Debug, Clone)]
pub struct SessionBuckets {
    heartbeat: Bucket,
    denials: Bucket,
    drift: Bucket,
    reverted: Bucket,
    applied: Bucket,
}

/// The message kinds that are rate limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Heartbeat,
    DenialBatch,
    DriftReport,
    Reverted,
    Applied,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Heartbeat => "Heartbeat",
            Kind::DenialBatch => "DenialBatch",
            Kind::DriftReport => "DriftReport",
            Kind::Reverted => "Reverted",
            Kind::Applied => "Applied",
        }
    }
}

impl SessionBuckets {
    pub fn new(rates: &SessionRates, now: Instant) -> Self {
        Self {
            heartbeat: Bucket::new(rates.heartbeat, now),
            denials: Bucket::new(rates.denials, now),
            drift: Bucket::new(rates.drift, now),
            reverted: Bucket::new(rates.reverted, now),
            applied: Bucket::new(rates.applied, now),
        }
    }

    /// Take a token for a message of `kind`; `Err` names the limit that was exceeded.
    pub fn take(&mut self, kind: Kind, now: Instant) -> Result<(), String> {
        let b = match kind {
            Kind::Heartbeat => &mut self.heartbeat,
            Kind::DenialBatch => &mut self.denials,
            Kind::DriftReport => &mut self.drift,
            Kind::Reverted => &mut self.reverted,
            Kind::Applied => &mut self.applied,
        };
        if b.take(now) {
            return Ok(());
        }
        Err(format!(
            "too many {} messages: more than {} at once or {}/s sustained; session ended",
            kind.name(),
            b.rate.burst,
            b.rate.per_second
        ))
    }
}

/// How long to wait before the next message is allowed (for tests and logs).
pub fn refill_time(rate: Rate) -> Duration {
    Duration::from_secs_f64(1.0 / rate.per_second.max(f64::MIN_POSITIVE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let rate = Rate {
            per_second: 2.0,
            burst: 3.0,
        };
        let mut b = Bucket::new(rate, t0);
        assert!(b.take(t0) && b.take(t0) && b.take(t0));
        assert!(!b.take(t0), "the burst is spent");
        assert!(!b.take(t0 + Duration::from_millis(400)));
        assert!(b.take(t0 + refill_time(rate)), "one token after 500 ms");
        // A long pause refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(3600);
        assert!(b.take(later) && b.take(later) && b.take(later));
        assert!(!b.take(later));
    }

    #[test]
    fn a_clock_going_backwards_refills_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let rate = Rate {
            per_second: 1.0,
            burst: 1.0,
        };
        let mut b = Bucket::new(rate, t0);
        assert!(b.take(t0));
        assert!(!b.take(t0 - Duration::from_secs(5)));
        assert!(!b.take(t0 + Duration::from_millis(500)));
        assert!(b.take(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn session_buckets_are_per_kind_and_name_the_limit() {
        let t0 = Instant::now();
        let mut s = SessionBuckets::new(&SessionRates::default(), t0);
        for _ in 0..30 {
            s.take(Kind::Heartbeat, t0)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let e = s.take(Kind::Heartbeat, t0).unwrap_err();
        assert!(e.starts_with("too many Heartbeat messages"), "{e}");
        assert!(
            s.take(Kind::DenialBatch, t0).is_ok(),
            "other kinds are unaffected"
        );
    }
}
