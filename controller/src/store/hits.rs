//! Rule counters reported in heartbeats: per host and rule, the packets counted since the
//! rule was installed and when the count last grew. The accept evidence replayed by
//! `apply --check --replay` (with the denial log).

use super::sql::Db;
use crate::args;

/// One rule's counter as an agent reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub chain: String,
    pub index: u32,
    pub packets: u64,
    pub bytes: u64,
}

/// A stored counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredHit {
    pub chain: String,
    pub index: u32,
    pub packets: u64,
    pub first_hit_ms: i64,
    pub last_hit_ms: i64,
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Record counters reported at `now` for `revision`. A count that grew moves
/// `last_hit_ms`; a smaller count or another revision means the table was replaced: the
/// row starts over. `purge`: drop the host's rows of other revisions first.
pub fn record(
    c: &Db<'_>,
    host: &str,
    revision: u64,
    hits: &[Hit],
    purge: bool,
    now: i64,
) -> anyhow::Result<()> {
    let rev = i64_of(revision);
    if purge {
        c.execute(
            "DELETE FROM rule_hits WHERE host = ?1 AND revision != ?2",
            args![host, rev],
        )?;
    }
    let upsert = "INSERT INTO rule_hits (host, revision, chain, idx, packets, bytes, first_hit_ms, last_hit_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
         ON CONFLICT (host, chain, idx) DO UPDATE SET
            first_hit_ms = CASE WHEN excluded.revision != rule_hits.revision
                                      OR excluded.packets < rule_hits.packets
                THEN excluded.first_hit_ms ELSE rule_hits.first_hit_ms END,
            last_hit_ms = CASE WHEN excluded.revision != rule_hits.revision
                                     OR excluded.packets != rule_hits.packets
                THEN excluded.last_hit_ms ELSE rule_hits.last_hit_ms END,
            revision = excluded.revision,
            packets = excluded.packets,
            bytes = excluded.bytes";
    for h in hits {
        c.execute(
            upsert,
            args![
                host,
                rev,
                h.chain,
                h.index,
                i64_of(h.packets),
                i64_of(h.bytes),
                now
            ],
        )?;
    }
    Ok(())
}

/// Counters of `host` on `revision` that grew at or after `since_ms`.
pub fn since(
    c: &Db<'_>,
    host: &str,
    revision: u64,
    since_ms: i64,
) -> anyhow::Result<Vec<StoredHit>> {
    c.query(
        "SELECT chain, idx, packets, first_hit_ms, last_hit_ms FROM rule_hits
         WHERE host = ?1 AND revision = ?2 AND last_hit_ms >= ?3 AND packets > 0
         ORDER BY chain, idx",
        args![host, i64_of(revision), since_ms],
        |r| {
            Ok(StoredHit {
                chain: r.get(0)?,
                index: u32::try_from(r.get::<i64>(1)?).unwrap_or(0),
                packets: u64::try_from(r.get::<i64>(2)?).unwrap_or(0),
                first_hit_ms: r.get(3)?,
                last_hit_ms: r.get(4)?,
            })
        },
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn hit(index: u32, packets: u64) -> Hit {
        Hit {
            chain: "guard".into(),
            index,
            packets,
            bytes: packets * 60,
        }
    }

    #[test]
    fn growth_moves_last_hit_and_a_reset_starts_over() {
        crate::store::testing::each_engine(|store| {
            store.call_sync(|c| {
                record(c, "h1", 3, &[hit(0, 5), hit(1, 2)], true, 100)?;
                // Unchanged count: last hit stays; grown: moves.
                record(c, "h1", 3, &[hit(0, 5), hit(1, 9)], false, 200)?;
                let got = since(c, "h1", 3, 0)?;
                assert_eq!(
                    got.iter()
                        .map(|h| (h.index, h.packets, h.first_hit_ms, h.last_hit_ms))
                        .collect::<Vec<_>>(),
                    [(0, 5, 100, 100), (1, 9, 100, 200)]
                );
                assert_eq!(since(c, "h1", 3, 150)?.len(), 1);
                // Table replaced (count went down): starts over.
                record(c, "h1", 3, &[hit(1, 1)], false, 300)?;
                let h1 = since(c, "h1", 3, 250)?;
                assert_eq!((h1[0].packets, h1[0].first_hit_ms), (1, 300));
                // A new revision purges the old rows.
                record(c, "h1", 4, &[hit(2, 1)], true, 400)?;
                assert!(since(c, "h1", 3, 0)?.is_empty());
                assert_eq!(since(c, "h1", 4, 0)?.len(), 1);
                Ok(())
            })
        });
    }
}
