//! Rule counters reported in heartbeats: per host and rule, the packets counted since the
//! rule was installed and when the count last grew. The accept evidence replayed by
//! `apply --check --replay` (with the denial log).

use rusqlite::{Connection, params};

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
    c: &Connection,
    host: &str,
    revision: u64,
    hits: &[Hit],
    purge: bool,
    now: i64,
) -> anyhow::Result<()> {
    let rev = i64_of(revision);
    if purge {
        c.prepare_cached("DELETE FROM rule_hits WHERE host = ?1 AND revision != ?2")?
            .execute(params![host, rev])?;
    }
    let mut st = c.prepare_cached(
        "INSERT INTO rule_hits (host, revision, chain, idx, packets, bytes, first_hit_ms, last_hit_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
         ON CONFLICT (host, chain, idx) DO UPDATE SET
            first_hit_ms = CASE WHEN excluded.revision != revision OR excluded.packets < packets
                THEN excluded.first_hit_ms ELSE first_hit_ms END,
            last_hit_ms = CASE WHEN excluded.revision != revision OR excluded.packets != packets
                THEN excluded.last_hit_ms ELSE last_hit_ms END,
            revision = excluded.revision,
            packets = excluded.packets,
            bytes = excluded.bytes",
    )?;
    for h in hits {
        st.execute(params![
            host,
            rev,
            h.chain,
            h.index,
            i64_of(h.packets),
            i64_of(h.bytes),
            now
        ])?;
    }
    Ok(())
}

/// Counters of `host` on `revision` that grew at or after `since_ms`.
pub fn since(
    c: &Connection,
    host: &str,
    revision: u64,
    since_ms: i64,
) -> anyhow::Result<Vec<StoredHit>> {
    let mut st = c.prepare_cached(
        "SELECT chain, idx, packets, first_hit_ms, last_hit_ms FROM rule_hits
         WHERE host = ?1 AND revision = ?2 AND last_hit_ms >= ?3 AND packets > 0
         ORDER BY chain, idx",
    )?;
    let rows = st.query_map(params![host, i64_of(revision), since_ms], |r| {
        Ok(StoredHit {
            chain: r.get(0)?,
            index: r.get(1)?,
            packets: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
            first_hit_ms: r.get(3)?,
            last_hit_ms: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
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
        let store = crate::store::Store::in_memory().unwrap();
        store
            .call_sync(|c| {
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
            .unwrap();
    }
}

/// One `(proto, source, port, interface)` group of a host's denial log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenialGroup {
    pub proto: u8,
    pub src: String,
    pub dport: u16,
    pub ifname: String,
    pub count: u64,
    pub last_ms: i64,
}

/// The host's logged packets since `since_ms`, grouped, most packets first, at most
/// `limit` groups (the second value: whether more exist).
pub fn denial_groups(
    c: &Connection,
    host: &str,
    since_ms: i64,
    limit: usize,
) -> anyhow::Result<(Vec<DenialGroup>, bool)> {
    let mut st = c.prepare_cached(
        "SELECT proto, src, dport, ifname, SUM(count), MAX(last_ms) FROM denials
         WHERE host = ?1 AND last_ms >= ?2
         GROUP BY proto, src, dport, ifname ORDER BY SUM(count) DESC LIMIT ?3",
    )?;
    let rows = st.query_map(
        params![host, since_ms, i64::try_from(limit + 1).unwrap_or(i64::MAX)],
        |r| {
            Ok(DenialGroup {
                proto: u8::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                src: r.get(1)?,
                dport: u16::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                ifname: r.get(3)?,
                count: u64::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
                last_ms: r.get(5)?,
            })
        },
    )?;
    let mut v: Vec<DenialGroup> = rows.collect::<Result<_, _>>()?;
    let more = v.len() > limit;
    v.truncate(limit);
    Ok((v, more))
}

/// Packets a host logged as denied (or would-deny, in audit mode) with their last
/// occurrence in `[from_ms, to_ms)`.
pub fn logged_between(c: &Connection, host: &str, from_ms: i64, to_ms: i64) -> anyhow::Result<u64> {
    let n: i64 = c
        .prepare_cached(
            "SELECT COALESCE(SUM(count), 0) FROM denials
             WHERE host = ?1 AND last_ms >= ?2 AND last_ms < ?3",
        )?
        .query_row(params![host, from_ms, to_ms], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}
