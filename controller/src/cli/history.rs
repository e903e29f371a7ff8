//! `portcullis history`: revisions, who applied them (admin name from the certificate),
//! when, to which hosts, and each revision's rollout: its waves, the per-host results,
//! who ran it and how it ended.

use super::connect::ConnectArgs;
use super::output::{print_json, table, time_ms};
use portcullis_proto::v1;
use std::collections::BTreeMap;

#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    /// Show at most this many revisions (newest first); 0 = all
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
}

pub async fn run(args: HistoryArgs, conn: &ConnectArgs) -> anyhow::Result<i32> {
    let mut client = conn.admin().await?;
    let resp = match client
        .history(v1::HistoryRequest { limit: args.limit })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => {
            crate::eoutln!("error: {}", s.message());
            return Ok(super::connect::status_exit(&s));
        }
    };
    // Rollouts by revision (a revision is rolled out at most once, rollouts are numbered
    // in revision order): the newest `limit` rollouts cover the newest `limit` revisions.
    let rollouts: BTreeMap<u64, v1::RolloutInfo> = match client
        .rollouts(v1::RolloutsRequest {
            limit: args.limit,
            id: 0,
        })
        .await
    {
        Ok(r) => r
            .into_inner()
            .rollouts
            .into_iter()
            .map(|r| (r.revision, r))
            .collect(),
        Err(s) => {
            crate::eoutln!("error: {}", s.message());
            return Ok(super::connect::status_exit(&s));
        }
    };
    if args.json {
        let revs: Vec<_> = resp
            .revisions
            .iter()
            .map(|r| {
                let rollout = rollouts.get(&r.revision).map(super::rollout::rollout_json);
                serde_json::json!({
                    "rollout": rollout,
                    "revision": r.revision,
                    "created_unix_ms": r.created_unix_ms,
                    "author": r.author,
                    "site": r.site_name,
                    "inventory": r.inventory_name,
                    "limit": r.limit,
                    "hosts": r.hosts,
                    "applied": r.applied,
                })
            })
            .collect();
        print_json(&serde_json::json!({ "revisions": revs }))?;
        return Ok(super::exit::OK);
    }
    if resp.revisions.is_empty() {
        crate::outln!("no revisions yet");
        return Ok(super::exit::OK);
    }
    let rows: Vec<Vec<String>> = resp
        .revisions
        .iter()
        .map(|r| {
            vec![
                format!("r{}", r.revision),
                time_ms(r.created_unix_ms),
                r.author.clone(),
                format!("{} + {}", r.site_name, r.inventory_name),
                if r.limit.is_empty() {
                    "-".into()
                } else {
                    r.limit.clone()
                },
                format!("{}/{}", r.applied, r.hosts.len()),
                short_list(&r.hosts),
                rollouts
                    .get(&r.revision)
                    .map_or("-".into(), |o| format!("{} {}", o.id, o.status)),
            ]
        })
        .collect();
    crate::out!(
        "{}",
        table(
            &[
                "REVISION", "CREATED", "AUTHOR", "FILES", "LIMIT", "CURRENT", "HOSTS", "ROLLOUT"
            ],
            &rows
        )
    );
    for r in &resp.revisions {
        if let Some(o) = rollouts.get(&r.revision) {
            crate::outln!("{}", describe(o));
        }
    }
    Ok(super::exit::OK)
}

/// `a,b,c` or `a,b,c and 97 more`.
fn short_list(hosts: &[String]) -> String {
    const SHOWN: usize = 8;
    if hosts.len() <= SHOWN {
        return hosts.join(",");
    }
    format!(
        "{} and {} more",
        hosts[..SHOWN].join(","),
        hosts.len() - SHOWN
    )
}

/// One rollout in a few lines: who ran it, how, how it ended, and each wave's results
/// (hosts named unless a wave has more than a handful in the same state).
pub fn describe(o: &v1::RolloutInfo) -> String {
    let confirm = if o.confirm_timeout_ms > 0 {
        format!(
            ", confirm {}",
            humantime::format_duration(std::time::Duration::from_millis(o.confirm_timeout_ms))
        )
    } else {
        String::new()
    };
    let mut out = format!(
        "r{} rollout {} ({} by {}): {}; serial {}, max-fail {}{confirm}",
        o.revision,
        o.id,
        o.kind,
        o.author,
        o.status,
        if o.serial.is_empty() {
            "100%"
        } else {
            &o.serial
        },
        if o.max_fail.is_empty() {
            "0"
        } else {
            &o.max_fail
        },
    );
    if o.max_denial_increase > 0.0 {
        out.push_str(&format!(
            ", denial gate {}x over {}",
            o.max_denial_increase,
            humantime::format_duration(std::time::Duration::from_millis(o.denial_window_ms))
        ));
    }
    if !o.reason.is_empty() {
        out.push_str(&format!("\n  reason: {}", o.reason));
    }
    let mut waves: BTreeMap<u32, BTreeMap<&str, Vec<&str>>> = BTreeMap::new();
    for h in &o.hosts {
        waves
            .entry(h.wave)
            .or_default()
            .entry(h.state.as_str())
            .or_default()
            .push(h.host.as_str());
    }
    for (w, states) in waves {
        let parts: Vec<String> = states
            .iter()
            .map(|(state, hosts)| {
                if hosts.len() > 4 {
                    format!("{} {state}", hosts.len())
                } else {
                    format!("{} {state}", hosts.join(","))
                }
            })
            .collect();
        out.push_str(&format!("\n  wave {}: {}", w + 1, parts.join("; ")));
    }
    out
}
