//! `portcullis-agent restore`: the boot-time oneshot (`portcullis-agent-restore.service`,
//! before the network is configured). Enforces last-known-good with no controller, no
//! default route and without the interfaces the policy names; if that cannot be done,
//! fails closed to the minimal policy (see [`crate::restore`]). Exit 0 when last-known-good
//! is enforced, 5 when the host failed closed (the minimal policy is enforced), 4 when
//! not even that could be applied.

use super::{Exit, print_json};
use crate::Agent;
use crate::restore::{RestoreConfig, RestoreReport, restore};
use anyhow::Context as _;

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// Management access the fail-closed minimal policy keeps open, `--keep` syntax
    /// (`tcp/22 from 10.0.0.0/8`); repeatable, or comma-separated in the variable
    #[arg(long, env = "PORTCULLIS_MANAGEMENT", value_delimiter = ',')]
    pub management: Vec<String>,
    /// NFLOG group of the minimal policy's log rule
    #[arg(long, env = "PORTCULLIS_NFLOG_GROUP", default_value_t = portcullis_policy::model::DEFAULT_LOG_GROUP)]
    pub nflog_group: u16,
    /// Print as JSON.
    #[arg(long, env = "PORTCULLIS_JSON")]
    pub json: bool,
}

pub fn run(agent: &Agent, args: RestoreArgs) -> anyhow::Result<Exit> {
    let config = RestoreConfig {
        management: args
            .management
            .iter()
            .map(|m| m.trim().to_owned())
            .filter(|m| !m.is_empty())
            .collect(),
        log_group: args.nflog_group,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = runtime
        .block_on(restore(agent, &config))
        .context("restore: not even the fail-closed minimal policy could be applied")?;
    if args.json {
        print_json(&report)?;
    } else {
        println!("{report}");
    }
    Ok(match report {
        RestoreReport::FailClosed { .. } => Exit::FailedClosed,
        _ => Exit::Ok,
    })
}
