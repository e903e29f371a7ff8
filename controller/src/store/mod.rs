//! The controller's store: revisions, hosts, rollouts, the audit log and denial logs, in
//! SQLite (embedded, WAL; the default for one controller) or PostgreSQL (shared by
//! several controllers).
//!
//! Every query is written once against [`sql::Db`]; callers in async code go through
//! [`Store::call`], which runs the closure on the blocking pool with a connection (SQLite:
//! the one connection behind a mutex; PostgreSQL: one from a pool). Schema changes are
//! numbered migrations, the same numbers on both engines, applied in one transaction at
//! open. This module knows nothing of gRPC.

mod denial_query;
mod denial_retention;
mod denials;
pub mod drift;
mod gauges;
mod group;
pub mod hits;
mod migrations;
mod model;
mod pg_tls;
pub mod relay;
pub mod rollout;
pub mod sql;
#[cfg(test)]
pub mod testing;

pub use denial_query::*;
pub use denial_retention::*;
pub use denials::*;
pub use gauges::*;
pub use group::GroupWriter;
pub use model::*;

use anyhow::Context as _;
use portcullis_metrics::prometheus_client::metrics::histogram::Histogram;
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

pub use sql::{Arg, Db, Dialect, Row, Tx};

/// The store could not be reached (PostgreSQL down or unreachable): nothing was done.
#[derive(Debug, thiserror::Error)]
#[error("the PostgreSQL database is unreachable: {0}")]
pub struct Unavailable(pub String);

/// Whether `e` says the store could not be reached (rather than refused a statement).
pub fn is_unavailable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<Unavailable>().is_some()
            || c.downcast_ref::<tokio_postgres::Error>().is_some_and(|p| {
                use std::error::Error as _;
                // Closed, a socket error, or SQLSTATE class 08 (connection exception) /
                // 57 (shutdown, cannot connect now).
                p.is_closed()
                    || p.source().is_some_and(|s| s.is::<std::io::Error>())
                    || p.code()
                        .is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57"))
            })
    })
}

/// Milliseconds since the Unix epoch (the store's time unit).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// How often the background checkpointer runs (see [`Store::open`]).
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Connections in the PostgreSQL pool (sessions, admin reads and the denial writer share it).
const PG_POOL_SIZE: usize = 16;

/// Where the store lives: `--db` / `PORTCULLIS_DB`.
#[derive(Clone, PartialEq, Eq)]
pub enum DbSpec {
    /// An SQLite file (created if missing).
    Sqlite(PathBuf),
    /// A PostgreSQL connection string (`postgres://user@host/db`, or key=value form).
    Postgres(String),
}

impl std::fmt::Debug for DbSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_string())
    }
}

impl std::fmt::Display for DbSpec {
    /// The location without a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbSpec::Sqlite(p) => write!(f, "{}", p.display()),
            DbSpec::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

/// `postgres://user:secret@host/db` shown as `postgres://user:***@host/db`; a key=value
/// string's `password=` likewise.
fn redact(url: &str) -> String {
    if let Some(rest) = url.split_once("://").map(|(_, r)| r)
        && let Some((auth, _)) = rest.split_once('@')
        && let Some((user, _)) = auth.split_once(':')
    {
        let scheme = &url[..url.len() - rest.len()];
        return format!("{scheme}{user}:***@{}", &rest[auth.len() + 1..]);
    }
    url.split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=***"
            } else {
                kv
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl std::str::FromStr for DbSpec {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        Ok(
            if t.starts_with("postgres://")
                || t.starts_with("postgresql://")
                || (t.contains('=') && t.contains("dbname"))
            {
                DbSpec::Postgres(t.to_string())
            } else {
                DbSpec::Sqlite(PathBuf::from(s))
            },
        )
    }
}

impl From<PathBuf> for DbSpec {
    fn from(p: PathBuf) -> Self {
        DbSpec::Sqlite(p)
    }
}

enum Engine {
    Sqlite {
        conn: Arc<Mutex<Connection>>,
        /// The file, for extra connections (denial writer, readers); `None` in memory.
        path: Option<PathBuf>,
    },
    Postgres {
        pool: deadpool_postgres::Pool,
        rt: tokio::runtime::Handle,
        /// For connections outside the pool (LISTEN).
        config: Box<tokio_postgres::Config>,
        ca: Option<PathBuf>,
    },
}

#[derive(Clone)]
pub struct Store {
    engine: Arc<Engine>,
    /// Time of each [`Store::call`], waiting for the connection included (metrics).
    latency: Histogram,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.dialect() {
            Dialect::Sqlite => "Store(SQLite)",
            Dialect::Postgres => "Store(PostgreSQL)",
        })
    }
}

