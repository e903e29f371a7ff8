//! `portcullis-agent remove`: delete `table inet portcullis` (only it; idempotent).
//!
//! By default last-known-good is cleared too, so a restart does not re-apply the policy
//! and `verify` exits 3. With `--keep-state` it is kept: `verify` then reports drift
//! (table missing) and a restart restores the policy.

use super::Exit;
use crate::Agent;
use anyhow::{Context, Result};
use clap::Args;

#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// Keep last-known-good (the next agent start re-applies it).
    #[arg(long, env = "PORTCULLIS_KEEP_STATE")]
    pub keep_state: bool,
}

pub fn run(agent: &Agent, args: RemoveArgs) -> Result<Exit> {
    let existed = agent.remove(!args.keep_state).context("remove")?;
    let state = if args.keep_state {
        "last-known-good kept"
    } else {
        "last-known-good cleared"
    };
    if existed {
        println!("removed table inet portcullis ({state})");
    } else {
        println!("table inet portcullis was absent ({state})");
    }
    Ok(Exit::Ok)
}
