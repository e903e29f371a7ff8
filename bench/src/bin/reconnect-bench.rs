//! reconnect-bench: N simulated agents reconnecting at once after the controller
//! restarts, with and without a hostile source holding idle TCP sockets open to the
//! controller port (issue 10: the pre-authentication limits must not keep the fleet out).
//!
//! Process layout:
//!   reconnect-bench        orchestrator: PKI, the real `portcullis serve` binary (default
//!                          pre-authentication flags), the admin client, the idle sockets;
//!   reconnect-bench sim .. N simulated agents (`portcullis_bench::sim`) that reconnect
//!                          like the agent: full-jitter exponential backoff 250 ms .. 30 s.
//!
//! Per run: all N agents connect and apply one revision (so each `Hello` after the storm
//! attests it); then per storm: `STORM` marks the agents' clock, the controller is killed
//! (SIGKILL: every session drops at once) and started again on the same port and database,
//! and every agent's time from the mark to its re-opened session (TCP + TLS 1.3 mutual
//! handshake + `Hello` answered) is collected. The storm runs without idle sockets
//! (baseline) and with `--idle` sockets from `--idle-source` held open the whole time
//! (re-opened `--idle-reopen` after the controller closes one), in the same run.
//!
//! `target/release/reconnect-bench [--n 10000] [--idle 500] [--runs 1] [--write docs/BENCHMARKS.md]`
//! (needs `target/release/portcullis`: `cargo build --release -p portcullis-controller`).

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use portcullis_bench::fleet::{
    SimChild, SimCmd, apply_all, bind_loopback, make_pki, parse_millis, parse_secs,
};
use portcullis_bench::serve::{Controller, SERVE_FLAGS, listen_overflows, refusals};
use portcullis_bench::storm::IdleSockets;
use portcullis_bench::{Table, machine, raise_nofile, write_section};
use portcullis_controller::pki::tls::client_tls;
use portcullis_proto::v1;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tonic::transport::Endpoint;

#[derive(Parser, Debug)]
#[command(about = "N agents reconnecting at once, with and without idle sockets held open")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Simulated agents.
    #[arg(long, default_value_t = 10_000)]
    n: usize,
    /// Idle TCP sockets held open from one source during the second storm of each run.
    #[arg(long, default_value_t = 500)]
    idle: usize,
    /// Source address of the idle sockets.
    #[arg(long, default_value = "127.0.0.99")]
    idle_source: IpAddr,
    /// Pause before an idle socket the controller closed is opened again.
    #[arg(long, default_value = "100ms", value_parser = parse_millis)]
    idle_reopen: Duration,
    /// Storm pairs (baseline, idle sockets), order alternating.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Concurrent connection attempts of the agents' first connect (not the storm's).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// The agents' reconnect backoff (the agent's defaults).
    #[arg(long, default_value = "250ms", value_parser = parse_millis)]
    backoff_min: Duration,
    #[arg(long, default_value = "30000ms", value_parser = parse_millis)]
    backoff_max: Duration,
    /// Give up on any phase after this long.
    #[arg(long, default_value = "180s", value_parser = parse_secs)]
    timeout: Duration,
    /// The controller binary (default: `portcullis` next to this executable).
    #[arg(long)]
    portcullis: Option<PathBuf>,
    /// Replace this benchmark's section of a markdown file (e.g. docs/BENCHMARKS.md).
    #[arg(long)]
    write: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Simulated agents (internal).
    Sim(SimCmd),
}

const PORT_BASE: u16 = 17_800;

/// One storm's figures.
#[derive(Debug, Clone)]
struct Storm {
    idle: bool,
    restart_s: f64,
    back: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    attempts: u64,
    failures: u64,
    refused_agents: usize,
    max_failures: u64,
    repushed: u64,
    listen_overflows: Option<u64>,
    idle_opened: u64,
    idle_refused: u64,
    idle_open_at_end: usize,
    refusals: String,
}