impl Store {
    /// Open the store `spec` names and migrate it. PostgreSQL needs a Tokio runtime (the
    /// pool's connections run on it).
    pub async fn connect(spec: &DbSpec, db_ca: Option<&Path>) -> anyhow::Result<Self> {
        match spec {
            DbSpec::Sqlite(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || Self::open(&path))
                    .await
                    .context("opening the store panicked")?
            }
            DbSpec::Postgres(url) => Self::open_postgres(url, db_ca).await,
        }
    }

    /// Open (creating if needed) the SQLite database at `path` and migrate it.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating database directory {}", dir.display()))?;
        }
        let conn = Connection::open(path)
            .with_context(|| format!("opening database {}", path.display()))?;
        let store = Self::init(conn, Some(path.to_path_buf()))
            .with_context(|| format!("initialising database {}", path.display()))?;
        store.checkpoint_in_background(path)?;
        Ok(store)
    }

    /// Connect a pool to the PostgreSQL database `url` and migrate it (under an advisory
    /// lock, so controllers starting together migrate once).
    pub async fn open_postgres(url: &str, db_ca: Option<&Path>) -> anyhow::Result<Self> {
        let shown = redact(url);
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| anyhow::anyhow!("PostgreSQL connection string {shown}: {e}"))?;
        let manager = deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        };
        let mgr = if pg_tls::needed(&config) {
            deadpool_postgres::Manager::from_config(
                config.clone(),
                pg_tls::connector(db_ca)?,
                manager,
            )
        } else {
            deadpool_postgres::Manager::from_config(config.clone(), tokio_postgres::NoTls, manager)
        };
        let pool = deadpool_postgres::Pool::builder(mgr)
            .max_size(PG_POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(std::time::Duration::from_secs(10)))
            .create_timeout(Some(std::time::Duration::from_secs(10)))
            .build()
            .with_context(|| format!("PostgreSQL pool for {shown}"))?;
        let store = Self {
            engine: Arc::new(Engine::Postgres {
                pool,
                rt: tokio::runtime::Handle::current(),
                config: Box::new(config),
                ca: db_ca.map(Path::to_path_buf),
            }),
            latency: Histogram::new(portcullis_metrics::collect::duration_buckets()),
        };
        store
            .call(migrations::migrate)
            .await
            .with_context(|| format!("migrating PostgreSQL database {shown}"))?;
        Ok(store)
    }

    /// Move WAL checkpoints off the writers' path: the connection every write goes
    /// through no longer checkpoints on commit; a thread with its own connection runs a
    /// passive checkpoint (it never blocks writers) every [`CHECKPOINT_EVERY`] until the
    /// store is dropped.
    fn checkpoint_in_background(&self, path: &Path) -> anyhow::Result<()> {
        let Engine::Sqlite { conn, .. } = &*self.engine else {
            return Ok(());
        };
        let ck = Connection::open(path)
            .with_context(|| format!("opening database {} (checkpointer)", path.display()))?;
        ck.busy_timeout(std::time::Duration::from_secs(5))?;
        // Truncate the WAL file back to this size after a checkpoint that emptied it.
        ck.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        conn.lock()
            .map_err(|_| anyhow::anyhow!("store mutex poisoned"))?
            .pragma_update(None, "wal_autocheckpoint", 0)?;
        let alive = Arc::downgrade(&self.engine);
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

    /// An in-memory SQLite store (tests, benchmarks).
    pub fn in_memory() -> anyhow::Result<Self> {
        Self::init(Connection::open_in_memory()?, None)
    }

    fn init(conn: Connection, path: Option<PathBuf>) -> anyhow::Result<Self> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Every per-host statement is prepared once (the default cache holds 16).
        conn.set_prepared_statement_cache_capacity(128);
        migrations::migrate(&Db::sqlite(&conn))?;
        Ok(Self {
            engine: Arc::new(Engine::Sqlite {
                conn: Arc::new(Mutex::new(conn)),
                path,
            }),
            latency: Histogram::new(portcullis_metrics::collect::duration_buckets()),
        })
    }

    pub fn dialect(&self) -> Dialect {
        match &*self.engine {
            Engine::Sqlite { .. } => Dialect::Sqlite,
            Engine::Postgres { .. } => Dialect::Postgres,
        }
    }

    /// The histogram of [`Store::call`] durations (registered by the metrics endpoint).
    pub fn latency(&self) -> &Histogram {
        &self.latency
    }

    /// Run `f` with a connection on the blocking pool (SQLite: the one connection;
    /// PostgreSQL: one from the pool, for the whole of `f`).
    pub async fn call<T, F>(&self, f: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Db<'_>) -> anyhow::Result<T> + Send + 'static,
    {
        let engine = self.engine.clone();
        let started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || with_db(&engine, f)).await;
        self.latency.observe(started.elapsed().as_secs_f64());
        result.context("store task panicked")?
    }

    /// Run `f` with a connection on the current thread (startup, tests). With
    /// PostgreSQL it must not be a runtime worker of a current-thread runtime.
    pub fn call_sync<T>(&self, f: impl FnOnce(&Db<'_>) -> anyhow::Result<T>) -> anyhow::Result<T> {
        match &*self.engine {
            Engine::Sqlite { .. } => with_db(&self.engine, f),
            Engine::Postgres { .. } => {
                if tokio::runtime::Handle::try_current().is_ok() {
                    tokio::task::block_in_place(|| with_db(&self.engine, f))
                } else {
                    with_db(&self.engine, f)
                }
            }
        }
    }

    /// Run `f` on a connection of its own, off the main one (SQLite: a fresh read
    /// connection to the file, so a long read never holds up the sessions' writes;
    /// PostgreSQL: one from the pool). On the blocking pool.
    pub async fn read<T, F>(&self, f: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Db<'_>) -> anyhow::Result<T> + Send + 'static,
    {
        match &*self.engine {
            Engine::Sqlite {
                path: Some(path), ..
            } => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || f(&Db::sqlite(&open_extra(&path)?)))
                    .await
                    .context("store task panicked")?
            }
            _ => self.call(f).await,
        }
    }

    /// A connection for one long-lived writer thread (the denial writer): SQLite gets a
    /// connection of its own, PostgreSQL takes one from the pool per use.
    pub fn writer_connection(&self) -> anyhow::Result<WriterConn> {
        match &*self.engine {
            Engine::Sqlite { path: Some(p), .. } => {
                Ok(WriterConn(WriterInner::Sqlite(open_extra(p)?)))
            }
            Engine::Sqlite { path: None, .. } | Engine::Postgres { .. } => {
                Ok(WriterConn(WriterInner::Shared(self.engine.clone())))
            }
        }
    }
}

