//! Answers bound to their asker: every question the controller puts to an agent carries a
//! random 64-bit id from a CSPRNG ([`random_id`]) and is remembered under (host of the
//! session's certificate, id). An answer is taken only from that host's session for that
//! id; an answer from another host, to an unknown id or to a question already answered
//! is ignored and counted here ([`Unmatched`]; logged, and shown by `status`).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// `Desired` messages sent and not answered yet, kept per host (the newest
/// [`ASKED_PER_HOST`]; an older unanswered one is forgotten).
pub const ASKED_PER_HOST: usize = 16;

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

/// The `Desired` questions put to each host: (random id, revision), until answered.
#[derive(Debug, Default)]
pub struct Asked {
    by_host: Mutex<HashMap<String, VecDeque<(u64, u64)>>>,
}

impl Asked {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<(u64, u64)>>> {
        // Single map operations under the lock: a panic cannot leave it inconsistent.
        self.by_host.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remember a `Desired` for `revision` about to be sent to `host`; returns its id.
    pub fn ask(&self, host: &str, revision: u64) -> u64 {
        let id = random_id();
        let mut map = self.lock();
        let q = map.entry(host.to_owned()).or_default();
        if q.len() >= ASKED_PER_HOST {
            q.pop_front();
        }
        q.push_back((id, revision));
        id
    }

    /// Ask (`id`, `revision`) of `host` again: the same `Desired` is sent once more (with
    /// its address lists in full, after the agent's `need_full`).
    pub fn ask_again(&self, host: &str, id: u64, revision: u64) {
        let mut map = self.lock();
        let q = map.entry(host.to_owned()).or_default();
        if q.len() >= ASKED_PER_HOST {
            q.pop_front();
        }
        q.push_back((id, revision));
    }

    /// Whether (`id`, `revision`) answers a `Desired` sent to `host`; it is consumed.
    pub fn answered(&self, host: &str, id: u64, revision: u64) -> bool {
        if id == 0 {
            return false;
        }
        let mut map = self.lock();
        let Some(q) = map.get_mut(host) else {
            return false;
        };
        let Some(pos) = q.iter().position(|e| *e == (id, revision)) else {
            return false;
        };
        q.remove(pos);
        if q.is_empty() {
            map.remove(host);
        }
        true
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
            ids.windows(2)
                .filter(|w| w[1] == w[0].wrapping_add(1))
                .count()
                < 2,
            "ids look sequential: {ids:?}"
        );
    }

    #[test]
    fn applied_must_answer_a_desired_of_that_host() {
        let asked = Asked::default();
        let id = asked.ask("h1", 7);
        assert!(!asked.answered("h9", id, 7), "another host");
        assert!(!asked.answered("h1", id, 8), "another revision");
        assert!(!asked.answered("h1", id ^ 1, 7), "another id");
        assert!(!asked.answered("h1", 0, 7), "no id");
        assert!(asked.answered("h1", id, 7));
        assert!(!asked.answered("h1", id, 7), "answered twice");
        let first = asked.ask("h1", 1);
        for _ in 0..ASKED_PER_HOST {
            asked.ask("h1", 2);
        }
        assert!(!asked.answered("h1", first, 1), "oldest forgotten");
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
