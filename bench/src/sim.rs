//! Simulated agents for fleet-bench, rollout-bench and the other fleet benchmarks: N real
//! agent sessions ([`portcullis_agent::session::run`]) in one process, each with its own
//! agent certificate (issued in memory from the bench CA, written with its key to a state
//! directory on tmpfs), its own loopback source address, an in-memory kernel
//! ([`FakeDataplane`], readbacks shared through a [`ReadbackMemo`]) and fixed facts ([`FixedFacts`], the same for every agent but the
//! hostname). So every `Desired` is answered by the agent's own code: address-list deltas
//! resolved against the lists it holds (`need_full` on a foreign base), compiled, applied
//! to the fake kernel, read back, hashed, recorded as last-known-good, answered with
//! `Applied`; under commit-confirmed the session closes after `Applied` and comes back at
//! once on a new connection whose `Hello` attests the new revision, and the confirm
//! record is kept like on a host. An ended session (the controller restarted, the
//! connection died) is re-opened the agent's way: the same controller first, the next
//! one (`--failover`) when it cannot be reached, the agent's full-jitter backoff after a
//! failed round.
//!
//! What the simulator adds around the real session: the connect ramp (at most
//! `concurrency` first connections at a time), counting through the session's companion
//! hooks ([`observe`]), `VerifyNow` answered with the agent's own readback
//! ([`observe::VerifyAnswer`]; the drift loop is not run), heartbeats every hour (i.e.
//! none during a benchmark, as before), and timing. A `STORM` line on stdin times the next
//! storm (see `storm::StormClock`) and is answered with `STORM <n> <back> <p50 ms> <p99
//! ms> <max ms> <attempts> <failed attempts> <agents that failed one> <most failures of
//! one agent>` once every agent is back (or after 120 s).
//!
//! Runs in a child process (`fleet-bench sim ...`) so the controller's process holds only
//! its own side of the connections (fds, CPU, RSS measured apart). Prints `CERTS <s>`
//! when the certificates are ready, `READY <s>` when every session is open (the
//! controller returned the response headers, i.e. it processed the Hello), answers a
//! `STATS` line on stdin with its counters, and exits when its stdin closes.

mod certs;
mod counters;
pub mod model;
mod observe;

use crate::storm::StormClock;
use anyhow::{Context as _, Result};
use certs::{AgentCert, issue};
use counters::Counters;
use observe::{Observer, VerifyAnswer};
use portcullis_agent::dataplane::ReadbackMemo;
use portcullis_agent::facts::FixedFacts;
use portcullis_agent::session::{Companions, SessionConfig};
use portcullis_agent::{Agent, FakeDataplane, StateDir};
use portcullis_policy::{Facts, InterfaceFacts};
use rcgen::{Issuer, KeyPair};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt as _;
use tokio::sync::{Semaphore, mpsc};

/// Host name of simulated agent `i`.
pub fn host_name(i: usize) -> String {
    format!("sim{i:05}")
}

/// The loopback source address of simulated agent `i` (127.1.x.y): like a real fleet,
/// every agent connects from an address of its own, so the controller's per-source
/// pre-authentication limit applies to each as it would in production.
pub fn source_addr(i: usize) -> std::net::IpAddr {
    let (x, y) = ((i / 250) % 255, i % 250 + 1);
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 1, x as u8, y as u8))
}

/// The facts every simulated agent reports (hostname aside).
pub fn facts(host: &str) -> Facts {
    Facts {
        hostname: host.to_owned(),
        interfaces: vec![InterfaceFacts {
            name: "eth0".into(),
            index: 2,
            up: true,
            addrs: vec![],
        }],
        default_route_interface: Some("eth0".into()),
    }
}

pub struct SimArgs {
    pub url: String,
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub n: usize,
    pub concurrency: usize,
    /// The agent's reconnect backoff `(min, max)` after a session ends (`None`: the
    /// agent's defaults, 250 ms and 30 s).
    pub reconnect: Option<(Duration, Duration)>,
    /// The first agent's host index (`host_name(first + i)`): several sim processes
    /// make one fleet.
    pub first: usize,
    /// Other controllers, after `url` (the agent's `--controller` list: it fails over to
    /// the next when one cannot be reached).
    pub failover: Vec<String>,
}

impl SimArgs {
    /// Agents certified by the CA of the PKI in `pki_dir` (its key signs their certificates).
    pub fn from_pki(
        url: &str,
        pki_dir: &std::path::Path,
        n: usize,
        concurrency: usize,
    ) -> Result<Self> {
        let pki = portcullis_controller::pki::Pki::new(pki_dir);
        Ok(Self {
            url: url.to_owned(),
            ca_cert_pem: std::fs::read_to_string(pki.ca_cert())?,
            ca_key_pem: std::fs::read_to_string(pki.ca_key())?,
            n,
            concurrency,
            reconnect: None,
            first: 0,
            failover: Vec::new(),
        })
    }
}

/// No heartbeat within a benchmark (the simulated fleet never sent one).
const HEARTBEAT: Duration = Duration::from_secs(3600);

/// Where the simulated agents' files go: tmpfs when there is one (an agent syncs its
/// records; on a disk 10,000 agents' syncs would be the benchmark).
fn files_dir() -> Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let parent = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    tempfile::Builder::new()
        .prefix("pc-sim-")
        .tempdir_in(parent)
        .context("creating the simulated agents' directory")
}

