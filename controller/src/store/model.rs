//! Typed queries over the store's tables: revisions, hosts, audit. Each takes a
//! [`Db`] (or a transaction of one) so callers choose the transaction boundary.

use super::now_ms;
use super::sql::{Arg, Db, Dialect, ToArg as _};
use crate::args;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct HostRecord {
    pub name: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub agent_version: String,
    pub facts_json: String,
    pub desired_revision: u64,
    pub applied_revision: u64,
    pub expected_hash: String,
    pub reported_hash: String,
    pub last_error: String,
    pub peer: String,
    /// The controller holding its session ('' = none; may be stale after a crash: see
    /// [`HostRecord::connected_elsewhere`]).
    pub controller: String,
}

/// How long after its last report a host counts as connected to the controller the store
/// names (3 heartbeats of the default 15 s): a controller killed with -9 cannot clear it.
pub const SESSION_FRESH_MS: i64 = 45_000;

impl HostRecord {
    /// Connected to another controller than `me`, as far as the store knows.
    pub fn connected_elsewhere(&self, me: &str, now_ms: i64) -> bool {
        !self.controller.is_empty()
            && self.controller != me
            && now_ms.saturating_sub(self.last_seen_ms) < SESSION_FRESH_MS
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RevisionRecord {
    pub revision: u64,
    pub created_ms: i64,
    pub author: String,
    pub site_name: String,
    pub inventory_name: String,
    pub limit: String,
    pub hosts: Vec<String>,
    /// Hosts whose applied revision is this one with a matching hash.
    pub applied: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub detail: String,
}

/// One host's compiled target inside a new revision.
#[derive(Debug, Clone)]
pub struct RevisionHost {
    pub host: String,
    /// Shared by the hosts with the same policy (with a 1M-entry address list it is MBs).
    pub policy_json: std::sync::Arc<str>,
    pub expected_hash: String,
}

pub struct NewRevision<'a> {
    pub author: &'a str,
    pub site_name: &'a str,
    pub site_yaml: &'a str,
    pub inventory_name: &'a str,
    pub inventory_yaml: &'a str,
    pub limit: &'a str,
    pub hosts: &'a [RevisionHost],
    /// The address-list files (name, content) the site names.
    pub lists: Vec<(&'a str, &'a str)>,
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Hosts per multi-row statement of [`insert_revision`] (4 parameters each).
const HOSTS_PER_STATEMENT: usize = 500;

/// The advisory lock that orders revision numbers on PostgreSQL ("pcrevisn").
const REVISION_LOCK: i64 = 0x7063_7265_7669_736e;

/// Store a revision and make it the desired one of each of its hosts. Returns its number
/// (the newest plus one: numbers have no gaps). On PostgreSQL the transaction takes a lock
/// first, so two controllers storing at once get consecutive numbers, not an error.
pub fn insert_revision(db: &Db<'_>, r: &NewRevision<'_>) -> anyhow::Result<u64> {
    if db.dialect() == Dialect::Postgres {
        db.execute("SELECT pg_advisory_xact_lock(?1)", args![REVISION_LOCK])?;
    }
    let now = now_ms();
    let id: i64 = db.query_one(
        "INSERT INTO revisions (id, created_ms, author, site_name, site_yaml, inventory_name,
                                inventory_yaml, host_limit)
         VALUES ((SELECT COALESCE(MAX(id), 0) + 1 FROM revisions), ?1, ?2, ?3, ?4, ?5, ?6, ?7)
         RETURNING id",
        args![
            now,
            r.author,
            r.site_name,
            r.site_yaml,
            r.inventory_name,
            r.inventory_yaml,
            r.limit
        ],
        |row| row.get(0),
    )?;
    for (name, content) in &r.lists {
        db.execute(
            "INSERT INTO revision_lists (revision, name, content) VALUES (?1, ?2, ?3)",
            args![id, name, content],
        )?;
    }
    // By the shared string first (no hashing of MBs per host), then by content.
    let mut by_ptr: std::collections::HashMap<*const u8, i64> = std::collections::HashMap::new();
    let mut ids: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
    let mut policy_ids = Vec::with_capacity(r.hosts.len());
    for h in r.hosts {
        let ptr = h.policy_json.as_ptr();
        let policy_id = match by_ptr.get(&ptr).or_else(|| ids.get(&*h.policy_json)) {
            Some(p) => *p,
            None => {
                let p: i64 = db.query_one(
                    "INSERT INTO policies (json) VALUES (?1) RETURNING id",
                    args![&*h.policy_json],
                    |row| row.get(0),
                )?;
                ids.insert(&h.policy_json, p);
                p
            }
        };
        by_ptr.insert(ptr, policy_id);
        policy_ids.push(policy_id);
    }
    // Many rows per statement (a fleet of 10,000 hosts is 20 statements, not 20,000
    // round trips to a database server); the hosts of one revision are distinct.
    let rows: Vec<(&RevisionHost, i64)> = r.hosts.iter().zip(policy_ids).collect();
    for chunk in rows.chunks(HOSTS_PER_STATEMENT) {
        let mut a: Vec<Arg<'_>> = Vec::with_capacity(chunk.len() * 4);
        for (h, policy_id) in chunk {
            a.extend([
                Arg::Int(id),
                h.host.to_arg(),
                h.expected_hash.to_arg(),
                Arg::Int(*policy_id),
            ]);
        }
        db.execute(
            &format!(
                "INSERT INTO revision_hosts (revision, host, policy_json, expected_hash, policy_id)
                 VALUES {}",
                vec!["(?, ?, '', ?, ?)"; chunk.len()].join(", ")
            ),
            &a,
        )?;
        let mut a: Vec<Arg<'_>> = Vec::with_capacity(chunk.len() * 3);
        for (h, _) in chunk {
            a.extend([h.host.to_arg(), Arg::Int(id), h.expected_hash.to_arg()]);
        }
        db.execute(
            &format!(
                "INSERT INTO hosts (name, first_seen_ms, last_seen_ms, desired_revision, expected_hash)
                 VALUES {}
                 ON CONFLICT(name) DO UPDATE SET desired_revision = excluded.desired_revision,
                                                 expected_hash = excluded.expected_hash",
                vec!["(?, 0, 0, ?, ?)"; chunk.len()].join(", ")
            ),
            &a,
        )?;
    }
    Ok(to_u64(id))
}

/// The policy JSON of a `revision_hosts rh` row (stored once per revision in `policies`,
/// inline in rows older than migration 7).
pub const POLICY: &str =
    "COALESCE((SELECT json FROM policies WHERE id = rh.policy_id), rh.policy_json)";

/// The desired revision of `host`: (revision, policy JSON, expected hash).
pub fn desired_for(db: &Db<'_>, host: &str) -> anyhow::Result<Option<(u64, String, String)>> {
    db.query_opt(
        &format!(
            "SELECT rh.revision, {POLICY}, rh.expected_hash
               FROM hosts h JOIN revision_hosts rh
                 ON rh.host = h.name AND rh.revision = h.desired_revision
              WHERE h.name = ?1"
        ),
        args![host],
        |r| Ok((to_u64(r.get(0)?), r.get(1)?, r.get(2)?)),
    )
}

/// Record that an agent said Hello to controller `controller`.
#[allow(clippy::too_many_arguments)]
pub fn host_connected(
    db: &Db<'_>,
    host: &str,
    agent_version: &str,
    facts_json: &str,
    applied_revision: u64,
    reported_hash: &str,
    peer: &str,
    controller: &str,
) -> anyhow::Result<()> {
    let now = now_ms();
    db.execute(
        "INSERT INTO hosts (name, first_seen_ms, last_seen_ms, agent_version, facts_json,
                            applied_revision, reported_hash, peer, controller)
         VALUES (?1, ?2, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT(name) DO UPDATE SET
            first_seen_ms = CASE WHEN hosts.first_seen_ms = 0 THEN ?2 ELSE hosts.first_seen_ms END,
            last_seen_ms = ?2, agent_version = ?3, facts_json = ?4,
            applied_revision = ?5, reported_hash = ?6, peer = ?7, controller = ?8",
        args![
            host,
            now,
            agent_version,
            facts_json,
            to_i64(applied_revision),
            reported_hash,
            peer,
            controller
        ],
    )?;
    Ok(())
}

/// The session of `host` on `controller` ended (nothing if another controller holds it now).
pub fn host_disconnected(db: &Db<'_>, host: &str, controller: &str) -> anyhow::Result<()> {
    db.execute(
        "UPDATE hosts SET controller = '' WHERE name = ?1 AND controller = ?2",
        args![host, controller],
    )?;
    Ok(())
}

/// The hosts `revision` targets.
pub fn revision_targets(db: &Db<'_>, revision: u64) -> anyhow::Result<Vec<String>> {
    db.query(
        "SELECT host FROM revision_hosts WHERE revision = ?1 ORDER BY host",
        args![to_i64(revision)],
        |r| r.get(0),
    )
}

/// Update the expected hash of the host's desired revision (computed once facts are known).
pub fn set_expected_hash(db: &Db<'_>, host: &str, revision: u64, hash: &str) -> anyhow::Result<()> {
    db.execute(
        "UPDATE revision_hosts SET expected_hash = ?3 WHERE host = ?1 AND revision = ?2",
        args![host, to_i64(revision), hash],
    )?;
    db.execute(
        "UPDATE hosts SET expected_hash = ?3 WHERE name = ?1 AND desired_revision = ?2",
        args![host, to_i64(revision), hash],
    )?;
    Ok(())
}

/// Record an `Applied` report (or a heartbeat when `error` is None and revision unchanged).
pub fn host_reported(
    db: &Db<'_>,
    host: &str,
    applied_revision: u64,
    reported_hash: &str,
    error: Option<&str>,
) -> anyhow::Result<()> {
    match error {
        None => db.execute(
            "UPDATE hosts SET last_seen_ms = ?2, applied_revision = ?3, reported_hash = ?4,
                              last_error = '' WHERE name = ?1",
            args![host, now_ms(), to_i64(applied_revision), reported_hash],
        )?,
        Some(e) => db.execute(
            "UPDATE hosts SET last_seen_ms = ?2, last_error = ?3 WHERE name = ?1",
            args![host, now_ms(), e],
        )?,
    };
    Ok(())
}

/// What a host last reported, for followers of an apply or a verify on another
/// controller (no facts: those can be kilobytes a host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostState {
    pub name: String,
    pub last_seen_ms: i64,
    pub applied_revision: u64,
    pub reported_hash: String,
    pub last_error: String,
    pub verified_ms: i64,
}

