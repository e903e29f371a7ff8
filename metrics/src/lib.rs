//! Prometheus exposition shared by `portcullis serve` and `portcullis-agent run`.
//!
//! [`serve`] answers `GET /metrics` (and `HEAD`) with the OpenMetrics text a render
//! function produces when the client accepts it (Prometheus does), else the same samples
//! in the classic Prometheus text format 0.0.4 (curl, `promtool check metrics`);
//! anything else gets 404/405. The port is unauthenticated, so every
//! request is bounded: at most [`MAX_REQUEST_BYTES`] of request head, read within
//! [`REQUEST_TIMEOUT`], at most [`MAX_CONNECTIONS`] at once (more wait in the kernel's
//! backlog), one request per connection. It never reads a request body and never
//! changes anything: a scrape only reads counters.
//!
//! [`collect`] has the helpers collectors use to export values the services already
//! count elsewhere (atomics, store totals) without copying them into metric objects.

pub mod collect;

pub use prometheus_client;

use prometheus_client::registry::Registry;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Longest request head read (request line + headers); longer requests get 431.
pub const MAX_REQUEST_BYTES: usize = 8 << 10;
/// Deadline for reading a request and for writing its answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The `Content-Type` of the classic text format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metrics endpoint failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--metrics-listen {addr}: cannot bind: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("encoding metrics: {0}")]
    Encode(#[from] std::fmt::Error),
}

/// Encode `registry` in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> Result<String, Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// Bind the metrics listener (done before the service starts, so a bad address fails the
/// start rather than a background task).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// Serve `GET /metrics` on `listener` until `shutdown` completes. `render` produces the
/// exposition text for each scrape (it may refresh gauges first).
pub async fn serve<R, F>(listener: TcpListener, render: R, shutdown: impl Future<Output = ()>)
where
    R: Fn() -> F + Send + Sync + 'static,
    F: Future<Output = Result<String, Error>> + Send + 'static,
{
    let render = Arc::new(render);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics endpoint listening (GET /metrics)");
    }
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p,
            () = &mut shutdown => return,
        };
        // The semaphore is never closed.
        let Ok(permit) = permit else { return };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(error) => {
                    tracing::warn!(%error, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let render = render.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(error) = answer(stream, render.as_ref()).await {
                tracing::debug!(%peer, %error, "metrics request ended");
            }
        });
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Metrics { head_only: bool, openmetrics: bool },
    NotFound,
    MethodNotAllowed,
    Bad,
    TooLarge,
}

/// Parse the request line once the head is complete (or the limit reached).
fn parse(head: &[u8], complete: bool) -> Request {
    if !complete {
        return Request::TooLarge;
    }
    let Some(line) = head.split(|b| *b == b'\n').next() else {
        return Request::Bad;
    };
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Request::Bad;
    };
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return Request::Bad;
    }
    let path = target.split('?').next().unwrap_or_default();
    let openmetrics = String::from_utf8_lossy(head).lines().skip(1).any(|h| {
        h.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("accept") && v.contains("application/openmetrics-text")
        })
    });
    match (method, path) {
        ("GET", "/metrics") => Request::Metrics {
            head_only: false,
            openmetrics,
        },
        ("HEAD", "/metrics") => Request::Metrics {
            head_only: true,
            openmetrics,
        },
        (_, "/metrics") => Request::MethodNotAllowed,
        _ => Request::NotFound,
    }
}

/// Read one bounded request head; true if it ended with an empty line.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut chunk = [0u8; 1024];
    loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            return Ok(true);
        }
        if buf.len() >= MAX_REQUEST_BYTES {
            return Ok(false);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        // At most MAX_REQUEST_BYTES + one chunk is ever held.
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn answer<R, F>(mut stream: TcpStream, render: &R) -> std::io::Result<()>
where
    R: Fn() -> F,
    F: Future<Output = Result<String, Error>>,
{
    let mut head = Vec::with_capacity(512);
    let complete = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream, &mut head))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let (status, content_type, body, head_only) = match parse(&head, complete) {
        Request::Metrics {
            head_only,
            openmetrics,
        } => match render().await {
            Ok(text) if openmetrics => ("200 OK", CONTENT_TYPE, text, head_only),
            Ok(text) => ("200 OK", TEXT_CONTENT_TYPE, classic_text(&text), head_only),
            Err(e) => {
                tracing::error!(error = %e, "metrics endpoint: rendering failed");
                (
                    "500 Internal Server Error",
                    "text/plain",
                    format!("{e}\n"),
                    false,
                )
            }
        },
        Request::NotFound => (
            "404 Not Found",
            "text/plain",
            "only /metrics here\n".into(),
            false,
        ),
        Request::MethodNotAllowed => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".into(),
            false,
        ),
        Request::Bad => (
            "400 Bad Request",
            "text/plain",
            "bad request\n".into(),
            false,
        ),
        Request::TooLarge => (
            "431 Request Header Fields Too Large",
            "text/plain",
            "request head too large\n".into(),
            false,
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        stream.write_all(&out).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// OpenMetrics text as the classic Prometheus text format 0.0.4: counter families are
/// named with their `_total` suffix in `# HELP`/`# TYPE` (as the samples are), and the
/// `# UNIT` and `# EOF` lines, which that format does not have, are left out.
pub fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// The address a `--metrics-listen` value names, for the log line and docs: loopback is
/// what the docs suggest, anything else is logged as a warning by the callers.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

#[cfg(test)]
mod tests;
