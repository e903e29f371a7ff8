//! `portcullis apply --check [--diff]`: what an apply would change on each host, against
//! the revision it runs, without storing or sending anything. Exit 2 if anything would
//! change (or a host cannot be checked), 0 if nothing would.

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
    let mut stream = match client.apply(request).await {
        Ok(r) => r.into_inner(),
        Err(s) => {
            eprintln!("error: {}", s.message());
            return Ok(super::connect::status_exit(&s));
        }
    };
    let result = match stream.next().await {
        Some(Ok(v1::ApplyEvent {
            event: Some(v1::apply_event::Event::Check(c)),
        })) => c,
        Some(Err(s)) => {
            eprintln!("error: {}", s.message());
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
    let code = if changed + failed > 0 {
        exit::CHANGES
    } else {
        exit::OK
    };
    if json {
        let hosts: Vec<_> = result
            .hosts
            .iter()
            .map(|h| {
                serde_json::json!({
                    "host": h.host, "applied_revision": h.applied_revision,
                    "attested": h.attested, "changes": h.changes, "error": h.error,
                })
            })
            .collect();
        print_json(&serde_json::json!({
            "check": true, "hosts": hosts, "changed": changed, "failed": failed,
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
        println!("{}: {base}: {what}", h.host);
        if diff {
            for line in &h.changes {
                println!("  {line}");
            }
        }
    }
    println!(
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
