//! The agent's state dir (default `/var/lib/portcullis`): the last-known-good record.
//!
//! `last-known-good.json` holds the host policy, revision, ruleset hash, the compiled
//! ruleset that was verified in the kernel, and when (compact JSON). It is written
//! atomically ([`crate::durable`]: temp file, fsync, rename, fsync of the directory), so a crash leaves either
//! the old record or the new one, never a torn file. Nothing else in the agent writes this
//! file. The last record read or written is kept in memory with the file's bytes: a load
//! reads the file and parses it only when the bytes differ (another process, e.g. a CLI
//! `apply`, or a hand edit, changed it).
//! [`StateDir::lock`] (an exclusive `flock` on `<dir>/lock`) serializes every agent
//! process and thread that changes the table or the record (the daemon and a CLI `apply`).

use crate::durable::{self, DurableError};
use nix::fcntl::{Flock, FlockArg};
use portcullis_policy::{HostPolicy, Ruleset, RulesetHash};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/portcullis";
const LKG_FILE: &str = "last-known-good.json";
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

/// The record last read or written, with the exact bytes of the file it came from.
#[derive(Default)]
struct Cache(Mutex<Option<(Vec<u8>, Arc<LastKnownGood>)>>);

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let revision = self
            .0
            .lock()
            .ok()
            .and_then(|c| c.as_ref().map(|(_, l)| l.revision));
        f.debug_struct("Cache")
            .field("revision", &revision)
            .finish()
    }
}

impl Cache {
    fn get(&self) -> std::sync::MutexGuard<'_, Option<(Vec<u8>, Arc<LastKnownGood>)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
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

    /// The record, or `None` when nothing was applied yet (or it was cleared).
    pub fn load(&self) -> Result<Option<LastKnownGood>, StateError> {
        Ok(self.load_shared()?.map(Arc::unwrap_or_clone))
    }

    /// [`StateDir::load`] without copying the record: the file is read every time, and
    /// parsed only when its bytes differ from the record last read or written.
    pub fn load_shared(&self) -> Result<Option<Arc<LastKnownGood>>, StateError> {
        let path = self.lkg_path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                *self.cache.get() = None;
                return Ok(None);
            }
            Err(source) => return Err(StateError::Io { path, source }),
        };
        let mut cache = self.cache.get();
        if let Some((cached, lkg)) = cache.as_ref()
            && *cached == bytes
        {
            return Ok(Some(lkg.clone()));
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
        let lkg = Arc::new(lkg);
        *cache = Some((bytes, lkg.clone()));
        Ok(Some(lkg))
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
            body,
            committed: false,
        };
        durable::write_synced(&tmp, &record.body, 0o600)?;
        Ok(record)
    }

    fn tmp_path(&self) -> PathBuf {
        durable::tmp_path(&self.lkg_path())
    }

    /// Deletes the record (durably); no error when there is none.
    pub fn clear(&self) -> Result<(), StateError> {
        let path = self.lkg_path();
        *self.cache.get() = None;
        Ok(durable::remove(&path)?)
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
    body: Vec<u8>,
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
        renamed?;
        *self.state.cache.get() = Some((std::mem::take(&mut self.body), self.lkg.clone()));
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
