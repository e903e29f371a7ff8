//! Row-count retention of the denial log that is fair per host (`serve --log-max-rows`).
//!
//! Deleting the oldest rows of the whole table would let one host that floods (or lies)
//! push every other host's history out. Instead each host gets a quota: the water-filling
//! share of `max_rows` (hosts under the share keep everything, the rest split what is
//! left equally), and only hosts over their quota lose rows, their own oldest first.
//! Counting runs on a reader connection; deleting runs in chunks through the writer.

use super::denials::TOTAL_CAP;
use super::sql::Db;
use crate::args;

/// An upper bound of the row count in O(log n): ids grow with insertion and deletes only
/// leave gaps, so `MAX(id) - MIN(id) + 1 >= COUNT(*)`.
///
/// PostgreSQL: the planner's row estimate of the day partitions (kept by autovacuum's
/// analyze), as `MIN(id)` has no cheap index there (a BRIN).
pub fn denial_rows_bound(conn: &Db<'_>) -> anyhow::Result<u64> {
    if conn.dialect() == super::sql::Dialect::Postgres {
        let n: i64 = conn.query_one(
            "SELECT CAST(COALESCE(SUM(GREATEST(c.reltuples, 0)), 0) AS BIGINT)
               FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
              WHERE i.inhparent = CAST(to_regclass('denials') AS OID)",
            args![],
            |r| r.get(0),
        )?;
        return Ok(u64::try_from(n).unwrap_or(0));
    }
    let (lo, hi): (Option<i64>, Option<i64>) =
        conn.query_one("SELECT MIN(id), MAX(id) FROM denials", args![], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    Ok(match (lo, hi) {
        (Some(lo), Some(hi)) => u64::try_from(hi.saturating_sub(lo).saturating_add(1)).unwrap_or(0),
        _ => 0,
    })
}

/// Rows per host (a scan of the host index; run it on a reader connection).
pub fn denial_rows_per_host(conn: &Db<'_>) -> anyhow::Result<Vec<(String, u64)>> {
    conn.query(
        "SELECT host, COUNT(*) FROM denials GROUP BY host",
        args![],
        |r| {
            Ok((
                r.get::<String>(0)?,
                u64::try_from(r.get::<i64>(1)?).unwrap_or(0),
            ))
        },
    )
}

/// How many rows each host over its fair quota must lose so that at most `max_rows`
/// remain; hosts within their quota are not listed. Pure.
pub fn fair_excess(counts: &[(String, u64)], max_rows: u64) -> Vec<(String, u64)> {
    let total = counts.iter().fold(0u64, |a, (_, c)| a.saturating_add(*c));
    if total <= max_rows {
        return Vec::new();
    }
    let mut sorted: Vec<&(String, u64)> = counts.iter().collect();
    sorted.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    let mut left = max_rows;
    let mut quota = 0;
    for (i, (_, c)) in sorted.iter().enumerate() {
        let share = left / (sorted.len() - i) as u64;
        if *c > share {
            quota = share;
            break;
        }
        left -= c;
    }
    let mut out: Vec<(String, u64)> = counts
        .iter()
        .filter(|(_, c)| *c > quota)
        .map(|(h, c)| (h.clone(), c - quota))
        .collect();
    out.sort();
    out
}

/// Delete at most `n` of `host`'s rows, least recently seen first; returns how many.
pub fn delete_host_oldest(conn: &Db<'_>, host: &str, n: usize) -> anyhow::Result<usize> {
    let limit = i64::try_from(n).unwrap_or(TOTAL_CAP);
    conn.execute(
        "DELETE FROM denials WHERE id IN
           (SELECT id FROM denials WHERE host = ?1 ORDER BY last_ms, id LIMIT ?2)",
        args![host, limit],
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn c(v: &[(&str, u64)]) -> Vec<(String, u64)> {
        v.iter().map(|(h, n)| (h.to_string(), *n)).collect()
    }

    #[test]
    fn a_flooding_host_loses_only_its_own_rows() {
        // h1 floods; h2 and h3 stay under the share and keep everything.
        let counts = c(&[("h1", 1_000_000), ("h2", 10), ("h3", 300)]);
        assert_eq!(fair_excess(&counts, 1_000), c(&[("h1", 1_000_000 - 690)]));
    }

    #[test]
    fn equal_shares_when_everyone_is_over() {
        let counts = c(&[("a", 500), ("b", 400), ("c", 100)]);
        // 300 rows for 3 hosts: 100 each; c keeps its 100.
        assert_eq!(fair_excess(&counts, 300), c(&[("a", 400), ("b", 300)]));
        assert!(fair_excess(&counts, 1_000).is_empty());
        assert_eq!(
            fair_excess(&counts, 0),
            c(&[("a", 500), ("b", 400), ("c", 100)])
        );
    }
}
