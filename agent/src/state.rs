//! The agent's state dir (default `/var/lib/portcullis`): the last-known-good record.
//!
//! `last-known-good.json` holds the host policy, revision, ruleset hash, the compiled
//! ruleset that was verified in the kernel, and when (compact JSON). It is written
//! atomically ([`crate::durable`]: temp file, fsync, rename, fsync of the directory), so a
//! crash leaves either the old record or the new one, never a torn file.
//!
//! A list delta (a few addresses of a million-entry list) does not rewrite that file: it
//! appends one line to `last-known-good.journal` ([`StateDir::store_delta`]: the lists'
//! and sets' added and removed entries, fsynced), and the record is the file with every
//! journal entry applied in order. Each entry names the state it applies to (revision,
//! hash, time), so a journal left behind by a crash between a full write and the
//! journal's removal chains from nothing and is ignored, a torn last line (a crash during
//! the append, never acknowledged) is ignored, and the replayed ruleset must hash to the
//! last entry's hash or the journal is ignored as a whole. A full write removes the
//! journal; a journal past [`JOURNAL_MAX_ENTRIES`] or [`JOURNAL_MAX_BYTES`] is folded into
//! a full write. Nothing else in the agent writes these files.
//!
//! The last record read or written is kept in memory with the identity (device, inode,
//! size, mtime) of both files: a load stats them and reads and parses only when they
//! changed (another process, e.g. a CLI `apply`, or a hand edit).
//! [`StateDir::lock`] (an exclusive `flock` on `<dir>/lock`) serializes every agent
//! process and thread that changes the table or the record (the daemon and a CLI `apply`).

use crate::durable::{self, DurableError};
use nix::fcntl::{Flock, FlockArg};
use portcullis_policy::addrlist::AddrList;
use portcullis_policy::ruleset::Set;
use portcullis_policy::{HostPolicy, Ruleset, RulesetHash};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, MetadataExt as _, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/portcullis";
const LKG_FILE: &str = "last-known-good.json";
const JOURNAL_FILE: &str = "last-known-good.journal";
/// A journal with this many entries is folded into a full write instead of appended to.
pub const JOURNAL_MAX_ENTRIES: usize = 256;
/// A journal this long (bytes) is folded into a full write instead of appended to.
pub const JOURNAL_MAX_BYTES: u64 = 1 << 20;
const LOCK_FILE: &str = "lock";
const FORMAT: u32 = 1;

/// What was last applied *and verified* in the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastKnownGood {
    /// File format version of this record.
    pub format: u32,
    pub revision: u64,
    pub hash: RulesetHash,
    /// RFC 3339, UTC, seconds.
    pub applied_at: String,
    pub policy: HostPolicy,
    /// The compiled ruleset that readback matched: what `verify` compares against.
    pub ruleset: Ruleset,
}

impl LastKnownGood {
    pub fn new(policy: HostPolicy, revision: u64, ruleset: Ruleset) -> Self {
        let hash = ruleset.hash();
        Self::with_hash(policy, revision, ruleset, hash)
    }

