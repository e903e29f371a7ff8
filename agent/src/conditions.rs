//! Conditions: what is wrong with this agent right now that does not stop it enforcing
//! (a denial pipeline that cannot start, a host that failed closed). Subsystems set and
//! clear them by key; the session sends them in every `Hello` and `Heartbeat`, so the
//! controller's `status` shows them. Sorted by key (deterministic output).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Shared, cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Conditions(Arc<Mutex<BTreeMap<&'static str, String>>>);

impl Conditions {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets (or replaces) the condition of subsystem `key`.
    pub fn set(&self, key: &'static str, text: impl Into<String>) {
        self.map().insert(key, text.into());
    }

    /// The subsystem `key` is fine again.
    pub fn clear(&self, key: &'static str) {
        self.map().remove(key);
    }

    /// The keys of the subsystems failing now, sorted.
    pub fn keys(&self) -> Vec<&'static str> {
        self.map().keys().copied().collect()
    }

    /// `key: text` lines, sorted by key.
    pub fn lines(&self) -> Vec<String> {
        self.map()
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_replace_clear_sorted() {
        let c = Conditions::default();
        c.set("z", "last");
        c.set("denials", "one");
        c.set("denials", "two");
        assert_eq!(c.clone().lines(), vec!["denials: two", "z: last"]);
        c.clear("denials");
        assert_eq!(c.lines(), vec!["z: last"]);
    }
}
