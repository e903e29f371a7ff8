//! [`FakeDataplane`]: an in-memory `table inet portcullis` for unit tests (no root, no nft).
//!
//! `replace` stores the ruleset, `read_back` renders it as `nft -j` JSON (so readback
//! parsing runs as in production), `remove` clears it. Tests can inject failures, tamper
//! with the "kernel" to simulate drift, bump counters, and count transactions; `watch`
//! wakes on every change (a transaction or a tamper), like `nft monitor`.

use super::nft_json::{self, Counters};
use super::{Dataplane, DataplaneError, KernelTable, SetChange};
use futures::future::BoxFuture;
use portcullis_policy::Ruleset;
use portcullis_policy::render::delete_script;
use portcullis_policy::ruleset::{Element, SetKey};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

#[derive(Debug, Default)]
struct Kernel {
    table: Option<Ruleset>,
    counters: Counters,
    transactions: usize,
    fail_next_apply: Option<String>,
    mangle_on_apply: Option<Ruleset>,
    /// Changes made behind the agent's back (they move the generation too).
    tampered: usize,
    /// Woken on every change ([`Dataplane::watch`]).
    watchers: Vec<Arc<Notify>>,
}

impl Kernel {
    /// A transaction committed, or someone tampered: wake the watchers.
    fn changed(&self) {
        for w in &self.watchers {
            w.notify_one();
        }
    }

    /// Moves on every change, ours (a transaction) or not (a tamper), like the kernel's.
    fn generation(&self) -> u32 {
        u32::try_from(self.transactions + self.tampered).unwrap_or(u32::MAX)
    }
}

/// In-memory dataplane. Cheap to create; one per test.
#[derive(Debug, Default)]
pub struct FakeDataplane {
    kernel: Mutex<Kernel>,
    memo: Option<Arc<ReadbackMemo>>,
}

/// Readbacks shared by many fakes (a simulated fleet in one process): parsing the
/// rendered table is a pure function of (table, counters), so fakes holding the same
/// table and counters share one render + parse. What a read returns is unchanged.
#[derive(Debug, Default)]
pub struct ReadbackMemo(Mutex<Vec<(Ruleset, Counters, KernelTable)>>);

/// Distinct (table, counters) kept before the memo is emptied (a few revisions' worth).
const MEMO_MAX: usize = 16;

impl ReadbackMemo {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Ruleset, Counters, KernelTable)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The readback of `table` with `counters`, parsed once per distinct pair.
    fn read(&self, table: Ruleset, counters: Counters) -> Result<KernelTable, DataplaneError> {
        if let Some((_, _, k)) = self
            .lock()
            .iter()
            .find(|(t, c, _)| *c == counters && *t == table)
        {
            return Ok(k.clone());
        }
        let parsed = super::parse_table(&nft_json::render(&table, &counters))?;
        let mut memo = self.lock();
        if memo.len() >= MEMO_MAX {
            memo.clear();
        }
        memo.push((table, counters, parsed.clone()));
        Ok(parsed)
    }
}

impl FakeDataplane {
    pub fn new() -> Self {
        Self::default()
    }

    /// The same fake, sharing readbacks with every fake given `memo`.
    pub fn with_memo(mut self, memo: Arc<ReadbackMemo>) -> Self {
        self.memo = Some(memo);
        self
    }

    fn with<T>(&self, f: impl FnOnce(&mut Kernel) -> T) -> T {
        // A poisoned lock only means another test thread panicked; the data is still usable.
        let mut guard = self.kernel.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// What the "kernel" holds now.
    pub fn table(&self) -> Option<Ruleset> {
        self.with(|k| k.table.clone())
    }

    /// Successful transactions so far (replace + remove).
    pub fn transactions(&self) -> usize {
        self.with(|k| k.transactions)
    }

    /// The next apply fails with `message` and changes nothing (like a rejected batch).
    pub fn fail_next_apply(&self, message: &str) {
        self.with(|k| k.fail_next_apply = Some(message.to_owned()));
    }

    /// The next apply "succeeds" but the kernel ends up holding `other` instead (e.g. a
    /// kernel that normalizes differently): the post-apply verification must catch it.
    pub fn mangle_next_apply(&self, other: Ruleset) {
        self.with(|k| k.mangle_on_apply = Some(other));
    }

    /// Changes the table behind the agent's back (a hand-made `nft` edit).
    pub fn tamper(&self, f: impl FnOnce(&mut Option<Ruleset>)) {
        self.with(|k| {
            k.tampered += 1;
            f(&mut k.table);
            k.changed();
        });
    }

    /// Adds traffic to a rule's counter.
    pub fn hit(&self, chain: &str, index: usize, packets: u64, bytes: u64) {
        self.with(|k| {
            let c = k.counters.entry((chain.to_owned(), index)).or_default();
            c.0 += packets;
            c.1 += bytes;
        });
    }

    fn take_failure(k: &mut Kernel) -> Result<(), DataplaneError> {
        match k.fail_next_apply.take() {
            Some(msg) => Err(DataplaneError::Fake(msg)),
            None => Ok(()),
        }
    }
}

impl Dataplane for FakeDataplane {
    /// Only the delete script is understood as text; rulesets go through `replace`.
    fn apply(&self, script: &str) -> Result<(), DataplaneError> {
        self.with(|k| {
            Self::take_failure(k)?;
            if script == delete_script() {
                k.table = None;
                k.counters.clear();
                k.transactions += 1;
                k.changed();
                Ok(())
            } else {
                Err(DataplaneError::Fake(
                    "only the delete script can be applied as text; use replace()".into(),
                ))
            }
        })
    }

