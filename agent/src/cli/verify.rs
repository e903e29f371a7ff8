//! `portcullis-agent verify`: compare the kernel with last-known-good. Read-only.
//! Exit 0 in sync, 1 drift (printing the semantic diff; a missing table is drift),
//! 3 nothing applied yet.

use super::{Exit, print_json};
use crate::{Agent, VerifyStatus};
use anyhow::{Context, Result};
use clap::Args;

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Print as JSON.
    #[arg(long, env = "PORTCULLIS_JSON")]
    pub json: bool,
}

pub fn run(agent: &Agent, args: VerifyArgs) -> Result<Exit> {
    let report = agent.verify().context("verify")?;
    if args.json {
        print_json(&report)?;
    } else {
        print!("{report}");
    }
    Ok(match report.status {
        VerifyStatus::InSync => Exit::Ok,
        VerifyStatus::Drifted => Exit::Drift,
        VerifyStatus::NothingApplied => Exit::NothingApplied,
    })
}
