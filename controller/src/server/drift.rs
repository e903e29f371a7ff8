//! Drift on the controller's side (the I/O; the verdicts are the pure
//! [`portcullis_policy::protocol::drift`]): `DriftReport`s from agents, stored as the
//! agent's word, and the `Drift` admin call that asks connected agents to verify now.
//! The agent's side is `portcullis_agent::drift`, the stored columns `store::drift`, the
//! operator's command `cli::drift`.
//!
//! `drift` sends `VerifyNow{request_id}` to every targeted connected agent and waits (with
//! a deadline) for the `DriftReport` echoing that id from that same host's session; the
//! waiting calls live in [`VerifyRequests`] under (host, random id). The controller does
//! not take the agent's word for "in sync": it compiles the policy of the revision the
//! agent enforces against the agent's facts and compares that hash with the kernel hash
//! the agent read back ([`attest`](portcullis_policy::protocol::drift::attest)).

mod select;
mod status;

pub use status::{attest, drifted};

use super::Shared;
use super::wire::internal;
use crate::store::{self, drift::DriftRecord};
use portcullis_policy::protocol::drift::{self as verdict, DriftVerdict};
use portcullis_policy::{Facts, HostPolicy};
use portcullis_proto::protocol::drift_report;
use portcullis_proto::v1;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::oneshot;
use tonic::Status;

/// Default wait for agents' answers when the request gives none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The waiting `drift` calls: (host, request id) -> its waiter. The id is random
/// ([`super::answers::random_id`]) and only the asked host's session can answer it.
type Waiting = HashMap<(String, u64), oneshot::Sender<v1::DriftReport>>;

/// Outstanding verification requests.
#[derive(Debug, Default)]
pub struct VerifyRequests {
    waiting: Mutex<Waiting>,
}

impl VerifyRequests {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        // Single map operations under the lock: a panic cannot leave it inconsistent.
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(&self, host: &str) -> (u64, oneshot::Receiver<v1::DriftReport>) {
        let (tx, rx) = oneshot::channel();
        let mut map = self.lock();
        loop {
            let id = super::answers::random_id();
            if let std::collections::hash_map::Entry::Vacant(e) = map.entry((host.to_owned(), id)) {
                e.insert(tx);
                return (id, rx);
            }
        }
    }

    fn forget(&self, host: &str, id: u64) {
        self.lock().remove(&(host.to_owned(), id));
    }

    /// Hands `report` from `host`'s session to the call waiting for (host, request id);
    /// `false` if none waits (another host's id, unknown, or already answered).
    fn answer(&self, host: &str, report: &v1::DriftReport) -> bool {
        if report.request_id == 0 {
            return false;
        }
        let waiter = self.lock().remove(&(host.to_owned(), report.request_id));
        waiter.is_some_and(|w| w.send(report.clone()).is_ok())
    }

    /// Requests waiting for an answer.
    pub fn outstanding(&self) -> usize {
        self.lock().len()
    }
}

/// Record an agent's drift report (and answer a waiting `drift` call). A report naming a
/// request id that no `VerifyNow` to this host carries is ignored (and counted): it is
/// someone else's question, a forged or a stale one.
pub async fn on_report(shared: &Shared, host: &str, report: v1::DriftReport) -> anyhow::Result<()> {
    if report.request_id != 0 && !shared.drift.answer(host, &report) {
        shared
            .unmatched
            .count(super::answers::Kind::Drift, host, report.request_id);
        return Ok(());
    }
    let state = verdict::reported(&drift_report(&report));
    if report.diff.is_empty() {
        tracing::debug!(%host, trigger = %report.trigger, "drift report: in sync");
    } else {
        tracing::warn!(%host, trigger = %report.trigger, state = state.as_str(),
            revision = report.revision, diff = %report.diff.join("; "), "drift reported");
    }
    let record = DriftRecord {
        state,
        kernel_hash: report.kernel_hash.clone(),
        diff: report.diff.clone(),
        verified_ms: if report.detected_unix_ms > 0 {
            report.healed_unix_ms.max(report.detected_unix_ms)
        } else {
            store::now_ms()
        },
        detected_ms: report.detected_unix_ms,
        healed_ms: report.healed_unix_ms,
        coexistence_json: coexistence_json(&report.coexistence),
    };
    let h = host.to_owned();
    shared
        .store
        .call(move |c| store::drift::record(c, &h, &record))
        .await
}

