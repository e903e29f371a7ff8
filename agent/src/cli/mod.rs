//! The standalone CLI: one module per subcommand, each a thin layer over [`crate::Agent`].
//!
//! Exit codes (stable, scripts rely on them):
//! `0` success / in sync; `1` drift (`verify`: the kernel differs from last-known-good,
//! including a missing table); `2` bad input (policy errors, printed as
//! `file:line:col: message`, or bad arguments; nothing applied); `3` nothing applied yet
//! (`verify` without last-known-good); `4` operational failure (nft refused, readback did
//! not match, state dir unwritable...; the kernel keeps its previous table); `5` `restore`
//! failed closed (the minimal policy is enforced, last-known-good could not be); `6` the
//! nft binary is missing (`run`, `apply`, `restore` check it before anything else).
//!
//! Every flag has an environment variable (`PORTCULLIS_*`). Logs go to stderr (`tracing`),
//! results to stdout (`--json` for machines).

mod apply;
mod nft_check;
mod remove;
mod restore;
mod run;
mod show;
mod verify;

use crate::{Agent, NftDataplane, StateDir};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;

/// Process exit codes of `portcullis-agent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    Drift = 1,
    BadInput = 2,
    NothingApplied = 3,
    Failure = 4,
    FailedClosed = 5,
    NftMissing = 6,
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e as u8)
    }
}

/// An error in the operator's input (policy files, host selection): exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

#[derive(Debug, Parser)]
#[command(
    name = "portcullis-agent",
    version,
    about = "Portcullis host agent: enforce one \
    declarative port policy with nftables (owns only `table inet portcullis`)."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// State directory (last-known-good record).
    #[arg(long, global = true, env = "PORTCULLIS_STATE_DIR", default_value = crate::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// The nft binary (applies, and reads a table the agent's netlink reader does not
    /// recognize; the table is read back over netlink, in the agent's own network namespace).
    #[arg(long, global = true, env = "PORTCULLIS_NFT", default_value = "nft")]
    pub nft: PathBuf,
    /// Deadline of each nft process: past it, it is killed (with its children) and the
    /// operation fails; a hung nft never wedges the agent.
    #[arg(long, global = true, env = "PORTCULLIS_NFT_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub nft_timeout: std::time::Duration,
    /// Log filter for stderr (tracing `EnvFilter` syntax), e.g. `info` or `portcullis_agent=debug`.
    #[arg(long, global = true, env = "PORTCULLIS_LOG", default_value = "warn")]
    pub log: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compile a policy for this host and apply it atomically, verified by readback.
    Apply(apply::ApplyArgs),
    /// Show our table in the kernel: hash, counters per rule, set sizes.
    Show(show::ShowArgs),
    /// Compare the kernel with last-known-good (exit 0 in sync, 1 drift, 3 nothing applied).
    Verify(verify::VerifyArgs),
    /// Delete `table inet portcullis` (only it) and, unless --keep-state, last-known-good.
    Remove(remove::RemoveArgs),
    /// Boot oneshot: enforce last-known-good with no controller and no network, else fail
    /// closed to the minimal policy (exit 5).
    Restore(restore::RestoreArgs),
    /// Run the daemon: enforce last-known-good, then follow the controller over mutual TLS.
    Run(run::RunArgs),
    /// Shell completions and man pages from this CLI's definition (for packaging)
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        cmd: portcullis_generate::GenerateCommand,
    },
}

/// Logs to stderr, filtered by `--log` / `PORTCULLIS_LOG`.
pub fn init_tracing(global: &Global) {
    let filter = tracing_subscriber::EnvFilter::try_new(&global.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs one subcommand and turns its outcome into an exit code (printing errors).
pub fn run(mut cli: Cli) -> Exit {
    if let Command::Generate { cmd } = cli.command {
        use clap::CommandFactory as _;
        return match portcullis_generate::run(cmd, Cli::command()) {
            Ok(()) => Exit::Ok,
            Err(e) => {
                eprintln!("error: {e:#}");
                Exit::Failure
            }
        };
    }
    if matches!(
        cli.command,
        Command::Run(_) | Command::Apply(_) | Command::Restore(_)
    ) {
        // The binary found is the one run (also when only /usr/sbin has it).
        match nft_check::find(&cli.global.nft) {
            Ok(nft) => cli.global.nft = nft,
            Err(e) => {
                eprintln!("error: {e}");
                return Exit::NftMissing;
            }
        }
    }
    let agent = Agent::new(
        Arc::new(NftDataplane::new(&cli.global.nft).with_timeout(cli.global.nft_timeout)),
        StateDir::new(&cli.global.state_dir),
    );
    let result = match cli.command {
        Command::Apply(args) => apply::run(&agent, args),
        Command::Show(args) => show::run(&agent, args),
        Command::Verify(args) => verify::run(&agent, args),
        Command::Remove(args) => remove::run(&agent, args),
        Command::Restore(args) => restore::run(&agent, args),
        Command::Run(args) => run::run(&agent, args),
        Command::Generate { .. } => Ok(Exit::Ok),
    };
    match result {
        Ok(exit) => exit,
        Err(e) if e.downcast_ref::<BadInput>().is_some() => {
            eprintln!("{e}");
            Exit::BadInput
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            Exit::Failure
        }
    }
}

/// Prints `value` as pretty JSON plus a newline.
fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
