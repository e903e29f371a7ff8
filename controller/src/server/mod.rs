//! `portcullis serve`: the gRPC server (Session for agents, Admin for operators) over
//! mutual TLS, backed by the SQLite store.
//!
//! Entry point: [`run`] with a bound listener and a shutdown future (mini-redis style), so
//! tests start it on an ephemeral port in-process.

mod admin;
mod check;
pub mod drift;
mod incoming;
pub mod logs;
pub mod registry;
pub mod rollout;
mod session;

use crate::identity::{PeerIdentity, RevocationList, authorize};
use crate::store::Store;
use anyhow::Context as _;
use portcullis_policy::{Facts, HostPolicy, compile};
use registry::Registry;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use tonic::{Request, Status};

pub use admin::AdminService;
pub use session::SessionService;

/// Everything `serve` needs besides the listener.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub db: PathBuf,
    pub pki: PathBuf,
    /// Connections beyond this are closed at accept (stay below RLIMIT_NOFILE).
    pub max_connections: usize,
    /// Denial log retention.
    pub logs: logs::LogsConfig,
}

/// State shared by the services.
#[derive(Debug)]
pub struct Shared {
    pub store: Store,
    /// Group commit for agent reports (Applied, Heartbeat, Hello).
    pub writer: crate::store::GroupWriter,
    pub registry: Registry,
    pub revoked: RevocationList,
    /// Outstanding `portcullis drift` verification requests.
    pub drift: drift::DriftState,
    /// Live `logs --follow` subscribers.
    pub logs: logs::LogsState,
    /// The running rollout and what rollouts need to know about sessions.
    pub rollouts: rollout::Rollouts,
}

impl Shared {
    /// Identify the peer from its client certificate and refuse revoked serials.
    pub(crate) fn authenticate<T>(&self, req: &Request<T>) -> Result<PeerIdentity, Status> {
        authorize(req, &self.revoked).inspect_err(|s| {
            tracing::warn!(code = ?s.code(), message = s.message(), "refused a peer");
        })
    }
}

/// The store row of a revision built from an `Apply` request (apply and rollout both).
pub(crate) fn new_revision<'a>(
    author: &'a str,
    req: &'a portcullis_proto::v1::ApplyRequest,
    hosts: &'a [crate::store::RevisionHost],
) -> crate::store::NewRevision<'a> {
    crate::store::NewRevision {
        author,
        site_name: &req.site_name,
        site_yaml: &req.site_yaml,
        inventory_name: &req.inventory_name,
        inventory_yaml: &req.inventory_yaml,
        limit: &req.limit,
        hosts,
    }
}

/// The hash the host's kernel must report after applying `policy` at `revision`, or ""
/// if it cannot be compiled with these facts (the agent will report why).
pub fn expected_hash(policy: &HostPolicy, facts: &Facts, revision: u64) -> String {
    compile(policy, facts, revision)
        .map(|r| r.hash().0)
        .unwrap_or_default()
}

/// Serve until `shutdown` completes, then stop accepting and finish in-flight calls.
pub async fn run(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let tls = crate::pki::tls::server_tls(&config.pki)
        .with_context(|| format!("loading TLS material from {}", config.pki.display()))?;
    let store = Store::open(&config.db)?;
    rollout::recover(&store)?;
    let shared = Arc::new(Shared {
        writer: crate::store::GroupWriter::start(store.clone()),
        store,
        registry: Registry::new(),
        revoked: RevocationList::open(config.pki.join("revoked.txt"))
            .context("loading the revocation list")?,
        drift: drift::DriftState::default(),
        logs: logs::LogsState::start(&config.db, &config.logs)
            .context("starting the denial log writer")?,
        rollouts: rollout::Rollouts::default(),
    });
    let addr = listener.local_addr()?;
    tracing::info!(%addr, db = %config.db.display(), max_connections = config.max_connections, "controller listening");
    let incoming = incoming::Limited::new(listener, config.max_connections);
    tonic::transport::Server::builder()
        .tls_config(tls)?
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .add_service(portcullis_proto::v1::session_server::SessionServer::new(
            SessionService {
                shared: shared.clone(),
            },
        ))
        .add_service(portcullis_proto::v1::admin_server::AdminServer::new(
            AdminService { shared },
        ))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("gRPC server failed")?;
    tracing::info!("controller stopped");
    Ok(())
}