/// Findings as stored JSON (the proto type is not serde; fields by name).
pub fn coexistence_json(findings: &[v1::CoexistenceFinding]) -> String {
    let v: Vec<serde_json::Value> = findings
        .iter()
        .map(|f| {
            serde_json::json!({
                "family": f.family, "table": f.table, "chain": f.chain, "hook": f.hook,
                "priority": f.priority, "policy": f.policy, "rules": f.rules,
                "has_drop": f.has_drop, "note": f.note,
            })
        })
        .collect();
    serde_json::to_string(&v).unwrap_or_else(|_| "[]".to_owned())
}

/// Stored findings back to the proto type (unknown/missing fields default).
pub fn coexistence_from_json(json: &str) -> Vec<v1::CoexistenceFinding> {
    let v: Vec<serde_json::Value> = serde_json::from_str(json).unwrap_or_default();
    let s = |x: &serde_json::Value, k: &str| x[k].as_str().unwrap_or_default().to_owned();
    v.iter()
        .map(|x| v1::CoexistenceFinding {
            family: s(x, "family"),
            table: s(x, "table"),
            chain: s(x, "chain"),
            hook: s(x, "hook"),
            priority: x["priority"]
                .as_i64()
                .and_then(|p| i32::try_from(p).ok())
                .unwrap_or(0),
            policy: s(x, "policy"),
            rules: x["rules"]
                .as_u64()
                .and_then(|r| u32::try_from(r).ok())
                .unwrap_or(0),
            has_drop: x["has_drop"].as_bool().unwrap_or(false),
            note: s(x, "note"),
        })
        .collect()
}

/// Ask the targeted connected agents to verify now and classify every targeted host.
pub async fn drift(shared: &Shared, req: v1::DriftRequest) -> Result<v1::DriftResponse, Status> {
    let hosts = shared
        .store
        .call(|c| {
            let hosts = store::list_hosts(c)?;
            let inv = store::drift::latest_inventory(c)?;
            Ok((hosts, inv))
        })
        .await
        .map_err(internal)?;
    let (known, inventory) = hosts;
    let names: Vec<String> = known.iter().map(|h| h.name.clone()).collect();
    let selected = select::hosts(&names, inventory.as_ref(), &req.pattern)
        .map_err(Status::invalid_argument)?;
    // Sessions another controller holds (shared store): asked through the store.
    let now = store::now_ms();
    let remote: Vec<String> = known
        .iter()
        .filter(|h| selected.contains(&h.name) && !shared.registry.is_connected(&h.name))
        .filter(|h| shared.elsewhere(h, now))
        .map(|h| h.name.clone())
        .collect();
    let selected: Vec<String> = selected
        .into_iter()
        .filter(|h| !remote.contains(h))
        .collect();
    let desired: BTreeMap<String, u64> = known
        .into_iter()
        .map(|h| (h.name, h.desired_revision))
        .collect();
    let timeout = match req.timeout_ms {
        0 => DEFAULT_TIMEOUT,
        ms => Duration::from_millis(ms),
    };
    let mut out: BTreeMap<String, v1::HostDrift> = BTreeMap::new();
    let mut reports = Vec::new();
    let (local, far) = tokio::join!(
        verify_now(shared, &selected, timeout),
        verify_remote(shared, &remote, timeout)
    );
    for (host, answer) in local.into_iter().chain(far) {
        match answer {
            Ok((r, facts)) => reports.push((host, r, facts)),
            Err(why) => {
                out.insert(host.clone(), unreachable(&host, &why));
            }
        }
    }
    // Attest: the controller's own expected hash for the revision each agent enforces.
    let pairs: Vec<(String, u64)> = reports
        .iter()
        .map(|(h, r, _)| (h.clone(), r.revision))
        .collect();
    let policies = shared
        .store
        .call(move |c| store::drift::policies_at(c, &pairs))
        .await
        .map_err(internal)?;
    for (host, report, facts) in reports {
        let expected = policies
            .get(&(host.clone(), report.revision))
            .and_then(|p| serde_json::from_str::<HostPolicy>(p).ok())
            .map(|p| super::expected_hash(&p, &facts, report.revision))
            .unwrap_or_default();
        let want = desired.get(&host).copied().unwrap_or(0);
        out.insert(host.clone(), classify(&host, &report, &expected, want));
    }
    Ok(v1::DriftResponse {
        hosts: out.into_values().collect(),
    })
}