    /// [`LastKnownGood::new`] when the caller already computed `ruleset.hash()` (it is
    /// the cost of serializing the whole ruleset; checked in debug builds).
    pub fn with_hash(
        policy: HostPolicy,
        revision: u64,
        ruleset: Ruleset,
        hash: RulesetHash,
    ) -> Self {
        debug_assert_eq!(hash, ruleset.hash());
        Self {
            format: FORMAT,
            revision,
            hash,
            applied_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            policy,
            ruleset,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a last-known-good record: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: unsupported format {found} (this agent reads format {FORMAT})")]
    Format { path: PathBuf, found: u32 },
    #[error(transparent)]
    Durable(#[from] DurableError),
}

/// The state directory. Created (mode 0700) on first write. Clones share the in-memory
/// copy of the record.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
    cache: Arc<Cache>,
}

/// The record last read or written, with the identity of the files it came from.
#[derive(Default)]
struct Cache(Mutex<Option<Cached>>);

struct Cached {
    base: FileKey,
    /// The journal as read (`None`: no journal file).
    journal: Option<FileKey>,
    /// Entries applied, and the bytes they take (the whole file unless its tail was
    /// ignored: then the next delta folds instead of appending after it).
    entries: usize,
    journal_good: u64,
    lkg: Arc<LastKnownGood>,
}

/// Which file, and which version of it (a rename-replace makes a new inode, an append a
/// new size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileKey {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn file_key(path: &Path) -> Result<Option<FileKey>, StateError> {
    match fs::metadata(path) {
        Ok(m) => Ok(Some(FileKey {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        })),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let revision = self
            .0
            .lock()
            .ok()
            .and_then(|c| c.as_ref().map(|c| c.lkg.revision));
        f.debug_struct("Cache")
            .field("revision", &revision)
            .finish()
    }
}

impl Cache {
    fn get(&self) -> std::sync::MutexGuard<'_, Option<Cached>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a list delta changed, as [`StateDir::store_delta`] journals it: per list its
/// added and removed entries, per set of the ruleset its added and removed elements.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordDelta {
    pub lists: BTreeMap<String, ListChange>,
    pub sets: BTreeMap<String, SetPatch>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListChange {
    pub added: AddrList,
    pub removed: AddrList,
}

/// Elements of one set added and removed (two sets of its key; address sets serialize
/// packed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetPatch {
    pub add: Set,
    pub remove: Set,
}

impl RecordDelta {
    /// `rs` with the set changes applied (a set this delta names but `rs` lacks is an
    /// error: the delta is of another table).
    pub fn patch_ruleset(&self, rs: &Ruleset) -> Result<Ruleset, String> {
        let mut out = rs.clone();
        for (name, p) in &self.sets {
            let set = out
                .sets
                .get_mut(name)
                .filter(|s| s.key == p.add.key && s.key == p.remove.key)
                .ok_or_else(|| format!("set {name} is not in the table"))?;
            let elements = Arc::make_mut(&mut set.elements);
            for e in p.remove.elements.iter() {
                elements.remove(e);
            }
            elements.extend(p.add.elements.iter().cloned());
        }
        Ok(out)
    }

    /// `policy` with the list changes applied.
    pub fn patch_policy(&self, policy: &HostPolicy) -> Result<HostPolicy, String> {
        let mut out = policy.clone();
        for (name, c) in &self.lists {
            let list = out
                .lists
                .get_mut(name)
                .ok_or_else(|| format!("list {name} is not in the policy"))?;
            *list = Arc::new(list.apply_delta(&c.added, &c.removed)?);
        }
        Ok(out)
    }
}

/// One line of the journal: the state it applies to, the delta, the state it makes.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct JournalEntry {
    from_revision: u64,
    from_hash: RulesetHash,
    from_applied_at: String,
    revision: u64,
    hash: RulesetHash,
    applied_at: String,
    delta: RecordDelta,
}

impl JournalEntry {
    fn follows(&self, lkg: &LastKnownGood) -> bool {
        self.from_revision == lkg.revision
            && self.from_hash == lkg.hash
            && self.from_applied_at == lkg.applied_at
    }

    /// `lkg` with this entry applied (its hash is checked once, after the last entry).
    fn apply(&self, lkg: &LastKnownGood) -> Result<LastKnownGood, String> {
        Ok(LastKnownGood {
            format: FORMAT,
            revision: self.revision,
            hash: self.hash.clone(),
            applied_at: self.applied_at.clone(),
            policy: self.delta.patch_policy(&lkg.policy)?,
            ruleset: self.delta.patch_ruleset(&lkg.ruleset)?,
        })
    }
}

