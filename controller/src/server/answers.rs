//! Answers bound to their asker: every question the controller puts to an agent carries a
//! random 64-bit id from a CSPRNG ([`random_id`]) and is remembered under (host of the
//! session's certificate, id). An answer is taken only from that host's session for that
//! id; an answer from another host, to an unknown id or to a question already answered
//! is ignored and counted here ([`Unmatched`]; logged, and shown by `status`).

use std::sync::atomic::{AtomicU64, Ordering};

/// A request id: random, never 0 (0 means "not an answer" on the wire).
pub fn random_id() -> u64 {
    loop {
        // ThreadRng: ChaCha12 seeded from the OS, reseeded periodically (a CSPRNG).
        let id: u64 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

/// Which kind of answer matched nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `DriftReport` with a `request_id` no `VerifyNow` to this host carries.
    Drift,
    /// `Applied` for a revision this host was not sent (`Desired`).
    Applied,
    /// `Reverted` for a revision this host was not asked to confirm.
    Reverted,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Drift => "DriftReport",
            Kind::Applied => "Applied",
            Kind::Reverted => "Reverted",
        }
    }
}

/// Counters of ignored answers.
#[derive(Debug, Default)]
pub struct Unmatched {
    drift: AtomicU64,
    applied: AtomicU64,
    reverted: AtomicU64,
}

impl Unmatched {
    /// Count and log an ignored answer.
    pub fn count(&self, kind: Kind, host: &str, id: u64) {
        let counter = match kind {
            Kind::Drift => &self.drift,
            Kind::Applied => &self.applied,
            Kind::Reverted => &self.reverted,
        };
        let total = counter.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(%host, answer = kind.as_str(), id, total,
            "answer matches no question put to this host: ignored");
    }

    /// Ignored answers of `kind` so far.
    pub fn get(&self, kind: Kind) -> u64 {
        match kind {
            Kind::Drift => &self.drift,
            Kind::Applied => &self.applied,
            Kind::Reverted => &self.reverted,
        }
        .load(Ordering::Relaxed)
    }

    /// All ignored answers so far.
    pub fn total(&self) -> u64 {
        [Kind::Drift, Kind::Applied, Kind::Reverted]
            .iter()
            .map(|k| self.get(*k))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_nonzero_and_not_sequential() {
        let ids: Vec<u64> = (0..64).map(|_| random_id()).collect();
        assert!(ids.iter().all(|id| *id != 0));
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len(), "64 random ids collide");
        assert!(
            ids.windows(2).filter(|w| w[1] == w[0].wrapping_add(1)).count() < 2,
            "ids look sequential: {ids:?}"
        );
    }

    #[test]
    fn counts_per_kind() {
        let u = Unmatched::default();
        u.count(Kind::Drift, "h9", 7);
        u.count(Kind::Drift, "h9", 8);
        u.count(Kind::Reverted, "h9", 3);
        assert_eq!(u.get(Kind::Drift), 2);
        assert_eq!(u.get(Kind::Applied), 0);
        assert_eq!(u.total(), 3);
    }
}
