//! The accept loop and the pre-authentication limits: TLS handshakes done here, each in
//! its own task under a deadline, before tonic sees a connection.
//!
//! Budgets (see [`Limits`]): at most `max_connections` sockets in all, of which at most
//! `max_pending` may be still handshaking, and at most `max_pending_per_source` of those
//! from one source (an IPv4 address or an IPv6 /64). A handshake that does not finish
//! within `handshake_timeout` is closed. So unauthenticated peers can hold at most
//! `max_pending` slots and never the ones authenticated sessions use; one source cannot
//! exhaust even the pending budget. Accepted sockets get TCP keepalive. Accept errors
//! (EMFILE, ...) back off instead of spinning.
//!
//! The TLS configuration is re-read (at most once a second, on accept) when `ca.crt`,
//! `controller.crt` or `controller.key` change: a CA or key rotation needs no restart.
//! A finished handshake whose certificate serial is revoked is closed at once; the others
//! are entered in [`Connections`] (cut on revocation and at `notAfter`).

mod budget;
mod fd_limit;

pub use budget::{Limits, PreAuth, Refusals};
pub use fd_limit::{FD_HEADROOM, FdLimitError, check_fd_limit};

use super::conns::{Connections, Guarded};
use crate::identity::RevocationList;
use budget::{Budget, PendingSlot};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

/// The rustls configuration, re-read when its files change.
struct TlsSource {
    pki: PathBuf,
    revoked: Arc<RevocationList>,
    config: Arc<rustls::ServerConfig>,
    stamps: Vec<Option<(SystemTime, u64)>>,
    checked: Instant,
}

fn stamps(pki: &Path) -> Vec<Option<(SystemTime, u64)>> {
    ["ca.crt", "controller.crt", "controller.key"]
        .iter()
        .map(|f| {
            std::fs::metadata(pki.join(f))
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

impl TlsSource {
    fn current(&mut self) -> Arc<rustls::ServerConfig> {
        if self.checked.elapsed() >= Duration::from_secs(1) {
            self.checked = Instant::now();
            let now = stamps(&self.pki);
            if now != self.stamps {
                match checked_config(&self.pki, &self.revoked) {
                    Ok(config) => {
                        tracing::info!(pki = %self.pki.display(), "TLS configuration reloaded");
                        self.config = config;
                        self.stamps = now;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "keeping the previous TLS configuration");
                    }
                }
            }
        }
        self.config.clone()
    }
}

/// The server configuration, refused if the controller's own certificate is revoked
/// (`ca revoke controller` locks out that certificate here too, not only at clients).
fn checked_config(
    pki: &Path,
    revoked: &RevocationList,
) -> Result<Arc<rustls::ServerConfig>, crate::pki::PkiError> {
    let config = crate::pki::tls::server_config(pki)?;
    let cert = crate::pki::Pki::new(pki)
        .cert_paths(&crate::identity::Role::Controller)
        .0;
    for der in crate::pki::tls::pem_certs(&cert)?.iter().take(1) {
        let (serial, _) = crate::identity::serial_and_expiry(der.as_ref())
            .map_err(|e| crate::pki::PkiError::Tls(format!("{}: {e}", cert.display())))?;
        if revoked.is_revoked(&serial) {
            return Err(crate::pki::PkiError::Tls(format!(
                "{} (serial {serial}) is revoked: issue a new controller certificate \
                 (`portcullis ca issue controller --force`)",
                cert.display()
            )));
        }
    }
    Ok(config)
}

/// What the accept loop needs besides the listener.
pub struct Acceptor {
    pub limits: Limits,
    pub pki: PathBuf,
    pub connections: Arc<Connections>,
    pub revoked: Arc<RevocationList>,
    pub refusals: Arc<Refusals>,
}

/// Start the accept loop; the stream yields finished TLS connections for tonic and ends
/// the loop when dropped.
pub fn start(
    listener: TcpListener,
    acceptor: Acceptor,
) -> Result<ReceiverStream<io::Result<TlsStream<Guarded>>>, crate::pki::PkiError> {
    let config = checked_config(&acceptor.pki, &acceptor.revoked)?;
    let tls = TlsSource {
        revoked: acceptor.revoked.clone(),
        stamps: stamps(&acceptor.pki),
        pki: acceptor.pki.clone(),
        config,
        checked: Instant::now(),
    };
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(accept_loop(listener, acceptor, tls, tx));
    Ok(ReceiverStream::new(rx))
}

type Ready = mpsc::Sender<io::Result<TlsStream<Guarded>>>;

async fn accept_loop(listener: TcpListener, a: Acceptor, mut tls: TlsSource, tx: Ready) {
    let budget = Arc::new(Budget::new(a.limits));
    let mut last_warning: Option<Instant> = None;
    let mut warn = |what: &str, peer: Option<SocketAddr>, err: Option<&io::Error>| {
        let now = Instant::now();
        if last_warning.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
            last_warning = Some(now);
            tracing::warn!(
                peer = peer.map(tracing::field::display),
                error = err.map(tracing::field::display),
                "{what}"
            );
        }
    };
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = tx.closed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS and friends: back off instead of spinning.
                warn("accept failed; backing off 100 ms", None, Some(&e));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let slot = match budget.admit(peer.ip(), &a.refusals) {
            Ok(slot) => slot,
            Err(why) => {
                warn(why, Some(peer), None);
                drop(stream);
                continue;
            }
        };
        tune(&stream, a.limits.tcp_keepalive);
        let job = Handshake {
            config: tls.current(),
            budget: budget.clone(),
            connections: a.connections.clone(),
            revoked: a.revoked.clone(),
            refusals: a.refusals.clone(),
            timeout: a.limits.handshake_timeout,
            max_per_identity: a.limits.max_per_identity,
            tx: tx.clone(),
        };
        tokio::spawn(job.run(stream, slot, peer));
    }
}

