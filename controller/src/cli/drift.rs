//! `portcullis drift [PATTERN] [--diff] [--json]`: ask the connected agents to verify
//! their kernel now and list hosts in sync, drifted, healed and unreachable.
//!
//! The verdict is the controller's: an agent's "in sync" counts only if the kernel hash it
//! read back is the hash the controller computed for the revision it runs.

use super::connect::{ConnectArgs, status_exit};
use super::exit;
use super::output::{print_json, short_hash, table};
use portcullis_policy::protocol::drift::DriftVerdict;
use portcullis_proto::protocol::drift_verdict;
use portcullis_proto::v1;
use std::time::Duration;

/// Exit codes (for cron and CI): 0 every selected host is in sync; 2 drift found on at
/// least one host (drifted, or found and healed during this check), whether or not others
/// were unreachable — a definite finding wins over a missing answer; 3 no drift found but
/// at least one host is unreachable (not connected or no answer within --timeout);
/// 4 the controller itself is unreachable or refused us.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit codes: 0 all in sync; 2 drift found (also when healed during \
this check; takes precedence over 3); 3 no drift found but some hosts unreachable; \
4 controller unreachable."
)]
pub struct DriftArgs {
    /// Hosts to check: an Ansible pattern (group, host, glob, ~regex, web[0], a:b, a:&b,
    /// a:!b; unions, then every &, then every !, wherever written, as Ansible does; see
    /// `portcullis inventory --help`) over the newest inventory and every known host;
    /// default all
    pub pattern: Option<String>,
    /// Show the semantic diff (kernel vs last-known-good) of drifted and healed hosts
    #[arg(long)]
    pub diff: bool,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    /// How long to wait for the agents' answers
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// A host's verdict (`None`: the controller gave none).
fn state_of(h: &v1::HostDrift) -> Option<DriftVerdict> {
    drift_verdict(h.state)
}

fn state_name(s: Option<DriftVerdict>) -> &'static str {
    s.map_or("unknown", DriftVerdict::as_str)
}

/// No answer, or no verdict.
fn unreachable(s: Option<DriftVerdict>) -> bool {
    s.is_none_or(|v| v == DriftVerdict::Unreachable)
}

/// The exit code for a set of verdicts (see [`DriftArgs`]).
pub fn exit_code(hosts: &[v1::HostDrift]) -> i32 {
    let verdicts = || hosts.iter().map(state_of);
    if verdicts().any(|s| s.is_some_and(DriftVerdict::found_drift)) {
        exit::DRIFT_FOUND
    } else if verdicts().any(unreachable) {
        exit::HOSTS_UNREACHABLE
    } else {
        exit::OK
    }
}

pub async fn run(args: DriftArgs, conn: &ConnectArgs) -> anyhow::Result<i32> {
    let mut client = conn.admin().await?;
    let mut request = tonic::Request::new(v1::DriftRequest {
        pattern: args.pattern.clone().unwrap_or_default(),
        timeout_ms: u64::try_from(args.timeout.as_millis()).unwrap_or(u64::MAX),
    });
    request.set_timeout(args.timeout + Duration::from_secs(10));
    let resp = match client.drift(request).await {
        Ok(r) => r.into_inner(),
        Err(s) => {
            crate::eoutln!("error: {}", s.message());
            return Ok(status_exit(&s));
        }
    };
    let code = exit_code(&resp.hosts);
    if args.json {
        print_json(&serde_json::json!({
            "hosts": resp.hosts.iter().map(host_json).collect::<Vec<_>>(),
            "summary": summary(&resp.hosts),
            "exit_code": code,
        }))?;
        return Ok(code);
    }
    if resp.hosts.is_empty() {
        crate::outln!("no hosts selected");
        return Ok(code);
    }
    let rows: Vec<Vec<String>> = resp
        .hosts
        .iter()
        .map(|h| {
            vec![
                h.host.clone(),
                state_name(state_of(h)).to_uppercase().replace('_', " "),
                if h.revision == 0 {
                    "-".into()
                } else {
                    format!("r{}", h.revision)
                },
                short_hash(&h.expected_hash),
                short_hash(&h.kernel_hash),
                h.error.clone(),
            ]
        })
        .collect();
    crate::out!(
        "{}",
        table(
            &["HOST", "STATE", "REVISION", "EXPECTED", "KERNEL", "NOTE"],
            &rows
        )
    );
    for h in &resp.hosts {
        let s = state_of(h);
        if args.diff && s.is_some_and(DriftVerdict::found_drift) {
            crate::outln!("{} ({}):", h.host, state_name(s));
            for line in &h.diff {
                crate::outln!("  {line}");
            }
        }
        for f in &h.coexistence {
            crate::outln!("{}: coexists with {}", h.host, finding_line(f));
        }
    }
    let s = summary(&resp.hosts);
    crate::outln!(
        "{} host(s): {} in sync, {} drifted, {} healed, {} unreachable",
        resp.hosts.len(),
        s["in_sync"],
        s["drifted"],
        s["healed"],
        s["unreachable"]
    );
    Ok(code)
}

fn summary(hosts: &[v1::HostDrift]) -> serde_json::Value {
    let n = |s: DriftVerdict| hosts.iter().filter(|h| state_of(h) == Some(s)).count();
    let unreachable = hosts.iter().filter(|h| unreachable(state_of(h))).count();
    serde_json::json!({
        "in_sync": n(DriftVerdict::InSync),
        "drifted": n(DriftVerdict::Drifted) + n(DriftVerdict::HealSuppressed),
        "healed": n(DriftVerdict::Healed),
        "unreachable": unreachable,
    })
}

/// One coexistence finding on a line.
pub fn finding_line(f: &v1::CoexistenceFinding) -> String {
    format!(
        "{} {} chain {} (hook {}, priority {}, policy {}, {} rules): {}",
        f.family, f.table, f.chain, f.hook, f.priority, f.policy, f.rules, f.note
    )
}

/// A finding as JSON (shared with `status --json`).
pub fn finding_json(f: &v1::CoexistenceFinding) -> serde_json::Value {
    serde_json::json!({
        "family": f.family, "table": f.table, "chain": f.chain, "hook": f.hook,
        "priority": f.priority, "policy": f.policy, "rules": f.rules,
        "has_drop": f.has_drop, "note": f.note,
    })
}

fn host_json(h: &v1::HostDrift) -> serde_json::Value {
    serde_json::json!({
        "host": h.host,
        "state": state_name(state_of(h)),
        "revision": h.revision,
        "expected_hash": h.expected_hash,
        "kernel_hash": h.kernel_hash,
        "diff": h.diff,
        "coexistence": h.coexistence.iter().map(finding_json).collect::<Vec<_>>(),
        "verified_unix_ms": h.verified_unix_ms,
        "note": h.error,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn host(s: v1::DriftState) -> v1::HostDrift {
        v1::HostDrift {
            state: s as i32,
            ..Default::default()
        }
    }

    #[test]
    fn exit_codes_and_their_precedence() {
        use v1::DriftState::*;
        assert_eq!(exit_code(&[]), 0);
        assert_eq!(exit_code(&[host(InSync), host(InSync)]), 0);
        assert_eq!(exit_code(&[host(InSync), host(Unreachable)]), 3);
        assert_eq!(exit_code(&[host(Drifted), host(InSync)]), 2);
        assert_eq!(exit_code(&[host(Healed)]), 2);
        assert_eq!(exit_code(&[host(Unreachable), host(Drifted)]), 2);
    }
}