/// `base` with the complete, chained entries of `journal` applied: the record, the
/// number of entries and the bytes they take. Anything else in the journal (a torn or
/// unparseable line, an entry that does not follow, a final hash that does not match)
/// ends the replay there, with a warning; the entries before it stand only if the ruleset
/// they make hashes to the last one's hash, else none do.
fn replay(base: LastKnownGood, journal: &[u8], path: &Path) -> (LastKnownGood, usize, u64) {
    let mut lkg = base.clone();
    let (mut entries, mut good) = (0usize, 0u64);
    let mut rest = journal;
    while let Some(end) = rest.iter().position(|&b| b == b'\n') {
        let line = &rest[..end];
        let next = serde_json::from_slice::<JournalEntry>(line)
            .map_err(|e| e.to_string())
            .and_then(|e| {
                if e.follows(&lkg) {
                    e.apply(&lkg)
                } else {
                    Err(format!(
                        "entry for revision {} does not follow revision {} ({})",
                        e.revision, lkg.revision, lkg.hash
                    ))
                }
            });
        match next {
            Ok(l) => lkg = l,
            Err(why) => {
                // The first entry of a journal left behind by a full write: expected.
                if entries > 0 {
                    tracing::warn!(path = %path.display(), entry = entries + 1, %why,
                        "last-known-good journal: replay stops here");
                }
                break;
            }
        }
        entries += 1;
        good += u64::try_from(end + 1).unwrap_or(u64::MAX);
        rest = &rest[end + 1..];
    }
    if entries > 0 && lkg.ruleset.hash() != lkg.hash {
        tracing::warn!(path = %path.display(), entries,
            "last-known-good journal: the replayed table does not hash to its record; ignored");
        return (base, 0, 0);
    }
    (lkg, entries, good)
}

