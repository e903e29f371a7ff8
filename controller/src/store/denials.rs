//! Denial log writes: store agents' aggregated denial batches (idempotent by the agent's
//! batch numbering, enforced by the database's `denial_batches` key), keep per-host loss
//! totals, and trim old rows.
//!
//! Every function takes the connection so the caller owns the transaction boundary; each
//! controller's single denial writer calls [`store_batches`] once per group commit. On
//! SQLite rows go in with multi-row INSERTs; on PostgreSQL with one binary `COPY` per
//! group into a table partitioned by day, under an advisory lock that makes row ids
//! follow commit order across controllers (so `logs --follow` on any controller can read
//! "every row after id N" and miss nothing). This module validates nothing (the server
//! does, before calling) and knows nothing of gRPC.

use super::sql::{Db, Dialect, pg_error};
use crate::args;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};

/// One aggregated denial as stored (source, protocol, port, interface over an interval).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewDenial {
    pub src: String,
    pub dst: String,
    pub proto: u8,
    pub dport: u16,
    pub ifname: String,
    pub count: u64,
    pub first_ms: i64,
    pub last_ms: i64,
    pub revision: u64,
    pub audit: bool,
}

/// A stored denial row with its host and row id (ids grow with insertion order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DenialRecord {
    pub id: i64,
    pub host: String,
    #[serde(flatten)]
    pub denial: NewDenial,
}

/// The accounting part of one agent batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchCounters {
    /// The agent's spool numbering; a new epoch restarts `seq`.
    pub epoch: u64,
    pub seq: u64,
    pub seen: u64,
    pub dropped_by_agent: u64,
    pub socket_overruns: u64,
    pub socket_lost: u64,
    pub kernel_suppressed: u64,
    pub spool_dropped: u64,
}

/// One validated agent batch, ready to store.
#[derive(Debug, Clone, Default)]
pub struct HostBatch {
    pub host: String,
    pub counters: BatchCounters,
    pub rows: Vec<NewDenial>,
}

/// What [`store_batches`] did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Stored; `first_id..=last_id` are the new rows (empty range when the batch had none).
    Stored { first_id: i64, last_id: i64 },
    /// `seq` was at or below the host's last stored seq of the same epoch: acknowledged,
    /// not stored again.
    Duplicate { last_seq: u64 },
}

/// Per-host loss accounting, summed over every stored batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HostTotals {
    pub host: String,
    pub epoch: u64,
    pub last_seq: u64,
    pub seen: u64,
    /// Events stored (sum of row counts).
    pub stored: u64,
    pub dropped_by_agent: u64,
    pub socket_overruns: u64,
    pub socket_lost: u64,
    pub kernel_suppressed: u64,
    pub spool_dropped: u64,
}

/// Where stored counters and totals saturate: half of i64::MAX, so `total + batch` in SQL
/// never overflows (SQLite turns an overflowing `+` into a REAL, which would then fail
/// every read of `denial_totals` for every host).
pub const TOTAL_CAP: i64 = i64::MAX / 2;

