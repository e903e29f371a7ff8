//! Numbered schema migrations, applied in order inside one transaction at open, the same
//! numbers on both engines (SQLite keeps the version in `PRAGMA user_version`, PostgreSQL
//! in `portcullis_schema`, migrated under an advisory lock so controllers starting together
//! migrate once). Never edit a released migration: add a new one, to both lists.

use super::sql::{Db, Dialect};

const SQLITE: &[&str] = &[
    // 1: revisions, per-host desired policy, hosts, audit log.
    "CREATE TABLE revisions (
        id INTEGER PRIMARY KEY,
        created_ms INTEGER NOT NULL,
        author TEXT NOT NULL,
        site_name TEXT NOT NULL,
        site_yaml TEXT NOT NULL,
        inventory_name TEXT NOT NULL,
        inventory_yaml TEXT NOT NULL,
        host_limit TEXT NOT NULL
     );
     CREATE TABLE revision_hosts (
        revision INTEGER NOT NULL REFERENCES revisions(id),
        host TEXT NOT NULL,
        policy_json TEXT NOT NULL,
        expected_hash TEXT NOT NULL,
        PRIMARY KEY (revision, host)
     );
     CREATE INDEX revision_hosts_host ON revision_hosts(host, revision);
     CREATE TABLE hosts (
        name TEXT PRIMARY KEY,
        first_seen_ms INTEGER NOT NULL,
        last_seen_ms INTEGER NOT NULL,
        agent_version TEXT NOT NULL DEFAULT '',
        facts_json TEXT NOT NULL DEFAULT '',
        desired_revision INTEGER NOT NULL DEFAULT 0,
        applied_revision INTEGER NOT NULL DEFAULT 0,
        expected_hash TEXT NOT NULL DEFAULT '',
        reported_hash TEXT NOT NULL DEFAULT '',
        last_error TEXT NOT NULL DEFAULT '',
        peer TEXT NOT NULL DEFAULT ''
     );
     CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        detail TEXT NOT NULL
     );",
    // 2: denial logs (aggregated entries) and per-host loss accounting.
    "CREATE TABLE denials (
        id INTEGER PRIMARY KEY,
        host TEXT NOT NULL,
        first_ms INTEGER NOT NULL,
        last_ms INTEGER NOT NULL,
        src TEXT NOT NULL,
        dst TEXT NOT NULL,
        proto INTEGER NOT NULL,
        dport INTEGER NOT NULL,
        ifname TEXT NOT NULL,
        count INTEGER NOT NULL,
        revision INTEGER NOT NULL,
        audit INTEGER NOT NULL
     );
     CREATE INDEX denials_host_time ON denials(host, last_ms);
     CREATE INDEX denials_port_time ON denials(dport, last_ms);
     CREATE INDEX denials_time ON denials(last_ms);
     CREATE TABLE denial_totals (
        host TEXT PRIMARY KEY,
        last_seq INTEGER NOT NULL DEFAULT 0,
        seen INTEGER NOT NULL DEFAULT 0,
        stored INTEGER NOT NULL DEFAULT 0,
        dropped_by_agent INTEGER NOT NULL DEFAULT 0,
        socket_overruns INTEGER NOT NULL DEFAULT 0,
        kernel_suppressed INTEGER NOT NULL DEFAULT 0,
        spool_dropped INTEGER NOT NULL DEFAULT 0
     );",
    // 3: drift attestation per host.
    "ALTER TABLE hosts ADD COLUMN verified_ms INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE hosts ADD COLUMN drift_state TEXT NOT NULL DEFAULT '';
     ALTER TABLE hosts ADD COLUMN drift_diff TEXT NOT NULL DEFAULT '';
     ALTER TABLE hosts ADD COLUMN drift_detected_ms INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE hosts ADD COLUMN drift_healed_ms INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE hosts ADD COLUMN coexistence_json TEXT NOT NULL DEFAULT '[]';",
    // 4: rollouts (waves, commit-confirmed) and their per-host results.
    "CREATE TABLE rollouts (
        id INTEGER PRIMARY KEY,
        revision INTEGER NOT NULL,
        kind TEXT NOT NULL,
        author TEXT NOT NULL,
        started_ms INTEGER NOT NULL,
        finished_ms INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        serial TEXT NOT NULL,
        max_fail TEXT NOT NULL,
        confirm_timeout_ms INTEGER NOT NULL,
        waves_json TEXT NOT NULL
     );
     CREATE TABLE rollout_hosts (
        rollout INTEGER NOT NULL REFERENCES rollouts(id),
        host TEXT NOT NULL,
        wave INTEGER NOT NULL,
        previous_revision INTEGER NOT NULL,
        state TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '',
        updated_ms INTEGER NOT NULL,
        PRIMARY KEY (rollout, host)
     );
     CREATE INDEX rollouts_status ON rollouts(status);",
    // 5: denial batch numbering epochs (a new agent spool restarts seq) and NFLOG
    // sequence-gap losses.
    "ALTER TABLE denial_totals ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE denial_totals ADD COLUMN socket_lost INTEGER NOT NULL DEFAULT 0;",
    // 6: rule counters from heartbeats (accept evidence for `apply --check --replay`).
    "CREATE TABLE rule_hits (
        host TEXT NOT NULL,
        revision INTEGER NOT NULL,
        chain TEXT NOT NULL,
        idx INTEGER NOT NULL,
        packets INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        first_hit_ms INTEGER NOT NULL,
        last_hit_ms INTEGER NOT NULL,
        PRIMARY KEY (host, chain, idx)
     );",
    // 7: a revision stores each distinct policy once (fleets share a handful); rows
    // written before keep their inline policy_json.
    "CREATE TABLE policies (
        id INTEGER PRIMARY KEY,
        json TEXT NOT NULL
     );
     ALTER TABLE revision_hosts ADD COLUMN policy_id INTEGER NOT NULL DEFAULT 0;",
    // 8: a rollout's health gates (a rollback without flags reuses them).
    "ALTER TABLE rollouts ADD COLUMN max_denial_increase REAL NOT NULL DEFAULT 0;
     ALTER TABLE rollouts ADD COLUMN denial_window_ms INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE rollouts ADD COLUMN denial_baseline_ms INTEGER NOT NULL DEFAULT 0;",
    // 9: the address-list files of a revision (`from: { file }`), as the CLI sent them.
    "CREATE TABLE revision_lists (
        revision INTEGER NOT NULL,
        name TEXT NOT NULL,
        content TEXT NOT NULL,
        PRIMARY KEY (revision, name)
     );",
    // 10: denial batches stored, by the agent's (host, epoch, seq): the database refuses
    // a batch a second time (an agent replaying after a failover to another controller).
    "CREATE TABLE denial_batches (
        host TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        stored_ms INTEGER NOT NULL,
        PRIMARY KEY (host, epoch, seq)
     ) WITHOUT ROWID;
     CREATE INDEX denial_batches_time ON denial_batches(stored_ms);",
    // 11: which controller holds each host's session ('' = none), so every controller
    // answers for the whole fleet.
    "ALTER TABLE hosts ADD COLUMN controller TEXT NOT NULL DEFAULT '';",
    // 12: a running rollout's controller and lease: another controller leaves it alone
    // while the lease is renewed, and interrupts it once it has expired.
    "ALTER TABLE rollouts ADD COLUMN controller TEXT NOT NULL DEFAULT '';
     ALTER TABLE rollouts ADD COLUMN lease_ms INTEGER NOT NULL DEFAULT 0;",
    // 13: (PostgreSQL only: the indexes of the day partitions being written.)
    "SELECT 1;",
    // 14: what the controller holding a host's session saw of it for another
    // controller's rollout (applied, back on a new session, reverted, Confirm sent).
    "CREATE TABLE rollout_reports (
        id INTEGER PRIMARY KEY,
        rollout INTEGER NOT NULL,
        host TEXT NOT NULL,
        controller TEXT NOT NULL,
        kind TEXT NOT NULL,
        revision INTEGER NOT NULL,
        hash TEXT NOT NULL DEFAULT '',
        detail TEXT NOT NULL DEFAULT '',
        at_ms INTEGER NOT NULL
     );
     CREATE INDEX rollout_reports_host ON rollout_reports(rollout, host);",
];

