//! The store side of the controller's metrics: a few `GROUP BY` counts read at scrape
//! time (hosts by drift state, rollouts by status, hosts of the newest rollout by state,
//! denial accounting summed over hosts). Bounded: every label value comes from a fixed
//! vocabulary the controller writes, and at most [`MAX_LABEL_VALUES`] are returned per
//! family, so a scrape's size does not grow with the fleet.

use super::sql::Db;
use crate::args;

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

fn counts(db: &Db<'_>, sql: &str) -> anyhow::Result<Vec<(String, i64)>> {
    let mut out = Vec::new();
    db.each(sql, args![], |r| {
        out.push((r.get::<String>(0)?, r.get::<i64>(1)?));
        Ok(out.len() < MAX_LABEL_VALUES)
    })?;
    Ok(out)
}

/// Read every count of one scrape.
pub fn store_gauges(conn: &Db<'_>) -> anyhow::Result<StoreGauges> {
    let hosts = conn.query_one("SELECT COUNT(*) FROM hosts", args![], |r| r.get(0))?;
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
    // Summed as floating point (exact to 2^53, never an overflow error; SQLite's
    // SUM() of integers fails past i64::MAX, PostgreSQL's is NUMERIC).
    let denials = conn.query_one(
        &format!(
            "SELECT {}, {}, {}, {}, {}, {}, {} FROM denial_totals",
            super::denial_query::total(conn, "seen"),
            super::denial_query::total(conn, "stored"),
            super::denial_query::total(conn, "dropped_by_agent"),
            super::denial_query::total(conn, "socket_overruns"),
            super::denial_query::total(conn, "socket_lost"),
            super::denial_query::total(conn, "kernel_suppressed"),
            super::denial_query::total(conn, "spool_dropped"),
        ),
        args![],
        |r| {
            let f = |i| super::denial_query::total_at(r, i);
            Ok(DenialSums {
                seen: f(0)?,
                stored: f(1)?,
                dropped_by_agent: f(2)?,
                socket_overruns: f(3)?,
                socket_lost: f(4)?,
                kernel_suppressed: f(5)?,
                spool_dropped: f(6)?,
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
        crate::store::testing::each_engine(|store| {
            let g = store.call_sync(store_gauges).unwrap();
            assert_eq!(g, StoreGauges::default());
            store
                .call_sync(|c| {
                    crate::store::host_connected(c, "a", "1", "{}", 0, "", "p", "c1")?;
                    crate::store::host_connected(c, "b", "1", "{}", 0, "", "p", "c1")?;
                    crate::store::drift::record(
                        c,
                        "b",
                        &crate::store::drift::DriftRecord::new(
                            portcullis_policy::protocol::drift::DriftVerdict::Drifted,
                        ),
                    )
                })
                .unwrap();
            let g = store.call_sync(store_gauges).unwrap();
            assert_eq!(g.hosts, 2);
            assert_eq!(
                g.drift,
                vec![("drifted".to_string(), 1), ("unknown".to_string(), 1)]
            );
            Ok(())
        });
    }
}