impl StateDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            cache: Arc::default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn lkg_path(&self) -> PathBuf {
        self.dir.join(LKG_FILE)
    }

    fn journal_path(&self) -> PathBuf {
        self.dir.join(JOURNAL_FILE)
    }

    /// The record, or `None` when nothing was applied yet (or it was cleared).
    pub fn load(&self) -> Result<Option<LastKnownGood>, StateError> {
        Ok(self.load_shared()?.map(Arc::unwrap_or_clone))
    }

    /// [`StateDir::load`] without copying the record: the files are read and parsed only
    /// when they are not those last read or written.
    pub fn load_shared(&self) -> Result<Option<Arc<LastKnownGood>>, StateError> {
        const ATTEMPTS: usize = 3;
        let (path, journal_path) = (self.lkg_path(), self.journal_path());
        for _ in 0..ATTEMPTS {
            let Some(base) = file_key(&path)? else {
                *self.cache.get() = None;
                return Ok(None);
            };
            let journal = file_key(&journal_path)?;
            if let Some(c) = self.cache.get().as_ref()
                && c.base == base
                && c.journal == journal
            {
                return Ok(Some(c.lkg.clone()));
            }
            let bytes = match fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(source) => return Err(StateError::Io { path, source }),
            };
            let journal_bytes = match fs::read(&journal_path) {
                Ok(b) => b,
                Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
                Err(source) => {
                    return Err(StateError::Io {
                        path: journal_path,
                        source,
                    });
                }
            };
            // Changed while we read (another process's write): read again.
            if file_key(&path)? != Some(base) || file_key(&journal_path)? != journal {
                continue;
            }
            let lkg: LastKnownGood =
                serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
                    path: path.clone(),
                    source,
                })?;
            if lkg.format != FORMAT {
                return Err(StateError::Format {
                    path,
                    found: lkg.format,
                });
            }
            let (lkg, entries, journal_good) = replay(lkg, &journal_bytes, &journal_path);
            let lkg = Arc::new(lkg);
            *self.cache.get() = Some(Cached {
                base,
                journal,
                entries,
                journal_good,
                lkg: lkg.clone(),
            });
            return Ok(Some(lkg));
        }
        Err(StateError::Io {
            path,
            source: std::io::Error::other(format!(
                "the record changed during each of {ATTEMPTS} reads"
            )),
        })
    }

    fn create(&self) -> Result<(), StateError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io(&self.dir))
    }

    /// Takes the exclusive lock (blocking until it is free); released on drop.
    pub fn lock(&self) -> Result<StateLock, StateError> {
        self.create()?;
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map(StateLock)
            .map_err(|(_, errno)| StateError::Io {
                path,
                source: errno.into(),
            })
    }

    /// Replaces the record atomically and durably.
    pub fn store(&self, lkg: &LastKnownGood) -> Result<(), StateError> {
        self.store_shared(Arc::new(lkg.clone()))
    }

    /// [`StateDir::store`] of a record the caller no longer needs to own.
    pub fn store_shared(&self, lkg: Arc<LastKnownGood>) -> Result<(), StateError> {
        self.prepare(lkg)?.commit()
    }

    /// Makes `to` the record by journaling `delta`, which turns the current record
    /// `from` into it (see the module docs), instead of rewriting the whole record. Falls
    /// back to a full write ([`StateDir::store_shared`]) when the journal is full, when
    /// its last read left anything unapplied, or when `from` is not the record last read
    /// or written.
    pub fn store_delta(
        &self,
        from: &LastKnownGood,
        delta: RecordDelta,
        to: Arc<LastKnownGood>,
    ) -> Result<(), StateError> {
        let journal_path = self.journal_path();
        let appendable = {
            let cache = self.cache.get();
            cache.as_ref().is_some_and(|c| {
                c.lkg.revision == from.revision
                    && c.lkg.hash == from.hash
                    && c.lkg.applied_at == from.applied_at
                    && c.entries < JOURNAL_MAX_ENTRIES
                    && c.journal.map_or(0, |j| j.len) == c.journal_good
                    && c.journal_good < JOURNAL_MAX_BYTES
                    && file_key(&self.lkg_path()).ok().flatten() == Some(c.base)
                    && file_key(&journal_path).ok().flatten() == c.journal
            })
        };
        if !appendable {
            return self.store_shared(to);
        }
        let entry = JournalEntry {
            from_revision: from.revision,
            from_hash: from.hash.clone(),
            from_applied_at: from.applied_at.clone(),
            revision: to.revision,
            hash: to.hash.clone(),
            applied_at: to.applied_at.clone(),
            delta,
        };
        let mut line = serde_json::to_vec(&entry).map_err(|source| StateError::Corrupt {
            path: journal_path.clone(),
            source,
        })?;
        line.push(b'\n');
        durable::append_synced(&journal_path, &line, 0o600)?;
        let journal = file_key(&journal_path)?;
        if let Some(c) = self.cache.get().as_mut() {
            c.journal = journal;
            c.entries += 1;
            c.journal_good += u64::try_from(line.len()).unwrap_or(u64::MAX);
            c.lkg = to;
        }
        Ok(())
    }

    /// The first half of [`StateDir::store`]: writes the record (compact JSON) to the
    /// temporary file and syncs it, without touching the record. Lets a caller do this
    /// while it waits for something else (the agent: while nft applies), then commit only
    /// once it knows the record is true (the kernel verified).
    pub fn prepare(&self, lkg: Arc<LastKnownGood>) -> Result<PreparedRecord<'_>, StateError> {
        self.create()?;
        let tmp = self.tmp_path();
        let mut body = serde_json::to_vec(&*lkg).map_err(|source| StateError::Corrupt {
            path: self.lkg_path(),
            source,
        })?;
        body.push(b'\n');
        let record = PreparedRecord {
            state: self,
            lkg,
            committed: false,
        };
        durable::write_synced(&tmp, &body, 0o600)?;
        Ok(record)
    }

    fn tmp_path(&self) -> PathBuf {
        durable::tmp_path(&self.lkg_path())
    }

    /// Deletes the record (durably); no error when there is none.
    pub fn clear(&self) -> Result<(), StateError> {
        *self.cache.get() = None;
        durable::remove(&self.journal_path())?;
        Ok(durable::remove(&self.lkg_path())?)
    }
}

