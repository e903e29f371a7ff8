//! A rollout across controllers on one PostgreSQL store. The controller running it (its
//! lease holder) announces each step for a set of hosts on the publish channel —
//! `"<controller> rollout <id> <step> <revision> <host>,<host>,..."`, delivered at
//! commit, in as many notifications as PostgreSQL's 8000-byte payload limit needs — and
//! the controller holding a host's session carries it out and stores what it saw of the
//! host for that rollout in `rollout_reports`, which the rollout's controller reads.
//! Notices say only *which* step for *which* hosts: what is sent is read from the store
//! (the revision, its policy, the confirm timeout), so a notice cannot make a controller
//! send anything the rollout did not stage. Nothing of this runs on SQLite.

use super::PUBLISH_CHANNEL;
use super::sql::{Arg, Db, Dialect, ToArg as _};
use crate::args;
use portcullis_policy::protocol::outcome::HostState;
use portcullis_policy::rollout::RolloutStatus;
use std::collections::BTreeMap;

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// What a rollout's controller asks the others to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// A wave started: send `Desired` (the staged revision, with the rollout's confirm
    /// timeout) to these hosts if their session is here; every controller follows them.
    Send,
    /// Send `Confirm` for the revision.
    Confirm,
    /// Send `Revert` for the revision (the reason is the host's recorded detail).
    Revert,
    /// The rollout is done with these hosts (no message).
    Release,
    /// Halted: send these hosts their desired revision (the previous one) and report it.
    Rollback,
    /// The rollout finished (no hosts).
    Done,
    /// `rollout abort` through another controller: the rollout's controller stops it.
    Abort,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Send => "send",
            Step::Confirm => "confirm",
            Step::Revert => "revert",
            Step::Release => "release",
            Step::Rollback => "rollback",
            Step::Done => "done",
            Step::Abort => "abort",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Step::Send,
            Step::Confirm,
            Step::Revert,
            Step::Release,
            Step::Rollback,
            Step::Done,
            Step::Abort,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    /// Whether the step names hosts (the others are about the whole rollout).
    pub fn has_hosts(self) -> bool {
        !matches!(self, Step::Done | Step::Abort)
    }
}

/// Most bytes of host names in one notification (the payload limit is 8000 bytes).
const PAYLOAD_HOSTS: usize = 7_000;

/// Announce `step` of `rollout` (at `revision`) for `hosts` to every controller sharing
/// the database; delivered when the caller's transaction commits. Hosts whose names
/// would not survive the payload format (`,` or a space) are left out. Nothing on SQLite,
/// nothing for a step with hosts when there are none.
pub fn publish_rollout(
    db: &Db<'_>,
    controller: &str,
    rollout: u64,
    step: Step,
    revision: u64,
    hosts: &[String],
) -> anyhow::Result<()> {
    if db.dialect() != Dialect::Postgres {
        return Ok(());
    }
    let head = format!(
        "{controller} rollout {rollout} {} {revision}",
        step.as_str()
    );
    let send = |names: &str| -> anyhow::Result<()> {
        let payload = if names.is_empty() {
            head.clone()
        } else {
            format!("{head} {names}")
        };
        db.execute("SELECT pg_notify(?1, ?2)", args![PUBLISH_CHANNEL, payload])?;
        Ok(())
    };
    if !step.has_hosts() {
        return send("");
    }
    let mut chunk = String::new();
    for h in hosts
        .iter()
        .filter(|h| !h.is_empty() && !h.contains([',', ' ']))
    {
        if !chunk.is_empty() && chunk.len() + h.len() + 1 > PAYLOAD_HOSTS {
            send(&chunk)?;
            chunk.clear();
        }
        if !chunk.is_empty() {
            chunk.push(',');
        }
        chunk.push_str(h);
    }
    if !chunk.is_empty() {
        send(&chunk)?;
    }
    Ok(())
}

/// A rollout as another controller checks a notice against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: u64,
    pub revision: u64,
    /// The controller running it.
    pub controller: String,
    pub status: RolloutStatus,
    /// Until when its controller's lease holds (ms since the epoch).
    pub lease_ms: i64,
    pub confirm_timeout_ms: u64,
}