/// The same schema on PostgreSQL: every integer is BIGINT (the store binds i64),
/// denials are partitioned by day of `last_ms` (partitions are created by the writer,
/// retention drops them whole) and numbered from a sequence the writer reserves blocks of.
const POSTGRES: &[&str] = &[
    // 1
    "CREATE TABLE revisions (
        id BIGINT PRIMARY KEY,
        created_ms BIGINT NOT NULL,
        author TEXT NOT NULL,
        site_name TEXT NOT NULL,
        site_yaml TEXT NOT NULL,
        inventory_name TEXT NOT NULL,
        inventory_yaml TEXT NOT NULL,
        host_limit TEXT NOT NULL
     );
     CREATE TABLE revision_hosts (
        revision BIGINT NOT NULL REFERENCES revisions(id),
        host TEXT NOT NULL,
        policy_json TEXT NOT NULL,
        expected_hash TEXT NOT NULL,
        PRIMARY KEY (revision, host)
     );
     CREATE INDEX revision_hosts_host ON revision_hosts(host, revision);
     CREATE TABLE hosts (
        name TEXT PRIMARY KEY,
        first_seen_ms BIGINT NOT NULL,
        last_seen_ms BIGINT NOT NULL,
        agent_version TEXT NOT NULL DEFAULT '',
        facts_json TEXT NOT NULL DEFAULT '',
        desired_revision BIGINT NOT NULL DEFAULT 0,
        applied_revision BIGINT NOT NULL DEFAULT 0,
        expected_hash TEXT NOT NULL DEFAULT '',
        reported_hash TEXT NOT NULL DEFAULT '',
        last_error TEXT NOT NULL DEFAULT '',
        peer TEXT NOT NULL DEFAULT ''
     );
     CREATE TABLE audit (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        at_ms BIGINT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        detail TEXT NOT NULL
     );",
    // 2
    "CREATE SEQUENCE denials_id_seq;
     CREATE TABLE denials (
        id BIGINT NOT NULL,
        host TEXT NOT NULL,
        first_ms BIGINT NOT NULL,
        last_ms BIGINT NOT NULL,
        src TEXT NOT NULL,
        dst TEXT NOT NULL,
        proto BIGINT NOT NULL,
        dport BIGINT NOT NULL,
        ifname TEXT NOT NULL,
        count BIGINT NOT NULL,
        revision BIGINT NOT NULL,
        audit BIGINT NOT NULL
     ) PARTITION BY RANGE (last_ms);
     CREATE INDEX denials_id ON denials(id);
     CREATE INDEX denials_host_time ON denials(host, last_ms);
     CREATE INDEX denials_port_time ON denials(dport, last_ms);
     CREATE INDEX denials_time ON denials(last_ms);
     CREATE TABLE denial_high (one BIGINT PRIMARY KEY CHECK (one = 1), id BIGINT NOT NULL);
     INSERT INTO denial_high VALUES (1, 0);
     CREATE TABLE denial_totals (
        host TEXT PRIMARY KEY,
        last_seq BIGINT NOT NULL DEFAULT 0,
        seen BIGINT NOT NULL DEFAULT 0,
        stored BIGINT NOT NULL DEFAULT 0,
        dropped_by_agent BIGINT NOT NULL DEFAULT 0,
        socket_overruns BIGINT NOT NULL DEFAULT 0,
        kernel_suppressed BIGINT NOT NULL DEFAULT 0,
        spool_dropped BIGINT NOT NULL DEFAULT 0
     );",
    // 3
    "ALTER TABLE hosts ADD COLUMN verified_ms BIGINT NOT NULL DEFAULT 0;
     ALTER TABLE hosts ADD COLUMN drift_state TEXT NOT NULL DEFAULT '';
     ALTER TABLE hosts ADD COLUMN drift_diff TEXT NOT NULL DEFAULT '';
     ALTER TABLE hosts ADD COLUMN drift_detected_ms BIGINT NOT NULL DEFAULT 0;
     ALTER TABLE hosts ADD COLUMN drift_healed_ms BIGINT NOT NULL DEFAULT 0;
     ALTER TABLE hosts ADD COLUMN coexistence_json TEXT NOT NULL DEFAULT '[]';",
    // 4
    "CREATE TABLE rollouts (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        revision BIGINT NOT NULL,
        kind TEXT NOT NULL,
        author TEXT NOT NULL,
        started_ms BIGINT NOT NULL,
        finished_ms BIGINT NOT NULL DEFAULT 0,
        status TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        serial TEXT NOT NULL,
        max_fail TEXT NOT NULL,
        confirm_timeout_ms BIGINT NOT NULL,
        waves_json TEXT NOT NULL
     );
     CREATE TABLE rollout_hosts (
        rollout BIGINT NOT NULL REFERENCES rollouts(id),
        host TEXT NOT NULL,
        wave BIGINT NOT NULL,
        previous_revision BIGINT NOT NULL,
        state TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '',
        updated_ms BIGINT NOT NULL,
        PRIMARY KEY (rollout, host)
     );
     CREATE INDEX rollouts_status ON rollouts(status);",
    // 5
    "ALTER TABLE denial_totals ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
     ALTER TABLE denial_totals ADD COLUMN socket_lost BIGINT NOT NULL DEFAULT 0;",
    // 6
    "CREATE TABLE rule_hits (
        host TEXT NOT NULL,
        revision BIGINT NOT NULL,
        chain TEXT NOT NULL,
        idx BIGINT NOT NULL,
        packets BIGINT NOT NULL,
        bytes BIGINT NOT NULL,
        first_hit_ms BIGINT NOT NULL,
        last_hit_ms BIGINT NOT NULL,
        PRIMARY KEY (host, chain, idx)
     );",
    // 7
    "CREATE TABLE policies (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        json TEXT NOT NULL
     );
     ALTER TABLE revision_hosts ADD COLUMN policy_id BIGINT NOT NULL DEFAULT 0;",
    // 8
    "ALTER TABLE rollouts ADD COLUMN max_denial_increase DOUBLE PRECISION NOT NULL DEFAULT 0;
     ALTER TABLE rollouts ADD COLUMN denial_window_ms BIGINT NOT NULL DEFAULT 0;
     ALTER TABLE rollouts ADD COLUMN denial_baseline_ms BIGINT NOT NULL DEFAULT 0;",
    // 9
    "CREATE TABLE revision_lists (
        revision BIGINT NOT NULL,
        name TEXT NOT NULL,
        content TEXT NOT NULL,
        PRIMARY KEY (revision, name)
     );",
    // 10
    "CREATE TABLE denial_batches (
        host TEXT NOT NULL,
        epoch BIGINT NOT NULL,
        seq BIGINT NOT NULL,
        stored_ms BIGINT NOT NULL,
        PRIMARY KEY (host, epoch, seq)
     );
     CREATE INDEX denial_batches_time ON denial_batches(stored_ms);",
    // 11
    "ALTER TABLE hosts ADD COLUMN controller TEXT NOT NULL DEFAULT '';",
    // 12
    "ALTER TABLE rollouts ADD COLUMN controller TEXT NOT NULL DEFAULT '';
     ALTER TABLE rollouts ADD COLUMN lease_ms BIGINT NOT NULL DEFAULT 0;",
    // 13: partitions being written keep only indexes that grow at the right edge (time
    // B-tree, id BRIN: both follow insertion order), which costs ingest a fraction of
    // random-key indexes; a day partition gets its (host, time) and (port, time) B-trees
    // once the day is over (`store::seal_partitions`).
    "DROP INDEX denials_id;
     DROP INDEX denials_host_time;
     DROP INDEX denials_port_time;
     CREATE INDEX denials_id ON denials USING brin (id);",
    // 14
    "CREATE TABLE rollout_reports (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        rollout BIGINT NOT NULL,
        host TEXT NOT NULL,
        controller TEXT NOT NULL,
        kind TEXT NOT NULL,
        revision BIGINT NOT NULL,
        hash TEXT NOT NULL DEFAULT '',
        detail TEXT NOT NULL DEFAULT '',
        at_ms BIGINT NOT NULL
     );
     CREATE INDEX rollout_reports_host ON rollout_reports(rollout, host);",
];

