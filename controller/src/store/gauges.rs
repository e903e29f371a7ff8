//! The store side of the controller's metrics: a few `GROUP BY` counts read at scrape
//! time (hosts by drift state, rollouts by status, hosts of the newest rollout by state,
//! denial accounting summed over hosts). Bounded: every label value comes from a fixed
//! vocabulary the controller writes, and at most [`MAX_LABEL_VALUES`] are returned per
//! family, so a scrape's size does not grow with the fleet.

use rusqlite::Connection;

/// Label values kept per family (the controller writes fewer than this).
pub const MAX_LABEL_VALUES: usize = 32;

/// Counts read from the store for one scrape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreGauges {
    /// Known hosts (ever connected or targeted).
    pub hosts: i64,
    /// Hosts by last drift report state (`unknown` when none yet).
    pub drift: Vec<(String, i64)>,
    /// Rollouts by status.
    pub rollouts: Vec<(String, i64)>,
    /// Hosts of the newest rollout by state.
    pub rollout_hosts: Vec<(String, i64)>,
    /// Denial accounting summed over every host's stored batches.
    pub denials: DenialSums,
}

/// Sum of `denial_totals` over hosts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DenialSums {
    pub seen: u64,
    pub stored: u64,
    pub dropped_by_agent: u64,
    pub socket_overruns: u64,
    pub socket_lost: u64,
    pub kernel_suppressed: u64,
    pub spool_dropped: u64,
}

fn counts(conn: &Connection, sql: &str) -> anyhow::Result<Vec<(String, i64)>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    let mut out = Vec::new();
    for row in rows.take(MAX_LABEL_VALUES) {
        out.push(row?);
    }
    Ok(out)
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Read every count of one scrape.
pub fn store_gauges(conn: &Connection) -> anyhow::Result<StoreGauges> {
    let hosts = conn.query_row("SELECT COUNT(*) FROM hosts", [], |r| r.get(0))?;
    let drift = counts(
        conn,
        "SELECT CASE drift_state WHEN '' THEN 'unknown' ELSE drift_state END AS s, COUNT(*)
           FROM hosts GROUP BY s ORDER BY s",
    )?;
    let rollouts = counts(
        conn,
        "SELECT status, COUNT(*) FROM rollouts GROUP BY status ORDER BY status",
    )?;
    let rollout_hosts = counts(
        conn,
        "SELECT state, COUNT(*) FROM rollout_hosts
          WHERE rollout = (SELECT MAX(id) FROM rollouts) GROUP BY state ORDER BY state",
    )?;
    let denials = conn.query_row(
        "SELECT COALESCE(SUM(seen), 0), COALESCE(SUM(stored), 0),
                COALESCE(SUM(dropped_by_agent), 0), COALESCE(SUM(socket_overruns), 0),
                COALESCE(SUM(socket_lost), 0), COALESCE(SUM(kernel_suppressed), 0),
                COALESCE(SUM(spool_dropped), 0)
           FROM denial_totals",
        [],
        |r| {
            Ok(DenialSums {
                seen: u(r.get(0)?),
                stored: u(r.get(1)?),
                dropped_by_agent: u(r.get(2)?),
                socket_overruns: u(r.get(3)?),
                socket_lost: u(r.get(4)?),
                kernel_suppressed: u(r.get(5)?),
                spool_dropped: u(r.get(6)?),
            })
        },
    )?;
    Ok(StoreGauges {
        hosts,
        drift,
        rollouts,
        rollout_hosts,
        denials,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_store_counts_nothing_and_hosts_group_by_drift_state() {
        let store = crate::store::Store::in_memory().unwrap();
        let g = store.call_sync(|c| store_gauges(c)).unwrap();
        assert_eq!(g, StoreGauges::default());
        store
            .call_sync(|c| {
                crate::store::host_connected(c, "a", "1", "{}", 0, "", "p")?;
                crate::store::host_connected(c, "b", "1", "{}", 0, "", "p")?;
                crate::store::drift::record(
                    c,
                    "b",
                    &crate::store::drift::DriftRecord {
                        state: "drifted".into(),
                        ..Default::default()
                    },
                )
            })
            .unwrap();
        let g = store.call_sync(|c| store_gauges(c)).unwrap();
        assert_eq!(g.hosts, 2);
        assert_eq!(
            g.drift,
            vec![("drifted".to_string(), 1), ("unknown".to_string(), 1)]
        );
    }
}
