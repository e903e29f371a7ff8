//! fleet-bench: one controller pushing a revision to N simulated agents over real mutual
//! TLS on loopback, against a raw tonic mTLS server pushing the same message to N streams.
//!
//! Process layout (so each server's fds, CPU and RSS are its own):
//!   fleet-bench            orchestrator: for each N, runs `one --kind raw` then
//!                          `one --kind controller`, collects their JSON, prints the table.
//!   fleet-bench one ...    the server under test (in-process `portcullis_controller::server::run`,
//!                          or the raw tonic server), plus the admin client; spawns
//!   fleet-bench sim ...    N simulated agents (see `portcullis_bench::sim`).
//!
//! Measured per N: connect (all N sessions opened, TLS 1.3 mutual handshakes included),
//! server CPU and RSS after connect, then two pushes: for the controller, `Admin.Apply`
//! (site + inventory of N hosts) until the Apply stream reported N hosts Applied with the
//! expected hash; for raw, one `Desired` pushed to every stream until N `Applied` acks.
//!
//! `cargo run --release -p portcullis-bench --bin fleet-bench -- [--sizes 100,1000,10000] [--write docs/BENCHMARKS.md]`

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use portcullis_bench::fleet::{
    SimChild, SimCmd, apply_all, bind_loopback, cpu_now, inventory_yaml, make_pki, median,
    parse_secs, rss_now, site_yaml,
};
use portcullis_bench::raw::{RawSession, RawState};
use portcullis_bench::{Table, machine, raise_nofile, ratio, write_section};
use portcullis_controller::pki::tls::{client_tls, server_tls};
use portcullis_controller::server::{ServeConfig, expected_hash, run};
use portcullis_policy::{Source, site};
use portcullis_proto::v1;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::Command;
use tokio::sync::oneshot;
use tonic::transport::{Endpoint, Server};

#[derive(Parser, Debug)]
#[command(about = "Controller fan-out to N simulated mTLS agents vs raw tonic")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Fleet sizes.
    #[arg(long, value_delimiter = ',', default_values_t = [100, 1000, 10000])]
    sizes: Vec<usize>,
    /// Pushes measured per run (the first one also grows per-connection buffers).
    #[arg(long, default_value_t = 3)]
    pushes: usize,
    /// Concurrent connection attempts of the simulated agents.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Give up on any phase after this long.
    #[arg(long, default_value = "180s", value_parser = parse_secs)]
    timeout: Duration,
    /// Replace this benchmark's section of a markdown file (e.g. docs/BENCHMARKS.md).
    #[arg(long)]
    write: Option<PathBuf>,
    /// Also run the controller on PostgreSQL (a cluster started for the run from
    /// Debian's postgresql package: fsync on, synchronous_commit=off)
    #[arg(long)]
    postgres: bool,
    /// The PostgreSQL database of a `one --kind postgres` run (set by the orchestrator).
    #[arg(long)]
    db: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// One server run (internal).
    One {
        #[arg(long)]
        kind: Kind,
        #[arg(long)]
        n: usize,
    },
    /// Simulated agents (internal).
    Sim(SimCmd),
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq, Serialize, Deserialize)]
enum Kind {
    Raw,
    Controller,
    /// The controller on PostgreSQL (a cluster the orchestrator started, `--db`).
    Postgres,
}

/// What one `one` run reports (a JSON line on stdout).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OneResult {
    kind: Kind,
    n: usize,
    connected: usize,
    connect_s: f64,
    connect_cpu_s: f64,
    rss_idle_mib: f64,
    rss_connected_mib: f64,
    message_bytes: usize,
    push_s: Vec<f64>,
    push_cpu_s: Vec<f64>,
    applied: Vec<usize>,
    rss_after_mib: f64,
    sim_cpu_s: f64,
}

const PORT_BASE: u16 = 17_400;

