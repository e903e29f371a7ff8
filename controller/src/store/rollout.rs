//! Rollout records: one row per rollout (revision, who, waves, status) and one per
//! targeted host (wave, the revision it had before, its state). Also the per-host desired
//! revision moves a rollout makes: a wave sets it, a rollback or an unconfirmed host puts
//! the previous one back.

use super::now_ms;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use std::collections::BTreeMap;

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[derive(Debug, Clone, Serialize)]
pub struct RolloutHostRecord {
    pub host: String,
    pub wave: u32,
    pub previous_revision: u64,
    pub state: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RolloutRecord {
    pub id: u64,
    pub revision: u64,
    pub kind: String,
    pub author: String,
    pub started_ms: i64,
    pub finished_ms: i64,
    pub status: String,
    pub reason: String,
    pub serial: String,
    pub max_fail: String,
    pub confirm_timeout_ms: u64,
    pub gates: Gates,
    /// By wave, then host.
    pub hosts: Vec<RolloutHostRecord>,
}

/// A rollout's health-gate settings as requested (0 = off / default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Gates {
    pub max_denial_increase: f64,
    pub denial_window_ms: u64,
    pub denial_baseline_ms: u64,
}

pub struct NewRollout<'a> {
    pub revision: u64,
    pub kind: &'a str,
    pub author: &'a str,
    pub serial: &'a str,
    pub max_fail: &'a str,
    pub confirm_timeout_ms: u64,
    pub gates: Gates,
    pub waves: &'a [Vec<String>],
    /// Each host's desired revision before this rollout (0 = none).
    pub previous: &'a BTreeMap<String, u64>,
}

/// The desired revision of `host` (0 = none or unknown host).
pub fn desired_revision(conn: &Connection, host: &str) -> anyhow::Result<u64> {
    Ok(conn
        .prepare_cached("SELECT desired_revision FROM hosts WHERE name = ?1")?
        .query_row(params![host], |r| r.get::<_, i64>(0))
        .optional()?
        .map_or(0, to_u64))
}

/// Make `revision` the desired one of `host` (with that revision's stored expected hash);
/// 0 clears it.
/// Whether a rollout sent `host` `revision` under commit-confirmed with `previous` as the
/// revision it had before (what a `Reverted` from that host must match).
pub fn was_sent_for_confirm(
    conn: &Connection,
    host: &str,
    revision: u64,
    previous: u64,
) -> anyhow::Result<bool> {
    let (rev, prev) = (to_i64(revision), to_i64(previous));
    let mut st = conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM rollout_hosts h JOIN rollouts r ON r.id = h.rollout
          WHERE h.host = ?1 AND r.revision = ?2 AND r.confirm_timeout_ms > 0
            AND h.previous_revision = ?3 AND h.state NOT IN ('pending', 'skipped', 'offline'))",
    )?;
    Ok(st.query_row(rusqlite::params![host, rev, prev], |r| r.get::<_, bool>(0))?)
}

pub fn set_desired(conn: &Connection, host: &str, revision: u64) -> anyhow::Result<()> {
    conn.prepare_cached(
        "UPDATE hosts SET desired_revision = ?2,
            expected_hash = COALESCE((SELECT expected_hash FROM revision_hosts
                                       WHERE revision = ?2 AND host = ?1), '')
          WHERE name = ?1",
    )?
    .execute(params![host, to_i64(revision)])?;
    Ok(())
}

/// What `host` last attested: (applied revision, kernel hash).
pub fn host_applied(conn: &Connection, host: &str) -> anyhow::Result<Option<(u64, String)>> {
    Ok(conn
        .prepare_cached("SELECT applied_revision, reported_hash FROM hosts WHERE name = ?1")?
        .query_row(params![host], |r| Ok((to_u64(r.get(0)?), r.get(1)?)))
        .optional()?)
}

