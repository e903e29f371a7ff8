//! A throwaway PostgreSQL cluster for tests that run against the real engine.
//!
//! [`require_postgres`] returns the cluster `PORTCULLIS_TEST_PG` names (a libpq
//! key=value connection string to a superuser, e.g. the one `.ci/run` starts), or else
//! starts one for this test process: `initdb` in a temporary directory (as the `postgres`
//! user when run as root: PostgreSQL refuses to run as root), `postgres` listening on a
//! Unix socket in that directory only (no TCP), killed when the test process exits
//! (parent-death signal). Each test takes a schema ([`Cluster::fresh_schema`]) or a
//! database ([`Cluster::fresh_database`]) of its own.
//!
//! When no cluster can be had the test fails, unless `PORTCULLIS_SKIP_POSTGRES=1`.
//!
//! A test that stops the database under a running system takes a cluster of its own
//! ([`require_dedicated`]): [`Cluster::stop`] shuts its server down (fast shutdown: client
//! connections are closed) and [`Cluster::restart`] starts it again on the same data
//! directory, so everything stored before is still there.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

/// Environment variable that turns "cannot run PostgreSQL tests" into a skip.
pub const SKIP_ENV: &str = "PORTCULLIS_SKIP_POSTGRES";
/// A running cluster to use instead of starting one (libpq key=value string).
pub const CLUSTER_ENV: &str = "PORTCULLIS_TEST_PG";

/// A PostgreSQL cluster reachable with a superuser connection string.
#[derive(Debug)]
pub struct Cluster {
    /// key=value connection string without `dbname`/`options`.
    base: String,
    /// The socket directory / data directory of a cluster started here.
    dir: Option<PathBuf>,
    /// How to start its server again (a cluster started here).
    server_cmd: Option<ServerCmd>,
    server: Option<Child>,
}

/// The server command line of a cluster started here.
#[derive(Debug, Clone)]
struct ServerCmd {
    bin: PathBuf,
    settings: Vec<String>,
}

/// The cluster for this process, or `None` to skip (see the module docs); panics when
/// none can be had and skipping was not asked for.
pub fn require_postgres() -> Option<&'static Cluster> {
    static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
    let got = CLUSTER.get_or_init(Cluster::get).as_ref();
    gate(
        got.map_err(Clone::clone),
        &format!("Install the postgresql package (or set {CLUSTER_ENV} to a running cluster)"),
    )
}

/// A cluster, or `None` after printing "skipped" when `PORTCULLIS_SKIP_POSTGRES=1`;
/// otherwise a panic that says why and what to do (`advice`).
fn gate<T>(got: Result<T, String>, advice: &str) -> Option<T> {
    match got {
        Ok(c) => Some(c),
        Err(why) if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") => {
            eprintln!("skipped: {why} ({SKIP_ENV}=1)");
            None
        }
        Err(why) => {
            panic!("this test needs PostgreSQL: {why}. {advice}, or set {SKIP_ENV}=1 to skip.")
        }
    }
}

/// A cluster of the caller's own ([`Cluster::start`] with `settings`), which it may stop
/// and restart; `None` to skip, a panic when none can be started (as [`require_postgres`];
/// [`CLUSTER_ENV`] does not help here: the server binaries must be installed).
pub fn require_dedicated(settings: &[&str]) -> Option<Cluster> {
    gate(
        Cluster::start(settings),
        "A cluster of its own needs the postgresql package installed",
    )
}

