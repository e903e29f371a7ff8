//! `portcullis status`: per host, connected, last seen, desired vs applied revision, the
//! expected hash (computed by the controller) vs the hash the agent read back from the
//! kernel and when it last verified, drift and coexistence findings, agent version. A
//! hash mismatch on the applied revision is shown as drift even if the agent said nothing.
//! The agents' conditions (a failed-closed host, a denial pipeline that cannot run) are
//! printed below the table, one line each.

use super::connect::ConnectArgs;
use super::output::{ago_ms, print_json, short_hash, table};
use portcullis_policy::protocol::drift::DriftVerdict;
use portcullis_proto::v1;
use serde::Serialize;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct HostJson<'a> {
    host: &'a str,
    connected: bool,
    last_seen_unix_ms: i64,
    desired_revision: u64,
    applied_revision: u64,
    expected_hash: &'a str,
    reported_hash: &'a str,
    hash_match: bool,
    in_sync: bool,
    agent_version: &'a str,
    last_error: &'a str,
    peer: &'a str,
    verified_unix_ms: i64,
    drifted: bool,
    drift_state: &'a str,
    drift_diff: &'a [String],
    drift_detected_unix_ms: i64,
    drift_healed_unix_ms: i64,
    coexistence: Vec<serde_json::Value>,
    conditions: &'a [String],
}

fn in_sync(h: &v1::HostStatus) -> bool {
    h.desired_revision != 0
        && h.applied_revision == h.desired_revision
        && h.hash_match
        && !h.drifted
}

pub async fn run(args: StatusArgs, conn: &ConnectArgs) -> anyhow::Result<i32> {
    let mut client = conn.admin().await?;
    let resp = match client.status(v1::StatusRequest {}).await {
        Ok(r) => r.into_inner(),
        Err(s) => {
            crate::eoutln!("error: {}", s.message());
            return Ok(super::connect::status_exit(&s));
        }
    };
    if args.json {
        let hosts: Vec<HostJson<'_>> = resp
            .hosts
            .iter()
            .map(|h| HostJson {
                host: &h.host,
                connected: h.connected,
                last_seen_unix_ms: h.last_seen_unix_ms,
                desired_revision: h.desired_revision,
                applied_revision: h.applied_revision,
                expected_hash: &h.expected_hash,
                reported_hash: &h.reported_hash,
                hash_match: h.hash_match,
                in_sync: in_sync(h),
                agent_version: &h.agent_version,
                last_error: &h.last_error,
                peer: &h.peer,
                verified_unix_ms: h.verified_unix_ms,
                drifted: h.drifted,
                drift_state: &h.drift_state,
                drift_diff: &h.drift_diff,
                drift_detected_unix_ms: h.drift_detected_unix_ms,
                drift_healed_unix_ms: h.drift_healed_unix_ms,
                coexistence: h
                    .coexistence
                    .iter()
                    .map(super::drift::finding_json)
                    .collect(),
                conditions: &h.conditions,
            })
            .collect();
        let c = resp.counters.unwrap_or_default();
        let counters = serde_json::json!({
            "ignored_answers": c.ignored_answers,
            "cut_connections": c.cut_connections,
            "handshake_timeouts": c.handshake_timeouts,
            "refused_connections": c.refused_connections,
        });
        print_json(&serde_json::json!({ "hosts": hosts, "counters": counters }))?;
        return Ok(super::exit::OK);
    }
    if resp.hosts.is_empty() {
        crate::outln!("no hosts known yet: apply a policy or start an agent");
        return Ok(super::exit::OK);
    }
    let rows: Vec<Vec<String>> = resp
        .hosts
        .iter()
        .map(|h| {
            let state = if h.drifted {
                match h.drift_diff.first() {
                    Some(d) if h.drift_state.parse() != Ok(DriftVerdict::InSync) => {
                        format!("DRIFT: {d}")
                    }
                    _ => "DRIFT: kernel hash is not the expected one".into(),
                }
            } else if h.conditions.iter().any(|c| c.starts_with("fail-closed")) {
                "FAIL-CLOSED: minimal policy enforced".to_string()
            } else if in_sync(h) {
                "in sync".to_string()
            } else if !h.last_error.is_empty() {
                format!("error: {}", h.last_error.lines().next().unwrap_or(""))
            } else if h.desired_revision == 0 {
                "no policy".into()
            } else if h.expected_hash.is_empty() {
                "pending".into()
            } else if h.applied_revision == h.desired_revision {
                "hash mismatch".into()
            } else {
                "pending".into()
            };
            vec![
                h.host.clone(),
                if h.connected { "yes" } else { "no" }.into(),
                ago_ms(h.last_seen_unix_ms),
                rev(h.desired_revision),
                rev(h.applied_revision),
                short_hash(&h.expected_hash),
                short_hash(&h.reported_hash),
                ago_ms(h.verified_unix_ms),
                if h.agent_version.is_empty() {
                    "-".into()
                } else {
                    h.agent_version.clone()
                },
                state,
            ]
        })
        .collect();
    crate::out!(
        "{}",
        table(
            &[
                "HOST",
                "CONNECTED",
                "LAST SEEN",
                "DESIRED",
                "APPLIED",
                "EXPECTED",
                "KERNEL",
                "VERIFIED",
                "AGENT",
                "STATE"
            ],
            &rows
        )
    );
    for h in &resp.hosts {
        for f in &h.coexistence {
            crate::outln!(
                "{}: coexists with {}",
                h.host,
                super::drift::finding_line(f)
            );
        }
        for c in &h.conditions {
            crate::outln!("{}: {}", h.host, printable(c));
        }
    }
    // The trust boundary, only when it did something.
    if let Some(c) = resp.counters.filter(|c| *c != Default::default()) {
        crate::outln!(
            "controller: {} ignored agent answers, {} connections cut (revoked), {} TLS handshake timeouts, {} connections refused before authentication",
            c.ignored_answers,
            c.cut_connections,
            c.handshake_timeouts,
            c.refused_connections
        );
    }
    Ok(super::exit::OK)
}

/// Agent-controlled text with control characters escaped (no terminal escapes).
fn printable(text: &str) -> String {
    super::output::term(text).into_owned()
}

fn rev(r: u64) -> String {
    if r == 0 { "-".into() } else { format!("r{r}") }
}