/// Ask `hosts` to verify now (`VerifyNow`) and wait until `timeout` for their reports:
/// per host the report and the facts of its session, or why there is none.
pub async fn verify_now<'a>(
    shared: &Shared,
    hosts: impl IntoIterator<Item = &'a String>,
    timeout: Duration,
) -> BTreeMap<String, Result<(v1::DriftReport, Facts), String>> {
    let deadline = tokio::time::Instant::now() + timeout;
    // Ask everyone first, then wait: the answers come in parallel.
    let mut asked = Vec::new();
    let mut out = BTreeMap::new();
    for host in hosts {
        let Some(handle) = shared.registry.get(host) else {
            out.insert(host.clone(), Err("not connected".to_owned()));
            continue;
        };
        let (id, rx) = shared.drift.register(host);
        let msg = v1::ControllerMessage {
            msg: Some(v1::controller_message::Msg::Verify(v1::VerifyNow {
                request_id: id,
            })),
        };
        match tokio::time::timeout_at(deadline, handle.tx.send(Ok(msg))).await {
            Ok(Ok(())) => asked.push((host.clone(), id, rx, handle.facts)),
            _ => {
                shared.drift.forget(host, id);
                out.insert(host.clone(), Err("session closed".to_owned()));
            }
        }
    }
    let answers =
        futures::future::join_all(asked.into_iter().map(|(host, id, rx, facts)| async move {
            let r = tokio::time::timeout_at(deadline, rx).await;
            (host, id, r.ok().and_then(Result::ok), facts)
        }))
        .await;
    for (host, id, report, facts) in answers {
        let answer = match report {
            Some(r) => Ok((r, facts)),
            None => {
                shared.drift.forget(&host, id);
                Err(format!(
                    "no answer within {}",
                    humantime::format_duration(timeout)
                ))
            }
        };
        out.insert(host, answer);
    }
    out
}

/// [`verify_now`] for the hosts whose sessions this controller holds, and — on a shared
/// store — through the controllers holding the others' ([`verify_remote`]).
pub async fn verify_anywhere(
    shared: &Shared,
    hosts: &[String],
    timeout: Duration,
) -> BTreeMap<String, Result<(v1::DriftReport, Facts), String>> {
    if shared.store.dialect() != store::Dialect::Postgres {
        return verify_now(shared, hosts, timeout).await;
    }
    let (here, rest): (Vec<String>, Vec<String>) = hosts
        .iter()
        .cloned()
        .partition(|h| shared.registry.is_connected(h));
    let now = store::now_ms();
    let far: std::collections::BTreeSet<String> = match shared.store.call(store::list_hosts).await {
        Ok(known) => known
            .into_iter()
            .filter(|h| rest.contains(&h.name) && shared.elsewhere(h, now))
            .map(|h| h.name)
            .collect(),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "reading where hosts are connected failed");
            Default::default()
        }
    };
    let far: Vec<String> = far.into_iter().collect();
    let (mut out, elsewhere) = tokio::join!(
        verify_now(shared, &here, timeout),
        verify_remote(shared, &far, timeout)
    );
    out.extend(elsewhere);
    for h in rest {
        out.entry(h)
            .or_insert_with(|| Err("not connected".to_owned()));
    }
    out
}

/// How often [`verify_remote`] reads the store for the answers.
const REMOTE_POLL: Duration = Duration::from_millis(200);