/// The channel new revisions are announced on (PostgreSQL), payload `"<controller> <revision>"`.
pub const PUBLISH_CHANNEL: &str = "portcullis_publish";

/// Notifications queued for a listener before new ones are dropped (they are rare: one
/// per apply; a listener that fell behind catches up from the hosts table).
const LISTEN_QUEUE: usize = 1024;

/// Announce `revision` to every controller sharing the database: delivered when the
/// caller's transaction commits, never if it rolls back. Nothing on SQLite.
pub fn publish(db: &Db<'_>, controller: &str, revision: u64) -> anyhow::Result<()> {
    if db.dialect() == Dialect::Postgres {
        db.execute(
            "SELECT pg_notify(?1, ?2)",
            crate::args![PUBLISH_CHANNEL, format!("{controller} {revision}")],
        )?;
    }
    Ok(())
}

/// Most bytes of host names in one verify notification (PostgreSQL's payload limit is
/// 8000 bytes).
const VERIFY_PAYLOAD: usize = 7_000;

/// Ask every controller sharing the database to have `hosts` verify now (those whose
/// sessions it holds): `"<controller> verify <host>,<host>,..."`, in as many notifications
/// as the payload limit needs. Sent at once (not in a transaction). Nothing on SQLite.
pub fn publish_verify(db: &Db<'_>, controller: &str, hosts: &[String]) -> anyhow::Result<()> {
    if db.dialect() != Dialect::Postgres {
        return Ok(());
    }
    let mut chunk = String::new();
    let send = |chunk: &mut String| -> anyhow::Result<()> {
        if !chunk.is_empty() {
            db.execute(
                "SELECT pg_notify(?1, ?2)",
                crate::args![PUBLISH_CHANNEL, format!("{controller} verify {chunk}")],
            )?;
            chunk.clear();
        }
        Ok(())
    };
    for h in hosts.iter().filter(|h| !h.contains([',', ' '])) {
        if chunk.len() + h.len() + 1 > VERIFY_PAYLOAD {
            send(&mut chunk)?;
        }
        if !chunk.is_empty() {
            chunk.push(',');
        }
        chunk.push_str(h);
    }
    send(&mut chunk)
}

impl Store {
    /// The payloads of notifications on `channel`, from a connection of its own
    /// (PostgreSQL; `None` on SQLite, where there is one controller). The receiver ends
    /// when that connection is lost: listen again, and catch up on what was missed.
    pub async fn listen(
        &self,
        channel: &str,
    ) -> anyhow::Result<Option<tokio::sync::mpsc::Receiver<String>>> {
        let Engine::Postgres { config, ca, .. } = &*self.engine else {
            return Ok(None);
        };
        let rx = if pg_tls::needed(config) {
            listen_with(config, pg_tls::connector(ca.as_deref())?, channel).await?
        } else {
            listen_with(config, tokio_postgres::NoTls, channel).await?
        };
        Ok(Some(rx))
    }
}

