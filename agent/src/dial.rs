//! Dialing the controller: mutual TLS done by `portcullis-trust` (WebPKI against the CA
//! bundle, then the controller certificate's serial against the CA-signed revocation
//! list kept in the state dir), inside a tonic connector.
//!
//! The CA bundle, certificate and key are re-read at every connect, so a CA rotation
//! (old + new CA in `ca.crt`) or a renewed agent certificate takes effect at the next
//! reconnect without a restart. [`RevocationsCompanion`] takes the signed lists the
//! controller sends and keeps the newest one.

use crate::session::{Companion, SessionConfig};
use anyhow::Context as _;
use portcullis_proto::v1;
use portcullis_trust::{Revocations, Update};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

/// Where the verified revocation list is kept, in the agent's state dir.
pub const KEPT_LIST: &str = "revocations.signed";

/// Connects to the controller; one per `run`.
#[derive(Debug)]
pub struct Dialer {
    endpoint: Endpoint,
    target: portcullis_trust::client::Target,
    config: SessionConfig,
    revocations: Arc<Revocations>,
}

impl Dialer {
    /// Check the configuration now (URL, CA bundle, certificate, key) and load the kept
    /// revocation list from `state_dir`.
    pub fn new(config: &SessionConfig, state_dir: &Path) -> anyhow::Result<Self> {
        let (endpoint, target) = portcullis_trust::endpoint(&config.controller)
            .with_context(|| format!("controller URL {:?}", config.controller))?;
        let endpoint = endpoint
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        let roots =
            portcullis_trust::list::read_roots(&config.ca).context("reading the CA bundle")?;
        let revocations = Arc::new(Revocations::open(state_dir.join(KEPT_LIST), roots));
        let this = Self {
            endpoint,
            target,
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

    /// One connection; refused if the controller's certificate is revoked or expired.
    pub async fn connect(&self) -> anyhow::Result<Channel> {
        let tls = self.tls().context("TLS material")?;
        portcullis_trust::connect(&self.endpoint, &self.target, tls)
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