/// The stored sources of a revision: (site name, site YAML, inventory name, inventory YAML).
pub fn revision_sources(
    conn: &Connection,
    revision: u64,
) -> anyhow::Result<Option<(String, String, String, String)>> {
    Ok(conn
        .prepare_cached(
            "SELECT site_name, site_yaml, inventory_name, inventory_yaml FROM revisions
              WHERE id = ?1",
        )?
        .query_row(params![to_i64(revision)], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?)
}

/// The stored address-list files of a revision: (name, content), by name.
pub fn revision_lists(conn: &Connection, revision: u64) -> anyhow::Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, content FROM revision_lists WHERE revision = ?1 ORDER BY name",
    )?;
    let rows = stmt.query_map(params![to_i64(revision)], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// The latest revision before `before` that targeted `host`.
pub fn revision_before(conn: &Connection, host: &str, before: u64) -> anyhow::Result<Option<u64>> {
    Ok(conn
        .prepare_cached(
            "SELECT MAX(revision) FROM revision_hosts WHERE host = ?1 AND revision < ?2",
        )?
        .query_row(params![host, to_i64(before)], |r| {
            r.get::<_, Option<i64>>(0)
        })?
        .map(to_u64))
}

/// How the latest rollout was run: (serial, max-fail, confirm timeout, gates).
pub fn latest_settings(conn: &Connection) -> anyhow::Result<Option<(String, String, u64, Gates)>> {
    Ok(conn
        .prepare_cached(
            "SELECT serial, max_fail, confirm_timeout_ms, max_denial_increase, denial_window_ms,
                    denial_baseline_ms
               FROM rollouts ORDER BY id DESC LIMIT 1",
        )?
        .query_row([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                to_u64(r.get(2)?),
                Gates {
                    max_denial_increase: r.get(3)?,
                    denial_window_ms: to_u64(r.get(4)?),
                    denial_baseline_ms: to_u64(r.get(5)?),
                },
            ))
        })
        .optional()?)
}

pub fn insert_rollout(conn: &Connection, r: &NewRollout<'_>) -> anyhow::Result<u64> {
    let now = now_ms();
    conn.prepare_cached(
        "INSERT INTO rollouts (revision, kind, author, started_ms, status, serial, max_fail,
                               confirm_timeout_ms, waves_json, max_denial_increase,
                               denial_window_ms, denial_baseline_ms)
         VALUES (?1, ?2, ?3, ?4, 'running', ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        to_i64(r.revision),
        r.kind,
        r.author,
        now,
        r.serial,
        r.max_fail,
        to_i64(r.confirm_timeout_ms),
        serde_json::to_string(r.waves)?,
        r.gates.max_denial_increase,
        to_i64(r.gates.denial_window_ms),
        to_i64(r.gates.denial_baseline_ms),
    ])?;
    let id = conn.last_insert_rowid();
    let mut ins = conn.prepare(
        "INSERT INTO rollout_hosts (rollout, host, wave, previous_revision, state, updated_ms)
         VALUES (?1, ?2, ?3, ?4, 'pending', ?5)",
    )?;
    for (wave, hosts) in r.waves.iter().enumerate() {
        for h in hosts {
            let prev = r.previous.get(h).copied().unwrap_or(0);
            ins.execute(params![id, h, i64::try_from(wave)?, to_i64(prev), now])?;
        }
    }
    Ok(to_u64(id))
}

pub fn set_host_state(
    conn: &Connection,
    rollout: u64,
    host: &str,
    state: &str,
    detail: &str,
) -> anyhow::Result<()> {
    conn.prepare_cached(
        "UPDATE rollout_hosts SET state = ?3, detail = ?4, updated_ms = ?5
          WHERE rollout = ?1 AND host = ?2",
    )?
    .execute(params![to_i64(rollout), host, state, detail, now_ms()])?;
    Ok(())
}

pub fn finish_rollout(
    conn: &Connection,
    rollout: u64,
    status: &str,
    reason: &str,
) -> anyhow::Result<()> {
    conn.prepare_cached(
        "UPDATE rollouts SET status = ?2, reason = ?3, finished_ms = ?4 WHERE id = ?1",
    )?
    .execute(params![to_i64(rollout), status, reason, now_ms()])?;
    Ok(())
}