/// The [`HostState`] of each of `names` that is known.
pub fn host_states(db: &Db<'_>, names: &[String]) -> anyhow::Result<Vec<HostState>> {
    let mut out = Vec::with_capacity(names.len());
    for chunk in names.chunks(HOSTS_PER_STATEMENT) {
        let a: Vec<Arg<'_>> = chunk.iter().map(|n| n.to_arg()).collect();
        out.extend(db.query(
            &format!(
                "SELECT name, last_seen_ms, applied_revision, reported_hash, last_error,
                        verified_ms
                   FROM hosts WHERE name IN ({})",
                vec!["?"; chunk.len()].join(", ")
            ),
            &a,
            |r| {
                Ok(HostState {
                    name: r.get(0)?,
                    last_seen_ms: r.get(1)?,
                    applied_revision: to_u64(r.get(2)?),
                    reported_hash: r.get(3)?,
                    last_error: r.get(4)?,
                    verified_ms: r.get(5)?,
                })
            },
        )?);
    }
    Ok(out)
}

/// One agent report for [`hosts_reported`]: as [`host_reported`]'s arguments.
#[derive(Debug, Clone)]
pub struct HostReport {
    pub host: String,
    pub revision: u64,
    pub hash: String,
    pub error: Option<String>,
}

/// Many [`host_reported`]s in a few statements (the hosts are distinct; the last report
/// of a host wins): a push to 10,000 agents is 20 `UPDATE`s, not 10,000 round trips.
pub fn hosts_reported(db: &Db<'_>, reports: &[&HostReport]) -> anyhow::Result<()> {
    let now = now_ms();
    let mut last: std::collections::HashMap<&str, &HostReport> = std::collections::HashMap::new();
    for r in reports {
        last.insert(r.host.as_str(), r);
    }
    let rows: Vec<&HostReport> = last.into_values().collect();
    for chunk in rows.chunks(HOSTS_PER_STATEMENT) {
        let mut a: Vec<Arg<'_>> = Vec::with_capacity(chunk.len() * 5);
        for r in chunk {
            a.extend([
                r.host.to_arg(),
                Arg::Int(to_i64(r.revision)),
                r.hash.to_arg(),
                Arg::Int(i64::from(r.error.is_none())),
                r.error.as_deref().unwrap_or("").to_arg(),
            ]);
        }
        db.execute(
            &format!(
                "UPDATE hosts SET last_seen_ms = {now},
                    applied_revision = CASE WHEN v.column4 = 1 THEN v.column2
                                            ELSE hosts.applied_revision END,
                    reported_hash = CASE WHEN v.column4 = 1 THEN v.column3
                                         ELSE hosts.reported_hash END,
                    last_error = v.column5
                  FROM (VALUES {}) AS v
                 WHERE hosts.name = v.column1",
                vec![
                    "(CAST(? AS TEXT), CAST(? AS BIGINT), CAST(? AS TEXT), CAST(? AS BIGINT), \
                      CAST(? AS TEXT))";
                    chunk.len()
                ]
                .join(", ")
            ),
            &a,
        )?;
    }
    Ok(())
}