    fn replace(&self, ruleset: &Ruleset) -> Result<(), DataplaneError> {
        self.with(|k| {
            Self::take_failure(k)?;
            k.table = Some(k.mangle_on_apply.take().unwrap_or_else(|| ruleset.clone()));
            k.counters.clear();
            k.transactions += 1;
            k.changed();
            Ok(())
        })
    }

    fn read_back(&self) -> Result<Option<String>, DataplaneError> {
        Ok(self.with(|k| k.table.as_ref().map(|t| nft_json::render(t, &k.counters))))
    }

    /// [`Dataplane::read_back`] parsed, like the default; through the memo when shared.
    fn read_table(&self) -> Result<Option<KernelTable>, DataplaneError> {
        let Some(memo) = &self.memo else {
            return self
                .read_back()?
                .as_deref()
                .map(super::parse_table)
                .transpose();
        };
        let (table, counters) = self.with(|k| (k.table.clone(), k.counters.clone()));
        table.map(|t| memo.read(t, counters)).transpose()
    }

    fn remove(&self) -> Result<(), DataplaneError> {
        self.apply(&delete_script())
    }

    /// The table read back as JSON and parsed ([`Dataplane::read_table`]), cut to `chain`.
    fn read_chain(&self, chain: &str) -> Result<Option<KernelTable>, DataplaneError> {
        Ok(self.read_table()?.and_then(|t| super::only_chain(t, chain)))
    }

    /// Wakes on every change until dropped (never ends by itself).
    fn watch(&self, wake: Arc<Notify>) -> BoxFuture<'static, Result<(), DataplaneError>> {
        self.with(|k| k.watchers.push(wake));
        Box::pin(std::future::pending())
    }

    fn update_elements(&self, changes: &[SetChange]) -> Result<Option<u32>, DataplaneError> {
        self.with(|k| {
            Self::take_failure(k)?;
            let Some(table) = k.table.as_mut() else {
                return Err(DataplaneError::Fake("no table".into()));
            };
            // All or nothing, like the kernel's batch: work on a copy.
            let mut sets = table.sets.clone();
            for c in changes {
                let set = sets
                    .get_mut(&c.set)
                    .filter(|s| s.key == c.key)
                    .ok_or_else(|| DataplaneError::Fake(format!("no set {} of that key", c.set)))?;
                for e in &c.remove {
                    if !Arc::make_mut(&mut set.elements).remove(e) {
                        return Err(DataplaneError::Fake(format!("{e} is not in {}", c.set)));
                    }
                }
                for e in &c.add {
                    if !Arc::make_mut(&mut set.elements).insert(e.clone()) {
                        return Err(DataplaneError::Fake(format!("{e} is in {} already", c.set)));
                    }
                }
            }
            table.sets = sets;
            k.transactions += 1;
            k.changed();
            Ok(Some(k.generation()))
        })
    }

    fn generation(&self) -> Result<Option<u32>, DataplaneError> {
        Ok(self.with(|k| Some(k.generation())))
    }

    fn has_elements(
        &self,
        set: &str,
        key: SetKey,
        elements: &[Element],
    ) -> Result<Vec<bool>, DataplaneError> {
        self.with(|k| {
            let s = k
                .table
                .as_ref()
                .and_then(|t| t.sets.get(set))
                .filter(|s| s.key == key)
                .ok_or_else(|| DataplaneError::Fake(format!("no set {set} of that key")))?;
            Ok(elements.iter().map(|e| s.elements.contains(e)).collect())
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use futures::FutureExt as _;

    #[test]
    fn a_shared_memo_reads_back_what_parsing_does() {
        use portcullis_policy::{HostPolicy, compile};
        let facts = crate::testing::facts();
        let ruleset = compile(&HostPolicy::default(), &facts, 1).unwrap();
        let memo = Arc::new(ReadbackMemo::default());
        let (plain, a, b) = (
            FakeDataplane::new(),
            FakeDataplane::new().with_memo(memo.clone()),
            FakeDataplane::new().with_memo(memo.clone()),
        );
        for f in [&plain, &a, &b] {
            assert_eq!(f.read_table().unwrap(), None);
            f.replace(&ruleset).unwrap();
        }
        let want = plain.read_table().unwrap();
        assert!(want.is_some());
        assert_eq!(a.read_table().unwrap(), want);
        assert_eq!(b.read_table().unwrap(), want);
        assert_eq!(memo.lock().len(), 1, "one parse for both");
        // Counters are part of what is read.
        plain.hit("input", 0, 3, 180);
        b.hit("input", 0, 3, 180);
        assert_eq!(b.read_table().unwrap(), plain.read_table().unwrap());
        assert_ne!(b.read_table().unwrap(), a.read_table().unwrap());
    }

    #[tokio::test]
    async fn watch_wakes_on_every_transaction_and_tamper() {
        let fake = FakeDataplane::new();
        let wake = Arc::new(Notify::new());
        let mut watch = fake.watch(wake.clone());
        assert!(
            (&mut watch).now_or_never().is_none(),
            "a fake watch never ends"
        );
        let woken = || wake.notified().now_or_never().is_some();
        assert!(!woken());
        fake.replace(&Ruleset::default()).unwrap();
        assert!(woken(), "a transaction wakes");
        assert!(!woken());
        fake.tamper(|t| *t = None);
        assert!(woken(), "a change behind the agent's back wakes");
        fake.fail_next_apply("refused");
        assert!(fake.replace(&Ruleset::default()).is_err());
        assert!(!woken(), "a refused transaction changed nothing");
    }
}
