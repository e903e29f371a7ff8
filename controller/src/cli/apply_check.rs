//! `portcullis apply --check [--diff] [--replay WINDOW]`: what an apply would change on
//! each host, against the revision it runs, without storing or sending anything; with
//! `--replay`, the traffic seen in the window that the new policy would newly deny. Exit
//! 2 if anything would change or be newly denied (or a host cannot be checked), 0 if
//! nothing would.

use super::exit;
use super::output::print_json;
use portcullis_proto::v1;
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

pub async fn run(
    client: &mut v1::admin_client::AdminClient<Channel>,
    request: v1::ApplyRequest,
    diff: bool,
    json: bool,
) -> anyhow::Result<i32> {
    let replay = request.replay_window_ms > 0;
    let mut stream = match client.apply(request).await {
        Ok(r) => r.into_inner(),
        Err(s) => {
            crate::eoutln!("error: {}", s.message());
            return Ok(super::connect::status_exit(&s));
        }
    };
    let result = match stream.next().await {
        Some(Ok(v1::ApplyEvent {
            event: Some(v1::apply_event::Event::Check(c)),
        })) => c,
        Some(Err(s)) => {
            crate::eoutln!("error: {}", s.message());
            return Ok(super::connect::status_exit(&s));
        }
        _ => anyhow::bail!(
            "the controller did not answer the check (is it older than this CLI?); \
             nothing was applied"
        ),
    };
    let changed = result
        .hosts
        .iter()
        .filter(|h| !h.changes.is_empty())
        .count();
    let failed = result.hosts.iter().filter(|h| !h.error.is_empty()).count();
    let denied = result
        .hosts
        .iter()
        .filter(|h| !h.newly_denied.is_empty())
        .count();
    let code = if changed + failed + denied > 0 {
        exit::CHANGES
    } else {
        exit::OK
    };
    if json {
        let hosts: Vec<_> = result
            .hosts
            .iter()
            .map(|h| {
                let nd: Vec<_> = h
                    .newly_denied
                    .iter()
                    .map(|f| {
                        serde_json::json!({
                            "proto": f.proto, "ports": f.ports, "sources": f.sources,
                            "more_sources": f.more_sources, "packets": f.packets,
                            "last_seen_unix_ms": f.last_seen_unix_ms,
                            "evidence": f.evidence, "example": f.example,
                        })
                    })
                    .collect();
                serde_json::json!({
                    "host": h.host, "applied_revision": h.applied_revision,
                    "attested": h.attested, "changes": h.changes, "error": h.error,
                    "newly_denied": nd,
                    "replayed": {"log_groups": h.replay_log_groups,
                        "counters": h.replay_counters, "truncated": h.replay_truncated},
                })
            })
            .collect();
        print_json(&serde_json::json!({
            "check": true, "hosts": hosts, "changed": changed, "failed": failed,
            "newly_denying": denied,
        }))?;
        return Ok(code);
    }
    for h in &result.hosts {
        let base = if h.applied_revision == 0 {
            "nothing applied".to_owned()
        } else if h.attested {
            format!("r{} (attested)", h.applied_revision)
        } else {
            format!(
                "r{} (NOT attested: its kernel hash differs)",
                h.applied_revision
            )
        };
        let what = if !h.error.is_empty() {
            format!("cannot check: {}", h.error)
        } else if h.changes.is_empty() {
            "no change".to_owned()
        } else {
            format!("{} change(s)", h.changes.len())
        };
        crate::outln!("{}: {base}: {what}", h.host);
        if diff {
            for line in &h.changes {
                crate::outln!("  {line}");
            }
        }
        if replay {
            print_replay(h);
        }
    }
    if replay {
        crate::outln!(
            "replay: {denied} of {} host(s) saw traffic the new policy would deny",
            result.hosts.len()
        );
    }
    crate::outln!(
        "check: {changed} of {} host(s) would change{}; nothing was applied",
        result.hosts.len(),
        if failed > 0 {
            format!(", {failed} cannot be checked")
        } else {
            String::new()
        }
    );
    Ok(code)
}

/// The replay lines of one host: what it saw that the new policy would deny.
fn print_replay(h: &v1::HostCheck) {
    let truncated = if h.replay_truncated {
        " (busiest groups only)"
    } else {
        ""
    };
    if h.newly_denied.is_empty() {
        if h.error.is_empty() {
            crate::outln!(
                "  replay: nothing seen would be newly denied ({} log group(s){truncated}, {} rule counter(s))",
                h.replay_log_groups,
                h.replay_counters
            );
        }
        return;
    }
    for f in &h.newly_denied {
        let more = if f.more_sources > 0 {
            format!(" and {} more", f.more_sources)
        } else {
            String::new()
        };
        let seen = super::output::time_ms(f.last_seen_unix_ms);
        let example = if f.example.is_empty() {
            String::new()
        } else {
            format!("; e.g. {}", f.example)
        };
        crate::outln!(
            "  NEWLY DENIED {}/{} from {}{more}: {} packet(s), last {seen}; evidence: {}{example}",
            f.proto,
            f.ports.join(","),
            f.sources.join(", "),
            f.packets,
            f.evidence,
        );
    }
}