/// A record written and synced to the temporary file by [`StateDir::prepare`], not yet
/// the record. [`PreparedRecord::commit`] puts it in place; dropped uncommitted, the
/// temporary file is deleted (a crash before that leaves a temporary file nobody reads,
/// overwritten by the next write).
#[derive(Debug)]
pub struct PreparedRecord<'a> {
    state: &'a StateDir,
    lkg: Arc<LastKnownGood>,
    committed: bool,
}

impl PreparedRecord<'_> {
    pub fn record(&self) -> &LastKnownGood {
        &self.lkg
    }

    /// Replaces the record with this one: rename over it, sync the directory.
    pub fn commit(mut self) -> Result<(), StateError> {
        let (tmp, path) = (self.state.tmp_path(), self.state.lkg_path());
        let renamed = durable::rename_synced(&tmp, &path);
        // Renamed but the directory sync failed: the file is the new record either way.
        self.committed = path.exists() && !tmp.exists();
        *self.state.cache.get() = None;
        renamed?;
        // The journal applied to the old record (if it stays, a crash here: it does not
        // chain from this one and is ignored).
        durable::remove(&self.state.journal_path())?;
        if let Some(base) = file_key(&path)? {
            *self.state.cache.get() = Some(Cached {
                base,
                journal: None,
                entries: 0,
                journal_good: 0,
                lkg: self.lkg.clone(),
            });
        }
        Ok(())
    }
}

impl Drop for PreparedRecord<'_> {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(self.state.tmp_path());
        }
    }
}