fn tune(stream: &TcpStream, keepalive: Duration) {
    let _ = stream.set_nodelay(true);
    let ka = socket2::TcpKeepalive::new()
        .with_time(keepalive)
        .with_interval((keepalive / 4).max(Duration::from_secs(1)))
        .with_retries(4);
    if let Err(error) = socket2::SockRef::from(stream).set_tcp_keepalive(&ka) {
        tracing::debug!(%error, "cannot set TCP keepalive");
    }
}

struct Handshake {
    config: Arc<rustls::ServerConfig>,
    budget: Arc<Budget>,
    connections: Arc<Connections>,
    revoked: Arc<RevocationList>,
    refusals: Arc<Refusals>,
    timeout: Duration,
    max_per_identity: usize,
    tx: Ready,
}

impl Handshake {
    async fn run(self, stream: TcpStream, slot: PendingSlot, peer: SocketAddr) {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config);
        let guarded = Guarded::new(stream, Box::new(slot));
        let mut tls = match tokio::time::timeout(self.timeout, acceptor.accept(guarded)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                self.refusals
                    .handshake_failed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, %error, "TLS handshake failed");
                return;
            }
            Err(_) => {
                self.refusals
                    .handshake_timeout
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, timeout_ms = self.timeout.as_millis(), "TLS handshake deadline passed: closed");
                return;
            }
        };
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| crate::identity::serial_and_expiry(c.as_ref()));
        let (serial, not_after) = match leaf {
            Some(Ok(x)) => x,
            Some(Err(error)) => {
                tracing::warn!(%peer, %error, "client certificate unreadable: closed");
                return;
            }
            None => {
                tracing::warn!(%peer, "no client certificate: closed");
                return;
            }
        };
        if self.revoked.is_revoked(&serial) {
            self.refusals.revoked.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, %serial, "revoked certificate: connection closed after the handshake");
            return;
        }
        let io = tls.get_mut().0;
        let token = io.token().clone();
        let Some(id) = self
            .connections
            .try_enter(&serial, &token, self.max_per_identity)
        else {
            self.refusals.per_identity.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, %serial, max = self.max_per_identity,
                "certificate already holds its maximum of connections: closed");
            return;
        };
        let established = self.budget.establish();
        io.established(
            Box::new(established),
            Some((self.connections.clone(), serial.clone(), id)),
        );
        self.connections.expire_at(&token, &serial, not_after);
        let _ = self.tx.send(Ok(tls)).await;
    }
}