pub fn touch_host(db: &Db<'_>, host: &str) -> anyhow::Result<()> {
    db.execute(
        "UPDATE hosts SET last_seen_ms = ?2 WHERE name = ?1",
        args![host, now_ms()],
    )?;
    Ok(())
}

pub fn list_hosts(db: &Db<'_>) -> anyhow::Result<Vec<HostRecord>> {
    db.query(
        "SELECT name, first_seen_ms, last_seen_ms, agent_version, facts_json, desired_revision,
                applied_revision, expected_hash, reported_hash, last_error, peer, controller
           FROM hosts ORDER BY name",
        args![],
        |r| {
            Ok(HostRecord {
                name: r.get(0)?,
                first_seen_ms: r.get(1)?,
                last_seen_ms: r.get(2)?,
                agent_version: r.get(3)?,
                facts_json: r.get(4)?,
                desired_revision: to_u64(r.get(5)?),
                applied_revision: to_u64(r.get(6)?),
                expected_hash: r.get(7)?,
                reported_hash: r.get(8)?,
                last_error: r.get(9)?,
                peer: r.get(10)?,
                controller: r.get(11)?,
            })
        },
    )
}

/// Facts last reported by `host` (JSON), if it ever connected.
pub fn host_facts(db: &Db<'_>, host: &str) -> anyhow::Result<Option<String>> {
    db.query_opt(
        "SELECT facts_json FROM hosts WHERE name = ?1 AND facts_json != ''",
        args![host],
        |r| r.get(0),
    )
}

