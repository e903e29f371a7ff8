//! Dialing the controllers: mutual TLS done by `portcullis-trust` (WebPKI against the CA
//! bundle, then the controller certificate's serial against the CA-signed revocation
//! list kept in the state dir), inside a tonic connector.
//!
//! One [`Dialer`] holds every configured controller ([`crate::failover`]); each
//! connection goes to one [`Candidate`]: its resolved address is dialed while the
//! certificate (and SNI) is checked against the URL's host, so one DNS name with several
//! addresses works with one certificate naming it. The same TLS configuration, and so the
//! same revocation list, applies to every controller.
//!
//! The CA bundle, certificate and key are re-read at every connect, so a CA rotation
//! (old + new CA in `ca.crt`) or a renewed agent certificate takes effect at the next
//! reconnect without a restart. [`RevocationsCompanion`] takes the signed lists the
//! controllers send and keeps the newest one.

use crate::failover::{self, Candidate, Controller};
use crate::session::{Companion, SessionConfig};
use anyhow::Context as _;
use portcullis_proto::v1;
use portcullis_trust::{Revocations, Update};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

/// Where the verified revocation list is kept, in the agent's state dir.
pub const KEPT_LIST: &str = "revocations.signed";

/// TCP + TLS to one candidate: short, so a dead controller costs little of a round.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Resolving one controller name, per round.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Connects to the controllers; one per `run`.
#[derive(Debug)]
pub struct Dialer {
    controllers: Vec<Controller>,
    /// `endpoints[i]` and `targets[i]`: controller `i`'s, as its URL gives them.
    endpoints: Vec<(Endpoint, portcullis_trust::client::Target)>,
    config: SessionConfig,
    revocations: Arc<Revocations>,
}

impl Dialer {
    /// Check the configuration now (every URL, CA bundle, certificate, key) and load the
    /// kept revocation list from `state_dir`.
    pub fn new(config: &SessionConfig, state_dir: &Path) -> anyhow::Result<Self> {
        let controllers = failover::parse_controllers(&config.controllers)?;
        let mut endpoints = Vec::with_capacity(controllers.len());
        for c in &controllers {
            let (endpoint, target) = portcullis_trust::endpoint(&c.url)
                .with_context(|| format!("controller URL {:?}", c.url))?;
            let endpoint = endpoint
                .connect_timeout(CONNECT_TIMEOUT)
                .http2_keep_alive_interval(Duration::from_secs(20))
                .keep_alive_timeout(Duration::from_secs(20))
                .keep_alive_while_idle(true);
            endpoints.push((endpoint, target));
        }
        let roots =
            portcullis_trust::list::read_roots(&config.ca).context("reading the CA bundle")?;
        let revocations = Arc::new(Revocations::open(state_dir.join(KEPT_LIST), roots));
        let this = Self {
            controllers,
            endpoints,
            config: config.clone(),
            revocations,
        };
        this.tls().context("TLS material")?;
        Ok(this)
    }

    fn tls(&self) -> Result<Arc<rustls::ClientConfig>, portcullis_trust::TrustError> {
        let c = &self.config;
        self.revocations
            .set_roots(portcullis_trust::list::read_roots(&c.ca)?);
        portcullis_trust::client_config(&c.ca, &c.cert, &c.key, self.revocations.clone())
    }

    /// The revocation list in force (shared with [`RevocationsCompanion`]).
    pub fn revocations(&self) -> Arc<Revocations> {
        self.revocations.clone()
    }

    /// The configured controllers, in the order given.
    pub fn controllers(&self) -> &[Controller] {
        &self.controllers
    }

    /// This round's candidates: every controller's address (an IP URL) or resolved
    /// addresses (a DNS name, looked up now, bounded by [`RESOLVE_TIMEOUT`]). A name that
    /// does not resolve is logged and left out of this round.
    pub async fn candidates(&self) -> Vec<Candidate> {
        let lookups = self.controllers.iter().map(|c| async move {
            if c.literal().is_some() {
                return Vec::new();
            }
            let name = (c.host.as_str(), c.port);
            match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(name)).await {
                Ok(Ok(addrs)) => {
                    let mut addrs: Vec<SocketAddr> = addrs.collect();
                    addrs.sort();
                    addrs.dedup();
                    tracing::debug!(controller = %c.url, addresses = addrs.len(), "controller name resolved");
                    addrs
                }
                Ok(Err(error)) => {
                    tracing::warn!(controller = %c.url, %error, "cannot resolve the controller's name");
                    Vec::new()
                }
                Err(_) => {
                    tracing::warn!(controller = %c.url, timeout_ms = RESOLVE_TIMEOUT.as_millis(),
                        "resolving the controller's name timed out");
                    Vec::new()
                }
            }
        });
        let resolved = futures::future::join_all(lookups).await;
        failover::candidates(&self.controllers, &resolved)
    }

    /// One connection to `to`; refused if the controller's certificate is revoked or
    /// expired, or does not name the URL's host.
    pub async fn connect(&self, to: &Candidate) -> anyhow::Result<Channel> {
        let (endpoint, target) = self
            .endpoints
            .get(to.controller)
            .with_context(|| format!("no controller {}", to.controller))?;
        let tls = self.tls().context("TLS material")?;
        let mut target = target.clone().at(to.addr);
        if let Some(local) = self.config.source {
            target = target.from_local(local);
        }
        portcullis_trust::connect(endpoint, &target, tls)
            .await
            .map_err(|e| anyhow::anyhow!("{}", chain(&e)))
    }
}

/// An error with its sources (`transport error: ...: invalid peer certificate: Revoked`).
fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg = format!("{msg}: {s}");
        src = s.source();
    }
    msg
}

/// Takes `SignedRevocations` from the controller: verified with the CA bundle, kept
/// only if it revokes at least what is in force.
#[derive(Debug)]
pub struct RevocationsCompanion(pub Arc<Revocations>);

#[tonic::async_trait]
impl Companion for RevocationsCompanion {
    async fn on_message(
        &self,
        msg: &v1::controller_message::Msg,
        _tx: &mpsc::Sender<v1::AgentMessage>,
    ) {
        let v1::controller_message::Msg::Revocations(r) = msg else {
            return;
        };
        match self.0.update(&r.list, &r.signature) {
            Ok(Update::Newer) => tracing::info!(
                revoked = self.0.serials().len(),
                "new signed revocation list kept"
            ),
            Ok(Update::Same) => tracing::debug!("revocation list unchanged"),
            Ok(Update::Older) => tracing::warn!(
                "the controller sent an older revocation list than the one kept: ignored"
            ),
            Err(error) => {
                tracing::error!(%error, "the controller sent a revocation list that does not verify: ignored");
            }
        }
    }
}