/// The advisory lock key migrations run under (any constant; "pcmigrat").
const MIGRATION_LOCK: i64 = 0x7063_6d69_6772_6174;

fn newer(current: usize, known: usize) -> anyhow::Result<()> {
    if current > known {
        anyhow::bail!(
            "database schema version {current} is newer than this controller knows ({known}); \
             upgrade the controller"
        );
    }
    Ok(())
}

pub fn migrate(db: &Db<'_>) -> anyhow::Result<()> {
    let tx = db.transaction()?;
    match tx.dialect() {
        Dialect::Sqlite => {
            let current: i64 = tx.query_one("PRAGMA user_version", crate::args![], |r| r.get(0))?;
            let current = usize::try_from(current).unwrap_or(0);
            newer(current, SQLITE.len())?;
            for (i, sql) in SQLITE.iter().enumerate().skip(current) {
                tx.batch(sql)?;
                tx.batch(&format!("PRAGMA user_version = {}", i + 1))?;
            }
        }
        Dialect::Postgres => {
            tx.execute(
                "SELECT pg_advisory_xact_lock(?1)",
                crate::args![MIGRATION_LOCK],
            )?;
            tx.batch(
                "CREATE TABLE IF NOT EXISTS portcullis_schema (
                    one BIGINT PRIMARY KEY CHECK (one = 1), version BIGINT NOT NULL);
                 INSERT INTO portcullis_schema VALUES (1, 0) ON CONFLICT DO NOTHING;",
            )?;
            let current: i64 = tx.query_one(
                "SELECT version FROM portcullis_schema",
                crate::args![],
                |r| r.get(0),
            )?;
            let current = usize::try_from(current).unwrap_or(0);
            newer(current, POSTGRES.len())?;
            for (i, sql) in POSTGRES.iter().enumerate().skip(current) {
                tx.batch(sql)?;
                tx.execute(
                    "UPDATE portcullis_schema SET version = ?1",
                    crate::args![i + 1],
                )?;
            }
        }
    }
    tx.commit()
}

