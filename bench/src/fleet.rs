//! Pieces shared by the benchmarks that run a controller against simulated agents
//! (fleet-bench, rollout-bench, reconnect-bench): a throwaway PKI, a loopback listener,
//! the site and inventory of `simNNNNN` hosts and an `Admin.Apply` of them, the
//! simulated-agents child process, CPU / RSS of this process.

use crate::ProcStats;
use crate::sim::{SimArgs, host_name};
use anyhow::{Context as _, Result, bail};
use portcullis_controller::pki::Pki;
use portcullis_proto::v1;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdout, Command};
use tokio_stream::StreamExt as _;

/// A fresh CA in `dir/pki` with a controller certificate for loopback and an admin
/// certificate named `bench`.
pub fn make_pki(dir: &Path) -> Result<Pki> {
    let pki_dir = dir.join("pki");
    Pki::init(&pki_dir, false)?;
    let pki = Pki::new(&pki_dir);
    pki.issue_controller(&["127.0.0.1".into(), "localhost".into()], false)?;
    pki.issue_admin("bench", false)?;
    Ok(pki)
}

/// Binds loopback on a port in `base..base + 200` (below the ephemeral range, so the
/// simulated agents' many outgoing ports never collide with it).
pub async fn bind_loopback(base: u16) -> Result<TcpListener> {
    for port in base..base.saturating_add(200) {
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)).await {
            return Ok(l);
        }
    }
    bail!("no free port in {base}..{}", base.saturating_add(200))
}

/// An inventory with the hosts `sim00000` .. `sim{n-1}` in group `sim`.
pub fn inventory_yaml(n: usize) -> String {
    let mut s = String::from("all:\n  children:\n    sim:\n      hosts:\n");
    for i in 0..n {
        s.push_str(&format!("        {}:\n", host_name(i)));
    }
    s
}

/// CPU seconds (user + system) of this process so far, all threads, to the microsecond
/// (`getrusage`; `/proc/self/stat` counts in 10 ms ticks).
pub fn cpu_now() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 * 1e-6;
            tv(u.user_time()) + tv(u.system_time())
        }
        Err(_) => ProcStats::current().map_or(0.0, |s| s.cpu.as_secs_f64()),
    }
}

/// CPU seconds of the live threads of process `pid`, to the nanosecond (sum of
/// `/proc/<pid>/task/*/schedstat`); `None` if unreadable.
fn threads_cpu(pid: u32) -> Option<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        ns += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(ns as f64 * 1e-9)
}

/// Resident memory of this process, MiB.
pub fn rss_now() -> f64 {
    ProcStats::current().map_or(0.0, |s| s.rss_bytes as f64 / 1048576.0)
}

/// Median of `v` (0 when empty).
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `180s` or `180` as a duration (for clap).
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let n = s.trim_end_matches('s');
    n.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|e| format!("{s}: {e} (write e.g. 180s)"))
}

/// Arguments of the benchmarks' internal `sim` subcommand (see [`SimChild::start`]).
#[derive(Debug, Clone, clap::Args)]
pub struct SimCmd {
    #[arg(long)]
    pub url: String,
    #[arg(long)]
    pub pki: PathBuf,
    #[arg(long)]
    pub n: usize,
    /// Reconnect after a session ends, with the agent's backoff from this (e.g. 250ms) ...
    #[arg(long, value_parser = parse_millis)]
    pub backoff_min: Option<Duration>,
    /// ... to this (e.g. 30000ms).
    #[arg(long, value_parser = parse_millis, default_value = "30000ms")]
    pub backoff_max: Duration,
    /// The first agent's host index.
    #[arg(long, default_value_t = 0)]
    pub first: usize,
    /// Another controller to reconnect to (repeatable).
    #[arg(long)]
    pub failover: Vec<String>,
}

impl SimCmd {
    /// What [`crate::sim::run`] needs (the CA is read from the PKI directory).
    pub fn sim_args(&self, concurrency: usize) -> Result<SimArgs> {
        Ok(SimArgs {
            reconnect: self.backoff_min.map(|min| (min, self.backoff_max)),
            first: self.first,
            failover: self.failover.clone(),
            ..SimArgs::from_pki(&self.url, &self.pki, self.n, concurrency)?
        })
    }
}

/// `250ms` or `250` as a duration in milliseconds (for clap).
pub fn parse_millis(s: &str) -> Result<Duration, String> {
    let n = s.trim_end_matches("ms");
    n.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|e| format!("{s}: {e} (write e.g. 250ms)"))
}

/// ~2 KB policy for every `sim` host: the seed services plus 80 distinct ports.
pub fn site_yaml() -> String {
    let mut s = String::from(
        "- name: fleet\n  hosts: all\n  policy:\n    allow:\n      - smtp/tcp\n      - http/tcp\n      - domain/udp\n",
    );
    for i in 0..80 {
        s.push_str(&format!("      - {}/tcp\n", 2000 + 2 * i));
    }
    s
}

