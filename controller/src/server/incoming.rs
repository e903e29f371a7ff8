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

use super::conns::{Connections, Guarded};
use crate::identity::RevocationList;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

/// The pre-authentication limits besides the connection cap (`serve` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreAuth {
    /// `--max-pending-handshakes`: sockets still handshaking, all sources together.
    pub max_pending: usize,
    /// `--max-pending-per-source`: sockets still handshaking from one source.
    pub max_pending_per_source: usize,
    /// `--tls-handshake-timeout`.
    pub handshake_timeout: Duration,
    /// `--tcp-keepalive`: idle time before the first probe.
    pub tcp_keepalive: Duration,
}

impl Default for PreAuth {
    fn default() -> Self {
        let l = Limits::default();
        Self {
            max_pending: l.max_pending,
            max_pending_per_source: l.max_pending_per_source,
            handshake_timeout: l.handshake_timeout,
            tcp_keepalive: l.tcp_keepalive,
        }
    }
}

/// The pre-authentication limits (`serve` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Sockets in all (handshaking + established).
    pub max_connections: usize,
    /// Sockets still handshaking, all sources together (capped at half the total).
    pub max_pending: usize,
    /// Sockets still handshaking from one source address (IPv6: one /64).
    pub max_pending_per_source: usize,
    /// Deadline for the TLS handshake.
    pub handshake_timeout: Duration,
    /// TCP keepalive idle time on accepted sockets.
    pub tcp_keepalive: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 19_000,
            max_pending: 1024,
            max_pending_per_source: 16,
            handshake_timeout: Duration::from_secs(5),
            tcp_keepalive: Duration::from_secs(60),
        }
    }
}

impl Limits {
    /// The pending budget actually used: never more than half of all connections.
    pub fn pending_budget(&self) -> usize {
        self.max_pending.min(self.max_connections / 2).max(1)
    }
}

/// Counts of what the accept loop refused or closed (logged; tests read them).
#[derive(Debug, Default)]
pub struct Refusals {
    pub full: AtomicU64,
    pub pending_full: AtomicU64,
    pub per_source: AtomicU64,
    pub handshake_timeout: AtomicU64,
    pub handshake_failed: AtomicU64,
    pub revoked: AtomicU64,
}

#[derive(Debug)]
struct Budget {
    limits: Limits,
    pending_budget: usize,
    established: AtomicUsize,
    /// (pending in all, pending per source key).
    pending: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// The per-source key: the IPv4 address, or the /64 of an IPv6 one.
fn source_key(addr: IpAddr) -> IpAddr {
    match addr.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

struct PendingSlot {
    budget: Arc<Budget>,
    source: IpAddr,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut p = self
            .budget
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        p.0 = p.0.saturating_sub(1);
        if let Some(n) = p.1.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                p.1.remove(&self.source);
            }
        }
    }
}

struct EstablishedSlot(Arc<Budget>);

impl Drop for EstablishedSlot {
    fn drop(&mut self) {
        self.0.established.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Budget {
    fn admit(
        self: &Arc<Self>,
        peer: IpAddr,
        refusals: &Refusals,
    ) -> Result<PendingSlot, &'static str> {
        let source = source_key(peer);
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let from_source = p.1.get(&source).copied().unwrap_or(0);
        if p.0 + self.established.load(Ordering::Relaxed) >= self.limits.max_connections {
            refusals.full.fetch_add(1, Ordering::Relaxed);
            return Err("connection limit reached");
        }
        if p.0 >= self.pending_budget {
            refusals.pending_full.fetch_add(1, Ordering::Relaxed);
            return Err("pending-handshake budget exhausted");
        }
        if from_source >= self.limits.max_pending_per_source {
            refusals.per_source.fetch_add(1, Ordering::Relaxed);
            return Err("too many pending handshakes from this source");
        }
        p.0 += 1;
        *p.1.entry(source).or_insert(0) += 1;
        Ok(PendingSlot {
            budget: self.clone(),
            source,
        })
    }
}

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
    let budget = Arc::new(Budget {
        limits: a.limits,
        pending_budget: a.limits.pending_budget(),
        established: AtomicUsize::new(0),
        pending: Mutex::new((0, HashMap::new())),
    });
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
        self.budget.established.fetch_add(1, Ordering::Relaxed);
        let established = EstablishedSlot(self.budget.clone());
        let io = tls.get_mut().0;
        let token = io.token().clone();
        let id = self.connections.enter(&serial, &token);
        io.established(
            Box::new(established),
            Some((self.connections.clone(), serial.clone(), id)),
        );
        self.connections.expire_at(&token, &serial, not_after);
        let _ = self.tx.send(Ok(tls)).await;
    }
}

