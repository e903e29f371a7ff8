//! The real controller binary as a child process for the benchmarks (`portcullis serve`
//! with the default pre-authentication flags spelled out, on loopback), and a scrape of
//! its pre-authentication refusal counters from its `/metrics` endpoint; the kernel's
//! listen-queue overflow counter.

use anyhow::{Context as _, Result};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};

/// The flags the controller runs with (the defaults, spelled out).
pub const SERVE_FLAGS: &[&str] = &[
    "--max-connections",
    "19000",
    "--tls-handshake-timeout",
    "5s",
    "--max-pending-handshakes",
    "1024",
    "--max-pending-per-source",
    "16",
    "--tcp-keepalive",
    "60s",
];

/// A running `portcullis serve`.
pub struct Controller {
    child: Child,
}

impl Controller {
    /// Starts it and waits until it logs `controller listening`; returns it and how long
    /// that took.
    pub async fn start(
        bin: &Path,
        dir: &Path,
        listen: SocketAddr,
        metrics: SocketAddr,
    ) -> Result<(Self, Duration)> {
        Self::start_on(
            bin,
            dir,
            listen,
            metrics,
            dir.join("controller.db").as_os_str(),
        )
        .await
    }

    /// [`Controller::start`] on the database `db` (a SQLite file or a PostgreSQL
    /// connection string, as `serve --db` takes it).
    pub async fn start_on(
        bin: &Path,
        dir: &Path,
        listen: SocketAddr,
        metrics: SocketAddr,
        db: &std::ffi::OsStr,
    ) -> Result<(Self, Duration)> {
        let t = Instant::now();
        let mut child = Command::new(bin)
            .arg("serve")
            .args(["--listen", &listen.to_string()])
            .args(["--metrics-listen", &metrics.to_string()])
            .arg("--db")
            .arg(db)
            .arg("--pki")
            .arg(dir.join("pki"))
            .args(SERVE_FLAGS)
            .env("PORTCULLIS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut lines = BufReader::new(child.stderr.take().context("controller stderr")?).lines();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let line = tokio::time::timeout_at(deadline, lines.next_line())
                .await
                .context("controller: not listening within 60 s")??
                .context("controller exited before listening")?;
            if line.contains("controller listening") {
                break;
            }
            eprintln!("controller: {line}");
        }
        let elapsed = t.elapsed();
        // Keep draining its log (errors only shown) so it never blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("ERROR") {
                    eprintln!("controller: {line}");
                }
            }
        });
        Ok((Self { child }, elapsed))
    }

    /// SIGKILL, and wait for it to be gone (its sockets closed).
    pub async fn kill(mut self) -> Result<()> {
        self.child.kill().await.context("killing the controller")
    }
}

/// The controller's pre-authentication refusal counters (`/metrics`), `reason=count`.
pub async fn refusals(metrics: SocketAddr) -> String {
    let scrape = async {
        let mut s = tokio::net::TcpStream::connect(metrics).await?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut body = String::new();
        s.read_to_string(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    let Ok(Ok(body)) = tokio::time::timeout(Duration::from_secs(5), scrape).await else {
        return "(metrics unavailable)".into();
    };
    let counts: Vec<String> = body
        .lines()
        .filter(|l| l.contains("preauth_refused_connections") && !l.starts_with('#'))
        .filter_map(|l| {
            let reason = l.split("reason=\"").nth(1)?.split('"').next()?;
            let value = l.rsplit(' ').next()?;
            (value != "0").then(|| format!("{reason} {value}"))
        })
        .collect();
    if counts.is_empty() {
        "none".into()
    } else {
        counts.join(", ")
    }
}

/// The kernel's `TcpExt: ListenOverflows` (`/proc/net/netstat`, this network namespace):
/// connections whose handshake completed while the listener's accept queue was full (the
/// kernel drops the client's ACK and retransmits its SYN-ACK, 1 s, 2 s, 4 s, ... later).
pub fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if names.starts_with("TcpExt:") {
            let i = names
                .split_whitespace()
                .position(|n| n == "ListenOverflows")?;
            return values.split_whitespace().nth(i)?.parse().ok();
        }
    }
    None
}