async fn listen_with<T>(
    config: &tokio_postgres::Config,
    tls: T,
    channel: &str,
) -> anyhow::Result<tokio::sync::mpsc::Receiver<String>>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket> + Send + 'static,
    T::Stream: Send + 'static,
{
    use futures::StreamExt as _;
    let (client, mut conn) = config.connect(tls).await.map_err(sql::pg_error)?;
    let (tx, rx) = tokio::sync::mpsc::channel(LISTEN_QUEUE);
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    if tx.try_send(n.payload().to_string()).is_err() {
                        tracing::warn!("a store notification was dropped (listener behind)");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %sql::pg_error(e), "PostgreSQL notification connection lost");
                    break;
                }
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {channel}"))
        .await
        .map_err(sql::pg_error)?;
    // The client lives as long as the connection it drives.
    tokio::spawn(async move {
        let _client = client;
        let _ = driver.await;
    });
    Ok(rx)
}

/// A dedicated writer's connection (see [`Store::writer_connection`]).
pub struct WriterConn(WriterInner);

enum WriterInner {
    Sqlite(Connection),
    Shared(Arc<Engine>),
}

impl WriterConn {
    /// Run `f` on it (blocking; call from the writer's own thread).
    pub fn with<T>(&mut self, f: impl FnOnce(&Db<'_>) -> anyhow::Result<T>) -> anyhow::Result<T> {
        match &self.0 {
            WriterInner::Sqlite(c) => f(&Db::sqlite(c)),
            WriterInner::Shared(engine) => with_db(engine, f),
        }
    }

    /// SQLite tuning for the writer (see `server::logs::writer`).
    pub fn sqlite(&self) -> Option<&Connection> {
        match &self.0 {
            WriterInner::Sqlite(c) => Some(c),
            WriterInner::Shared(_) => None,
        }
    }
}

/// Another connection to the SQLite file (WAL, so readers never block the writer).
fn open_extra(path: &Path) -> anyhow::Result<Connection> {
    let conn =
        Connection::open(path).with_context(|| format!("opening database {}", path.display()))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Run `f` on a connection of `engine`, blocking. A PostgreSQL connection that `f` left
/// inside a transaction (an early return past a guard cannot, a panic can) is rolled
/// back before it goes back to the pool.
fn with_db<T>(engine: &Engine, f: impl FnOnce(&Db<'_>) -> anyhow::Result<T>) -> anyhow::Result<T> {
    match engine {
        Engine::Sqlite { conn, .. } => {
            let guard = lock_recovered(conn);
            f(&Db::sqlite(&guard))
        }
        Engine::Postgres { pool, rt, .. } => {
            let client = rt
                .block_on(pool.get())
                .map_err(|e| Unavailable(e.to_string()))?;
            let guard = Discard(Some(client));
            let Some(client) = guard.0.as_ref() else {
                unreachable!("just set")
            };
            let db = Db::postgres(client, rt.clone());
            let out = f(&db);
            if db.in_transaction() {
                let _ = db.batch("ROLLBACK");
            }
            out
        }
    }
}

/// A pooled PostgreSQL connection that is closed instead of going back to the pool when
/// a store call panics with it (it may be inside a transaction nobody will end).
struct Discard(Option<deadpool_postgres::Object>);

impl Drop for Discard {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(o) = self.0.take()
        {
            tracing::error!("a store call panicked; its PostgreSQL connection is closed");
            drop(deadpool_postgres::Object::take(o));
        }
    }
}

/// Lock the connection, recovering it if a call panicked while holding it: a
/// transaction guard rolls back when dropped during the unwind, and any transaction still
/// open is rolled back here, so the connection is as the last commit left it. Without this
/// one panic would fail every later store call until the controller is restarted.
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
pub fn audit(db: &Db<'_>, actor: &str, action: &str, detail: &str) -> anyhow::Result<()> {
    db.execute(
        "INSERT INTO audit (at_ms, actor, action, detail) VALUES (?1, ?2, ?3, ?4)",
        crate::args![now_ms(), actor, action, detail],
    )?;
    Ok(())
}

/// The newest revision number, 0 if none.
pub fn latest_revision(db: &Db<'_>) -> anyhow::Result<u64> {
    let v: Option<i64> = db.query_one("SELECT MAX(id) FROM revisions", crate::args![], |r| {
        r.get(0)
    })?;
    Ok(v.unwrap_or(0).try_into().unwrap_or(0))
}