/// Held while the table or the record is being changed; see [`StateDir::lock`].
#[derive(Debug)]
pub struct StateLock(#[allow(dead_code)] Flock<File>);

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError {
    let path = path.to_path_buf();
    move |source| StateError::Io { path, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_policy::{DenyEntry, Facts, compile};

    /// A blocklist policy of `nets` at `revision`, compiled, as a record.
    fn listed(nets: &[String], revision: u64) -> LastKnownGood {
        let list = AddrList::from_nets(nets.iter().map(|s| s.parse().expect("net")));
        let policy = HostPolicy {
            deny: vec![DenyEntry {
                proto: None,
                ports: None,
                from: vec![],
                lists: vec!["b.txt".into()],
                label: "deny".into(),
            }],
            lists: BTreeMap::from([("b.txt".to_string(), Arc::new(list))]),
            ..HostPolicy::default()
        };
        let facts = Facts {
            hostname: "h".into(),
            ..Facts::default()
        };
        let ruleset = compile(&policy, &facts, revision).expect("compile");
        LastKnownGood::new(policy, revision, ruleset)
    }

    fn nets(n: u32, extra: &[&str]) -> Vec<String> {
        (0..n)
            .map(|i| format!("{}/32", std::net::Ipv4Addr::from(0x0b00_0000 + i)))
            .chain(extra.iter().map(ToString::to_string))
            .collect()
    }

    /// The record for `to_nets` at `revision` as a journaled delta from `from` (its
    /// ruleset is `from`'s patched, as the agent makes it).
    fn delta(
        from: &LastKnownGood,
        to_nets: &[String],
        revision: u64,
    ) -> (RecordDelta, LastKnownGood) {
        let target = listed(to_nets, revision);
        let d = crate::agent::delta::list_delta(&from.policy, &from.ruleset, &target.policy)
            .expect("a list delta");
        let ruleset = d.record.patch_ruleset(&from.ruleset).expect("patch");
        let to = LastKnownGood::new(target.policy, revision, ruleset);
        (d.record, to)
    }

    #[test]
    fn a_list_delta_is_journaled_and_replayed_by_another_reader() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        let base = listed(&nets(100, &[]), 1);
        state.store(&base).expect("store");
        let base_bytes = std::fs::read(dir.path().join(LKG_FILE)).expect("read");
        let (d1, r2) = delta(&base, &nets(100, &["192.0.2.7/32"]), 2);
        state
            .store_delta(&base, d1, Arc::new(r2.clone()))
            .expect("delta");
        let (d2, r3) = delta(&r2, &nets(99, &["192.0.2.7/32"]), 3);
        state
            .store_delta(&r2, d2, Arc::new(r3.clone()))
            .expect("delta");
        // The record itself was not rewritten; the journal has two lines.
        assert_eq!(
            std::fs::read(dir.path().join(LKG_FILE)).expect("read"),
            base_bytes
        );
        let journal = std::fs::read_to_string(dir.path().join(JOURNAL_FILE)).expect("journal");
        assert_eq!(journal.lines().count(), 2);
        assert_eq!(state.load().expect("load"), Some(r3.clone()));
        // A fresh reader (another process) replays the journal to the same record.
        let other = StateDir::new(dir.path());
        assert_eq!(other.load().expect("load"), Some(r3.clone()));
        assert_eq!(
            other.load().expect("load").expect("record").ruleset.hash(),
            r3.hash
        );
        // A full write folds it: the journal goes.
        let r4 = listed(&nets(10, &[]), 4);
        state.store(&r4).expect("store");
        assert!(!dir.path().join(JOURNAL_FILE).exists());
        assert_eq!(other.load().expect("load"), Some(r4));
    }

    #[test]
    fn a_torn_or_stale_journal_is_not_replayed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        let base = listed(&nets(50, &[]), 1);
        state.store(&base).expect("store");
        let (d1, r2) = delta(&base, &nets(50, &["192.0.2.7/32"]), 2);
        state
            .store_delta(&base, d1, Arc::new(r2.clone()))
            .expect("delta");
        let journal_path = dir.path().join(JOURNAL_FILE);
        let good = std::fs::read(&journal_path).expect("journal");
        // A crash during the next append: half a line.
        let (d2, r3) = delta(&r2, &nets(50, &["192.0.2.8/32"]), 3);
        let entry = serde_json::to_vec(&JournalEntry {
            from_revision: r2.revision,
            from_hash: r2.hash.clone(),
            from_applied_at: r2.applied_at.clone(),
            revision: 3,
            hash: r3.hash.clone(),
            applied_at: r3.applied_at.clone(),
            delta: d2.clone(),
        })
        .expect("json");
        let mut torn = good.clone();
        torn.extend_from_slice(&entry[..entry.len() / 2]);
        std::fs::write(&journal_path, &torn).expect("write");
        let other = StateDir::new(dir.path());
        assert_eq!(other.load().expect("load"), Some(r2.clone()));
        // The next delta does not append after the torn tail: it writes the whole record.
        other
            .store_delta(&r2, d2, Arc::new(r3.clone()))
            .expect("delta");
        assert!(!journal_path.exists());
        assert_eq!(
            StateDir::new(dir.path()).load().expect("load"),
            Some(r3.clone())
        );
        // A journal left behind by a crash between a full write and its removal chains
        // from the old record: ignored.
        std::fs::write(&journal_path, &good).expect("write");
        assert_eq!(
            StateDir::new(dir.path()).load().expect("load"),
            Some(r3.clone())
        );
        // A journal whose replay does not hash to its entry (tampered): ignored.
        let r5 = listed(&nets(50, &[]), 5);
        state.store(&r5).expect("store");
        let (d6, r6) = delta(&r5, &nets(50, &["192.0.2.9/32"]), 6);
        state.store_delta(&r5, d6, Arc::new(r6)).expect("delta");
        let text = std::fs::read_to_string(&journal_path).expect("journal");
        let mut entry: JournalEntry = serde_json::from_str(text.trim()).expect("entry");
        entry
            .delta
            .sets
            .values_mut()
            .for_each(|p| p.add = p.remove.clone());
        let mut line = serde_json::to_vec(&entry).expect("json");
        line.push(b'\n');
        std::fs::write(&journal_path, line).expect("write");
        assert_eq!(StateDir::new(dir.path()).load().expect("load"), Some(r5));
    }

    #[test]
    fn a_full_journal_is_folded_into_the_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        let mut current = listed(&nets(20, &[]), 1);
        state.store(&current).expect("store");
        for i in 0..=JOURNAL_MAX_ENTRIES as u32 {
            let extra = format!("198.51.100.{}/32", i % 2);
            let (d, next) = delta(&current, &nets(20, &[&extra]), u64::from(i) + 2);
            state
                .store_delta(&current, d, Arc::new(next.clone()))
                .expect("delta");
            current = next;
            // Alternating one address in and out: a delta each time.
            let (d, next) = delta(&current, &nets(20, &[]), u64::from(i) + 100_000);
            state
                .store_delta(&current, d, Arc::new(next.clone()))
                .expect("delta");
            current = next;
        }
        let lines = std::fs::read_to_string(dir.path().join(JOURNAL_FILE))
            .map(|j| j.lines().count())
            .unwrap_or(0);
        assert!(lines < JOURNAL_MAX_ENTRIES, "{lines} entries");
        assert_eq!(
            StateDir::new(dir.path()).load().expect("load"),
            Some(current)
        );
    }

    #[test]
    fn store_load_clear_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path().join("nested"));
        assert_eq!(state.load().expect("load"), None);
        let lkg = LastKnownGood::new(HostPolicy::default(), 7, Ruleset::default());
        state.store(&lkg).expect("store");
        assert_eq!(state.load().expect("load"), Some(lkg.clone()));
        assert!(!state.path().join("last-known-good.json.tmp").exists());
        // Prepared but dropped: the record stays, the temporary file goes.
        let dropped = LastKnownGood::new(HostPolicy::default(), 9, Ruleset::default());
        let prepared = state.prepare(Arc::new(dropped)).expect("prepare");
        assert_eq!(prepared.record().revision, 9);
        assert!(state.path().join("last-known-good.json.tmp").exists());
        drop(prepared);
        assert!(!state.path().join("last-known-good.json.tmp").exists());
        assert_eq!(state.load().expect("load"), Some(lkg.clone()));
        let newer = LastKnownGood::new(HostPolicy::default(), 8, Ruleset::default());
        state.store(&newer).expect("store again");
        assert_eq!(state.load().expect("load").map(|l| l.revision), Some(8));
        state.clear().expect("clear");
        state.clear().expect("clear twice");
        assert_eq!(state.load().expect("load"), None);
    }

    #[test]
    fn load_sees_what_another_process_wrote() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ours, other) = (StateDir::new(dir.path()), StateDir::new(dir.path()));
        ours.store(&LastKnownGood::new(
            HostPolicy::default(),
            7,
            Ruleset::default(),
        ))
        .expect("store");
        assert_eq!(
            ours.load_shared().expect("load").map(|l| l.revision),
            Some(7)
        );
        let newer = LastKnownGood::new(HostPolicy::default(), 8, Ruleset::default());
        other.store(&newer).expect("store");
        assert_eq!(ours.load().expect("load"), Some(newer));
        std::fs::write(dir.path().join(LKG_FILE), "{ not json").expect("write");
        let err = ours.load().expect_err("corrupt");
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
        other.clear().expect("clear");
        assert_eq!(ours.load().expect("load"), None);
    }

    #[test]
    fn lock_is_exclusive_across_open_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        let held = state.lock().expect("lock");
        let other = File::open(dir.path().join(LOCK_FILE)).expect("open");
        let Err((_, errno)) = Flock::lock(other, FlockArg::LockExclusiveNonblock) else {
            panic!("second lock succeeded while the first is held");
        };
        assert_eq!(errno, nix::errno::Errno::EWOULDBLOCK);
        drop(held);
        let again = File::open(dir.path().join(LOCK_FILE)).expect("open");
        assert!(Flock::lock(again, FlockArg::LockExclusiveNonblock).is_ok());
    }

    #[test]
    fn corrupt_record_is_an_error_not_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(LKG_FILE), "{ not json").expect("write");
        let err = StateDir::new(dir.path()).load().expect_err("corrupt");
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
    }
}