static NEXT: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl Cluster {
    fn get() -> Result<Self, String> {
        if let Ok(base) = std::env::var(CLUSTER_ENV) {
            let c = Self {
                base: strip_dbname(&base),
                dir: None,
                server_cmd: None,
                server: None,
            };
            c.psql("postgres", "SELECT 1")
                .map_err(|e| format!("{CLUSTER_ENV}={base:?}: {e}"))?;
            return Ok(c);
        }
        Self::start(&[
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
        ])
    }

    /// A connection string for database `db` (and `search_path` = `schema` if given).
    pub fn url(&self, db: &str, schema: Option<&str>) -> String {
        match schema {
            Some(s) => format!("{} dbname={db} options='-c search_path={s}'", self.base),
            None => format!("{} dbname={db}", self.base),
        }
    }

    /// A new, empty schema in database `postgres`; returns a connection string whose
    /// `search_path` is that schema (tables the test creates land there).
    pub fn fresh_schema(&self) -> Result<String, String> {
        let s = unique("t");
        self.psql("postgres", &format!("CREATE SCHEMA {s}"))?;
        Ok(self.url("postgres", Some(&s)))
    }

    /// A new, empty database; returns its connection string.
    pub fn fresh_database(&self) -> Result<String, String> {
        let d = unique("pct");
        self.psql("postgres", &format!("CREATE DATABASE {d}"))?;
        Ok(self.url(&d, None))
    }

    /// Run one SQL command with `psql` against database `db`.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let bin = bindir().map(|d| d.join("psql"));
        let bin = bin.as_deref().unwrap_or(Path::new("psql"));
        let out = Command::new(bin)
            .arg(self.url(db, None))
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .map_err(|e| format!("running {}: {e}", bin.display()))?;
        if !out.status.success() {
            return Err(format!(
                "psql `{sql}`: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The socket directory of a cluster started by this process.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Start a cluster of this process's own with `settings` (`name=value`, passed as
    /// `-c`) on top of: no TCP (a Unix socket in its directory), 400 connections.
    pub fn start(settings: &[&str]) -> Result<Self, String> {
        let bin = bindir().ok_or("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin)")?;
        clean_stale();
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pct-pg-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let root = nix::unistd::geteuid().is_root();
        if root {
            let pg = nix::unistd::User::from_name("postgres")
                .map_err(|e| e.to_string())?
                .ok_or("no `postgres` user to run the server as (PostgreSQL refuses root)")?;
            nix::unistd::chown(&dir, Some(pg.uid), Some(pg.gid))
                .map_err(|e| format!("chown {}: {e}", dir.display()))?;
        }
        let data = dir.join("data");
        let init = as_postgres(&bin.join("initdb"))
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(&data)
            .stdout(Stdio::null())
            .output()
            .map_err(|e| format!("running initdb: {e}"))?;
        if !init.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&init.stderr).trim()
            ));
        }
        let mut c = Self {
            base: format!("host={} port=5432 user=postgres", dir.display()),
            dir: Some(dir),
            server_cmd: Some(ServerCmd {
                bin,
                settings: settings.iter().map(|s| (*s).to_owned()).collect(),
            }),
            server: None,
        };
        c.run_server()?;
        Ok(c)
    }

    /// Stop the server of a cluster started here (fast shutdown: sessions are closed,
    /// then the data is checkpointed); waits until it has exited (30 s, then SIGKILL).
    /// Connections fail until [`Cluster::restart`].
    pub fn stop(&mut self) -> Result<(), String> {
        let Some(mut server) = self.server.take() else {
            return Err("no server of this process's own is running".to_owned());
        };
        let pid = nix::unistd::Pid::from_raw(
            i32::try_from(server.id()).map_err(|e| format!("server pid: {e}"))?,
        );
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)
            .map_err(|e| format!("signalling postgres {pid}: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match server.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(None) => {
                    let _ = server.kill();
                    let _ = server.wait();
                    return Err("postgres did not shut down within 30 s; killed".to_owned());
                }
                Err(e) => return Err(format!("waiting for postgres: {e}")),
            }
        }
    }

    /// Start the server again on the same data directory (after [`Cluster::stop`]); returns
    /// once it accepts connections.
    pub fn restart(&mut self) -> Result<(), String> {
        if self.server.is_some() {
            return Err("the server is still running".to_owned());
        }
        self.run_server()
    }

    /// Start `postgres` on this cluster's data directory and wait until it answers.
    fn run_server(&mut self) -> Result<(), String> {
        let (Some(dir), Some(how)) = (self.dir.clone(), self.server_cmd.clone()) else {
            return Err("not a cluster started by this process".to_owned());
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .map_err(|e| e.to_string())?;
        let mut cmd = as_postgres(&how.bin.join("postgres"));
        cmd.arg("-D").arg(dir.join("data")).arg("-k").arg(&dir);
        let base = [
            "listen_addresses=",
            "max_connections=400",
            "shared_buffers=256MB",
        ];
        for setting in base
            .iter()
            .copied()
            .chain(how.settings.iter().map(String::as_str))
        {
            cmd.args(["-c", setting]);
        }
        cmd.stdout(Stdio::null()).stderr(log);
        self.server = Some(spawn_kept(cmd)?);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.psql("postgres", "SELECT 1") {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                    return Err(format!("PostgreSQL did not start within 30 s: {e}\n{log}"));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

/// `prog` run as the `postgres` user when we are root (PostgreSQL refuses root), killed
/// when the thread that spawned it ends (see [`spawn_kept`]).
fn as_postgres(prog: &Path) -> Command {
    let mut c = Command::new("setpriv");
    if nix::unistd::geteuid().is_root() {
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"]);
    }
    c.args(["--pdeathsig=KILL", "--"]).arg(prog);
    c
}

type SpawnRequest = (Command, mpsc::Sender<Result<Child, String>>);

/// Spawn `cmd` from a thread that lives as long as the process: the parent-death signal
/// fires when the spawning *thread* ends, so a server spawned from a test's thread would
/// die with that test.
fn spawn_kept(cmd: Command) -> Result<Child, String> {
    static KEEPER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        // If the thread cannot start, every request below fails with a closed channel.
        let _ = std::thread::Builder::new()
            .name("pg-keeper".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn().map_err(|e| format!("starting postgres: {e}")));
                }
                // Every sender is gone only at process exit; stay alive regardless.
                loop {
                    std::thread::park();
                }
            });
        Mutex::new(tx)
    });
    let (reply, answer) = mpsc::channel();
    keeper
        .lock()
        .map_err(|_| "pg-keeper lock poisoned".to_owned())?
        .send((cmd, reply))
        .map_err(|_| "the pg-keeper thread is gone".to_owned())?;
    answer
        .recv()
        .map_err(|_| "the pg-keeper thread is gone".to_owned())?
}

impl Drop for Cluster {
    /// A cluster started here stops with its value (the process-wide one never drops:
    /// the parent-death signal stops it with the process).
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` (Debian's layout).
fn bindir() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, d)| d)
}

/// Remove the directories of clusters whose test process is gone.
fn clean_stale() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("pct-pg-"))
            .and_then(|p| p.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn strip_dbname(s: &str) -> String {
    s.split_whitespace()
        .filter(|kv| !kv.starts_with("dbname=") && !kv.starts_with("options="))
        .collect::<Vec<_>>()
        .join(" ")
}
