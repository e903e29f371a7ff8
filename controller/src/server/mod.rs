//! `portcullis serve`: the gRPC server (Session for agents, Admin for operators) over
//! mutual TLS, backed by the SQLite store.
//!
//! Entry point: [`run`] with a bound listener and a shutdown future (mini-redis style), so
//! tests start it on an ephemeral port in-process.

mod admin;
pub mod answers;
mod apply;
mod check;
pub mod compile;
pub mod conns;
pub mod drift;
pub mod incoming;
pub mod limits;
pub mod lists;
pub mod logs;
pub mod metrics;
mod publish;
pub mod registry;
pub mod revocation;
pub mod rollout;
mod session;
mod wire;

use crate::identity::{PeerIdentity, RevocationList, authorize};
use crate::store::Store;
use anyhow::Context as _;
use portcullis_policy::{Facts, HostPolicy};
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
    /// SQLite file or PostgreSQL connection string.
    pub db: crate::store::DbSpec,
    /// CA bundle that verifies the PostgreSQL server's certificate (TLS connections).
    pub db_ca: Option<PathBuf>,
    pub pki: PathBuf,
    /// Connections beyond this are closed at accept (stay below RLIMIT_NOFILE).
    pub max_connections: usize,
    /// Handshake deadline and the budgets of not-yet-authenticated connections.
    pub pre_auth: incoming::PreAuth,
    /// Denial log retention.
    pub logs: logs::LogsConfig,
}

impl Shared {
    /// Whether another controller holds `h`'s session (a shared store only: with SQLite
    /// this controller is the only one, and what the store says is from an earlier run).
    pub fn elsewhere(&self, h: &crate::store::HostRecord, now_ms: i64) -> bool {
        self.store.dialect() == crate::store::Dialect::Postgres
            && h.connected_elsewhere(&self.controller_id, now_ms)
    }
}

/// State shared by the services.
#[derive(Debug)]
pub struct Shared {
    pub store: Store,
    /// This controller's name in the shared store (`hosts.controller`, publish
    /// notifications): random per process, so a restarted controller is a new one.
    pub controller_id: String,
    /// Group commit for agent reports (Applied, Heartbeat, Hello).
    pub writer: crate::store::GroupWriter,
    pub registry: Registry,
    pub revoked: Arc<RevocationList>,
    /// Open TLS connections by certificate serial (cut on revocation and expiry).
    pub connections: Arc<conns::Connections>,
    /// What the accept loop refused (pre-authentication limits).
    pub refusals: Arc<incoming::Refusals>,
    /// Answers that matched no question of their host (ignored; see `drift`, `rollout`).
    pub unmatched: answers::Unmatched,
    /// `Desired` messages sent and not answered yet, per host.
    pub asked: answers::Asked,
    /// The signed revocation list sent to agents.
    pub signed_revocations: revocation::Distribution,
    /// Outstanding `portcullis drift` verification requests.
    pub drift: drift::VerifyRequests,
    /// Live `logs --follow` subscribers.
    pub logs: logs::LogsState,
    /// The running rollout and what rollouts need to know about sessions.
    pub rollouts: rollout::Rollouts,
    /// Held by `Apply`/`Rollback` from choosing the next revision number (hashes are
    /// compiled for it) until that revision is stored and its rollout claimed: two
    /// concurrent applies can neither store hashes for the wrong revision nor both start
    /// a rollout.
    pub apply_lock: tokio::sync::Mutex<()>,
    /// Prometheus instruments (exposed with `serve --metrics-listen`).
    pub metrics: metrics::Instruments,
    /// Address lists sent to each host (deltas, capability check, full re-sends).
    pub lists: lists::ListTracker,
}

impl Shared {
    /// Identify the peer from its client certificate and refuse revoked serials.
    pub(crate) fn authenticate<T>(&self, req: &Request<T>) -> Result<PeerIdentity, Status> {
        authorize(req, &self.revoked).inspect_err(|s| {
            tracing::warn!(code = ?s.code(), message = s.message(), "refused a peer");
        })
    }
}

impl Shared {
    /// What the trust boundary refused or cut so far (`status`).
    pub fn counters(&self) -> portcullis_proto::v1::ControllerCounters {
        use std::sync::atomic::Ordering::Relaxed;
        let r = &self.refusals;
        portcullis_proto::v1::ControllerCounters {
            ignored_answers: self.unmatched.total(),
            cut_connections: self.connections.cut_total(),
            handshake_timeouts: r.handshake_timeout.load(Relaxed),
            refused_connections: r.full.load(Relaxed)
                + r.pending_full.load(Relaxed)
                + r.per_source.load(Relaxed)
                + r.per_identity.load(Relaxed),
        }
    }
}

