//! Denial log writes: store agents' aggregated denial batches (idempotent by the agent's
//! batch sequence number), keep per-host loss totals, and trim old rows in small chunks.
//!
//! Every function takes the connection so the caller owns the transaction boundary; the
//! controller's single denial writer calls [`store_batches`] once per group commit. This
//! module validates nothing (the server does, before calling) and knows nothing of gRPC.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use std::collections::HashMap;

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
fn insert_rows(
    tx: &rusqlite::Transaction<'_>,
    host: &str,
    rows: &[NewDenial],
    wide: &mut rusqlite::CachedStatement<'_>,
) -> anyhow::Result<i64> {
    use rusqlite::types::ToSql;
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
        bind(chunk, wide)?;
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
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
    ON CONFLICT(host) DO UPDATE SET
      last_seq = excluded.last_seq,
      epoch = excluded.epoch,
      socket_lost = MIN(socket_lost, 4611686018427387903 - excluded.socket_lost) + excluded.socket_lost,
      seen = MIN(seen, 4611686018427387903 - excluded.seen) + excluded.seen,
      stored = MIN(stored, 4611686018427387903 - excluded.stored) + excluded.stored,
      dropped_by_agent = MIN(dropped_by_agent, 4611686018427387903 - excluded.dropped_by_agent)
        + excluded.dropped_by_agent,
      socket_overruns = MIN(socket_overruns, 4611686018427387903 - excluded.socket_overruns)
        + excluded.socket_overruns,
      kernel_suppressed = MIN(kernel_suppressed, 4611686018427387903 - excluded.kernel_suppressed)
        + excluded.kernel_suppressed,
      spool_dropped = MIN(spool_dropped, 4611686018427387903 - excluded.spool_dropped)
        + excluded.spool_dropped";

/// Store `batches` (in order) in ONE transaction: rows and totals of every new batch, nothing
/// for a batch whose seq is not above its host's last stored seq in the same epoch (an agent
/// resending after a reconnect). A host's first batch, or the first of a new epoch, may have
/// any seq, 0 included. All or nothing.
pub fn store_batches(
    conn: &mut Connection,
    batches: &[HostBatch],
) -> anyhow::Result<Vec<BatchOutcome>> {
    let tx = conn.transaction()?;
    let mut outcomes = Vec::with_capacity(batches.len());
    {
        let mut last_seq: HashMap<&str, Option<(u64, u64)>> = HashMap::new();
        let mut get_seq =
            tx.prepare_cached("SELECT epoch, last_seq FROM denial_totals WHERE host = ?1")?;
        let mut wide = tx.prepare_cached(&insert_sql(ROWS_PER_INSERT))?;
        let mut totals = tx.prepare_cached(UPSERT_TOTALS)?;
        for b in batches {
            let known = match last_seq.get(b.host.as_str()) {
                Some(v) => *v,
                None => get_seq
                    .query_row([&b.host], |r| Ok((epoch_from_sql(r.get(0)?), u(r.get(1)?))))
                    .optional()?,
            };
            let same_epoch_seen =
                |(epoch, last): &(u64, u64)| b.counters.epoch == *epoch && b.counters.seq <= *last;
            if let Some((_, last)) = known.filter(same_epoch_seen) {
                outcomes.push(BatchOutcome::Duplicate { last_seq: last });
                continue;
            }
            let (mut first_id, mut last_id) = (0, -1);
            if !b.rows.is_empty() {
                last_id = insert_rows(&tx, &b.host, &b.rows, &mut wide)?;
                first_id = last_id - i64::try_from(b.rows.len())? + 1;
            }
            let events = b.rows.iter().fold(0u64, |a, r| a.saturating_add(r.count));
            let c = &b.counters;
            totals.execute(params![
                b.host,
                i(c.seq),
                i(c.seen),
                i(events),
                i(c.dropped_by_agent),
                i(c.socket_overruns),
                i(c.kernel_suppressed),
                i(c.spool_dropped),
                epoch_to_sql(c.epoch),
                i(c.socket_lost),
            ])?;
            last_seq.insert(b.host.as_str(), Some((c.epoch, c.seq)));
            outcomes.push(BatchOutcome::Stored { first_id, last_id });
        }
    }
    tx.commit()?;
    Ok(outcomes)
}

/// Per-host totals for the given hosts (all when `hosts` is `None`), sorted by host.
pub fn denial_totals(
    conn: &Connection,
    hosts: Option<&[String]>,
) -> anyhow::Result<Vec<HostTotals>> {
    let mut stmt = conn.prepare_cached(
        "SELECT host, last_seq, seen, stored, dropped_by_agent, socket_overruns,
                kernel_suppressed, spool_dropped, epoch, socket_lost
         FROM denial_totals ORDER BY host",
    )?;
    let rows = stmt.query_map([], |r| {
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
    })?;
    let mut out = Vec::new();
    for t in rows {
        let t = t?;
        if hosts.is_none_or(|h| h.contains(&t.host)) {
            out.push(t);
        }
    }
    Ok(out)
}

/// Delete at most `chunk` rows last seen before `cutoff_ms` (oldest first); returns how many.
/// Callers loop until 0 so ingest can interleave between chunks.
pub fn delete_denials_before(
    conn: &Connection,
    cutoff_ms: i64,
    chunk: usize,
) -> anyhow::Result<usize> {
    let n = conn.execute(
        "DELETE FROM denials WHERE id IN
           (SELECT id FROM denials WHERE last_ms < ?1 ORDER BY last_ms LIMIT ?2)",
        params![cutoff_ms, i64::try_from(chunk).unwrap_or(i64::MAX)],
    )?;
    Ok(n)
}

/// Delete at most `chunk` of the oldest-inserted rows beyond the newest `max_rows` (by row
/// id, which grows with insertion; O(log n), no COUNT(*)); returns how many.
pub fn delete_denials_over(
    conn: &Connection,
    max_rows: u64,
    chunk: usize,
) -> anyhow::Result<usize> {
    let max_id: Option<i64> = conn.query_row("SELECT MAX(id) FROM denials", [], |r| r.get(0))?;
    let Some(max_id) = max_id else {
        return Ok(0);
    };
    let keep_from = max_id.saturating_sub(i(max_rows)).saturating_add(1);
    let n = conn.execute(
        "DELETE FROM denials WHERE id IN
           (SELECT id FROM denials WHERE id < ?1 ORDER BY id LIMIT ?2)",
        params![keep_from, i64::try_from(chunk).unwrap_or(i64::MAX)],
    )?;
    Ok(n)
}

/// The newest row id (0 when empty): the high-water mark `--follow` starts after.
pub fn max_denial_id(conn: &Connection) -> anyhow::Result<i64> {
    let v: Option<i64> = conn.query_row("SELECT MAX(id) FROM denials", [], |r| r.get(0))?;
    Ok(v.unwrap_or(0))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn conn() -> Connection {
        let mut c = Connection::open_in_memory().unwrap();
        super::super::migrations::migrate(&mut c).unwrap();
        c
    }

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
        let mut c = conn();
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
        store_batches(&mut c, &[huge(1), huge(2), huge(3)]).unwrap();
        let t = denial_totals(&c, None).unwrap();
        let cap = u64::try_from(TOTAL_CAP).unwrap();
        assert_eq!((t[0].seen, t[0].stored, t[0].socket_lost), (cap, cap, cap));
        assert!(UPSERT_TOTALS.contains(&TOTAL_CAP.to_string()));
    }

    #[test]
    fn duplicates_by_seq_are_not_stored_twice() {
        let mut c = conn();
        let b0 = batch("h1", 0, vec![row("192.0.2.1", 22, 3, 1000)]);
        let b1 = batch("h1", 1, vec![row("192.0.2.2", 23, 1, 2000)]);
        let out = store_batches(&mut c, &[b0.clone(), b1.clone(), b0.clone()]).unwrap();
        assert_eq!(
            out[0],
            BatchOutcome::Stored {
                first_id: 1,
                last_id: 1
            }
        );
        assert_eq!(out[2], BatchOutcome::Duplicate { last_seq: 1 });
        let out = store_batches(&mut c, &[b1]).unwrap();
        assert_eq!(out, vec![BatchOutcome::Duplicate { last_seq: 1 }]);
        let t = denial_totals(&c, None).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].last_seq, t[0].stored, t[0].seen), (1, 4, 8));
        assert_eq!(t[0].dropped_by_agent, 4);
        assert_eq!(max_denial_id(&c).unwrap(), 2);
        // A new epoch (fresh agent spool) restarts numbering: seq 0 is new again.
        let mut b = batch("h1", 0, vec![row("192.0.2.3", 22, 1, 3000)]);
        b.counters.epoch = u64::MAX;
        let out = store_batches(&mut c, std::slice::from_ref(&b)).unwrap();
        assert!(matches!(out[0], BatchOutcome::Stored { .. }));
        let out = store_batches(&mut c, &[b]).unwrap();
        assert_eq!(out, vec![BatchOutcome::Duplicate { last_seq: 0 }]);
        assert_eq!(denial_totals(&c, None).unwrap()[0].epoch, u64::MAX);
    }

    #[test]
    fn multi_row_inserts_keep_consecutive_ids() {
        let mut c = conn();
        let rows: Vec<NewDenial> = (0..150).map(|n| row("192.0.2.1", 22, 1, n)).collect();
        let out = store_batches(&mut c, &[batch("h1", 1, rows)]).unwrap();
        assert_eq!(
            out[0],
            BatchOutcome::Stored {
                first_id: 1,
                last_id: 150
            }
        );
        let last: i64 = c
            .query_row("SELECT last_ms FROM denials WHERE id = 150", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(last, 149);
    }

    #[test]
    fn retention_deletes_in_chunks() {
        let mut c = conn();
        let rows = (0..25).map(|n| row("192.0.2.1", 22, 1, n * 10)).collect();
        store_batches(&mut c, &[batch("h1", 1, rows)]).unwrap();
        assert_eq!(delete_denials_before(&c, 100, 4).unwrap(), 4);
        assert_eq!(delete_denials_before(&c, 100, 100).unwrap(), 6);
        assert_eq!(delete_denials_before(&c, 100, 100).unwrap(), 0);
        assert_eq!(delete_denials_over(&c, 10, 3).unwrap(), 3);
        while delete_denials_over(&c, 10, 3).unwrap() > 0 {}
        let ids: Vec<i64> = c
            .prepare("SELECT id FROM denials ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(ids, (16..=25).collect::<Vec<_>>());
    }
}
