//! The one compile cache: a host policy compiled for a revision, once per distinct
//! (policy, default-route interface) — the only part of a host's facts `compile` reads,
//! so a fleet of thousands of hosts sharing a handful of policies compiles a handful of
//! times. `Apply` compiles every target through it (the rulesets feed the anti-lockout
//! check, the hashes the stored revision), a rollout wave and a rollback through
//! [`super::rollout`]'s `Desireds`, a revision published by another controller through
//! [`super::publish`].
//!
//! The key `K` names a policy cheaply where the caller has a name for it (an index into
//! the apply's distinct policies, the stored policy JSON); equal keys must mean equal
//! policies. Pure: no I/O, no clock.

use portcullis_policy::{CompileError, Facts, HostPolicy, Ruleset, compile};
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

/// A policy compiled for one host: the ruleset (shared by every host of the same
/// (policy, interface)) and the hash its kernel must report.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub ruleset: Arc<Ruleset>,
    pub hash: String,
}

/// Compiles for `revision`, remembering each (policy key, default-route interface).
#[derive(Debug)]
pub struct CompileCache<K> {
    revision: u64,
    compiled: HashMap<(K, Option<String>), Result<Compiled, CompileError>>,
}

impl<K: Hash + Eq> CompileCache<K> {
    pub fn new(revision: u64) -> Self {
        Self {
            revision,
            compiled: HashMap::new(),
        }
    }

    /// The revision every entry is compiled for.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// `policy` (named `key`) compiled for a host with `facts`, or why it does not compile
    /// there.
    pub fn compile(
        &mut self,
        key: K,
        policy: &HostPolicy,
        facts: &Facts,
    ) -> Result<&Compiled, &CompileError> {
        let revision = self.revision;
        self.compiled
            .entry((key, facts.default_route_interface.clone()))
            .or_insert_with(|| {
                compile(policy, facts, revision).map(|r| Compiled {
                    hash: r.hash().0,
                    ruleset: Arc::new(r),
                })
            })
            .as_ref()
    }

    /// The hash the host's kernel must report, or "" if the policy does not compile with
    /// these facts (the agent will report why).
    pub fn expected_hash(&mut self, key: K, policy: &HostPolicy, facts: &Facts) -> String {
        self.compile(key, policy, facts)
            .map(|c| c.hash.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use portcullis_policy::InterfaceFacts;

    fn facts(default_route: &str, addr: &str) -> Facts {
        Facts {
            hostname: "h".into(),
            interfaces: vec![InterfaceFacts {
                name: default_route.into(),
                index: 2,
                up: true,
                addrs: vec![addr.parse().unwrap()],
            }],
            default_route_interface: Some(default_route.into()),
        }
    }

    #[test]
    fn one_compile_per_policy_and_interface_with_the_hash_compile_gives() {
        let policy = HostPolicy::default();
        let mut cache = CompileCache::new(7);
        let a = cache
            .compile(0, &policy, &facts("eth0", "10.0.0.1/24"))
            .unwrap()
            .clone();
        // Another host, same interface: the same ruleset, not a new compile.
        let b = cache
            .compile(0, &policy, &facts("eth0", "10.0.0.2/24"))
            .unwrap()
            .clone();
        assert!(Arc::ptr_eq(&a.ruleset, &b.ruleset));
        let direct = compile(&policy, &facts("eth0", "10.0.0.1/24"), 7).unwrap();
        assert_eq!(a.hash, direct.hash().0);
        // Another default-route interface: compiled again.
        let c = cache
            .compile(0, &policy, &facts("ens3", "10.0.0.3/24"))
            .unwrap()
            .clone();
        assert!(!Arc::ptr_eq(&a.ruleset, &c.ruleset));
        assert_eq!(cache.compiled.len(), 2);
        assert_eq!(cache.revision(), 7);
    }

    #[test]
    fn a_policy_that_does_not_compile_has_no_expected_hash() {
        let mut policy = HostPolicy::default();
        policy.log.rate = 0;
        let mut cache = CompileCache::new(1);
        let f = facts("eth0", "10.0.0.1/24");
        assert!(cache.compile("p", &policy, &f).is_err());
        assert_eq!(cache.expected_hash("p", &policy, &f), "");
    }
}