/// One run of `kind` with `n` agents, in this process.
async fn one(kind: Kind, n: usize, cli: &Cli) -> Result<OneResult> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let pki = make_pki(dir.path())?;
    let listener = bind_loopback(PORT_BASE).await?;
    let url = format!("https://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let shutdown = async {
        let _ = stop_rx.await;
    };
    let raw = Arc::new(RawState::default());
    let server = match kind {
        Kind::Controller | Kind::Postgres => {
            let db = match (kind, &cli.db) {
                (Kind::Postgres, Some(url)) => {
                    portcullis_controller::store::DbSpec::Postgres(url.clone())
                }
                (Kind::Postgres, None) => bail!("--kind postgres needs --db"),
                _ => dir.path().join("controller.db").into(),
            };
            let config = ServeConfig {
                db,
                db_ca: None,
                pki: pki.dir().to_path_buf(),
                max_connections: n + 64,
                pre_auth: Default::default(),
                logs: Default::default(),
            };
            tokio::spawn(run(config, listener, shutdown))
        }
        Kind::Raw => {
            let tls = server_tls(pki.dir())?;
            let svc = v1::session_server::SessionServer::new(RawSession { state: raw.clone() });
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            tokio::spawn(async move {
                Server::builder()
                    .tls_config(tls)?
                    .http2_keepalive_interval(Some(Duration::from_secs(20)))
                    .http2_keepalive_timeout(Some(Duration::from_secs(20)))
                    .add_service(svc)
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await?;
                Ok(())
            })
        }
    };
    let admin_tls = {
        let (cert, key) = pki.cert_paths(&portcullis_controller::identity::Role::Admin(
            "bench".into(),
        ));
        client_tls(&pki.ca_cert(), &cert, &key, None)?
    };
    let mut admin = match kind {
        Kind::Controller | Kind::Postgres => {
            let ch = Endpoint::from_shared(url.clone())?
                .tls_config(admin_tls)?
                .connect()
                .await
                .context("admin connect")?;
            Some(v1::admin_client::AdminClient::new(ch))
        }
        Kind::Raw => None,
    };

    let rss_idle = rss_now();
    let mut sim = SimChild::start(&url, pki.dir(), n, cli.concurrency)?;
    sim.expect("CERTS", cli.timeout).await?;
    let (cpu0, t0) = (cpu_now(), Instant::now());
    let ready = sim.expect("READY", cli.timeout).await?;
    let connect = t0.elapsed();
    let connect_cpu = cpu_now() - cpu0;
    let connected: usize = ready.get(1).map_or(Ok(0), |s| s.parse())?;
    let rss_connected = rss_now();

    // The message: a Desired for this policy (what the controller sends each host).
    let fleet = site::load_fleet(
        &Source::new("site.yml", site_yaml()),
        &Source::new("inventory.yml", inventory_yaml(n)),
    )
    .map_err(|d| anyhow::anyhow!("invalid bench site: {d}"))?;
    let host0 = portcullis_bench::sim::host_name(0);
    let policy = fleet.hosts.get(&host0).context("host 0 not targeted")?;
    let desired = |revision: u64| v1::ControllerMessage {
        msg: Some(v1::controller_message::Msg::Desired(v1::Desired {
            revision,
            policy: Some(v1::HostPolicy::from(policy)),
            expected_hash: expected_hash(policy, &portcullis_bench::sim::facts(&host0), revision),
            ..Default::default()
        })),
    };
    let message_bytes = desired(1).encoded_len();

    let mut push_s = Vec::new();
    let mut push_cpu_s = Vec::new();
    let mut applied = Vec::new();
    for k in 0..cli.pushes {
        let (cpu_a, t) = (cpu_now(), Instant::now());
        let ok = match (&mut admin, kind) {
            (Some(admin), Kind::Controller | Kind::Postgres) => {
                apply_all(admin, n, cli.timeout).await?
            }
            _ => {
                let target = raw.acks() + n;
                let msg = desired(u64::try_from(k)? + 1);
                raw.push(&msg).await;
                let deadline = tokio::time::Instant::now() + cli.timeout;
                while raw.acks() < target {
                    let notified = raw.acked.notified();
                    if raw.acks() >= target {
                        break;
                    }
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        bail!("raw: {} of {n} acks", raw.acks() + n - target);
                    }
                }
                n
            }
        };
        push_s.push(t.elapsed().as_secs_f64());
        push_cpu_s.push(cpu_now() - cpu_a);
        applied.push(ok);
    }
    let rss_after = rss_now();
    let sim_cpu = sim.cpu();
    sim.stop().await;
    drop(admin);
    let _ = stop_tx.send(());
    if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(10), server).await {
        eprintln!("server: {e:#}");
    }
    Ok(OneResult {
        kind,
        n,
        connected,
        connect_s: connect.as_secs_f64(),
        connect_cpu_s: connect_cpu,
        rss_idle_mib: rss_idle,
        rss_connected_mib: rss_connected,
        message_bytes,
        push_s,
        push_cpu_s,
        applied,
        rss_after_mib: rss_after,
        sim_cpu_s: sim_cpu,
    })
}

