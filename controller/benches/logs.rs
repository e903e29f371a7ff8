//! Denial log benchmark (controller half of issue 4), side by side in one run:
//!
//! 1. Ingest through the real path (`LogsState::ingest`: validation, the group-commit
//!    writer thread, WAL + synchronous=NORMAL), with several concurrent "agents".
//! 2. Baselines on the same rows: one transaction per row the way ulogd2's sqlite3 output
//!    stores (autocommit, rollback journal, synchronous=FULL), and per-row commits on WAL.
//! 3. Query times (`logs` filters and `--top`) over N stored rows (default 10 million),
//!    generated fast with direct batched inserts.
//!
//! `cargo bench -p portcullis-controller --bench logs [-- --rows N --dir DIR]`

use portcullis_controller::server::logs::{LogsConfig, LogsState, writer};
use portcullis_controller::store::{
    self, BatchCounters, DenialFilter, HostBatch, HostPattern, NewDenial,
};
use portcullis_proto::v1;
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const PORTS: [u16; 12] = [22, 23, 80, 443, 445, 3389, 5432, 443, 8080, 9200, 25, 53];

fn src(rng: &mut Rng) -> String {
    let n = rng.below(100_000);
    format!("198.{}.{}.{}", 18 + n / 65_536, (n / 256) % 256, n % 256)
}

fn port(rng: &mut Rng) -> u16 {
    // Skewed: half the events on three ports, the rest spread over 1024.
    match rng.below(2) {
        0 => PORTS[rng.below(3) as usize],
        _ => 1 + rng.below(1024) as u16,
    }
}

fn entry(rng: &mut Rng, at_ms: i64, count: u64) -> v1::DenialEntry {
    v1::DenialEntry {
        src: src(rng),
        dst: "10.0.0.1".into(),
        proto: if rng.below(10) == 0 { 17 } else { 6 },
        dport: port(rng).into(),
        sport: 40_000,
        ifname: "eth0".into(),
        count,
        first_unix_ms: at_ms - 900,
        last_unix_ms: at_ms,
        revision: 7,
        audit: false,
    }
}

fn now_ms() -> i64 {
    store::now_ms()
}

fn rate(n: u64, d: Duration) -> String {
    let r = n as f64 / d.as_secs_f64();
    if r >= 1000.0 {
        format!("{:.0}k/s", r / 1000.0)
    } else {
        format!("{r:.0}/s")
    }
}

/// Process CPU time (user + system, all threads) in seconds, from /proc/self/stat.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // Fields 14 and 15 of the file are the 12th and 13th after the command name.
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

fn fresh_db(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", p.display()));
    }
    p
}

/// Where a run stores: a fresh SQLite file, or a fresh database of a PostgreSQL cluster
/// started for the benchmark with durable settings (fsync on, full page writes;
/// synchronous_commit=off, the same durability class as SQLite's WAL +
/// synchronous=NORMAL: a crash loses at most the last moments, never consistency).
enum Engine {
    Sqlite(PathBuf),
    Postgres(portcullis_testkit::postgres::Cluster),
}

impl Engine {
    fn name(&self) -> &'static str {
        match self {
            Engine::Sqlite(_) => "SQLite",
            Engine::Postgres(_) => "PostgreSQL",
        }
    }

    async fn fresh(&self) -> store::Store {
        match self {
            Engine::Sqlite(dir) => {
                let db = fresh_db(dir, "ingest.db");
                store::Store::open(&db).expect("open")
            }
            Engine::Postgres(c) => {
                let url = c.fresh_database().expect("database");
                store::Store::open_postgres(&url, None).await.expect("open")
            }
        }
    }
}

fn postgres_cluster() -> Result<portcullis_testkit::postgres::Cluster, String> {
    portcullis_testkit::postgres::Cluster::start(&[
        "fsync=on",
        "full_page_writes=on",
        "synchronous_commit=off",
        "shared_buffers=512MB",
        "max_wal_size=4GB",
        "checkpoint_timeout=15min",
    ])
}

