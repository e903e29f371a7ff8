//! `portcullis serve`: run the controller until SIGTERM/SIGINT.

use crate::server::{ServeConfig, run};
use anyhow::Context as _;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (keep the port outside ip_local_port_range)
    #[arg(long, env = "PORTCULLIS_LISTEN", default_value = "0.0.0.0:7443")]
    pub listen: SocketAddr,
    /// SQLite database file
    #[arg(
        long,
        env = "PORTCULLIS_DB",
        default_value = "/var/lib/portcullis/controller.db"
    )]
    pub db: PathBuf,
    /// PKI directory (ca.crt, controller.crt/key, revoked.txt)
    #[arg(long, env = "PORTCULLIS_PKI", default_value = "/etc/portcullis/pki")]
    pub pki: PathBuf,
    /// Close connections beyond this many (keep below the fd limit, RLIMIT_NOFILE)
    #[arg(long, env = "PORTCULLIS_MAX_CONNECTIONS", default_value_t = 19_000)]
    pub max_connections: usize,
    /// Delete denial log rows older than this (e.g. 14d, 36h); 0 keeps them
    #[arg(long, env = "PORTCULLIS_LOG_RETENTION", default_value = "14d", value_parser = humantime::parse_duration)]
    pub log_retention: std::time::Duration,
    /// Keep at most this many denial log rows (the newest); 0 is unlimited
    #[arg(long, env = "PORTCULLIS_LOG_MAX_ROWS", default_value_t = 20_000_000)]
    pub log_max_rows: u64,
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<i32> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let config = ServeConfig {
        db: args.db,
        pki: args.pki,
        max_connections: args.max_connections,
        logs: crate::server::logs::LogsConfig {
            retention: (!args.log_retention.is_zero()).then_some(args.log_retention),
            max_rows: (args.log_max_rows > 0).then_some(args.log_max_rows),
            ..Default::default()
        },
    };
    run(config, listener, shutdown_signal()).await?;
    Ok(0)
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
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
    tracing::info!("shutdown signal received");
}
