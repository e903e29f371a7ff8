//! `portcullis-agent show`: our table in the kernel (present?, hash, counters per rule,
//! set sizes) next to last-known-good. Read-only.

use super::{Exit, print_json};
use crate::Agent;
use anyhow::{Context, Result};
use clap::Args;

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Print as JSON.
    #[arg(long, env = "PORTCULLIS_JSON")]
    pub json: bool,
}

pub fn run(agent: &Agent, args: ShowArgs) -> Result<Exit> {
    let report = agent.show().context("show")?;
    if args.json {
        print_json(&report)?;
    } else {
        print!("{report}");
    }
    Ok(Exit::Ok)
}