pub fn lease(db: &Db<'_>, rollout: u64) -> anyhow::Result<Option<Lease>> {
    db.query_opt(
        "SELECT id, revision, controller, status, lease_ms, confirm_timeout_ms FROM rollouts
          WHERE id = ?1",
        args![to_i64(rollout)],
        |r| {
            Ok(Lease {
                id: to_u64(r.get(0)?),
                revision: to_u64(r.get(1)?),
                controller: r.get(2)?,
                status: r.get::<String>(3)?.parse()?,
                lease_ms: r.get(4)?,
                confirm_timeout_ms: to_u64(r.get(5)?),
            })
        },
    )
}

/// A rollout's host row with the host's desired revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub state: HostState,
    pub detail: String,
    pub previous_revision: u64,
    /// The host's desired revision now (0: none, or no hosts row).
    pub desired_revision: u64,
}

/// `?first, ?first+1, ...` for `n` arguments.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

const PER_STATEMENT: usize = 500;

#[cfg(test)]
const LEASE_AFTER: i64 = super::rollout::LEASE_MS + 1_000;

/// The rows of `rollout` for those of `hosts` it targets.
pub fn targets(
    db: &Db<'_>,
    rollout: u64,
    hosts: &[String],
) -> anyhow::Result<BTreeMap<String, Target>> {
    let mut out = BTreeMap::new();
    let id = to_i64(rollout);
    for chunk in hosts.chunks(PER_STATEMENT) {
        let mut a: Vec<Arg<'_>> = vec![id.to_arg()];
        a.extend(chunk.iter().map(|h| h.to_arg()));
        let rows = db.query(
            &format!(
                "SELECT rh.host, rh.state, rh.detail, rh.previous_revision,
                        COALESCE(h.desired_revision, 0)
                   FROM rollout_hosts rh LEFT JOIN hosts h ON h.name = rh.host
                  WHERE rh.rollout = ?1 AND rh.host IN ({})",
                placeholders(2, chunk.len())
            ),
            &a,
            |r| {
                Ok((
                    r.get::<String>(0)?,
                    Target {
                        state: r.get::<String>(1)?.parse()?,
                        detail: r.get(2)?,
                        previous_revision: to_u64(r.get(3)?),
                        desired_revision: to_u64(r.get(4)?),
                    },
                ))
            },
        )?;
        out.extend(rows);
    }
    Ok(out)
}

/// What the controller holding a host's session saw of it for a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    /// `Applied` ok (`hash`: the kernel hash it read back).
    Applied,
    /// `Applied` not ok (`detail`: the agent's error).
    Failed,
    /// On a newer session than the one the revision went to; its Hello attested
    /// (`revision`, `hash`).
    Back,
    /// The agent reverted `revision` by itself (`detail`: why).
    Reverted,
    /// `Confirm` for `revision` was handed to its session.
    Confirmed,
}

impl ReportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportKind::Applied => "applied",
            ReportKind::Failed => "failed",
            ReportKind::Back => "back",
            ReportKind::Reverted => "reverted",
            ReportKind::Confirmed => "confirmed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            ReportKind::Applied,
            ReportKind::Failed,
            ReportKind::Back,
            ReportKind::Reverted,
            ReportKind::Confirmed,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub id: i64,
    pub host: String,
    /// The controller that stored it.
    pub controller: String,
    pub kind: ReportKind,
    pub revision: u64,
    pub hash: String,
    pub detail: String,
}

/// Store a report for `rollout` while it is running (a late one for a finished rollout
/// is dropped: nobody reads it).
pub fn add_report(db: &Db<'_>, rollout: u64, r: &Report) -> anyhow::Result<()> {
    db.execute(
        "INSERT INTO rollout_reports (rollout, host, controller, kind, revision, hash, detail, at_ms)
         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8
          WHERE EXISTS (SELECT 1 FROM rollouts WHERE id = ?1 AND status = 'running')",
        args![
            to_i64(rollout),
            r.host,
            r.controller,
            r.kind.as_str(),
            to_i64(r.revision),
            r.hash,
            r.detail,
            super::now_ms()
        ],
    )?;
    Ok(())
}