/// At controller start: every rollout still `running` was cut short. Its hosts that did
/// not confirm get their previous desired revision back (their agents revert the
/// unconfirmed one by themselves), and the rollout becomes `interrupted`. Returns the ids.
pub fn interrupt_running(conn: &mut Connection) -> anyhow::Result<Vec<u64>> {
    let tx = conn.transaction()?;
    let running: Vec<(i64, i64)> = {
        let mut st = tx.prepare("SELECT id, revision FROM rollouts WHERE status = 'running'")?;
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?
    };
    for (id, revision) in &running {
        let hosts: Vec<(String, i64)> = {
            let mut st = tx.prepare(
                "SELECT host, previous_revision FROM rollout_hosts
                  WHERE rollout = ?1 AND state NOT IN ('confirmed')",
            )?;
            st.query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?
        };
        for (host, prev) in hosts {
            if to_i64(desired_revision(&tx, &host)?) == *revision {
                set_desired(&tx, &host, to_u64(prev))?;
            }
            tx.prepare_cached(
                "UPDATE rollout_hosts SET state = 'interrupted', updated_ms = ?3
                  WHERE rollout = ?1 AND host = ?2 AND state NOT IN ('confirmed', 'failed',
                        'reverted', 'offline', 'unconfirmed', 'rolled_back')",
            )?
            .execute(params![id, host, now_ms()])?;
        }
        tx.prepare_cached(
            "UPDATE rollouts SET status = 'interrupted', finished_ms = ?2,
                    reason = 'the controller stopped during the rollout'
              WHERE id = ?1",
        )?
        .execute(params![id, now_ms()])?;
    }
    tx.commit()?;
    Ok(running.into_iter().map(|(id, _)| to_u64(id)).collect())
}

