//! Live TLS connections by certificate serial, and the kill switch each one carries.
//!
//! Every accepted socket is wrapped in a [`Guarded`] holding a [`CancellationToken`].
//! Once the handshake has named the client certificate, the connection is entered in
//! [`Connections`] under its serial, and a timer cancels it at the certificate's
//! `notAfter`. Cancelling makes the socket's reads and writes fail, so hyper drops the
//! whole HTTP/2 connection with every stream on it (agent session, `logs --follow`, apply
//! followers) at once. [`Connections::cut_revoked`] is what the revocation watcher calls.
//!
//! Holds no lock across I/O; the table's mutex covers single map operations only.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Why a connection was cut: the error its reads and writes return from then on.
const CUT: &str = "connection closed by the controller: certificate revoked, expired or replaced";

/// Open connections per certificate serial (normalized hex).
#[derive(Debug, Default)]
pub struct Connections {
    by_serial: Mutex<HashMap<String, HashMap<u64, CancellationToken>>>,
    next_id: AtomicU64,
    /// Connections cut because their certificate was revoked or expired.
    cut: AtomicU64,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<u64, CancellationToken>>> {
        // Single map operations under the lock: a panic cannot leave it inconsistent.
        self.by_serial.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Enter a handshaken connection unless `serial` already holds `max` connections
    /// (checked and entered under one lock, so concurrent handshakes cannot overshoot);
    /// it leaves the table when `token` is cancelled or the connection is dropped (see
    /// [`Guarded`]).
    pub fn try_enter(&self, serial: &str, token: &CancellationToken, max: usize) -> Option<u64> {
        let mut map = self.lock();
        let conns = map.entry(serial.to_owned()).or_default();
        if conns.len() >= max {
            if conns.is_empty() {
                map.remove(serial);
            }
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        conns.insert(id, token.clone());
        Some(id)
    }

    fn leave(&self, serial: &str, id: u64) {
        let mut map = self.lock();
        if let Some(conns) = map.get_mut(serial) {
            conns.remove(&id);
            if conns.is_empty() {
                map.remove(serial);
            }
        }
    }

    /// Cut every open connection whose serial is in `revoked`; returns how many.
    pub fn cut_revoked(&self, revoked: &BTreeSet<String>) -> usize {
        let tokens: Vec<(String, CancellationToken)> = {
            let map = self.lock();
            revoked
                .iter()
                .filter_map(|s| map.get(s).map(|c| (s, c)))
                .flat_map(|(s, c)| c.values().map(move |t| (s.clone(), t.clone())))
                .collect()
        };
        for (serial, token) in &tokens {
            tracing::warn!(%serial, "certificate revoked: closing its open connection");
            token.cancel();
        }
        self.cut.fetch_add(tokens.len() as u64, Ordering::Relaxed);
        tokens.len()
    }

    /// Open connections of `serial`.
    pub fn count(&self, serial: &str) -> usize {
        self.lock().get(serial).map_or(0, HashMap::len)
    }

    /// Connections cut so far (revoked or expired).
    pub fn cut_total(&self) -> u64 {
        self.cut.load(Ordering::Relaxed)
    }

    /// Cut the connection at `not_after` (the peer certificate's expiry).
    pub fn expire_at(&self, token: &CancellationToken, serial: &str, not_after: SystemTime) {
        let (token, serial) = (token.clone(), serial.to_owned());
        tokio::spawn(async move {
            loop {
                let left = not_after
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                if left.is_zero() {
                    tracing::warn!(%serial, "certificate expired: closing its connection");
                    token.cancel();
                    return;
                }
                // The timer wheel does not take years: wake at least daily and re-check.
                let step = left.min(Duration::from_secs(24 * 3600));
                tokio::select! {
                    () = tokio::time::sleep(step) => {}
                    () = token.cancelled() => return,
                }
            }
        });
    }
}

/// What a connection releases when it goes: its budget slot, its table entry.
pub trait Release: Send + Sync + 'static {}
impl<T: Send + Sync + 'static> Release for T {}

/// An accepted TCP socket with a kill switch. Cancelled, every read and write fails.
pub struct Guarded {
    inner: TcpStream,
    token: CancellationToken,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    /// (table, serial, id) once the handshake named the certificate.
    entry: Option<(std::sync::Arc<Connections>, String, u64)>,
    /// Budget slot(s); released on drop.
    _slot: Box<dyn Release>,
}

impl std::fmt::Debug for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("peer", &self.inner.peer_addr().ok())
            .field("cut", &self.token.is_cancelled())
            .finish()
    }
}

impl Guarded {
    pub fn new(inner: TcpStream, slot: Box<dyn Release>) -> Self {
        let token = CancellationToken::new();
        Self {
            inner,
            cancelled: Box::pin(token.clone().cancelled_owned()),
            token,
            entry: None,
            _slot: slot,
        }
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Swap the budget slot (pending -> established) and record the table entry.
    pub fn established(
        &mut self,
        slot: Box<dyn Release>,
        entry: Option<(std::sync::Arc<Connections>, String, u64)>,
    ) {
        self._slot = slot;
        self.entry = entry;
    }

    fn cut() -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionAborted, CUT)
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.token.cancel();
        if let Some((table, serial, id)) = self.entry.take() {
            table.leave(&serial, id);
        }
    }
}

impl Connected for Guarded {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Polled here (the connection always has a read pending) so a cut wakes the task.
        if self.cancelled.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(Self::cut()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.token.is_cancelled() {
            return Poll::Ready(Err(Self::cut()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.token.is_cancelled() {
            return Poll::Ready(Err(Self::cut()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.token.is_cancelled() {
            return Poll::Ready(Err(Self::cut()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

use std::future::Future as _;