async fn bench(cli: &Cli) -> Result<(Vec<Storm>, f64)> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bin = match &cli.portcullis {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("executable without a directory")?
            .join("portcullis"),
    };
    let dir = tempfile::tempdir()?;
    let pki = make_pki(dir.path())?;
    // Free ports for the controller (and its metrics), released for it to bind.
    let (listen, metrics) = {
        let a = bind_loopback(PORT_BASE).await?;
        let b = bind_loopback(PORT_BASE + 100).await?;
        (a.local_addr()?, b.local_addr()?)
    };
    let url = format!("https://{listen}");
    let (mut ctl, _) = Controller::start(&bin, dir.path(), listen, metrics).await?;

    let admin_tls = {
        let role = portcullis_controller::identity::Role::Admin("bench".into());
        let (cert, key) = pki.cert_paths(&role);
        client_tls(&pki.ca_cert(), &cert, &key, None)?
    };
    let ch = Endpoint::from_shared(url.clone())?
        .tls_config(admin_tls)?
        .connect()
        .await
        .context("admin connect")?;
    let mut admin = v1::admin_client::AdminClient::new(ch);

    let backoff = (cli.backoff_min, cli.backoff_max);
    let mut sim = SimChild::start_reconnecting(&url, pki.dir(), cli.n, cli.concurrency, backoff)?;
    sim.expect("CERTS", cli.timeout).await?;
    let ready = sim.expect("READY", cli.timeout).await?;
    let connected: usize = ready.get(1).map_or(Ok(0), |s| s.parse())?;
    if connected != cli.n {
        bail!("only {connected} of {} agents connected", cli.n);
    }
    let t = Instant::now();
    let applied = apply_all(&mut admin, cli.n, cli.timeout).await?;
    if applied != cli.n {
        bail!("only {applied} of {} hosts applied the revision", cli.n);
    }
    let apply_s = t.elapsed().as_secs_f64();
    eprintln!(
        "reconnect-bench: {} agents connected, revision applied in {apply_s:.2} s",
        cli.n
    );
    drop(admin);

    let mut storms = Vec::new();
    // The agents' attempt counters are cumulative: (attempts, failures) before this storm.
    let mut seen = (0u64, 0u64);
    for run in 0..cli.runs {
        let order = if run % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for idle in order {
            let holder = if idle && cli.idle > 0 {
                let h = IdleSockets::start(cli.idle_source, listen, cli.idle, cli.idle_reopen);
                let up = h.wait_up(Duration::from_secs(30)).await;
                eprintln!("reconnect-bench: {up} of {} idle sockets up", cli.idle);
                // Let the pending-handshake deadline cycle once with them held.
                tokio::time::sleep(Duration::from_secs(6)).await;
                Some(h)
            } else {
                None
            };
            let before = stats(&mut sim).await?;
            eprintln!("reconnect-bench: storm (idle sockets: {idle}) ...");
            let overflows = listen_overflows();
            sim.say("STORM").await?;
            ctl.kill().await?;
            let (new, restart) = Controller::start(&bin, dir.path(), listen, metrics).await?;
            ctl = new;
            let r = sim.expect("STORM", cli.timeout).await?;
            let after = stats(&mut sim).await?;
            let overflows = listen_overflows()
                .zip(overflows)
                .map(|(b, a)| b.saturating_sub(a));
            let num = |i: usize| -> Result<f64> {
                r.get(i)
                    .context("short STORM line")?
                    .parse::<f64>()
                    .context("STORM line")
            };
            let refused = refusals(metrics).await;
            let (idle_opened, idle_refused, idle_open) = holder.as_ref().map_or((0, 0, 0), |h| {
                let c = &h.counters;
                (
                    c.opened.load(Ordering::Relaxed),
                    c.refused.load(Ordering::Relaxed),
                    c.open_now.load(Ordering::Relaxed),
                )
            });
            drop(holder);
            let s = Storm {
                idle,
                restart_s: restart.as_secs_f64(),
                back: num(1)? as usize,
                p50_ms: num(2)?,
                p99_ms: num(3)?,
                max_ms: num(4)?,
                attempts: (num(5)? as u64).saturating_sub(seen.0),
                failures: (num(6)? as u64).saturating_sub(seen.1),
                refused_agents: num(7)? as usize,
                max_failures: num(8)? as u64,
                repushed: after.saturating_sub(before),
                listen_overflows: overflows,
                idle_opened,
                idle_refused,
                idle_open_at_end: idle_open,
                refusals: refused,
            };
            seen = (seen.0 + s.attempts, seen.1 + s.failures);
            eprintln!("  {s:?}");
            storms.push(s);
            // Every session lasts over 30 s before the next storm, so every agent's backoff
            // is reset (agent/src/session.rs), like a fleet that was up a while: each storm
            // starts from the same state.
            tokio::time::sleep(Duration::from_secs(31)).await;
        }
    }
    sim.stop().await;
    ctl.kill().await?;
    Ok((storms, apply_s))
}