/// Why the connection cap does not fit the process's file descriptor limit.
#[derive(Debug, thiserror::Error)]
pub enum FdLimitError {
    #[error("reading RLIMIT_NOFILE: {0}")]
    Read(nix::Error),
    #[error(
        "--max-connections {max} is above what the file descriptor limit allows: \
         RLIMIT_NOFILE hard limit {hard} minus {headroom} descriptors for the database, \
         logs and listeners leaves {usable}; lower --max-connections or raise the limit \
         (systemd: LimitNOFILE=)"
    )]
    TooHigh {
        max: usize,
        hard: u64,
        headroom: u64,
        usable: u64,
    },
}

/// Descriptors kept free besides connections (SQLite files, WAL, logs, listeners).
pub const FD_HEADROOM: u64 = 256;

/// Raise the soft RLIMIT_NOFILE to the hard limit and check `max_connections` fits under
/// it with [`FD_HEADROOM`] to spare. Returns the soft limit now in force.
pub fn check_fd_limit(max_connections: usize) -> Result<u64, FdLimitError> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(FdLimitError::Read)?;
    let soft = if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(error) => {
                tracing::warn!(%error, soft, hard, "cannot raise RLIMIT_NOFILE to the hard limit");
                soft
            }
        }
    } else {
        soft
    };
    let usable = soft.saturating_sub(FD_HEADROOM);
    if max_connections as u64 > usable {
        return Err(FdLimitError::TooHigh {
            max: max_connections,
            hard: soft,
            headroom: FD_HEADROOM,
            usable,
        });
    }
    Ok(soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_group_ipv6_by_64() {
        let a: IpAddr = "fd77::1".parse().expect("ip");
        let b: IpAddr = "fd77::ffff:1".parse().expect("ip");
        let c: IpAddr = "fd77:0:0:1::1".parse().expect("ip");
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        let mapped: IpAddr = "::ffff:10.77.0.1".parse().expect("ip");
        assert_eq!(
            source_key(mapped),
            "10.77.0.1".parse::<IpAddr>().expect("ip")
        );
    }

    #[test]
    fn budgets_per_source_pending_and_total() {
        let limits = Limits {
            max_connections: 10,
            max_pending: 100,
            max_pending_per_source: 3,
            ..Limits::default()
        };
        let budget = Arc::new(Budget {
            limits,
            pending_budget: limits.pending_budget(),
            established: AtomicUsize::new(0),
            pending: Mutex::new((0, HashMap::new())),
        });
        let r = Refusals::default();
        let one: IpAddr = "127.0.0.1".parse().expect("ip");
        let held: Vec<_> = (0..3)
            .map(|_| budget.admit(one, &r).expect("admit"))
            .collect();
        assert!(budget.admit(one, &r).is_err(), "per-source limit");
        // The pending budget is half of 10: two more sources fill it.
        let two: IpAddr = "127.0.0.2".parse().expect("ip");
        let more: Vec<_> = (0..2)
            .map(|_| budget.admit(two, &r).expect("admit"))
            .collect();
        let three: IpAddr = "127.0.0.3".parse().expect("ip");
        assert!(budget.admit(three, &r).is_err(), "pending budget");
        assert_eq!(r.per_source.load(Ordering::Relaxed), 1);
        assert_eq!(r.pending_full.load(Ordering::Relaxed), 1);
        drop(held);
        drop(more);
        // Established connections count against the total, not the pending budget.
        budget.established.store(9, Ordering::Relaxed);
        let last = budget.admit(three, &r).expect("one slot left");
        assert!(budget.admit(one, &r).is_err(), "total");
        assert_eq!(r.full.load(Ordering::Relaxed), 1);
        drop(last);
        assert_eq!(budget.pending.lock().expect("lock").0, 0);
        assert!(budget.pending.lock().expect("lock").1.is_empty());
    }
}