/// The schema version this controller migrates to (both engines).
#[cfg(test)]
fn version() -> usize {
    SQLITE.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_engines_have_every_migration() {
        assert_eq!(SQLITE.len(), POSTGRES.len());
    }

    #[test]
    fn migrates_once_and_is_idempotent() {
        crate::store::testing::each_engine(|store| {
            store.call_sync(migrate)?;
            store.call_sync(migrate)?;
            let v: i64 = store.call_sync(|db| match db.dialect() {
                Dialect::Sqlite => {
                    db.query_one("PRAGMA user_version", crate::args![], |r| r.get(0))
                }
                Dialect::Postgres => db.query_one(
                    "SELECT version FROM portcullis_schema",
                    crate::args![],
                    |r| r.get(0),
                ),
            })?;
            assert_eq!(v, version() as i64);
            Ok(())
        });
    }

    #[test]
    fn refuses_a_newer_schema() {
        crate::store::testing::each_engine(|store| {
            store.call_sync(|db| match db.dialect() {
                Dialect::Sqlite => db.batch("PRAGMA user_version = 99"),
                Dialect::Postgres => db.batch("UPDATE portcullis_schema SET version = 99"),
            })?;
            let e = store.call_sync(migrate).unwrap_err();
            assert!(format!("{e:#}").contains("newer"), "{e:#}");
            Ok(())
        });
    }
}