/// The reports of `rollout` about `hosts`, in id order.
pub fn reports(db: &Db<'_>, rollout: u64, hosts: &[String]) -> anyhow::Result<Vec<Report>> {
    let mut out = Vec::new();
    let id = to_i64(rollout);
    for chunk in hosts.chunks(PER_STATEMENT) {
        let mut a: Vec<Arg<'_>> = vec![id.to_arg()];
        a.extend(chunk.iter().map(|h| h.to_arg()));
        let rows = db.query(
            &format!(
                "SELECT id, host, controller, kind, revision, hash, detail FROM rollout_reports
                  WHERE rollout = ?1 AND host IN ({}) ORDER BY id",
                placeholders(2, chunk.len())
            ),
            &a,
            |r| {
                Ok((
                    r.get::<i64>(0)?,
                    r.get::<String>(1)?,
                    r.get::<String>(2)?,
                    r.get::<String>(3)?,
                    to_u64(r.get(4)?),
                    r.get::<String>(5)?,
                    r.get::<String>(6)?,
                ))
            },
        )?;
        out.extend(rows.into_iter().filter_map(
            |(id, host, controller, kind, revision, hash, detail)| {
                Some(Report {
                    id,
                    host,
                    controller,
                    kind: ReportKind::parse(&kind)?,
                    revision,
                    hash,
                    detail,
                })
            },
        ));
    }
    out.sort_by_key(|r| r.id);
    Ok(out)
}

/// Drop `rollout`'s reports (it ended).
pub fn forget_reports(db: &Db<'_>, rollout: u64) -> anyhow::Result<()> {
    db.execute(
        "DELETE FROM rollout_reports WHERE rollout = ?1",
        args![to_i64(rollout)],
    )?;
    Ok(())
}

/// A rollout of another controller than `me` whose lease is live at `now_ms`: (id, its
/// controller).
pub fn running_elsewhere(
    db: &Db<'_>,
    me: &str,
    now_ms: i64,
) -> anyhow::Result<Option<(u64, String)>> {
    db.query_opt(
        "SELECT id, controller FROM rollouts
          WHERE status = 'running' AND lease_ms >= ?1 AND controller <> ?2
          ORDER BY id LIMIT 1",
        args![now_ms, me],
        |r| Ok((to_u64(r.get(0)?), r.get(1)?)),
    )
}

/// The states of a host a wave still drives ([`HostState::in_flight`]), as an SQL list.
fn in_flight() -> String {
    let states: Vec<HostState> = HostState::ALL
        .iter()
        .copied()
        .filter(|s| s.in_flight())
        .collect();
    super::rollout::in_list(&states)
}

/// Whether a running rollout (live lease) is staging `revision` on `host` (sent, not
/// settled): only that rollout may send it, with its confirm deadline.
pub fn staged(db: &Db<'_>, host: &str, revision: u64, now_ms: i64) -> anyhow::Result<bool> {
    db.query_one(
        &format!(
            "SELECT EXISTS (SELECT 1 FROM rollout_hosts h JOIN rollouts r ON r.id = h.rollout
              WHERE h.host = ?1 AND r.revision = ?2 AND r.status = 'running' AND r.lease_ms >= ?3
                AND h.state IN ({}))",
            in_flight()
        ),
        args![host, to_i64(revision), now_ms],
        |r| r.get::<bool>(0),
    )
}

/// Hosts in flight (sent, not settled) in running rollouts of other controllers than
/// `me` with a live lease: (rollout, its controller, its revision, host). What a
/// controller that (re)starts listening follows.
pub fn in_flight_elsewhere(
    db: &Db<'_>,
    me: &str,
    now_ms: i64,
) -> anyhow::Result<Vec<(u64, String, u64, String)>> {
    db.query(
        &format!(
            "SELECT r.id, r.controller, r.revision, h.host
               FROM rollouts r JOIN rollout_hosts h ON h.rollout = r.id
              WHERE r.status = 'running' AND r.lease_ms >= ?1 AND r.controller <> ?2
                AND h.state IN ({})
              ORDER BY r.id, h.host",
            in_flight()
        ),
        args![now_ms, me],
        |r| Ok((to_u64(r.get(0)?), r.get(1)?, to_u64(r.get(2)?), r.get(3)?)),
    )
}

