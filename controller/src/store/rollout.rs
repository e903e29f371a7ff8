//! Rollout records: one row per rollout (revision, who, waves, status) and one per
//! targeted host (wave, the revision it had before, its state). Also the per-host desired
//! revision moves a rollout makes: a wave sets it, a rollback or an unconfirmed host puts
//! the previous one back.

use super::now_ms;
use super::sql::{Db, Dialect};
use crate::args;

/// How long a running rollout's lease lasts; its controller renews it every third of that.
pub const LEASE_MS: i64 = 15_000;

/// The advisory lock that makes "no other rollout is running" and the insert one step on
/// PostgreSQL ("pcrollot").
const ROLLOUT_LOCK: i64 = 0x7063_726f_6c6c_6f74;

/// Another controller's rollout holds a live lease: at most one runs fleet-wide.
#[derive(Debug, thiserror::Error)]
#[error(
    "rollout {id} is running on controller {controller}; wait for it or stop it with `portcullis rollout abort` there"
)]
pub struct Busy {
    pub id: u64,
    pub controller: String,
}
use portcullis_policy::protocol::outcome::HostState;
use portcullis_policy::rollout::RolloutStatus;
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
    pub state: HostState,
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
    pub status: RolloutStatus,
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
    /// The controller that runs it (holds its lease).
    pub controller: &'a str,
}

/// The desired revision of `host` (0 = none or unknown host).
pub fn desired_revision(db: &Db<'_>, host: &str) -> anyhow::Result<u64> {
    Ok(db
        .query_opt(
            "SELECT desired_revision FROM hosts WHERE name = ?1",
            args![host],
            |r| r.get::<i64>(0),
        )?
        .map_or(0, to_u64))
}

/// Whether a rollout sent `host` `revision` under commit-confirmed with `previous` as the
/// revision it had before (what a `Reverted` from that host must match).
pub fn was_sent_for_confirm(
    db: &Db<'_>,
    host: &str,
    revision: u64,
    previous: u64,
) -> anyhow::Result<bool> {
    let (rev, prev) = (to_i64(revision), to_i64(previous));
    let never_sent = in_list(&[HostState::Pending, HostState::Skipped, HostState::Offline]);
    db.query_one(
        &format!(
            "SELECT EXISTS (SELECT 1 FROM rollout_hosts h JOIN rollouts r ON r.id = h.rollout
              WHERE h.host = ?1 AND r.revision = ?2 AND r.confirm_timeout_ms > 0
                AND h.previous_revision = ?3 AND h.state NOT IN ({never_sent}))"
        ),
        args![host, rev, prev],
        |r| r.get::<bool>(0),
    )
}

/// `host` reverted `revision` by itself after its rollout was interrupted (nobody drives
/// it any more): its row says so, with `reason`, instead of `interrupted`.
pub fn reverted_after_interrupt(
    db: &Db<'_>,
    host: &str,
    revision: u64,
    reason: &str,
) -> anyhow::Result<()> {
    db.execute(
        "UPDATE rollout_hosts SET state = ?5, detail = ?3, updated_ms = ?4
          WHERE host = ?1 AND state = ?6
            AND rollout IN (SELECT id FROM rollouts WHERE revision = ?2 AND status = ?7)",
        args![
            host,
            to_i64(revision),
            reason,
            now_ms(),
            HostState::Reverted.as_str(),
            HostState::Interrupted.as_str(),
            RolloutStatus::Interrupted.as_str()
        ],
    )?;
    Ok(())
}

/// Make `revision` the desired one of `host` (with that revision's stored expected hash);
/// 0 clears it.
pub fn set_desired(db: &Db<'_>, host: &str, revision: u64) -> anyhow::Result<()> {
    db.execute(
        "UPDATE hosts SET desired_revision = ?2,
            expected_hash = COALESCE((SELECT expected_hash FROM revision_hosts
                                       WHERE revision = ?2 AND host = ?1), '')
          WHERE name = ?1",
        args![host, to_i64(revision)],
    )?;
    Ok(())
}

/// What `host` last attested: (applied revision, kernel hash).
pub fn host_applied(db: &Db<'_>, host: &str) -> anyhow::Result<Option<(u64, String)>> {
    db.query_opt(
        "SELECT applied_revision, reported_hash FROM hosts WHERE name = ?1",
        args![host],
        |r| Ok((to_u64(r.get(0)?), r.get(1)?)),
    )
}