/// Load the fleet of an `Apply` request: its address-list files first (budgets and
/// file:line:column errors of [`portcullis_policy::AddrLists::parse`]), then site and
/// inventory. CPU-bound (seconds for a large inventory or a 1M-address list): run off
/// the async workers, so sessions and other admins are served meanwhile.
pub(crate) async fn load_request_fleet(
    req: &portcullis_proto::v1::ApplyRequest,
) -> Result<portcullis_policy::Fleet, tonic::Status> {
    use portcullis_policy::{AddrLists, Source, site};
    let lists: Vec<Source> = req
        .lists
        .iter()
        .map(|l| Source::new(&l.name, &l.content))
        .collect();
    let site_src = Source::new(&req.site_name, &req.site_yaml);
    let inv_src = Source::new(&req.inventory_name, &req.inventory_yaml);
    tokio::task::spawn_blocking(move || {
        let lists = AddrLists::parse(&lists)?;
        site::load_fleet_with_lists(&site_src, &inv_src, &lists)
    })
    .await
    .map_err(|e| wire::internal(e.into()))?
    .map_err(|d| tonic::Status::invalid_argument(format!("invalid policy:\n{d}")))
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
        lists: req
            .lists
            .iter()
            .map(|l| (l.name.as_str(), l.content.as_str()))
            .collect(),
    }
}

/// The hash the host's kernel must report after applying `policy` at `revision`, or ""
/// if it cannot be compiled with these facts (the agent will report why): one compile,
/// through the same path as [`compile::CompileCache`].
pub fn expected_hash(policy: &HostPolicy, facts: &Facts, revision: u64) -> String {
    compile::CompileCache::new(revision).expected_hash((), policy, facts)
}

/// Serve until `shutdown` completes, then stop accepting and finish in-flight calls.
pub async fn run(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with_metrics(config, listener, None, shutdown).await
}

/// [`run`], also answering `GET /metrics` on `metrics` (Prometheus) when given.
pub async fn run_with_metrics(
    config: ServeConfig,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if let Err(error) = incoming::check_fd_limit(config.max_connections) {
        tracing::warn!(%error, "connection cap above the file descriptor limit");
    }
    let store = Store::connect(&config.db, config.db_ca.as_deref())
        .await
        .with_context(|| format!("opening the store {}", config.db))?;
    rollout::recover(&store).await?;
    let revoked = Arc::new(
        RevocationList::open(config.pki.join("revoked.txt"))
            .context("loading the revocation list")?,
    );
    let connections = Arc::new(conns::Connections::default());
    let refusals = Arc::new(incoming::Refusals::default());
    let limits = incoming::Limits {
        max_connections: config.max_connections,
        max_pending: config.pre_auth.max_pending,
        max_pending_per_source: config.pre_auth.max_pending_per_source,
        handshake_timeout: config.pre_auth.handshake_timeout,
        tcp_keepalive: config.pre_auth.tcp_keepalive,
        max_per_identity: config.pre_auth.max_per_identity,
    };
    let addr = listener.local_addr()?;
    let incoming = incoming::start(
        listener,
        incoming::Acceptor {
            limits,
            pki: config.pki.clone(),
            connections: connections.clone(),
            revoked: revoked.clone(),
            refusals: refusals.clone(),
        },
    )
    .with_context(|| format!("loading TLS material from {}", config.pki.display()))?;
    let shared = Arc::new(Shared {
        writer: crate::store::GroupWriter::start(store.clone()),
        store: store.clone(),
        controller_id: format!("{:016x}", rand::random::<u64>()),
        registry: Registry::new(),
        revoked,
        connections,
        refusals,
        unmatched: answers::Unmatched::default(),
        asked: answers::Asked::default(),
        signed_revocations: revocation::Distribution::new(config.pki.clone()),
        drift: drift::VerifyRequests::default(),
        logs: logs::LogsState::start(&store, &config.logs)
            .context("starting the denial log writer")?,
        rollouts: rollout::Rollouts::default(),
        apply_lock: tokio::sync::Mutex::new(()),
        metrics: metrics::Instruments::default(),
        lists: lists::ListTracker::default(),
    });
    tracing::info!(%addr, db = %config.db, max_connections = limits.max_connections,
        max_pending = limits.pending_budget(), max_pending_per_source = limits.max_pending_per_source,
        handshake_timeout_ms = limits.handshake_timeout.as_millis(), "controller listening");
    let watcher = tokio::spawn(revocation::watch(shared.clone()));
    let publisher = tokio::spawn(publish::run(shared.clone()));
    let leases = tokio::spawn(rollout::sweep(shared.store.clone()));
    let exporter = metrics_listener.map(|l| {
        let exposition = metrics::Exposition::new(shared.clone());
        tokio::spawn(portcullis_metrics::serve(
            l,
            move || {
                let e = exposition.clone();
                async move { e.render().await }
            },
            std::future::pending(),
        ))
    });
    let served = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .max_concurrent_streams(Some(limits::MAX_CONCURRENT_STREAMS))
        .http2_max_header_list_size(Some(limits::MAX_HEADER_LIST_BYTES))
        .add_service(
            portcullis_proto::v1::session_server::SessionServer::new(SessionService {
                shared: shared.clone(),
            })
            .max_decoding_message_size(limits::SESSION_MAX_DECODE)
            .max_encoding_message_size(limits::SESSION_MAX_ENCODE),
        )
        .add_service(
            portcullis_proto::v1::admin_server::AdminServer::new(AdminService {
                shared: shared.clone(),
            })
            .max_decoding_message_size(limits::ADMIN_MAX_DECODE)
            .max_encoding_message_size(limits::ADMIN_MAX_ENCODE),
        )
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    watcher.abort();
    publisher.abort();
    leases.abort();
    if let Some(e) = exporter {
        e.abort();
    }
    served.context("gRPC server failed")?;
    tracing::info!("controller stopped");
    Ok(())
}
