//! `portcullis`: the Portcullis controller and operator CLI. Thin: parses arguments and
//! calls into the library (`portcullis_controller::cli`).

use clap::{CommandFactory as _, Parser, Subcommand};
use portcullis_controller::cli::{self, connect::ConnectArgs, exit};

/// Portcullis: one declarative port policy on a fleet of Linux hosts, proven in place.
///
/// Exit codes: 0 success; 1 valid request that did not fully succeed (a host failed or is
/// pending); 2 invalid input, nothing changed (also: refused by the anti-lockout check);
/// 4 controller unreachable or refused us; rollouts (`apply --serial/--confirm-timeout`,
/// `rollback`): 5 halted with hosts not rolled back, 6 halted and rolled back, 7 aborted.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, propagate_version = true)]
struct Cli {
    /// Log filter (tracing env-filter syntax), e.g. `info` or `portcullis_controller=debug`
    #[arg(long, global = true, env = "PORTCULLIS_LOG", default_value = "info")]
    log: String,
    /// Log as JSON lines (for `serve` under a log collector)
    #[arg(long, global = true, env = "PORTCULLIS_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Certificate authority: init, issue controller/agent/admin certificates, revoke, list
    Ca {
        #[command(subcommand)]
        cmd: cli::ca::CaCommand,
    },
    /// Run the controller (gRPC over mutual TLS, SQLite store)
    Serve(cli::serve::ServeArgs),
    /// Validate, compile, store and push a policy revision; wait for every host to apply it
    Apply {
        #[command(flatten)]
        args: cli::apply::ApplyArgs,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Offline: what an inventory holds and what a host pattern selects (--list-hosts,
    /// --graph, --list, --host); no controller or certificates needed
    Inventory(cli::inventory::InventoryArgs),
    /// Per-host state: connected, last seen, desired vs applied revision, hash match
    Status {
        #[command(flatten)]
        args: cli::status::StatusArgs,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Revisions: who applied what, when, to which hosts
    History {
        #[command(flatten)]
        args: cli::history::HistoryArgs,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Ask the agents to verify their kernel now: in sync, drifted, healed, unreachable
    /// (exit 0 in sync, 2 drift found, 3 some hosts unreachable)
    Drift {
        #[command(flatten)]
        args: cli::drift::DriftArgs,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Denied connection attempts from every host: filter, follow live, top ports/sources
    Logs {
        #[command(flatten)]
        args: cli::logs::LogsArgs,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Re-roll a previous revision (default: the one before the latest) as a rollout;
    /// without wave/confirm/gate flags, those of the latest rollout (exit 0 done, 5 halted,
    /// 6 rolled back, 7 aborted)
    Rollback {
        #[command(flatten)]
        args: cli::rollout::RollbackArgs,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Rollouts: list, show one (waves, per-host results, who ran it), abort the running one
    Rollout {
        #[command(subcommand)]
        cmd: cli::rollout::RolloutCommand,
        /// Connection flags (global within `rollout`: given before or after its subcommand)
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Shell completions and man pages from this CLI's definition (for packaging)
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        cmd: portcullis_generate::GenerateCommand,
    },
}

fn init_tracing(filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    // Client commands log warnings only unless asked; `serve` logs at the chosen level.
    let filter = match cli.command {
        Command::Serve(_) => cli.log.clone(),
        _ if cli.log == "info" => "warn".to_string(),
        _ => cli.log.clone(),
    };
    init_tracing(&filter, cli.log_json);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Ca { cmd } => cli::ca::run(cmd).map(|()| exit::OK),
            Command::Serve(a) => cli::serve::serve(a).await,
            Command::Apply { args, connect } => cli::apply::run(args, &connect).await,
            Command::Inventory(a) => cli::inventory::run(a),
            Command::Status { args, connect } => cli::status::run(args, &connect).await,
            Command::History { args, connect } => cli::history::run(args, &connect).await,
            Command::Drift { args, connect } => cli::drift::run(args, &connect).await,
            Command::Logs { args, connect } => cli::logs::run(args, &connect).await,
            Command::Rollback { args, connect } => cli::rollout::rollback(args, &connect).await,
            Command::Rollout { cmd, connect } => cli::rollout::run(cmd, &connect).await,
            Command::Generate { cmd } => {
                portcullis_generate::run(cmd, Cli::command()).map(|()| exit::OK)
            }
        }
    });
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(exit_code(&e));
        }
    }
}

/// Exit code for an error that ended a command.
fn exit_code(e: &anyhow::Error) -> i32 {
    use portcullis_controller::cli::connect::{Unreachable, UsageError};
    if e.downcast_ref::<UsageError>().is_some() {
        exit::INVALID
    } else if e.downcast_ref::<Unreachable>().is_some()
        || e.chain()
            .any(|c| c.downcast_ref::<tonic::transport::Error>().is_some())
    {
        exit::UNREACHABLE
    } else {
        1
    }
}
