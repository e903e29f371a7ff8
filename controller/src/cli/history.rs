//! `portcullis history`: revisions, who applied them (admin name from the certificate),
//! when, to which hosts.

use super::connect::ConnectArgs;
use super::output::{print_json, table, time_ms};
use portcullis_proto::v1;

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
            eprintln!("error: {}", s.message());
            return Ok(super::connect::status_exit(&s));
        }
    };
    if args.json {
        let revs: Vec<_> = resp
            .revisions
            .iter()
            .map(|r| {
                serde_json::json!({
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
        println!("no revisions yet");
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
                r.hosts.join(","),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "REVISION", "CREATED", "AUTHOR", "FILES", "LIMIT", "CURRENT", "HOSTS"
            ],
            &rows
        )
    );
    Ok(super::exit::OK)
}
