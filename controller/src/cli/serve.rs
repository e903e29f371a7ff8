//! `portcullis serve`: run the controller until SIGTERM/SIGINT.

use crate::server::{ServeConfig, run_with_metrics};
use anyhow::Context as _;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (keep the port outside ip_local_port_range)
    #[arg(long, env = "PORTCULLIS_LISTEN", default_value = "0.0.0.0:7443")]
    pub listen: SocketAddr,
    /// The store: an SQLite file (one controller), or a PostgreSQL connection string
    /// shared by several controllers, e.g. postgres://portcullis@db.example/portcullis
    /// or "host=/run/postgresql dbname=portcullis" (put a password in ~/.pgpass or
    /// the URL; it is never logged)
    #[arg(
        long,
        env = "PORTCULLIS_DB",
        default_value = "/var/lib/portcullis/controller.db"
    )]
    pub db: crate::store::DbSpec,
    /// CA bundle (PEM) that verifies the PostgreSQL server's certificate when the
    /// connection uses TLS (sslmode=require); without it TLS connections are refused
    #[arg(long, env = "PORTCULLIS_DB_CA")]
    pub db_ca: Option<PathBuf>,
    /// PKI directory (ca.crt, controller.crt/key, revoked.txt)
    #[arg(long, env = "PORTCULLIS_PKI", default_value = "/etc/portcullis/pki")]
    pub pki: PathBuf,
    /// Close connections beyond this many (keep below the fd limit, RLIMIT_NOFILE)
    #[arg(long, env = "PORTCULLIS_MAX_CONNECTIONS", default_value_t = 19_000)]
    pub max_connections: usize,
    /// Deadline for a client's TLS handshake; slower ones are closed
    #[arg(long, env = "PORTCULLIS_TLS_HANDSHAKE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub tls_handshake_timeout: std::time::Duration,
    /// Connections still in the TLS handshake, all sources together (at most half of
    /// --max-connections; authenticated sessions keep the rest)
    #[arg(
        long,
        env = "PORTCULLIS_MAX_PENDING_HANDSHAKES",
        default_value_t = 1024
    )]
    pub max_pending_handshakes: usize,
    /// Connections still in the TLS handshake from one source address (IPv6: one /64)
    #[arg(long, env = "PORTCULLIS_MAX_PENDING_PER_SOURCE", default_value_t = 16)]
    pub max_pending_per_source: usize,
    /// Authenticated connections one certificate may hold at once (an agent needs 1; an
    /// admin one per running command); more are closed right after the handshake
    #[arg(
        long,
        env = "PORTCULLIS_MAX_CONNECTIONS_PER_IDENTITY",
        default_value_t = 16
    )]
    pub max_connections_per_identity: usize,
    /// TCP keepalive idle time on accepted connections
    #[arg(long, env = "PORTCULLIS_TCP_KEEPALIVE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub tcp_keepalive: std::time::Duration,
    /// Delete denial log rows older than this (e.g. 14d, 36h); 0 keeps them
    #[arg(long, env = "PORTCULLIS_LOG_RETENTION", default_value = "14d", value_parser = humantime::parse_duration)]
    pub log_retention: std::time::Duration,
    /// Keep at most this many denial log rows (the newest); 0 is unlimited
    #[arg(long, env = "PORTCULLIS_LOG_MAX_ROWS", default_value_t = 20_000_000)]
    pub log_max_rows: u64,
    /// Serve Prometheus metrics (plain HTTP, `GET /metrics`, unauthenticated) on this
    /// address, e.g. 127.0.0.1:9641; off unless set. Keep it on loopback or a management
    /// network: anyone who reaches it reads fleet-wide counts
    #[arg(long, env = "PORTCULLIS_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<i32> {
    let nofile = crate::server::incoming::check_fd_limit(args.max_connections)
        .context("checking --max-connections against RLIMIT_NOFILE")?;
    tracing::debug!(nofile, "file descriptor limit");
    anyhow::ensure!(
        args.max_pending_per_source > 0
            && args.max_pending_handshakes > 0
            && args.max_connections_per_identity > 0,
        "--max-pending-handshakes, --max-pending-per-source and \
         --max-connections-per-identity: expected at least 1, found 0"
    );
    anyhow::ensure!(
        !args.tls_handshake_timeout.is_zero(),
        "--tls-handshake-timeout: expected a duration above 0, found 0"
    );
    // The default backlog (128) is kept on purpose: a larger one let a reconnect storm
    // into the pending-handshake budget faster than 2 vCPUs finish handshakes, so more
    // agents were refused and backed off (reconnect-bench, docs/BENCHMARKS.md section 8).
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let metrics = match args.metrics_listen {
        Some(addr) => {
            if !portcullis_metrics::is_loopback(&addr) {
                tracing::warn!(%addr, "metrics endpoint is not on loopback: it is unauthenticated");
            }
            Some(portcullis_metrics::bind(addr).await?)
        }
        None => None,
    };
    let config = ServeConfig {
        db: args.db,
        db_ca: args.db_ca,
        pki: args.pki,
        max_connections: args.max_connections,
        pre_auth: crate::server::incoming::PreAuth {
            max_pending: args.max_pending_handshakes,
            max_pending_per_source: args.max_pending_per_source,
            handshake_timeout: args.tls_handshake_timeout,
            tcp_keepalive: args.tcp_keepalive,
            max_per_identity: args.max_connections_per_identity,
        },
        logs: crate::server::logs::LogsConfig {
            retention: (!args.log_retention.is_zero()).then_some(args.log_retention),
            max_rows: (args.log_max_rows > 0).then_some(args.log_max_rows),
            ..Default::default()
        },
    };
    run_with_metrics(config, listener, metrics, portcullis_os::shutdown_signal()).await?;
    Ok(0)
}