/// One simulated agent's files: certificate, key, state directory.
fn agent_files(root: &Path, cert: &AgentCert) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let dir = root.join(&cert.host);
    std::fs::create_dir_all(&dir)?;
    let (crt, key) = (dir.join("agent.crt"), dir.join("agent.key"));
    std::fs::write(&crt, &cert.cert_pem)?;
    std::fs::write(&key, &cert.key_pem)?;
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let state = dir.join("state");
    std::fs::create_dir_all(&state)?;
    Ok((crt, key, state))
}

/// The child process's main: issue, connect, then serve until stdin closes. A `STATS`
/// line on stdin is answered with `STATS <answered> <reconnects> <confirmed> <reverts>
/// <reconnect errors> <verified> <lists in full> <lists as delta> <need_full> <failed>`
/// on stdout.
pub async fn run(args: SimArgs) -> Result<()> {
    let t = Instant::now();
    let issuer = Issuer::from_ca_cert_pem(&args.ca_cert_pem, KeyPair::from_pem(&args.ca_key_pem)?)?;
    let certs = (0..args.n)
        .map(|i| issue(&issuer, args.first + i))
        .collect::<Result<Vec<_>>>()?;
    let root = files_dir()?;
    let ca = root.path().join("ca.crt");
    std::fs::write(&ca, &args.ca_cert_pem)?;
    let files = certs
        .iter()
        .map(|c| agent_files(root.path(), c))
        .collect::<Result<Vec<_>>>()?;
    println!("CERTS {:.3}", t.elapsed().as_secs_f64());

    let t = Instant::now();
    let counters = Arc::new(Counters::default());
    let clock = Arc::new(StormClock::new(args.n));
    let permits = Arc::new(Semaphore::new(args.concurrency.max(1)));
    // The agents' fake kernels share readbacks: 10,000 agents holding the same table
    // parse it once (what each reads is unchanged).
    let memo = Arc::new(ReadbackMemo::default());
    let controllers: Vec<String> = std::iter::once(args.url.clone())
        .chain(args.failover.iter().cloned())
        .collect();
    let (backoff_min, backoff_max) = args
        .reconnect
        .unwrap_or((Duration::from_millis(250), Duration::from_secs(30)));
    let (opened_tx, opened_rx) = mpsc::channel(1024);
    for (index, (cert, (crt, key, state))) in certs.into_iter().zip(files).enumerate() {
        let permit = permits.clone().acquire_owned().await?;
        let opened = opened_tx.clone();
        let kernel = FakeDataplane::new().with_memo(memo.clone());
        let agent = Agent::new(Arc::new(kernel), StateDir::new(state))
            .with_facts(Arc::new(FixedFacts(facts(&cert.host))));
        let config = SessionConfig {
            controllers: controllers.clone(),
            ca: ca.clone(),
            cert: crt,
            key,
            host: Some(cert.host.clone()),
            heartbeat: HEARTBEAT,
            backoff_min,
            backoff_max,
            source: Some(cert.source),
        };
        let (first_tx, mut first_rx) = mpsc::channel::<Result<()>>(1);
        let mut companions = Companions::new();
        companions.add(Arc::new(Observer::new(
            index,
            counters.clone(),
            clock.clone(),
            first_tx,
        )));
        companions.add(Arc::new(VerifyAnswer {
            agent: agent.clone(),
            counters: counters.clone(),
        }));
        let host = cert.host;
        tokio::spawn(async move {
            let r =
                portcullis_agent::session::run(agent, config, companions, std::future::pending())
                    .await;
            if let Err(e) = r {
                eprintln!("sim: {host}: the agent session ended: {e:#}");
            }
        });
        // The permit is released once this agent's first session is open (or failed).
        tokio::spawn(async move {
            let r = first_rx
                .recv()
                .await
                .unwrap_or_else(|| Err(anyhow::anyhow!("agent session ended")));
            drop(permit);
            let _ = opened.send(r).await;
        });
    }
    drop(opened_tx);
    ready_then_serve(opened_rx, t, &counters, &clock).await;
    eprintln!(
        "sim: {} Desired answered; exiting",
        counters.answered.load(Ordering::Relaxed)
    );
    drop(root);
    Ok(())
}

/// Once every first session is open (or failed; `opened` yields one result per agent):
/// print `READY <s> <ok> <failed>`, then answer `STATS` and `STORM` lines on stdin until
/// it closes (the child-process protocol of every simulated fleet).
async fn ready_then_serve(
    mut opened_rx: mpsc::Receiver<Result<()>>,
    t: Instant,
    counters: &Counters,
    clock: &Arc<StormClock>,
) {
    let mut ok = 0usize;
    let mut failed = 0usize;
    let mut first_error = None;
    while let Some(r) = opened_rx.recv().await {
        match r {
            Ok(()) => ok += 1,
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    if let Some(e) = first_error {
        eprintln!("sim: {failed} session(s) failed; first: {e}");
    }
    println!("READY {:.3} {ok} {failed}", t.elapsed().as_secs_f64());

    // Serve until the parent closes our stdin.
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match line.trim() {
            "STATS" => println!("STATS {}", counters.line()),
            "STORM" => {
                clock.mark();
                let clock = clock.clone();
                tokio::spawn(async move {
                    let r = clock.wait(Duration::from_secs(120)).await;
                    let ms = |q: f64| r.quantile(q).as_secs_f64() * 1e3;
                    println!(
                        "STORM {} {} {:.1} {:.1} {:.1} {} {} {} {}",
                        r.n,
                        r.back,
                        ms(0.5),
                        ms(0.99),
                        ms(1.0),
                        clock.attempts.load(Ordering::Relaxed),
                        clock.failures.load(Ordering::Relaxed),
                        r.refused_agents,
                        r.max_failures
                    );
                });
            }
            _ => {}
        }
    }
}
