//! The accept loop: TCP connections counted and capped below the process fd limit.
//!
//! Past `max` live connections a new one is closed at once and a warning is logged (at
//! most once a second); accept errors such as EMFILE back off instead of spinning (tonic's
//! own accept loop spins at 100 % CPU on EMFILE).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// A TCP connection that decrements the live count when dropped.
#[derive(Debug)]
pub struct Counted {
    inner: TcpStream,
    live: Arc<AtomicUsize>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Connected for Counted {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
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
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Stream of accepted, counted connections.
pub struct Limited {
    listener: TcpListener,
    live: Arc<AtomicUsize>,
    max: usize,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
    last_warning: Option<Instant>,
}

impl Limited {
    pub fn new(listener: TcpListener, max: usize) -> Self {
        Self {
            listener,
            live: Arc::new(AtomicUsize::new(0)),
            max,
            backoff: None,
            last_warning: None,
        }
    }

    fn warn_limited(&mut self, what: &str, err: Option<&io::Error>) {
        let now = Instant::now();
        if self
            .last_warning
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.last_warning = Some(now);
            tracing::warn!(
                live = self.live.load(Ordering::Relaxed),
                max = self.max,
                error = err.map(tracing::field::display),
                "{what}"
            );
        }
    }
}

impl Stream for Limited {
    type Item = io::Result<Counted>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(sleep) = self.backoff.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.backoff = None;
            }
            match self.listener.poll_accept(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok((stream, _peer))) => {
                    if self.live.load(Ordering::Relaxed) >= self.max {
                        self.warn_limited("connection limit reached: closing new connection", None);
                        drop(stream);
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    self.live.fetch_add(1, Ordering::Relaxed);
                    return Poll::Ready(Some(Ok(Counted {
                        inner: stream,
                        live: self.live.clone(),
                    })));
                }
                Poll::Ready(Err(e)) => {
                    // EMFILE/ENFILE/ENOBUFS and friends: back off instead of spinning.
                    self.warn_limited("accept failed; backing off 100 ms", Some(&e));
                    self.backoff = Some(Box::pin(tokio::time::sleep(Duration::from_millis(100))));
                }
            }
        }
    }
}

use std::future::Future as _;
