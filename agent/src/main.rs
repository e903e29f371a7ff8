//! `portcullis-agent`: parse arguments, set up logging, run one subcommand, exit with its
//! code. All the work is in the library (`portcullis_agent::cli` and below).

use clap::Parser;
use portcullis_agent::cli::{self, Cli};
use std::process::ExitCode;

fn main() -> ExitCode {
    // Needed once the session speaks TLS; harmless before. Fails only if already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    cli::init_tracing(&cli.global);
    cli::run(cli).into()
}