/// The stored sources of a revision: (site name, site YAML, inventory name, inventory YAML).
pub fn revision_sources(
    db: &Db<'_>,
    revision: u64,
) -> anyhow::Result<Option<(String, String, String, String)>> {
    db.query_opt(
        "SELECT site_name, site_yaml, inventory_name, inventory_yaml FROM revisions
          WHERE id = ?1",
        args![to_i64(revision)],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )
}

/// The stored address-list files of a revision: (name, content), by name.
pub fn revision_lists(db: &Db<'_>, revision: u64) -> anyhow::Result<Vec<(String, String)>> {
    db.query(
        "SELECT name, content FROM revision_lists WHERE revision = ?1 ORDER BY name",
        args![to_i64(revision)],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// The latest revision before `before` that targeted `host`.
pub fn revision_before(db: &Db<'_>, host: &str, before: u64) -> anyhow::Result<Option<u64>> {
    Ok(db
        .query_one(
            "SELECT MAX(revision) FROM revision_hosts WHERE host = ?1 AND revision < ?2",
            args![host, to_i64(before)],
            |r| r.get::<Option<i64>>(0),
        )?
        .map(to_u64))
}

/// How the latest rollout was run: (serial, max-fail, confirm timeout, gates).
pub fn latest_settings(db: &Db<'_>) -> anyhow::Result<Option<(String, String, u64, Gates)>> {
    db.query_opt(
        "SELECT serial, max_fail, confirm_timeout_ms, max_denial_increase, denial_window_ms,
                denial_baseline_ms
           FROM rollouts ORDER BY id DESC LIMIT 1",
        args![],
        |r| {
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
        },
    )
}

/// Store a new running rollout with a fresh lease held by `r.controller`; refused with
/// [`Busy`] while another rollout's lease is live.
pub fn insert_rollout(db: &Db<'_>, r: &NewRollout<'_>) -> anyhow::Result<u64> {
    let now = now_ms();
    if db.dialect() == Dialect::Postgres {
        db.execute("SELECT pg_advisory_xact_lock(?1)", args![ROLLOUT_LOCK])?;
    }
    if let Some((id, controller)) = db.query_opt(
        "SELECT id, controller FROM rollouts WHERE status = 'running' AND lease_ms >= ?1
          ORDER BY id LIMIT 1",
        args![now],
        |row| Ok((to_u64(row.get(0)?), row.get::<String>(1)?)),
    )? {
        return Err(Busy { id, controller }.into());
    }
    let id: i64 = db.query_one(
        "INSERT INTO rollouts (revision, kind, author, started_ms, status, serial, max_fail,
                               confirm_timeout_ms, waves_json, max_denial_increase,
                               denial_window_ms, denial_baseline_ms, controller, lease_ms)
         VALUES (?1, ?2, ?3, ?4, 'running', ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         RETURNING id",
        args![
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
            r.controller,
            now.saturating_add(LEASE_MS),
        ],
        |row| row.get(0),
    )?;
    for (wave, hosts) in r.waves.iter().enumerate() {
        for h in hosts {
            let prev = r.previous.get(h).copied().unwrap_or(0);
            db.execute(
                "INSERT INTO rollout_hosts (rollout, host, wave, previous_revision, state, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?6, ?5)",
                args![
                    id,
                    h,
                    i64::try_from(wave)?,
                    to_i64(prev),
                    now,
                    HostState::Pending.as_str()
                ],
            )?;
        }
    }
    Ok(to_u64(id))
}

pub fn set_host_state(
    db: &Db<'_>,
    rollout: u64,
    host: &str,
    state: HostState,
    detail: &str,
) -> anyhow::Result<()> {
    db.execute(
        "UPDATE rollout_hosts SET state = ?3, detail = ?4, updated_ms = ?5
          WHERE rollout = ?1 AND host = ?2",
        args![to_i64(rollout), host, state.as_str(), detail, now_ms()],
    )?;
    Ok(())
}

/// The rollout ended with `status`; `controller` (its own) announces it to the others,
/// which stop following its hosts.
pub fn finish_rollout(
    db: &Db<'_>,
    rollout: u64,
    status: RolloutStatus,
    reason: &str,
    controller: &str,
) -> anyhow::Result<()> {
    let tx = db.transaction()?;
    tx.execute(
        "UPDATE rollouts SET status = ?2, reason = ?3, finished_ms = ?4 WHERE id = ?1",
        args![to_i64(rollout), status.as_str(), reason, now_ms()],
    )?;
    super::relay::forget_reports(&tx, rollout)?;
    super::relay::publish_rollout(&tx, controller, rollout, super::relay::Step::Done, 0, &[])?;
    tx.commit()
}

/// Keep `rollout`'s lease (its controller, every [`LEASE_MS`] / 3). False when it is no
/// longer running or no longer ours (another controller interrupted it).
pub fn renew_lease(db: &Db<'_>, rollout: u64, controller: &str) -> anyhow::Result<bool> {
    Ok(db.execute(
        "UPDATE rollouts SET lease_ms = ?3
          WHERE id = ?1 AND controller = ?2 AND status = 'running'",
        args![
            to_i64(rollout),
            controller,
            now_ms().saturating_add(LEASE_MS)
        ],
    )? == 1)
}

/// Every rollout still `running` whose lease ended before `expired_before` was cut short
/// (its controller stopped or died; at the start of the only controller, pass
/// `i64::MAX`). Its hosts that did not confirm get their previous desired revision back
/// (their agents revert the unconfirmed one by themselves), and the rollout becomes
/// `interrupted`. Returns the ids.
pub fn interrupt_running(db: &Db<'_>, expired_before: i64) -> anyhow::Result<Vec<u64>> {
    let tx = db.transaction()?;
    let running: Vec<(i64, i64)> = tx.query(
        "SELECT id, revision FROM rollouts WHERE status = 'running' AND lease_ms < ?1",
        args![expired_before],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    // Hosts whose row already says how they ended keep it.
    let settled = in_list(&[
        HostState::Confirmed,
        HostState::Failed,
        HostState::Reverted,
        HostState::Offline,
        HostState::Unconfirmed,
        HostState::RolledBack,
    ]);
    for (id, revision) in &running {
        let hosts: Vec<(String, i64)> = tx.query(
            "SELECT host, previous_revision FROM rollout_hosts
              WHERE rollout = ?1 AND state <> ?2",
            args![id, HostState::Confirmed.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        for (host, prev) in hosts {
            if to_i64(desired_revision(&tx, &host)?) == *revision {
                set_desired(&tx, &host, to_u64(prev))?;
            }
            tx.execute(
                &format!(
                    "UPDATE rollout_hosts SET state = ?4, updated_ms = ?3
                      WHERE rollout = ?1 AND host = ?2 AND state NOT IN ({settled})"
                ),
                args![id, host, now_ms(), HostState::Interrupted.as_str()],
            )?;
        }
        tx.execute(
            "UPDATE rollouts SET status = 'interrupted', finished_ms = ?2,
                    reason = 'the controller stopped during the rollout'
              WHERE id = ?1",
            args![id, now_ms()],
        )?;
        super::relay::forget_reports(&tx, to_u64(*id))?;
    }
    tx.commit()?;
    Ok(running.into_iter().map(|(id, _)| to_u64(id)).collect())
}

/// Rollouts newest first (`limit` 0 = all; `id` 0 = every rollout), with their hosts.
pub fn list_rollouts(db: &Db<'_>, limit: u32, id: u64) -> anyhow::Result<Vec<RolloutRecord>> {
    let limit = if limit == 0 {
        i64::MAX
    } else {
        i64::from(limit)
    };
    let mut rollouts = db.query(
        "SELECT id, revision, kind, author, started_ms, finished_ms, status, reason, serial,
                max_fail, confirm_timeout_ms, max_denial_increase, denial_window_ms,
                denial_baseline_ms
           FROM rollouts WHERE ?1 = 0 OR id = ?1 ORDER BY id DESC LIMIT ?2",
        args![to_i64(id), limit],
        |r| {
            Ok(RolloutRecord {
                id: to_u64(r.get(0)?),
                revision: to_u64(r.get(1)?),
                kind: r.get(2)?,
                author: r.get(3)?,
                started_ms: r.get(4)?,
                finished_ms: r.get(5)?,
                status: r.get::<String>(6)?.parse()?,
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
        },
    )?;
    for r in &mut rollouts {
        r.hosts = db.query(
            "SELECT host, wave, previous_revision, state, detail FROM rollout_hosts
              WHERE rollout = ?1 ORDER BY wave, host",
            args![to_i64(r.id)],
            |row| {
                Ok(RolloutHostRecord {
                    host: row.get(0)?,
                    wave: u32::try_from(row.get::<i64>(1)?).unwrap_or(0),
                    previous_revision: to_u64(row.get(2)?),
                    state: row.get::<String>(3)?.parse()?,
                    detail: row.get(4)?,
                })
            },
        )?;
    }
    Ok(rollouts)
}

/// Start a wave in one transaction: make `revision` the desired one of `hosts`, mark them
/// `sent` in `rollout`, and return each host's (policy JSON, stored expected hash). With
/// `announce` (this controller, hosts), the wave is announced to the other controllers
/// ([`super::relay::Step::Send`]) when it commits.
pub fn start_wave(
    db: &Db<'_>,
    rollout: u64,
    revision: u64,
    hosts: &[String],
    announce: Option<(&str, &[String])>,
) -> anyhow::Result<BTreeMap<String, (String, String)>> {
    let tx = db.transaction()?;
    for h in hosts {
        set_desired(&tx, h, revision)?;
        set_host_state(&tx, rollout, h, HostState::Sent, "")?;
    }
    let out = wave_policies(&tx, revision, hosts)?;
    if let Some((me, to)) = announce {
        super::relay::publish_rollout(&tx, me, rollout, super::relay::Step::Send, revision, to)?;
    }
    tx.commit()?;
    Ok(out)
}

/// Each of `hosts`' (policy JSON, stored expected hash) in `revision`.
pub fn wave_policies(
    db: &Db<'_>,
    revision: u64,
    hosts: &[String],
) -> anyhow::Result<BTreeMap<String, (String, String)>> {
    let mut out = BTreeMap::new();
    let get = format!(
        "SELECT {}, expected_hash FROM revision_hosts rh
          WHERE revision = ?1 AND host = ?2",
        super::POLICY
    );
    for h in hosts {
        if let Some(row) = db.query_opt(&get, args![to_i64(revision), h], |r| {
            Ok((r.get::<String>(0)?, r.get::<String>(1)?))
        })? {
            out.insert(h.clone(), row);
        }
    }
    Ok(out)
}

/// `states` as the items of an SQL `IN (...)` list: their spellings are fixed snake_case
/// words, never input.
pub(super) fn in_list(states: &[HostState]) -> String {
    states
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Record many (host, state, detail) of `rollout` in one transaction.
pub fn set_host_states(
    db: &Db<'_>,
    rollout: u64,
    states: &[(String, HostState, String)],
) -> anyhow::Result<()> {
    let tx = db.transaction()?;
    for (h, s, d) in states {
        set_host_state(&tx, rollout, h, *s, d)?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewRevision, RevisionHost, insert_revision};

    fn revision(c: &Db<'_>, hosts: &[&str]) -> u64 {
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
        crate::store::testing::each_engine(|store| {
            store.call_sync(|c| {
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
        });
    }

    #[test]
    fn interrupted_rollout_puts_unconfirmed_hosts_back() {
        crate::store::testing::each_engine(|store| {
            store.call_sync(|c| {
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
                        controller: "c1",
                    },
                )?;
                set_host_state(c, id, "a", HostState::Confirmed, "")?;
                set_host_state(c, id, "b", HostState::Sent, "")?;
                // A live lease: another controller leaves it alone, and refuses a second.
                assert!(interrupt_running(c, now_ms())?.is_empty());
                let second = NewRollout {
                    revision: r2,
                    kind: "apply",
                    author: "t",
                    serial: "1",
                    max_fail: "0",
                    confirm_timeout_ms: 0,
                    gates: Gates::default(),
                    waves: &waves,
                    previous: &prev,
                    controller: "c2",
                };
                let busy = insert_rollout(c, &second).unwrap_err();
                assert!(busy.downcast_ref::<Busy>().is_some(), "{busy:#}");
                assert!(renew_lease(c, id, "c1")?);
                assert!(!renew_lease(c, id, "c2")?, "not c2's rollout");
                // Expired (its controller died): interrupted.
                assert_eq!(interrupt_running(c, now_ms() + LEASE_MS + 1)?, vec![id]);
                assert!(!renew_lease(c, id, "c1")?, "no longer running");
                assert_eq!(desired_revision(c, "a")?, r2);
                assert_eq!(desired_revision(c, "b")?, r1);
                let list = list_rollouts(c, 0, 0)?;
                assert_eq!(list[0].status, RolloutStatus::Interrupted);
                assert_eq!(list[0].hosts[1].state, HostState::Interrupted);
                assert_eq!(revision_before(c, "a", r2)?, Some(r1));
                assert_eq!(revision_before(c, "a", r1)?, None);
                Ok(())
            })
        });
    }
}