pub fn list_revisions(db: &Db<'_>, limit: u32) -> anyhow::Result<Vec<RevisionRecord>> {
    let limit = if limit == 0 {
        i64::MAX
    } else {
        i64::from(limit)
    };
    let revs = db.query(
        "SELECT id, created_ms, author, site_name, inventory_name, host_limit
           FROM revisions ORDER BY id DESC LIMIT ?1",
        args![limit],
        |r| {
            Ok(RevisionRecord {
                revision: to_u64(r.get(0)?),
                created_ms: r.get(1)?,
                author: r.get(2)?,
                site_name: r.get(3)?,
                inventory_name: r.get(4)?,
                limit: r.get(5)?,
                hosts: Vec::new(),
                applied: 0,
            })
        },
    )?;
    let mut out = Vec::with_capacity(revs.len());
    for mut rev in revs {
        let rows = db.query(
            "SELECT rh.host, (h.applied_revision = rh.revision AND h.reported_hash = rh.expected_hash
                              AND rh.expected_hash != '')
               FROM revision_hosts rh LEFT JOIN hosts h ON h.name = rh.host
              WHERE rh.revision = ?1 ORDER BY rh.host",
            args![to_i64(rev.revision)],
            |r| Ok((r.get::<String>(0)?, r.get::<Option<bool>>(1)?)),
        )?;
        rev.applied = u32::try_from(rows.iter().filter(|(_, ok)| *ok == Some(true)).count())
            .unwrap_or(u32::MAX);
        rev.hosts = rows.into_iter().map(|(h, _)| h).collect();
        out.push(rev);
    }
    Ok(out)
}

pub fn list_audit(db: &Db<'_>, limit: u32) -> anyhow::Result<Vec<AuditEntry>> {
    let limit = if limit == 0 {
        i64::MAX
    } else {
        i64::from(limit)
    };
    db.query(
        "SELECT at_ms, actor, action, detail FROM audit ORDER BY id DESC LIMIT ?1",
        args![limit],
        |r| {
            Ok(AuditEntry {
                at_ms: r.get(0)?,
                actor: r.get(1)?,
                action: r.get(2)?,
                detail: r.get(3)?,
            })
        },
    )
}