fn i(v: u64) -> i64 {
    // Validation bounds every counter far below the cap; saturate as a last resort.
    i64::try_from(v).unwrap_or(i64::MAX).min(TOTAL_CAP)
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Epochs are random 64-bit values: stored bit for bit in SQLite's signed integer.
fn epoch_to_sql(e: u64) -> i64 {
    i64::from_ne_bytes(e.to_ne_bytes())
}

fn epoch_from_sql(e: i64) -> u64 {
    u64::from_ne_bytes(e.to_ne_bytes())
}

/// Rows per multi-row INSERT statement (11 parameters each; far below SQLite's limit).
const ROWS_PER_INSERT: usize = 64;

/// `INSERT INTO denials ... VALUES (...), (...)` for `rows` rows.
fn insert_sql(rows: usize) -> String {
    let one = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
    format!(
        "INSERT INTO denials
         (host, first_ms, last_ms, src, dst, proto, dport, ifname, count, revision, audit)
         VALUES {}",
        vec![one; rows].join(", ")
    )
}

/// Insert `rows` of `host` with as few statements as possible; returns the last row id.
/// Rows of one statement get consecutive ids (no explicit ids, rowid = max + 1).
fn insert_rows(tx: &rusqlite::Connection, host: &str, rows: &[NewDenial]) -> anyhow::Result<i64> {
    use rusqlite::types::ToSql;
    let mut wide = tx.prepare_cached(&insert_sql(ROWS_PER_INSERT))?;
    let mut chunks = rows.chunks_exact(ROWS_PER_INSERT);
    let bind = |chunk: &[NewDenial], stmt: &mut rusqlite::CachedStatement<'_>| {
        let (counts, revisions): (Vec<i64>, Vec<i64>) =
            chunk.iter().map(|r| (i(r.count), i(r.revision))).unzip();
        let mut p: Vec<&dyn ToSql> = Vec::with_capacity(chunk.len() * 11);
        for (n, r) in chunk.iter().enumerate() {
            p.extend_from_slice(&[
                &host as &dyn ToSql,
                &r.first_ms,
                &r.last_ms,
                &r.src,
                &r.dst,
                &r.proto,
                &r.dport,
                &r.ifname,
                &counts[n],
                &revisions[n],
                &r.audit,
            ]);
        }
        stmt.execute(p.as_slice())
    };
    for chunk in chunks.by_ref() {
        bind(chunk, &mut wide)?;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut stmt = tx.prepare_cached(&insert_sql(rest.len()))?;
        bind(rest, &mut stmt)?;
    }
    Ok(tx.last_insert_rowid())
}

/// Totals add up saturating at [`TOTAL_CAP`] (4611686018427387903): `MIN(total, cap - x) + x`
/// with both operands at most the cap, so no step overflows.
const UPSERT_TOTALS: &str = "INSERT INTO denial_totals
    (host, last_seq, seen, stored, dropped_by_agent, socket_overruns, kernel_suppressed,
     spool_dropped, epoch, socket_lost)
    VALUES {values}
    ON CONFLICT(host) DO UPDATE SET
      last_seq = excluded.last_seq,
      epoch = excluded.epoch,
      socket_lost = {socket_lost},
      seen = {seen},
      stored = {stored},
      dropped_by_agent = {dropped_by_agent},
      socket_overruns = {socket_overruns},
      kernel_suppressed = {kernel_suppressed},
      spool_dropped = {spool_dropped}";

/// [`UPSERT_TOTALS`] with each `{col}` as a saturating sum (portable: a CASE, not the
/// two-argument MIN only SQLite has).
fn upsert_totals_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let mut sql = UPSERT_TOTALS.to_string();
        for col in [
            "socket_lost",
            "seen",
            "stored",
            "dropped_by_agent",
            "socket_overruns",
            "kernel_suppressed",
            "spool_dropped",
        ] {
            let sum = format!(
                "CASE WHEN denial_totals.{col} < {TOTAL_CAP} - excluded.{col}
                      THEN denial_totals.{col} ELSE {TOTAL_CAP} - excluded.{col} END
                 + excluded.{col}"
            );
            sql = sql.replace(&format!("{{{col}}}"), &sum);
        }
        sql
    })
}

/// The advisory lock every controller's denial writer holds while it stores a group on
/// PostgreSQL ("pcdenial"): row ids are handed out and committed in one order.
const DENIAL_LOCK: i64 = 0x7063_6465_6e69_616c;

/// One day of `last_ms`: the unit of partitioning and of retention on PostgreSQL.
pub const DAY_MS: i64 = 86_400_000;

fn partition_name(day: i64) -> String {
    if day < 0 {
        format!("denials_dm{}", day.unsigned_abs())
    } else {
        format!("denials_d{day}")
    }
}

/// Create the day partitions `rows` need (PostgreSQL; in the caller's transaction).
fn ensure_partitions<'a>(
    db: &Db<'_>,
    rows: impl Iterator<Item = &'a NewDenial>,
) -> anyhow::Result<()> {
    let days: BTreeSet<i64> = rows.map(|r| r.last_ms.div_euclid(DAY_MS)).collect();
    for day in days {
        let name = partition_name(day);
        let exists: Option<String> =
            db.query_one("SELECT CAST(to_regclass(?1) AS TEXT)", args![name], |r| {
                r.get(0)
            })?;
        if exists.is_none() {
            let (from, to) = (day.saturating_mul(DAY_MS), (day + 1).saturating_mul(DAY_MS));
            db.batch(&format!(
                "CREATE TABLE IF NOT EXISTS {name} PARTITION OF denials FOR VALUES FROM ({from}) TO ({to})"
            ))?;
        }
    }
    Ok(())
}