/// Rollouts newest first (`limit` 0 = all; `id` 0 = every rollout), with their hosts.
pub fn list_rollouts(conn: &Connection, limit: u32, id: u64) -> anyhow::Result<Vec<RolloutRecord>> {
    let limit = if limit == 0 { -1 } else { i64::from(limit) };
    let mut st = conn.prepare(
        "SELECT id, revision, kind, author, started_ms, finished_ms, status, reason, serial,
                max_fail, confirm_timeout_ms, max_denial_increase, denial_window_ms,
                denial_baseline_ms
           FROM rollouts WHERE ?1 = 0 OR id = ?1 ORDER BY id DESC LIMIT ?2",
    )?;
    let mut rollouts = st
        .query_map(params![to_i64(id), limit], |r| {
            Ok(RolloutRecord {
                id: to_u64(r.get(0)?),
                revision: to_u64(r.get(1)?),
                kind: r.get(2)?,
                author: r.get(3)?,
                started_ms: r.get(4)?,
                finished_ms: r.get(5)?,
                status: r.get(6)?,
                reason: r.get(7)?,
                serial: r.get(8)?,
                max_fail: r.get(9)?,
                confirm_timeout_ms: to_u64(r.get(10)?),
                gates: Gates {
                    max_denial_increase: r.get(11)?,
                    denial_window_ms: to_u64(r.get(12)?),
                    denial_baseline_ms: to_u64(r.get(13)?),
                },
                hosts: Vec::new(),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut hs = conn.prepare(
        "SELECT host, wave, previous_revision, state, detail FROM rollout_hosts
          WHERE rollout = ?1 ORDER BY wave, host",
    )?;
    for r in &mut rollouts {
        r.hosts = hs
            .query_map(params![to_i64(r.id)], |row| {
                Ok(RolloutHostRecord {
                    host: row.get(0)?,
                    wave: u32::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
                    previous_revision: to_u64(row.get(2)?),
                    state: row.get(3)?,
                    detail: row.get(4)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
    }
    Ok(rollouts)
}

/// Start a wave in one transaction: make `revision` the desired one of `hosts`, mark them
/// `sent` in `rollout`, and return each host's (policy JSON, stored expected hash).
pub fn start_wave(
    conn: &mut Connection,
    rollout: u64,
    revision: u64,
    hosts: &[String],
) -> anyhow::Result<BTreeMap<String, (String, String)>> {
    let tx = conn.transaction()?;
    let mut out = BTreeMap::new();
    {
        let mut get = tx.prepare(&format!(
            "SELECT {}, expected_hash FROM revision_hosts rh
              WHERE revision = ?1 AND host = ?2",
            super::POLICY
        ))?;
        for h in hosts {
            set_desired(&tx, h, revision)?;
            set_host_state(&tx, rollout, h, "sent", "")?;
            if let Some(row) = get
                .query_row(params![to_i64(revision), h], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })
                .optional()?
            {
                out.insert(h.clone(), row);
            }
        }
    }
    tx.commit()?;
    Ok(out)
}

/// Record many (host, state, detail) of `rollout` in one transaction.
pub fn set_host_states(
    conn: &mut Connection,
    rollout: u64,
    states: &[(String, String, String)],
) -> anyhow::Result<()> {
    let tx = conn.transaction()?;
    for (h, s, d) in states {
        set_host_state(&tx, rollout, h, s, d)?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewRevision, RevisionHost, Store, insert_revision};

    fn revision(c: &Connection, hosts: &[&str]) -> u64 {
        let rows: Vec<RevisionHost> = hosts
            .iter()
            .map(|h| RevisionHost {
                host: (*h).into(),
                policy_json: "{}".into(),
                expected_hash: format!("hash-{h}"),
            })
            .collect();
        insert_revision(
            c,
            &NewRevision {
                author: "t",
                site_name: "s",
                site_yaml: "",
                inventory_name: "i",
                inventory_yaml: "",
                limit: "",
                hosts: &rows,
                lists: vec![
                    ("lists/b.txt", "10.77.0.2\n"),
                    ("lists/a.txt", "10.77.0.1\n"),
                ],
            },
        )
        .expect("revision")
    }

    #[test]
    fn list_files_are_stored_with_their_revision() {
        let store = Store::in_memory().expect("store");
        store
            .call_sync(|c| {
                let r1 = revision(c, &["a"]);
                let lists = revision_lists(c, r1)?;
                assert_eq!(
                    lists,
                    vec![
                        ("lists/a.txt".to_string(), "10.77.0.1\n".to_string()),
                        ("lists/b.txt".to_string(), "10.77.0.2\n".to_string()),
                    ]
                );
                assert!(revision_lists(c, r1 + 1)?.is_empty());
                Ok(())
            })
            .expect("store");
    }

    #[test]
    fn interrupted_rollout_puts_unconfirmed_hosts_back() {
        let store = Store::in_memory().expect("store");
        store
            .call_sync(|c| {
                let r1 = revision(c, &["a", "b"]);
                let r2 = revision(c, &["a", "b"]);
                let waves = vec![vec!["a".to_string()], vec!["b".to_string()]];
                let prev = BTreeMap::from([("a".to_string(), r1), ("b".to_string(), r1)]);
                let id = insert_rollout(
                    c,
                    &NewRollout {
                        revision: r2,
                        kind: "apply",
                        author: "t",
                        serial: "1",
                        max_fail: "0",
                        confirm_timeout_ms: 5000,
                        gates: Gates::default(),
                        waves: &waves,
                        previous: &prev,
                    },
                )?;
                set_host_state(c, id, "a", "confirmed", "")?;
                set_host_state(c, id, "b", "sent", "")?;
                assert_eq!(interrupt_running(c)?, vec![id]);
                assert_eq!(desired_revision(c, "a")?, r2);
                assert_eq!(desired_revision(c, "b")?, r1);
                let list = list_rollouts(c, 0, 0)?;
                assert_eq!(list[0].status, "interrupted");
                assert_eq!(list[0].hosts[1].state, "interrupted");
                assert_eq!(revision_before(c, "a", r2)?, Some(r1));
                assert_eq!(revision_before(c, "a", r1)?, None);
                Ok(())
            })
            .expect("sync");
    }
}
