//! `portcullis-agent run`: the daemon. Enforces last-known-good at once, then keeps a
//! session with the controller (see [`crate::session`]) until SIGTERM/SIGINT. On shutdown
//! the kernel keeps the table as it is (fail-static): stopping the agent never opens or
//! closes the host.

use super::Exit;
use crate::Agent;
use crate::session::{Companions, SessionConfig, run as run_session};
use anyhow::Context as _;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Controller URL, e.g. https://10.77.0.1:7443 (its certificate must name that IP/host)
    #[arg(long, env = "PORTCULLIS_CONTROLLER")]
    pub controller: String,
    /// CA certificate (PEM) that signed the controller's certificate
    #[arg(long, env = "PORTCULLIS_CA")]
    pub ca: PathBuf,
    /// This agent's certificate (PEM), from `portcullis ca issue agent HOST`
    #[arg(long, env = "PORTCULLIS_CERT")]
    pub cert: PathBuf,
    /// This agent's private key (PEM)
    #[arg(long, env = "PORTCULLIS_KEY")]
    pub key: PathBuf,
    /// Host name to speak for (default: the one in the certificate's portcullis://agent/ URI)
    #[arg(long, env = "PORTCULLIS_HOST")]
    pub host: Option<String>,
    /// Interval of heartbeats carrying the kernel's ruleset hash
    #[arg(long, env = "PORTCULLIS_HEARTBEAT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,
    /// Shortest reconnect delay (jittered exponential backoff)
    #[arg(long, env = "PORTCULLIS_BACKOFF_MIN", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub backoff_min: Duration,
    /// Longest reconnect delay
    #[arg(long, env = "PORTCULLIS_BACKOFF_MAX", default_value = "30s", value_parser = humantime::parse_duration)]
    pub backoff_max: Duration,
}

pub fn run(agent: &Agent, args: RunArgs) -> anyhow::Result<Exit> {
    let config = SessionConfig {
        controller: args.controller,
        ca: args.ca,
        cert: args.cert,
        key: args.key,
        host: args.host,
        heartbeat: args.heartbeat,
        backoff_min: args.backoff_min,
        backoff_max: args.backoff_max.max(args.backoff_min),
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let companions = Companions::new();
    runtime.block_on(run_session(
        agent.clone(),
        config,
        companions,
        shutdown_signal(),
    ))?;
    tracing::info!("agent stopped; the kernel keeps enforcing the applied table");
    Ok(Exit::Ok)
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
    }
}