/// Runs `fleet-bench one` in a child process and parses its JSON line.
async fn run_one(kind: Kind, n: usize, cli: &Cli, db: Option<&str>) -> Result<OneResult> {
    let kind_arg = match kind {
        Kind::Raw => "raw",
        Kind::Controller => "controller",
        Kind::Postgres => "postgres",
    };
    let mut cmd = Command::new(std::env::current_exe()?);
    if let Some(db) = db {
        cmd.args(["--db", db]);
    }
    let out = cmd
        .args(["--pushes", &cli.pushes.to_string()])
        .args(["--concurrency", &cli.concurrency.to_string()])
        .args(["--timeout", &format!("{}s", cli.timeout.as_secs())])
        .args(["one", "--kind", kind_arg, "--n", &n.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "fleet-bench one --kind {kind_arg} --n {n} failed ({})",
            out.status
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().context("no result line")?;
    Ok(serde_json::from_str(line)?)
}

fn render(results: &[(OneResult, OneResult, Option<OneResult>)], cli: &Cli) -> String {
    let mut out = format!(
        "Machine: {}. Loopback, TLS 1.3 mutual auth, one process for the server under test \
         and one for all simulated agents (real agent sessions, `portcullis_agent::session::run`, on \
         an in-memory kernel: each compiles, applies, reads back, records last-known-good and \
         answers; the raw server's pushes are answered the same way). \
         Push message: one `Desired`, {} bytes encoded. {} pushes per run: \"first\" is the first push \
         after connect, \"then\" the median of the others.\n\n",
        machine(),
        results.first().map_or(0, |r| r.0.message_bytes),
        cli.pushes
    );
    let mut t = Table::new(&[
        "agents",
        "server",
        "connect s",
        "server CPU connect s",
        "RSS connected MiB",
        "push → all acked, first s",
        "then s",
        "server CPU per push s",
        "ratio vs raw (then)",
        "applied",
    ]);
    for (raw, ctl, pg) in results {
        for r in [Some(raw), Some(ctl), pg.as_ref()].into_iter().flatten() {
            let rest: Vec<f64> = r.push_s.iter().skip(1).copied().collect();
            let rest_raw: Vec<f64> = raw.push_s.iter().skip(1).copied().collect();
            let then = if rest.is_empty() {
                median(&r.push_s)
            } else {
                median(&rest)
            };
            let then_raw = if rest_raw.is_empty() {
                median(&raw.push_s)
            } else {
                median(&rest_raw)
            };
            let name = match r.kind {
                Kind::Raw => "raw tonic (baseline)",
                Kind::Controller => "portcullis controller (SQLite)",
                Kind::Postgres => "portcullis controller (PostgreSQL)",
            };
            t.row(vec![
                r.n.to_string(),
                name.to_owned(),
                format!("{:.2}", r.connect_s),
                format!("{:.2}", r.connect_cpu_s),
                format!("{:.0}", r.rss_connected_mib),
                format!("{:.3}", r.push_s.first().copied().unwrap_or(0.0)),
                format!("{then:.3}"),
                format!("{:.3}", median(&r.push_cpu_s)),
                ratio(
                    Duration::from_secs_f64(then),
                    Duration::from_secs_f64(then_raw),
                ),
                format!("{}/{}", r.applied.iter().min().copied().unwrap_or(0), r.n),
            ]);
        }
    }
    out.push_str(&t.render());
    out.push_str(
        "\n\"push → all acked\": controller = `Admin.Apply` (parse site + inventory, compile every host, \
         store the revision, push, collect `Applied` with the expected hash, stream the results); raw = \
         push one `Desired` to every stream and count `Applied` acks. RSS is the server process's.\n",
    );
    out
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    raise_nofile()?;
    let rt = tokio::runtime::Runtime::new()?;
    match &cli.cmd {
        Some(Cmd::Sim(sim)) => {
            rt.block_on(portcullis_bench::sim::run(sim.sim_args(cli.concurrency)?))
        }
        Some(Cmd::One { kind, n }) => {
            let r = rt.block_on(one(*kind, *n, &cli))?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        None => {
            let cluster = if cli.postgres {
                Some(
                    portcullis_testkit::postgres::Cluster::start(&[
                        "fsync=on",
                        "full_page_writes=on",
                        "synchronous_commit=off",
                        "shared_buffers=512MB",
                        "max_connections=400",
                    ])
                    .map_err(|e| anyhow::anyhow!("starting PostgreSQL: {e}"))?,
                )
            } else {
                None
            };
            let mut results = Vec::new();
            for &n in &cli.sizes {
                eprintln!("fleet-bench: {n} agents, raw tonic ...");
                let raw = rt.block_on(run_one(Kind::Raw, n, &cli, None))?;
                eprintln!("  {raw:?}");
                eprintln!("fleet-bench: {n} agents, controller ...");
                let ctl = rt.block_on(run_one(Kind::Controller, n, &cli, None))?;
                eprintln!("  {ctl:?}");
                let pg = match &cluster {
                    Some(c) => {
                        let db = c
                            .fresh_database()
                            .map_err(|e| anyhow::anyhow!("a database: {e}"))?;
                        eprintln!("fleet-bench: {n} agents, controller on PostgreSQL ...");
                        let pg = rt.block_on(run_one(Kind::Postgres, n, &cli, Some(&db)))?;
                        eprintln!("  {pg:?}");
                        Some(pg)
                    }
                    None => None,
                };
                results.push((raw, ctl, pg));
            }
            let out = render(&results, &cli);
            println!("{out}");
            if let Some(path) = &cli.write {
                write_section(path, "fleet-bench", &out)?;
            }
            Ok(())
        }
    }
}