/// The ids of running rollouts.
pub fn running_ids(db: &Db<'_>) -> anyhow::Result<Vec<u64>> {
    db.query(
        "SELECT id FROM rollouts WHERE status = 'running' ORDER BY id",
        args![],
        |r| Ok(to_u64(r.get(0)?)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::rollout::{Gates, NewRollout, insert_rollout, set_desired, set_host_state};
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
        let new = NewRevision {
            author: "t",
            site_name: "s",
            site_yaml: "",
            inventory_name: "i",
            inventory_yaml: "",
            limit: "",
            hosts: &rows,
            lists: Vec::new(),
        };
        insert_revision(c, &new).expect("revision")
    }

    fn report(host: &str, kind: ReportKind, revision: u64) -> Report {
        Report {
            id: 0,
            host: host.into(),
            controller: "cb".into(),
            kind,
            revision,
            hash: format!("hash-{host}"),
            detail: String::new(),
        }
    }

    #[test]
    fn reports_targets_and_staging_follow_the_rollout() {
        crate::store::testing::each_engine(|store| {
            store.call_sync(|c| {
                for h in ["a", "b"] {
                    crate::store::host_connected(c, h, "v", "{}", 0, "", "p", "cb")?;
                }
                let r1 = revision(c, &["a", "b"]);
                let r2 = revision(c, &["a", "b"]);
                // Staged, as a rollout starts: each wave makes r2 desired.
                set_desired(c, "a", r1)?;
                set_desired(c, "b", r1)?;
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
                        controller: "ca",
                    },
                )?;
                let now = super::super::now_ms();
                assert_eq!(running_elsewhere(c, "cb", now)?, Some((id, "ca".into())));
                assert_eq!(running_elsewhere(c, "ca", now)?, None, "its own");
                assert!(
                    in_flight_elsewhere(c, "cb", now)?.is_empty(),
                    "nothing sent"
                );
                let policies = crate::store::rollout::start_wave(c, id, r2, &["a".into()], None)?;
                assert_eq!(policies["a"].1, "hash-a");
                assert!(staged(c, "a", r2, now)?, "sent, not settled");
                assert!(!staged(c, "a", r1, now)?);
                assert!(!staged(c, "b", r2, now)?, "wave 2 not started");
                assert!(!staged(c, "a", r2, now + LEASE_AFTER)?, "lease expired");
                assert_eq!(
                    in_flight_elsewhere(c, "cb", now)?,
                    vec![(id, "ca".to_string(), r2, "a".to_string())]
                );
                let t = targets(c, id, &["a".into(), "b".into(), "zz".into()])?;
                assert_eq!(t.len(), 2, "zz is not a host of it");
                assert_eq!(
                    (t["a"].state, t["a"].desired_revision),
                    (HostState::Sent, r2)
                );
                assert_eq!(
                    (t["b"].previous_revision, t["b"].desired_revision),
                    (r1, r1)
                );

                add_report(c, id, &report("a", ReportKind::Applied, r2))?;
                add_report(c, id, &report("a", ReportKind::Back, r2))?;
                add_report(c, id, &report("b", ReportKind::Failed, r2))?;
                let got = reports(c, id, &["a".into()])?;
                let kinds: Vec<ReportKind> = got.iter().map(|r| r.kind).collect();
                assert_eq!(kinds, [ReportKind::Applied, ReportKind::Back]);
                assert!(got[0].id < got[1].id);
                assert_eq!((got[1].hash.as_str(), got[1].revision), ("hash-a", r2));
                assert!(reports(c, id + 1, &["a".into()])?.is_empty());

                set_host_state(c, id, "a", HostState::Confirmed, "")?;
                assert!(!staged(c, "a", r2, now)?, "settled");
                crate::store::rollout::finish_rollout(c, id, RolloutStatus::Succeeded, "", "ca")?;
                assert!(
                    reports(c, id, &["a".into(), "b".into()])?.is_empty(),
                    "forgotten"
                );
                add_report(c, id, &report("a", ReportKind::Back, r2))?;
                assert!(
                    reports(c, id, &["a".into()])?.is_empty(),
                    "not after its end"
                );
                assert!(running_ids(c)?.is_empty());
                assert_eq!(running_elsewhere(c, "cb", now)?, None);
                Ok(())
            })
        });
    }

    #[test]
    fn steps_and_kinds_round_trip() {
        for s in [
            Step::Send,
            Step::Confirm,
            Step::Revert,
            Step::Release,
            Step::Rollback,
            Step::Done,
            Step::Abort,
        ] {
            assert_eq!(Step::parse(s.as_str()), Some(s));
        }
        assert_eq!(Step::parse("sendx"), None);
        for k in ["applied", "failed", "back", "reverted", "confirmed"] {
            assert_eq!(ReportKind::parse(k).map(ReportKind::as_str), Some(k));
        }
        assert_eq!(placeholders(2, 3), "?2, ?3, ?4");
    }
}
