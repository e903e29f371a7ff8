//! The controller's embedded store: SQLite (WAL) holding revisions, hosts and the audit log.
//!
//! One connection behind a mutex; callers in async code go through
//! [`Store::call`], which runs the closure on the blocking pool. Schema changes are
//! numbered migrations applied in one transaction at open. This module knows nothing of
//! gRPC.

mod denial_query;
mod denial_retention;
mod denials;
pub mod drift;
mod gauges;
mod group;
pub mod hits;
mod migrations;
mod model;
pub mod rollout;

pub use denial_query::*;
pub use denial_retention::*;
pub use denials::*;
pub use gauges::*;
pub use group::GroupWriter;
pub use model::*;

use anyhow::Context as _;
use portcullis_metrics::prometheus_client::metrics::histogram::Histogram;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (the store's time unit).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// How often the background checkpointer runs (see [`Store::open`]).
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    /// Time of each [`Store::call`], waiting for the connection included (metrics).
    latency: Histogram,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Store {
    /// Open (creating if needed) the database at `path` and migrate it.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating database directory {}", dir.display()))?;
        }
        let conn = Connection::open(path)
            .with_context(|| format!("opening database {}", path.display()))?;
        let store = Self::init(conn)
            .with_context(|| format!("initialising database {}", path.display()))?;
        store.checkpoint_in_background(path)?;
        Ok(store)
    }

    /// Move WAL checkpoints off the writers' path: the connection every write goes
    /// through no longer checkpoints on commit; a thread with its own connection runs a
    /// passive checkpoint (it never blocks writers) every [`CHECKPOINT_EVERY`] until the
    /// store is dropped.
    fn checkpoint_in_background(&self, path: &Path) -> anyhow::Result<()> {
        let ck = Connection::open(path)
            .with_context(|| format!("opening database {} (checkpointer)", path.display()))?;
        ck.busy_timeout(std::time::Duration::from_secs(5))?;
        // Truncate the WAL file back to this size after a checkpoint that emptied it.
        ck.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        self.conn
            .lock()
            .map_err(|_| anyhow::anyhow!("store mutex poisoned"))?
            .pragma_update(None, "wal_autocheckpoint", 0)?;
        let alive = Arc::downgrade(&self.conn);
        std::thread::Builder::new()
            .name("pc-checkpoint".into())
            .spawn(move || {
                while alive.strong_count() > 0 {
                    std::thread::sleep(CHECKPOINT_EVERY);
                    if let Err(e) = ck.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        tracing::warn!(error = %e, "WAL checkpoint failed; retrying");
                    }
                }
            })
            .context("spawning the checkpoint thread")?;
        Ok(())
    }

    /// An in-memory store (tests, benchmarks).
    pub fn in_memory() -> anyhow::Result<Self> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> anyhow::Result<Self> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Every per-host statement is prepared once (the default cache holds 16).
        conn.set_prepared_statement_cache_capacity(128);
        migrations::migrate(&mut conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            latency: Histogram::new(portcullis_metrics::collect::duration_buckets()),
        })
    }

    /// The histogram of [`Store::call`] durations (registered by the metrics endpoint).
    pub fn latency(&self) -> &Histogram {
        &self.latency
    }

    /// Run `f` with the connection on the blocking pool.
    pub async fn call<T, F>(&self, f: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> anyhow::Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        let started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            let mut guard = lock_recovered(&conn);
            f(&mut guard)
        })
        .await;
        self.latency.observe(started.elapsed().as_secs_f64());
        result.context("store task panicked")?
    }

    /// Run `f` with the connection on the current thread (startup, tests).
    pub fn call_sync<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let mut guard = lock_recovered(&self.conn);
        f(&mut guard)
    }
}

/// Lock the connection, recovering it if a call panicked while holding it: a rusqlite
/// `Transaction` rolls back when dropped during the unwind, and any transaction still open
/// is rolled back here, so the connection is as the last commit left it. Without this one
/// panic would fail every later store call until the controller is restarted.
fn lock_recovered(conn: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
    match conn.lock() {
        Ok(g) => g,
        Err(poisoned) => {
            conn.clear_poison();
            let g = poisoned.into_inner();
            tracing::error!("a store call panicked; connection recovered");
            if !g.is_autocommit()
                && let Err(e) = g.execute_batch("ROLLBACK")
            {
                tracing::error!(error = %e, "rolling back after a panicked store call");
            }
            g
        }
    }
}

/// Append an audit entry (who did what) in the caller's transaction or connection.
pub fn audit(conn: &Connection, actor: &str, action: &str, detail: &str) -> anyhow::Result<()> {
    conn.execute(
        "INSERT INTO audit (at_ms, actor, action, detail) VALUES (?1, ?2, ?3, ?4)",
        params![now_ms(), actor, action, detail],
    )?;
    Ok(())
}

/// The newest revision number, 0 if none.
pub fn latest_revision(conn: &Connection) -> anyhow::Result<u64> {
    let v: Option<i64> = conn
        .query_row("SELECT MAX(id) FROM revisions", [], |r| r.get(0))
        .optional()?
        .flatten();
    Ok(v.unwrap_or(0).try_into().unwrap_or(0))
}