/// `Admin.Apply` of [`site_yaml`] to the `n` sim hosts; waits (at most `timeout`) until
/// the stream reported every host and returns how many were `Applied`.
pub async fn apply_all(
    admin: &mut v1::admin_client::AdminClient<tonic::transport::Channel>,
    n: usize,
    timeout: Duration,
) -> Result<usize> {
    let req = v1::ApplyRequest {
        site_name: "site.yml".into(),
        site_yaml: site_yaml(),
        inventory_name: "inventory.yml".into(),
        inventory_yaml: inventory_yaml(n),
        ..Default::default()
    };
    apply_request(admin, req, n, timeout).await
}

/// `Admin.Apply` of `req` (targeting `n` hosts); waits (at most `timeout`) until the
/// stream reported every host and returns how many were `Applied`.
pub async fn apply_request(
    admin: &mut v1::admin_client::AdminClient<tonic::transport::Channel>,
    req: v1::ApplyRequest,
    n: usize,
    timeout: Duration,
) -> Result<usize> {
    let mut stream = admin.apply(req).await?.into_inner();
    let mut ok = 0usize;
    let mut answered = 0usize;
    let deadline = tokio::time::Instant::now() + timeout;
    while answered < n {
        let ev = tokio::time::timeout_at(deadline, stream.next())
            .await
            .context("apply: timed out waiting for hosts")?;
        let Some(ev) = ev else { break };
        match ev?.event {
            Some(v1::apply_event::Event::Host(h)) => {
                answered += 1;
                if h.outcome == v1::HostOutcome::Applied as i32 {
                    ok += 1;
                } else if answered - ok <= 3 {
                    eprintln!("host {}: outcome {} {}", h.host, h.outcome, h.error);
                }
            }
            Some(v1::apply_event::Event::Accepted(a)) if !a.offline.is_empty() => {
                eprintln!("apply: {} host(s) offline", a.offline.len());
            }
            _ => {}
        }
    }
    Ok(ok)
}

/// The simulated agents in a child process (this same executable, with `args` selecting
/// its `sim` subcommand): it prints tagged lines (`CERTS`, `READY`, `STATS`) on stdout,
/// answers `STATS` written to its stdin, and exits when its stdin closes.
pub struct SimChild {
    child: Child,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl SimChild {
    pub fn spawn(args: Vec<OsString>) -> Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawning the simulated agents")?;
        let stdout = child.stdout.take().context("sim stdout")?;
        Ok(Self {
            child,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// `n` agents of the PKI in `pki` connecting to `url`, from this executable's `sim`
    /// subcommand, called as `--concurrency C sim --url U --n N --pki P`.
    pub fn start(url: &str, pki: &Path, n: usize, concurrency: usize) -> Result<Self> {
        Self::spawn(vec![
            "--concurrency".into(),
            concurrency.to_string().into(),
            "sim".into(),
            "--url".into(),
            url.into(),
            "--n".into(),
            n.to_string().into(),
            "--pki".into(),
            pki.into(),
        ])
    }

    /// Like [`SimChild::start`], the agents reconnecting after their session ends with the
    /// agent's backoff from `backoff.0` to `backoff.1` (see [`crate::storm::Backoff`]).
    pub fn start_reconnecting(
        url: &str,
        pki: &Path,
        n: usize,
        concurrency: usize,
        backoff: (Duration, Duration),
    ) -> Result<Self> {
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        Self::spawn(vec![
            "--concurrency".into(),
            concurrency.to_string().into(),
            "sim".into(),
            "--url".into(),
            url.into(),
            "--n".into(),
            n.to_string().into(),
            "--pki".into(),
            pki.into(),
            "--backoff-min".into(),
            ms(backoff.0).into(),
            "--backoff-max".into(),
            ms(backoff.1).into(),
        ])
    }

    /// The next line starting with `tag`, split after it.
    pub async fn expect(&mut self, tag: &str, timeout: Duration) -> Result<Vec<String>> {
        let line = tokio::time::timeout(timeout, self.lines.next_line())
            .await
            .with_context(|| format!("sim: no {tag} within {timeout:?}"))??
            .with_context(|| format!("sim exited before {tag}"))?;
        let rest = line
            .strip_prefix(tag)
            .with_context(|| format!("sim said {line:?}, expected {tag}"))?;
        Ok(rest.split_whitespace().map(str::to_owned).collect())
    }

    /// Writes one line to the child's stdin (e.g. `STATS`).
    pub async fn say(&mut self, line: &str) -> Result<()> {
        let stdin = self.child.stdin.as_mut().context("sim stdin closed")?;
        stdin.write_all(format!("{line}\n").as_bytes()).await?;
        stdin.flush().await?;
        Ok(())
    }

    /// CPU seconds of the child so far (its threads live as long as it does: a tokio
    /// runtime's workers).
    pub fn cpu(&self) -> f64 {
        let Some(pid) = self.child.id() else {
            return 0.0;
        };
        threads_cpu(pid)
            .unwrap_or_else(|| ProcStats::of(&pid.to_string()).map_or(0.0, |s| s.cpu.as_secs_f64()))
    }

    /// Closes its stdin and waits (10 s at most, then kills it).
    pub async fn stop(mut self) {
        drop(self.child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