/// `Desired` answered so far by the agents (first field of `STATS`).
async fn stats(sim: &mut SimChild) -> Result<u64> {
    sim.say("STATS").await?;
    let f = sim.expect("STATS", Duration::from_secs(30)).await?;
    Ok(f.first().context("empty STATS")?.parse()?)
}

fn render(storms: &[Storm], cli: &Cli, apply_s: f64) -> String {
    let mut out = format!(
        "Machine: {}. The real `portcullis serve` (flags: `{}`) on loopback, TLS 1.3 mutual \
         auth; {} simulated agents in one process, each from its own source address \
         (127.1.x.y), reconnecting like the agent (full-jitter exponential backoff {} ms .. \
         {} s, connect timeout 5 s). Before the storms every agent applied one revision \
         ({apply_s:.2} s), so each `Hello` attests it. Storm: the controller is killed \
         (SIGKILL) and started again on the same port and database; \"back\" = agent's \
         session re-opened (TCP + TLS + `Hello` answered), timed from the kill.\n\n",
        machine(),
        SERVE_FLAGS.join(" "),
        cli.n,
        cli.backoff_min.as_millis(),
        cli.backoff_max.as_secs(),
    );
    let mut t = Table::new(&[
        "agents",
        "idle sockets from one source",
        "controller restart s",
        "back",
        "per agent p50 s",
        "p99 s",
        "max = all back s",
        "connect attempts (failed)",
        "agents refused ≥ 1× / most refusals of one",
        "`Desired` re-pushed",
        "kernel listen overflows",
        "idle: opened / refused / open at end",
        "controller refusals after restart",
    ]);
    for s in storms {
        t.row(vec![
            cli.n.to_string(),
            if s.idle {
                format!("{} from {}", cli.idle, cli.idle_source)
            } else {
                "none (baseline)".into()
            },
            format!("{:.2}", s.restart_s),
            format!("{}/{}", s.back, cli.n),
            format!("{:.2}", s.p50_ms / 1e3),
            format!("{:.2}", s.p99_ms / 1e3),
            format!("{:.2}", s.max_ms / 1e3),
            format!("{} ({})", s.attempts, s.failures),
            format!("{} / {}", s.refused_agents, s.max_failures),
            s.repushed.to_string(),
            s.listen_overflows.map_or("-".into(), |n| n.to_string()),
            if s.idle {
                format!(
                    "{} / {} / {}",
                    s.idle_opened, s.idle_refused, s.idle_open_at_end
                )
            } else {
                "-".into()
            },
            s.refusals.clone(),
        ]);
    }
    out.push_str(&t.render());
    out.push_str(&format!(
        "\nConnect attempts: the agents' reconnect attempts in that storm (failed: refused, TLS failed or timed out). Idle sockets send nothing; one \
         the controller closes is opened again after {} ms (the controller keeps at most \
         `--max-pending-per-source` of them, each until `--tls-handshake-timeout`). \
         \"Controller refusals\": `portcullis_preauth_refused_connections_total` of the \
         restarted controller by reason, scraped when every agent was back. \
         \"Kernel listen overflows\": `ListenOverflows` of `/proc/net/netstat` over the storm \
         (the accept queue was full: the kernel dropped the client's ACK and retransmits its \
         SYN-ACK 1, 2, 4, 8, 16 s later while the client, connected, waits for the TLS reply).\n\n\
         Command: `target/release/reconnect-bench --n {} --idle {} --runs {}{}`\n",
        cli.idle_reopen.as_millis(),
        cli.n,
        cli.idle,
        cli.runs,
        cli.write
            .as_ref()
            .map_or(String::new(), |p| format!(" --write {}", p.display())),
    ));
    out
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    raise_nofile()?;
    let rt = tokio::runtime::Runtime::new()?;
    match &cli.cmd {
        Some(Cmd::Sim(sim)) => rt.block_on(portcullis_bench::sim::model::run_model(
            sim.sim_args(cli.concurrency)?,
        )),
        None => {
            let (storms, apply_s) = rt.block_on(bench(&cli))?;
            let out = render(&storms, &cli, apply_s);
            println!("{out}");
            if let Some(path) = &cli.write {
                write_section(path, "reconnect-bench", &out)?;
            }
            Ok(())
        }
    }
}
