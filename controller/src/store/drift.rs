//! Drift attestation in the store (migration 3's `hosts` columns): what the agents last
//! reported about their kernel, when it was verified, coexistence findings; plus the
//! lookups `drift` and `apply --check` need (the policy of a host's applied revision, the
//! newest inventory). Knows nothing of gRPC beyond the plain values it stores. The
//! `drift_state` column holds a [`DriftVerdict`]'s spelling ("" = no report yet), read
//! and written only here.

use super::now_ms;
use super::sql::Db;
use crate::args;
use portcullis_policy::protocol::drift::DriftVerdict;
use std::collections::BTreeMap;

/// One agent drift report, as stored.
#[derive(Debug, Clone)]
pub struct DriftRecord {
    /// The agent's word ([`portcullis_policy::protocol::drift::reported`]).
    pub state: DriftVerdict,
    pub kernel_hash: String,
    pub diff: Vec<String>,
    pub verified_ms: i64,
    /// 0 = no drift found by this report.
    pub detected_ms: i64,
    /// 0 = not healed by this report.
    pub healed_ms: i64,
    /// The findings, serialized (JSON array).
    pub coexistence_json: String,
}

impl DriftRecord {
    /// A report of `state` with nothing else known.
    pub fn new(state: DriftVerdict) -> Self {
        Self {
            state,
            kernel_hash: String::new(),
            diff: Vec::new(),
            verified_ms: 0,
            detected_ms: 0,
            healed_ms: 0,
            coexistence_json: String::new(),
        }
    }
}

/// A host's stored drift columns (for `status`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriftRow {
    pub verified_ms: i64,
    /// The last report's verdict (`None`: no report yet).
    pub state: Option<DriftVerdict>,
    pub diff: Vec<String>,
    pub detected_ms: i64,
    pub healed_ms: i64,
    pub coexistence_json: String,
}

/// Record a drift report: the kernel hash it read is the host's reported hash now.
pub fn record(db: &Db<'_>, host: &str, r: &DriftRecord) -> anyhow::Result<()> {
    let diff = serde_json::to_string(&r.diff)?;
    db.execute(
        "UPDATE hosts SET last_seen_ms = ?2, reported_hash = ?3, verified_ms = ?4,
                drift_state = ?5, drift_diff = ?6,
                drift_detected_ms = CASE WHEN CAST(?7 AS BIGINT) > 0 THEN ?7
                                         ELSE drift_detected_ms END,
                drift_healed_ms = CASE WHEN CAST(?8 AS BIGINT) > 0 THEN ?8
                                       ELSE drift_healed_ms END,
                coexistence_json = ?9
          WHERE name = ?1",
        args![
            host,
            now_ms(),
            r.kernel_hash,
            r.verified_ms,
            r.state.as_str(),
            diff,
            r.detected_ms,
            r.healed_ms,
            r.coexistence_json
        ],
    )?;
    Ok(())
}

/// A heartbeat read the kernel back at `verified_ms`.
pub fn verified(db: &Db<'_>, host: &str, verified_ms: i64) -> anyhow::Result<()> {
    db.execute(
        "UPDATE hosts SET verified_ms = ?2 WHERE name = ?1 AND verified_ms < ?2",
        args![host, verified_ms],
    )?;
    Ok(())
}

/// Every host's drift columns, by host name.
pub fn rows(db: &Db<'_>) -> anyhow::Result<BTreeMap<String, DriftRow>> {
    Ok(db
        .query(
            "SELECT name, verified_ms, drift_state, drift_diff, drift_detected_ms, drift_healed_ms,
                    coexistence_json FROM hosts",
            args![],
            |r| {
                let diff: String = r.get(3)?;
                let state: String = r.get(2)?;
                let state = match state.as_str() {
                    "" => None,
                    s => Some(s.parse::<DriftVerdict>()?),
                };
                Ok((
                    r.get::<String>(0)?,
                    DriftRow {
                        verified_ms: r.get(1)?,
                        state,
                        diff: serde_json::from_str(&diff).unwrap_or_default(),
                        detected_ms: r.get(4)?,
                        healed_ms: r.get(5)?,
                        coexistence_json: r.get(6)?,
                    },
                ))
            },
        )?
        .into_iter()
        .collect())
}

/// The policy (JSON) `host` was given in `revision`, if it was targeted by it.
pub fn policy_at(db: &Db<'_>, host: &str, revision: u64) -> anyhow::Result<Option<String>> {
    db.query_opt(
        &format!(
            "SELECT {} FROM revision_hosts rh WHERE host = ?1 AND revision = ?2",
            super::POLICY
        ),
        args![host, revision],
        |r| r.get(0),
    )
}

/// The policies (JSON) of many (host, revision) pairs at once; missing pairs are absent.
pub fn policies_at(
    db: &Db<'_>,
    pairs: &[(String, u64)],
) -> anyhow::Result<BTreeMap<(String, u64), String>> {
    let mut out = BTreeMap::new();
    for (host, rev) in pairs {
        if let Some(p) = policy_at(db, host, *rev)? {
            out.insert((host.clone(), *rev), p);
        }
    }
    Ok(out)
}

/// The newest revision's inventory (name, YAML), to resolve host patterns.
pub fn latest_inventory(db: &Db<'_>) -> anyhow::Result<Option<(String, String)>> {
    db.query_opt(
        "SELECT inventory_name, inventory_yaml FROM revisions ORDER BY id DESC LIMIT 1",
        args![],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::host_connected;

    #[test]
    fn records_reports_and_keeps_the_last_detection_time() {
        crate::store::testing::each_engine(|store| {
            store.call_sync(|c| {
                host_connected(c, "h1", "0.1", "{}", 1, "aaa", "peer", "c1")?;
                let found = DriftRecord {
                    state: DriftVerdict::Healed,
                    kernel_hash: "bbb".into(),
                    diff: vec!["rule added".into()],
                    verified_ms: 100,
                    detected_ms: 90,
                    healed_ms: 95,
                    coexistence_json: "[]".into(),
                };
                record(c, "h1", &found)?;
                let calm = DriftRecord {
                    kernel_hash: "bbb".into(),
                    verified_ms: 200,
                    coexistence_json: "[]".into(),
                    ..DriftRecord::new(DriftVerdict::InSync)
                };
                record(c, "h1", &calm)?;
                verified(c, "h1", 150)?;
                let rows = rows(c)?;
                let h1 = &rows["h1"];
                assert_eq!(h1.verified_ms, 200, "a heartbeat never moves it back");
                assert_eq!((h1.detected_ms, h1.healed_ms), (90, 95));
                assert_eq!(h1.state, Some(DriftVerdict::InSync));
                assert!(h1.diff.is_empty());
                Ok(())
            })
        });
    }
}