/// COPY `rows` (with ids from `first_id`) in binary (PostgreSQL; caller's transaction).
fn copy_rows(db: &Db<'_>, first_id: i64, rows: &[(&str, &NewDenial)]) -> anyhow::Result<()> {
    use tokio_postgres::binary_copy::BinaryCopyInWriter;
    use tokio_postgres::types::{ToSql, Type};
    let Some((client, rt)) = db.as_postgres() else {
        anyhow::bail!("COPY needs PostgreSQL");
    };
    rt.block_on(async {
        let sink = client
            .copy_in(
                "COPY denials (id, host, first_ms, last_ms, src, dst, proto, dport, ifname, count,
                               revision, audit) FROM STDIN BINARY",
            )
            .await
            .map_err(pg_error)?;
        let types = [
            Type::INT8,
            Type::TEXT,
            Type::INT8,
            Type::INT8,
            Type::TEXT,
            Type::TEXT,
            Type::INT8,
            Type::INT8,
            Type::TEXT,
            Type::INT8,
            Type::INT8,
            Type::INT8,
        ];
        let writer = BinaryCopyInWriter::new(sink, &types);
        futures::pin_mut!(writer);
        for (n, (host, r)) in rows.iter().enumerate() {
            let id = first_id + i64::try_from(n)?;
            let (proto, dport, count, revision, audit) = (
                i64::from(r.proto),
                i64::from(r.dport),
                i(r.count),
                i(r.revision),
                i64::from(r.audit),
            );
            let values: [&(dyn ToSql + Sync); 12] = [
                &id,
                host,
                &r.first_ms,
                &r.last_ms,
                &r.src,
                &r.dst,
                &proto,
                &dport,
                &r.ifname,
                &count,
                &revision,
                &audit,
            ];
            writer.as_mut().write(&values).await.map_err(pg_error)?;
        }
        writer.finish().await.map_err(pg_error)?;
        anyhow::Ok(())
    })
}

/// Store `batches` (in order) in ONE transaction: rows and totals of every new batch, nothing
/// for a batch whose seq is not above its host's last stored seq in the same epoch (an agent
/// resending after a reconnect). A host's first batch, or the first of a new epoch, may have
/// any seq, 0 included. All or nothing.
pub fn store_batches(db: &Db<'_>, batches: &[HostBatch]) -> anyhow::Result<Vec<BatchOutcome>> {
    let tx = db.transaction()?;
    let pg = tx.dialect() == Dialect::Postgres;
    // PostgreSQL: one writer at a time across controllers (ids in commit order).
    let mut next_id = if pg {
        tx.execute("SELECT pg_advisory_xact_lock(?1)", args![DENIAL_LOCK])?;
        tx.query_one("SELECT id FROM denial_high", args![], |r| r.get::<i64>(0))? + 1
    } else {
        0
    };
    // A few statements per group, not per batch (round trips to a database server).
    let mut state = known_seqs(&tx, batches)?;
    let mut seen_keys = std::collections::HashSet::new();
    let mut candidates = Vec::new();
    let mut outcomes: Vec<Option<BatchOutcome>> = vec![None; batches.len()];
    for (n, b) in batches.iter().enumerate() {
        let c = &b.counters;
        let known = state.get(b.host.as_str()).copied();
        let seen = known.is_some_and(|(epoch, last)| c.epoch == epoch && c.seq <= last);
        if seen || !seen_keys.insert((b.host.as_str(), c.epoch, c.seq)) {
            let last = known.map_or(c.seq, |(_, l)| l);
            outcomes[n] = Some(BatchOutcome::Duplicate { last_seq: last });
            continue;
        }
        state.insert(&b.host, (c.epoch, c.seq));
        candidates.push(n);
    }
    // The database's own guard: a (host, epoch, seq) is stored once, whatever any
    // controller's view of the totals says.
    let fresh = insert_batch_keys(&tx, batches, &candidates)?;
    let mut stored: Vec<usize> = Vec::with_capacity(candidates.len());
    for n in candidates {
        let b = &batches[n];
        if !fresh.contains(&(
            b.host.clone(),
            epoch_to_sql(b.counters.epoch),
            i(b.counters.seq),
        )) {
            outcomes[n] = Some(BatchOutcome::Duplicate {
                last_seq: b.counters.seq,
            });
        } else {
            stored.push(n);
        }
    }
    let mut copy: Vec<(&str, &NewDenial)> = Vec::new();
    for &n in &stored {
        let b = &batches[n];
        let (mut first_id, mut last_id) = (0, -1);
        if !b.rows.is_empty() {
            let rows = i64::try_from(b.rows.len())?;
            if pg {
                first_id = next_id;
                next_id += rows;
                last_id = next_id - 1;
                copy.extend(b.rows.iter().map(|r| (b.host.as_str(), r)));
            } else {
                let conn = tx
                    .as_sqlite()
                    .ok_or_else(|| anyhow::anyhow!("not SQLite"))?;
                last_id = insert_rows(conn, &b.host, &b.rows)?;
                first_id = last_id - rows + 1;
            }
        }
        outcomes[n] = Some(BatchOutcome::Stored { first_id, last_id });
    }
    if pg && !copy.is_empty() {
        ensure_partitions(&tx, copy.iter().map(|(_, r)| *r))?;
        let first = next_id - i64::try_from(copy.len())?;
        copy_rows(&tx, first, &copy)?;
        tx.execute("UPDATE denial_high SET id = ?1", args![next_id - 1])?;
    }
    upsert_totals(&tx, batches, &stored)?;
    tx.commit()?;
    outcomes
        .into_iter()
        .map(|o| o.ok_or_else(|| anyhow::anyhow!("a batch without an outcome")))
        .collect()
}