/// Ask the controllers holding `hosts`' sessions to have them verify now, and read their
/// answers from the store (stored by that controller as any drift report is): a host
/// has answered once its `verified_ms` is at or after the request (controllers' clocks
/// are assumed to agree within the poll interval; a controller far behind makes its
/// hosts look unanswered, never falsely in sync).
async fn verify_remote(
    shared: &Shared,
    hosts: &[String],
    timeout: Duration,
) -> BTreeMap<String, Result<(v1::DriftReport, Facts), String>> {
    let mut out = BTreeMap::new();
    if hosts.is_empty() {
        return out;
    }
    let asked_at = store::now_ms();
    let (me, list) = (shared.controller_id.clone(), hosts.to_vec());
    if let Err(e) = shared
        .store
        .call(move |c| store::publish_verify(c, &me, &list))
        .await
    {
        for h in hosts {
            out.insert(h.clone(), Err(format!("cannot ask its controller: {e:#}")));
        }
        return out;
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut waiting: std::collections::BTreeSet<String> = hosts.iter().cloned().collect();
    while !waiting.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(REMOTE_POLL).await;
        let names: Vec<String> = waiting.iter().cloned().collect();
        let states = shared
            .store
            .call(move |c| store::host_states(c, &names))
            .await;
        let Ok(states) = states else {
            continue;
        };
        let answered: Vec<String> = states
            .into_iter()
            .filter(|h| h.verified_ms >= asked_at)
            .map(|h| h.name)
            .collect();
        if answered.is_empty() {
            continue;
        }
        // The answers in full (facts and drift columns), for the hosts that answered.
        let rows = shared
            .store
            .call(|c| Ok((store::list_hosts(c)?, store::drift::rows(c)?)))
            .await;
        let Ok((hosts_rows, drift_rows)) = rows else {
            continue;
        };
        for h in hosts_rows {
            if !answered.contains(&h.name) {
                continue;
            }
            let Some(d) = drift_rows.get(&h.name) else {
                continue;
            };
            waiting.remove(&h.name);
            let facts: Facts = serde_json::from_str(&h.facts_json).unwrap_or_default();
            let state = d.state;
            let report = v1::DriftReport {
                revision: h.applied_revision,
                in_sync: state.is_some_and(DriftVerdict::in_sync),
                kernel_hash: h.reported_hash.clone(),
                diff: d.diff.clone(),
                healed: state == Some(DriftVerdict::Healed) && d.healed_ms >= asked_at,
                heal_suppressed: state == Some(DriftVerdict::HealSuppressed),
                trigger: "request".to_owned(),
                detected_unix_ms: d.detected_ms,
                healed_unix_ms: d.healed_ms,
                ..Default::default()
            };
            out.insert(h.name, Ok((report, facts)));
        }
    }
    for h in waiting {
        out.insert(
            h,
            Err(format!(
                "no answer within {} (session on another controller)",
                humantime::format_duration(timeout)
            )),
        );
    }
    out
}

fn unreachable(host: &str, why: &str) -> v1::HostDrift {
    v1::HostDrift {
        host: host.to_owned(),
        state: v1::DriftState::from(DriftVerdict::Unreachable) as i32,
        error: why.to_owned(),
        ..Default::default()
    }
}

/// The verdict for one answered host ([`verdict::attest`]). `expected` is the
/// controller's hash for the revision the agent enforces ("" if it cannot say); `desired`
/// the revision it should run.
pub fn classify(host: &str, r: &v1::DriftReport, expected: &str, desired: u64) -> v1::HostDrift {
    let a = verdict::attest(&drift_report(r), expected, desired);
    v1::HostDrift {
        host: host.to_owned(),
        state: v1::DriftState::from(a.verdict) as i32,
        revision: r.revision,
        expected_hash: expected.to_owned(),
        kernel_hash: r.kernel_hash.clone(),
        diff: a.diff,
        coexistence: r.coexistence.clone(),
        verified_unix_ms: store::now_ms(),
        error: a.notes.join("; "),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
