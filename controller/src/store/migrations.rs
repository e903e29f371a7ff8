//! Numbered schema migrations, applied in order inside one transaction at open.
//! Never edit a released migration: add a new one.

use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
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
];

pub fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let tx = conn.transaction()?;
    let current: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let current = usize::try_from(current).unwrap_or(0);
    if current > MIGRATIONS.len() {
        anyhow::bail!(
            "database schema version {current} is newer than this controller knows ({}); \
             upgrade the controller",
            MIGRATIONS.len()
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i64::try_from(i + 1)?)?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_once_and_is_idempotent() {
        let mut c = Connection::open_in_memory().unwrap();
        migrate(&mut c).unwrap();
        migrate(&mut c).unwrap();
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
    }

    #[test]
    fn refuses_a_newer_schema() {
        let mut c = Connection::open_in_memory().unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        assert!(migrate(&mut c).unwrap_err().to_string().contains("newer"));
    }
}