/// Statements of many rows each: hosts, batch keys or totals per statement.
const KEYS_PER_STATEMENT: usize = 500;

/// The stored (epoch, last seq) of the hosts of `batches`.
fn known_seqs<'b>(
    tx: &Db<'_>,
    batches: &'b [HostBatch],
) -> anyhow::Result<HashMap<&'b str, (u64, u64)>> {
    let hosts: BTreeSet<&str> = batches.iter().map(|b| b.host.as_str()).collect();
    let hosts: Vec<&str> = hosts.into_iter().collect();
    let mut out = HashMap::new();
    for chunk in hosts.chunks(KEYS_PER_STATEMENT) {
        let a: Vec<crate::store::Arg<'_>> = chunk
            .iter()
            .map(|h| crate::store::sql::ToArg::to_arg(*h))
            .collect();
        let rows: Vec<(String, u64, u64)> = tx.query(
            &format!(
                "SELECT host, epoch, last_seq FROM denial_totals WHERE host IN ({})",
                vec!["?"; chunk.len()].join(", ")
            ),
            &a,
            |r| Ok((r.get(0)?, epoch_from_sql(r.get(1)?), u(r.get(2)?))),
        )?;
        for (h, epoch, last) in rows {
            if let Some(k) = chunk.iter().find(|c| **c == h) {
                out.insert(*k, (epoch, last));
            }
        }
    }
    Ok(out)
}