/// Ingest `agents * batches` batches of `per_batch` entries through `LogsState::ingest`.
async fn real_ingest(engine: &Engine, agents: usize, batches: usize, per_batch: usize, count: u64) {
    let db = engine.fresh().await;
    let config = LogsConfig {
        retention: None,
        max_rows: None,
        sweep_interval: Duration::from_secs(3600),
    };
    let state = Arc::new(LogsState::start(&db, &config).expect("start"));
    let mut rng = Rng(1);
    let t = now_ms();
    let work: Vec<Vec<v1::DenialBatch>> = (0..agents)
        .map(|_| {
            (0..batches)
                .map(|seq| v1::DenialBatch {
                    seq: seq as u64,
                    entries: (0..per_batch).map(|_| entry(&mut rng, t, count)).collect(),
                    seen: per_batch as u64 * count,
                    sent: per_batch as u64 * count,
                    epoch: 1,
                    ..Default::default()
                })
                .collect()
        })
        .collect();
    let (started, cpu) = (Instant::now(), cpu_secs());
    let tasks: Vec<_> = work
        .into_iter()
        .enumerate()
        .map(|(a, batches)| {
            let state = state.clone();
            tokio::spawn(async move {
                let host = format!("agent{a:05}");
                for b in batches {
                    state.ingest(&host, b).await.expect("ingest");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let (d, cpu) = (started.elapsed(), cpu_secs() - cpu);
    let rows = (agents * batches * per_batch) as u64;
    println!(
        "| {}: real ingest path, {agents} agents x {batches} batches x {per_batch} entries, count {count}/row | {rows} rows in {:.2} s ({cpu:.2} CPU-s, both engines' processes) | **{} rows**, **{} events** (per CPU-second: {} rows) |",
        engine.name(),
        d.as_secs_f64(),
        rate(rows, d),
        rate(rows * count, d),
        rate(rows, Duration::from_secs_f64(cpu.max(0.01)))
    );
}

const INSERT: &str = "INSERT INTO denials
    (host, first_ms, last_ms, src, dst, proto, dport, ifname, count, revision, audit)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

fn insert_row(stmt: &mut rusqlite::CachedStatement<'_>, host: &str, e: &v1::DenialEntry) {
    stmt.execute(rusqlite::params![
        host,
        e.first_unix_ms,
        e.last_unix_ms,
        e.src,
        e.dst,
        e.proto,
        e.dport,
        e.ifname,
        e.count as i64,
        e.revision as i64,
        e.audit
    ])
    .expect("insert");
}

/// One autocommit transaction per row (ulogd2's sqlite3 output) for `secs` seconds.
fn per_row(dir: &Path, label: &str, wal: bool, secs: u64) {
    let db = fresh_db(dir, "per-row.db");
    drop(store::Store::open(&db).expect("open"));
    let conn = Connection::open(&db).expect("open");
    let (journal, sync) = if wal {
        ("WAL", "NORMAL")
    } else {
        ("DELETE", "FULL")
    };
    conn.pragma_update(None, "journal_mode", journal)
        .expect("pragma");
    conn.pragma_update(None, "synchronous", sync)
        .expect("pragma");
    let mut rng = Rng(2);
    let t = now_ms();
    let mut stmt = conn.prepare_cached(INSERT).expect("prepare");
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(secs) {
        insert_row(&mut stmt, "agent00000", &entry(&mut rng, t, 1));
        n += 1;
    }
    let d = started.elapsed();
    println!(
        "| baseline: {label} | {n} rows in {:.2} s | {} rows |",
        d.as_secs_f64(),
        rate(n, d)
    );
}

/// Fill `db` with `rows` rows over 14 days on 500 hosts, 100k rows per transaction.
fn generate(db: &Path, rows: u64) {
    let s = store::Store::open(db).expect("open");
    s.call_sync(|c| writer::tune_for_ingest(c.as_sqlite().expect("SQLite")))
        .expect("tune");
    let (started, cpu) = (Instant::now(), cpu_secs());
    let mut rng = Rng(3);
    let t0 = now_ms() - 14 * 24 * 3_600_000;
    let step = (14 * 24 * 3_600_000) as f64 / rows as f64;
    let chunk = 100_000u64;
    let mut done = 0u64;
    while done < rows {
        let n = chunk.min(rows - done);
        let batch: Vec<HostBatch> = (0..500)
            .map(|h| HostBatch {
                host: format!("host{h:03}"),
                counters: BatchCounters {
                    seq: done / chunk,
                    ..Default::default()
                },
                rows: Vec::new(),
            })
            .collect();
        let mut batch = batch;
        for i in 0..n {
            let at = t0 + ((done + i) as f64 * step) as i64;
            let count = 1 + rng.below(4);
            let e = entry(&mut rng, at, count);
            let h = rng.below(500) as usize;
            batch[h].rows.push(NewDenial {
                src: e.src,
                dst: e.dst,
                proto: e.proto as u8,
                dport: e.dport as u16,
                ifname: e.ifname,
                count: e.count,
                first_ms: e.first_unix_ms,
                last_ms: e.last_unix_ms,
                revision: e.revision,
                audit: false,
            });
        }
        s.call_sync(|c| store::store_batches(c, &batch).map(|_| ()))
            .expect("store");
        done += n;
    }
    let (d, cpu) = (started.elapsed(), cpu_secs() - cpu);
    let size = std::fs::metadata(db).map(|m| m.len()).unwrap_or(0) >> 20;
    println!(
        "| generate {rows} rows (store_batches, 100k rows/transaction, 500 hosts, 14 days) | {:.1} s ({cpu:.1} CPU-s), {size} MiB | {} rows (per CPU-second: {}) |",
        d.as_secs_f64(),
        rate(rows, d),
        rate(rows, Duration::from_secs_f64(cpu.max(0.01)))
    );
}

fn median_ms(mut f: impl FnMut() -> usize) -> (f64, usize) {
    let mut times = Vec::new();
    let mut n = 0;
    for _ in 0..5 {
        let s = Instant::now();
        n = f();
        times.push(s.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    (times[2], n)
}

fn queries(db: &Path, rows: u64) {
    let conn = Connection::open(db).expect("open");
    let conn = store::Db::sqlite(&conn);
    let now = now_ms();
    let h = |m: i64| Some(now - m * 3_600_000);
    let host = |p: &str| HostPattern::parse(p).expect("pattern");
    let cases: Vec<(&str, DenialFilter, bool)> = vec![
        ("newest 100, no filter", DenialFilter::default(), false),
        (
            "--host host042 --since 1h",
            DenialFilter {
                hosts: host("host042"),
                since_ms: h(1),
                ..Default::default()
            },
            false,
        ),
        (
            "--host host042 --since 24h",
            DenialFilter {
                hosts: host("host042"),
                since_ms: h(24),
                ..Default::default()
            },
            false,
        ),
        (
            "--host 'host04*' --since 1h",
            DenialFilter {
                hosts: host("host04*"),
                since_ms: h(1),
                ..Default::default()
            },
            false,
        ),
        (
            "--port 22 --since 1h",
            DenialFilter {
                port: Some(22),
                since_ms: h(1),
                ..Default::default()
            },
            false,
        ),
        (
            "--port 443 (all time)",
            DenialFilter {
                port: Some(443),
                ..Default::default()
            },
            false,
        ),
        (
            "--source 198.18.5.7 (exact, all time)",
            DenialFilter {
                source: "198.18.5.7/32".parse().ok(),
                ..Default::default()
            },
            false,
        ),
        (
            "--source 198.18.5.0/24 --since 24h (post-filter)",
            DenialFilter {
                source: "198.18.5.0/24".parse().ok(),
                since_ms: h(24),
                ..Default::default()
            },
            false,
        ),
        (
            "--top --host host042 --since 24h",
            DenialFilter {
                hosts: host("host042"),
                since_ms: h(24),
                ..Default::default()
            },
            true,
        ),
        (
            "--top --since 1h (all hosts)",
            DenialFilter {
                since_ms: h(1),
                ..Default::default()
            },
            true,
        ),
        (
            "--top --since 24h (all hosts)",
            DenialFilter {
                since_ms: h(24),
                ..Default::default()
            },
            true,
        ),
    ];
    println!("\n| query over {rows} rows (median of 5, warm cache) | time | result |");
    println!("|---|---|---|");
    for (name, f, top) in cases {
        let (ms, n) = if top {
            median_ms(|| store::top_denials(&conn, &f, 10).expect("top").len())
        } else {
            median_ms(|| {
                store::query_denials(&conn, &f, 100, None)
                    .expect("query")
                    .len()
            })
        };
        let what = if top { "hosts" } else { "rows" };
        println!("| `{name}` | {ms:.1} ms | {n} {what} |");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let rows: u64 = arg("--rows")
        .and_then(|r| r.parse().ok())
        .unwrap_or(10_000_000);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = arg("--dir")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir).expect("dir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    println!("| ingest | volume | rate |");
    println!("|---|---|---|");
    let mut engines = vec![Engine::Sqlite(dir.clone())];
    match postgres_cluster() {
        Ok(c) => engines.push(Engine::Postgres(c)),
        Err(e) => println!("| PostgreSQL | not measured: {e} | |"),
    }
    for engine in &engines {
        rt.block_on(real_ingest(engine, 1, 100, 5_000, 1));
        rt.block_on(real_ingest(engine, 16, 50, 1_000, 1));
        rt.block_on(real_ingest(engine, 200, 10, 200, 1));
        rt.block_on(real_ingest(engine, 16, 50, 1_000, 10));
    }
    per_row(
        &dir,
        "one transaction per row, rollback journal, synchronous=FULL (ulogd2 sqlite3 output)",
        false,
        5,
    );
    per_row(
        &dir,
        "one transaction per row, WAL, synchronous=NORMAL",
        true,
        5,
    );
    let db = fresh_db(&dir, "query.db");
    generate(&db, rows);
    queries(&db, rows);
}