/// Insert the keys of `batches[candidates]`; returns the keys that were new.
fn insert_batch_keys(
    tx: &Db<'_>,
    batches: &[HostBatch],
    candidates: &[usize],
) -> anyhow::Result<std::collections::HashSet<(String, i64, i64)>> {
    use crate::store::Arg;
    let now = super::now_ms();
    let mut fresh = std::collections::HashSet::new();
    for chunk in candidates.chunks(KEYS_PER_STATEMENT) {
        let mut a: Vec<Arg<'_>> = Vec::with_capacity(chunk.len() * 4);
        for &n in chunk {
            let b = &batches[n];
            a.extend([
                Arg::Text(b.host.as_str().into()),
                Arg::Int(epoch_to_sql(b.counters.epoch)),
                Arg::Int(i(b.counters.seq)),
                Arg::Int(now),
            ]);
        }
        let keys: Vec<(String, i64, i64)> = tx.query(
            &format!(
                "INSERT INTO denial_batches (host, epoch, seq, stored_ms) VALUES {}
                 ON CONFLICT DO NOTHING RETURNING host, epoch, seq",
                vec!["(?, ?, ?, ?)"; chunk.len()].join(", ")
            ),
            &a,
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        fresh.extend(keys);
    }
    Ok(fresh)
}

/// Add the counters of `batches[stored]` to their hosts' totals: one row per host (its
/// batches summed, saturating; its last batch's epoch and seq), many hosts per statement.
fn upsert_totals(tx: &Db<'_>, batches: &[HostBatch], stored: &[usize]) -> anyhow::Result<()> {
    use crate::store::Arg;
    let mut per_host: Vec<(&str, BatchCounters, u64)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for &n in stored {
        let b = &batches[n];
        let events = b.rows.iter().fold(0u64, |a, r| a.saturating_add(r.count));
        let c = &b.counters;
        let k = *index.entry(b.host.as_str()).or_insert_with(|| {
            per_host.push((b.host.as_str(), BatchCounters::default(), 0));
            per_host.len() - 1
        });
        let (_, t, ev) = &mut per_host[k];
        t.epoch = c.epoch;
        t.seq = c.seq;
        t.seen = t.seen.saturating_add(c.seen);
        t.dropped_by_agent = t.dropped_by_agent.saturating_add(c.dropped_by_agent);
        t.socket_overruns = t.socket_overruns.saturating_add(c.socket_overruns);
        t.kernel_suppressed = t.kernel_suppressed.saturating_add(c.kernel_suppressed);
        t.spool_dropped = t.spool_dropped.saturating_add(c.spool_dropped);
        t.socket_lost = t.socket_lost.saturating_add(c.socket_lost);
        *ev = ev.saturating_add(events);
    }
    for chunk in per_host.chunks(KEYS_PER_STATEMENT) {
        let mut a: Vec<Arg<'_>> = Vec::with_capacity(chunk.len() * 10);
        for (host, c, events) in chunk {
            a.extend([
                Arg::Text((*host).into()),
                Arg::Int(i(c.seq)),
                Arg::Int(i(c.seen)),
                Arg::Int(i(*events)),
                Arg::Int(i(c.dropped_by_agent)),
                Arg::Int(i(c.socket_overruns)),
                Arg::Int(i(c.kernel_suppressed)),
                Arg::Int(i(c.spool_dropped)),
                Arg::Int(epoch_to_sql(c.epoch)),
                Arg::Int(i(c.socket_lost)),
            ]);
        }
        let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
        tx.execute(&upsert_totals_sql().replace("{values}", &values), &a)?;
    }
    Ok(())
}

/// Per-host totals for the given hosts (all when `hosts` is `None`), sorted by host.
pub fn denial_totals(conn: &Db<'_>, hosts: Option<&[String]>) -> anyhow::Result<Vec<HostTotals>> {
    let rows = conn.query(
        "SELECT host, last_seq, seen, stored, dropped_by_agent, socket_overruns,
                kernel_suppressed, spool_dropped, epoch, socket_lost
         FROM denial_totals ORDER BY host",
        args![],
        |r| {
            Ok(HostTotals {
                host: r.get(0)?,
                last_seq: u(r.get(1)?),
                seen: u(r.get(2)?),
                stored: u(r.get(3)?),
                dropped_by_agent: u(r.get(4)?),
                socket_overruns: u(r.get(5)?),
                kernel_suppressed: u(r.get(6)?),
                spool_dropped: u(r.get(7)?),
                epoch: epoch_from_sql(r.get(8)?),
                socket_lost: u(r.get(9)?),
            })
        },
    )?;
    Ok(rows
        .into_iter()
        .filter(|t| hosts.is_none_or(|h| h.contains(&t.host)))
        .collect())
}

/// Delete at most `chunk` rows last seen before `cutoff_ms` (oldest first); returns how many.
/// Callers loop until 0 so ingest can interleave between chunks. On PostgreSQL the day
/// partitions wholly before the cutoff are dropped first (no row-by-row delete); the
/// batch keys of that age go too.
pub fn delete_denials_before(conn: &Db<'_>, cutoff_ms: i64, chunk: usize) -> anyhow::Result<usize> {
    let mut n = 0;
    if conn.dialect() == Dialect::Postgres {
        n += drop_partitions_before(conn, cutoff_ms)?;
    }
    n += conn.execute(
        "DELETE FROM denials WHERE id IN
           (SELECT id FROM denials WHERE last_ms < ?1 ORDER BY last_ms LIMIT ?2)",
        args![cutoff_ms, chunk],
    )?;
    conn.execute(
        "DELETE FROM denial_batches WHERE stored_ms < ?1",
        args![cutoff_ms],
    )?;
    Ok(n)
}

/// Drop the day partitions that end at or before `cutoff_ms`; returns their row count.
fn drop_partitions_before(conn: &Db<'_>, cutoff_ms: i64) -> anyhow::Result<usize> {
    let mut rows = 0usize;
    for (day, name) in partitions(conn)? {
        if (day + 1).saturating_mul(DAY_MS) <= cutoff_ms {
            let tx = conn.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock(?1)", args![DENIAL_LOCK])?;
            rows += tx
                .query_one(&format!("SELECT COUNT(*) FROM {name}"), args![], |r| {
                    r.get::<i64>(0)
                })?
                .try_into()
                .unwrap_or(0);
            tx.batch(&format!("DROP TABLE {name}"))?;
            tx.commit()?;
        }
    }
    Ok(rows)
}

/// The day partitions (PostgreSQL), by day number.
fn partitions(conn: &Db<'_>) -> anyhow::Result<Vec<(i64, String)>> {
    let names: Vec<String> = conn.query(
        "SELECT CAST(c.relname AS TEXT) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
          WHERE i.inhparent = CAST(to_regclass('denials') AS OID)",
        args![],
        |r| r.get(0),
    )?;
    // Named again from the day number: only a name this module makes is ever put into SQL.
    let mut out: Vec<(i64, String)> = names
        .into_iter()
        .filter_map(|name| {
            let day = match name.strip_prefix("denials_dm") {
                Some(d) => d.parse::<i64>().ok().map(|d| -d),
                None => name.strip_prefix("denials_d")?.parse::<i64>().ok(),
            }?;
            (partition_name(day) == name).then_some((day, name))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Give the day partitions before `before_day` their (host, time) and (port, time)
/// indexes (PostgreSQL; nothing on SQLite, whose table has them from the start). Built
/// `CONCURRENTLY`, so a late row for that day is not held up; an index left invalid by
/// an interrupted build is dropped and built again. Outside any transaction. Returns how
/// many indexes were built.
pub fn seal_partitions(conn: &Db<'_>, before_day: i64) -> anyhow::Result<usize> {
    if conn.dialect() != Dialect::Postgres {
        return Ok(0);
    }
    let mut built = 0;
    for (day, name) in partitions(conn)? {
        if day >= before_day {
            continue;
        }
        for (suffix, cols) in [("host", "host, last_ms"), ("port", "dport, last_ms")] {
            let index = format!("{name}_{suffix}");
            let valid: Option<bool> = conn.query_opt(
                "SELECT i.indisvalid FROM pg_index i
                  WHERE i.indexrelid = CAST(to_regclass(?1) AS OID)",
                args![index],
                |r| r.get(0),
            )?;
            match valid {
                Some(true) => continue,
                Some(false) => conn.batch(&format!("DROP INDEX CONCURRENTLY {index}"))?,
                None => {}
            }
            conn.batch(&format!(
                "CREATE INDEX CONCURRENTLY {index} ON {name} ({cols})"
            ))?;
            built += 1;
        }
    }
    Ok(built)
}

/// Delete at most `chunk` of the oldest-inserted rows beyond the newest `max_rows` (by row
/// id, which grows with insertion; O(log n), no COUNT(*)); returns how many.
pub fn delete_denials_over(conn: &Db<'_>, max_rows: u64, chunk: usize) -> anyhow::Result<usize> {
    let max_id = max_denial_id(conn)?;
    if max_id == 0 {
        return Ok(0);
    }
    let keep_from = max_id.saturating_sub(i(max_rows)).saturating_add(1);
    conn.execute(
        "DELETE FROM denials WHERE id IN
           (SELECT id FROM denials WHERE id < ?1 ORDER BY id LIMIT ?2)",
        args![keep_from, chunk],
    )
}

/// The newest stored row id (0 when none): the high-water mark `--follow` starts after.
pub fn max_denial_id(conn: &Db<'_>) -> anyhow::Result<i64> {
    let v: Option<i64> = match conn.dialect() {
        Dialect::Sqlite => conn.query_one("SELECT MAX(id) FROM denials", args![], |r| r.get(0))?,
        Dialect::Postgres => conn.query_one("SELECT id FROM denial_high", args![], |r| r.get(0))?,
    };
    Ok(v.unwrap_or(0))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use crate::store::testing::each_engine;

    fn row(src: &str, port: u16, count: u64, at: i64) -> NewDenial {
        NewDenial {
            src: src.into(),
            dst: "10.0.0.1".into(),
            proto: 6,
            dport: port,
            ifname: "eth0".into(),
            count,
            first_ms: at,
            last_ms: at,
            revision: 1,
            audit: false,
        }
    }

    fn batch(host: &str, seq: u64, rows: Vec<NewDenial>) -> HostBatch {
        let seen = rows.iter().map(|r| r.count).sum::<u64>() + 2;
        HostBatch {
            host: host.into(),
            counters: BatchCounters {
                seq,
                seen,
                dropped_by_agent: 2,
                ..Default::default()
            },
            rows,
        }
    }

    #[test]
    fn totals_saturate_instead_of_overflowing() {
        each_engine(|store| {
            store.call_sync(|c| {
                let huge = |seq| HostBatch {
                    host: "evil".into(),
                    counters: BatchCounters {
                        seq,
                        seen: u64::MAX,
                        socket_lost: u64::MAX,
                        ..Default::default()
                    },
                    rows: vec![row("192.0.2.1", 22, u64::MAX, 1000)],
                };
                store_batches(c, &[huge(1), huge(2), huge(3)])?;
                let t = denial_totals(c, None)?;
                let cap = u64::try_from(TOTAL_CAP)?;
                assert_eq!((t[0].seen, t[0].stored, t[0].socket_lost), (cap, cap, cap));
                assert!(upsert_totals_sql().contains(&TOTAL_CAP.to_string()));
                Ok(())
            })
        });
    }

    #[test]
    fn duplicates_by_seq_are_not_stored_twice() {
        each_engine(|store| {
            store.call_sync(|c| {
                let b0 = batch("h1", 0, vec![row("192.0.2.1", 22, 3, 1000)]);
                let b1 = batch("h1", 1, vec![row("192.0.2.2", 23, 1, 2000)]);
                let out = store_batches(c, &[b0.clone(), b1.clone(), b0.clone()])?;
                assert_eq!(
                    out[0],
                    BatchOutcome::Stored {
                        first_id: 1,
                        last_id: 1
                    }
                );
                assert_eq!(out[2], BatchOutcome::Duplicate { last_seq: 1 });
                let out = store_batches(c, &[b1])?;
                assert_eq!(out, vec![BatchOutcome::Duplicate { last_seq: 1 }]);
                let t = denial_totals(c, None)?;
                assert_eq!(t.len(), 1);
                assert_eq!((t[0].last_seq, t[0].stored, t[0].seen), (1, 4, 8));
                assert_eq!(t[0].dropped_by_agent, 4);
                assert_eq!(max_denial_id(c)?, 2);
                // A new epoch (fresh agent spool) restarts numbering: seq 0 is new again.
                let mut b = batch("h1", 0, vec![row("192.0.2.3", 22, 1, 3000)]);
                b.counters.epoch = u64::MAX;
                let out = store_batches(c, std::slice::from_ref(&b))?;
                assert!(matches!(out[0], BatchOutcome::Stored { .. }));
                let out = store_batches(c, &[b])?;
                assert_eq!(out, vec![BatchOutcome::Duplicate { last_seq: 0 }]);
                assert_eq!(denial_totals(c, None)?[0].epoch, u64::MAX);
                // The old epoch's batch replayed (an agent that failed over while its ack
                // was lost): the totals no longer remember that epoch, the database does.
                let out = store_batches(c, &[b0])?;
                assert!(matches!(out[0], BatchOutcome::Duplicate { .. }), "{out:?}");
                assert_eq!(max_denial_id(c)?, 3);
                Ok(())
            })
        });
    }

    #[test]
    fn multi_row_batches_keep_consecutive_ids() {
        each_engine(|store| {
            store.call_sync(|c| {
                let rows: Vec<NewDenial> = (0..150).map(|n| row("192.0.2.1", 22, 1, n)).collect();
                let out = store_batches(c, &[batch("h1", 1, rows.clone()), batch("h2", 1, rows)])?;
                assert_eq!(
                    out,
                    vec![
                        BatchOutcome::Stored {
                            first_id: 1,
                            last_id: 150
                        },
                        BatchOutcome::Stored {
                            first_id: 151,
                            last_id: 300
                        }
                    ]
                );
                let last: (String, i64) = c.query_one(
                    "SELECT host, last_ms FROM denials WHERE id = 150",
                    args![],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                assert_eq!(last, ("h1".to_string(), 149));
                let f = crate::store::DenialFilter::default();
                let (after, last, full) = crate::store::query_denials_after(c, &f, 140, 20)?;
                assert_eq!((after.len(), last, full), (20, 160, true));
                assert_eq!((after[0].id, after[19].id), (141, 160));
                assert_eq!(after[10].host, "h2");
                let h2 = crate::store::DenialFilter {
                    hosts: crate::store::HostPattern::parse("h2")?,
                    ..Default::default()
                };
                let (after, last, _) = crate::store::query_denials_after(c, &h2, 140, 20)?;
                assert_eq!((after.len(), last), (10, 160), "scanned 20, 10 match");
                let (_, last, full) = crate::store::query_denials_after(c, &f, 290, 20)?;
                assert_eq!((last, full), (300, false));
                Ok(())
            })
        });
    }

    #[test]
    fn retention_deletes_in_chunks() {
        each_engine(|store| {
            store.call_sync(|c| {
                let rows = (0..25).map(|n| row("192.0.2.1", 22, 1, n * 10)).collect();
                store_batches(c, &[batch("h1", 1, rows)])?;
                assert_eq!(delete_denials_before(c, 100, 4)?, 4);
                assert_eq!(delete_denials_before(c, 100, 100)?, 6);
                assert_eq!(delete_denials_before(c, 100, 100)?, 0);
                assert_eq!(delete_denials_over(c, 10, 3)?, 3);
                while delete_denials_over(c, 10, 3)? > 0 {}
                let ids: Vec<i64> =
                    c.query("SELECT id FROM denials ORDER BY id", args![], |r| r.get(0))?;
                assert_eq!(ids, (16..=25).collect::<Vec<_>>());
                Ok(())
            })
        });
    }

    #[test]
    fn retention_drops_whole_days() {
        each_engine(|store| {
            store.call_sync(|c| {
                let day = |d: i64| d * DAY_MS + 5;
                let rows = vec![
                    row("192.0.2.1", 22, 1, day(20_000)),
                    row("192.0.2.1", 22, 1, day(20_001)),
                    row("192.0.2.1", 22, 1, day(20_002)),
                ];
                store_batches(c, &[batch("h1", 1, rows)])?;
                // Everything before the start of day 20002 goes.
                assert_eq!(delete_denials_before(c, 20_002 * DAY_MS, 100)?, 2);
                let left: Vec<i64> =
                    c.query("SELECT last_ms FROM denials", args![], |r| r.get(0))?;
                assert_eq!(left, vec![day(20_002)]);
                if c.dialect() == Dialect::Postgres {
                    // The remaining (past) day gets its query indexes, once.
                    assert_eq!(seal_partitions(c, 30_000)?, 2);
                    assert_eq!(seal_partitions(c, 30_000)?, 0);
                    let parts: i64 = c.query_one(
                        "SELECT COUNT(*) FROM pg_inherits
                          WHERE inhparent = CAST(to_regclass('denials') AS OID)",
                        args![],
                        |r| r.get(0),
                    )?;
                    assert_eq!(parts, 1, "the two old days' partitions were dropped");
                }
                Ok(())
            })
        });
    }
}
