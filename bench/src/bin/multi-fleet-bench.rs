//! multi-fleet-bench: several controllers on one PostgreSQL (issue 12).
//!
//! Process layout:
//!   multi-fleet-bench        orchestrator: a PostgreSQL cluster for the run (Debian's
//!                            postgresql package, as `fleet-bench --postgres` starts it),
//!                            the PKI, `--controllers` real `portcullis serve` processes
//!                            on one database, the admin client (to the first);
//!   multi-fleet-bench sim .. per controller, `--per` simulated agents
//!                            (`portcullis_bench::sim`) connected to it and given the
//!                            others to fail over to (the agent's `--controller` list),
//!                            reconnecting with the agent's backoff 250 ms .. 30 s.
//!
//! 1. One revision applied through the first controller: the time from `Admin.Apply`
//!    until its stream reported every host of the fleet `Applied` (those held by the other
//!    controllers reached through the database: `NOTIFY`, then their own push).
//! 2. The last controller killed (SIGKILL): the time until every one of its agents has a
//!    session open on another controller (TCP + TLS + `Hello` attesting the revision,
//!    answered: the controller compared it with the expected hash), then until `Status`
//!    on the first controller shows every host of the fleet connected with its hash
//!    matching the revision.
//!
//! `target/release/multi-fleet-bench [--controllers 3] [--per 4000] [--write docs/BENCHMARKS.md]`
//! (needs `target/release/portcullis`: `cargo build --release -p portcullis-controller`).

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use portcullis_bench::fleet::{SimChild, SimCmd, apply_all, bind_loopback, make_pki, parse_secs};
use portcullis_bench::serve::Controller;
use portcullis_bench::{Table, machine, raise_nofile, write_section};
use portcullis_controller::pki::tls::client_tls;
use portcullis_proto::v1;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tonic::transport::Endpoint;

#[derive(Parser, Debug)]
#[command(about = "Several controllers on one PostgreSQL: apply through one, kill one")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Controllers on the one database.
    #[arg(long, default_value_t = 3)]
    controllers: usize,
    /// Simulated agents per controller.
    #[arg(long, default_value_t = 4000)]
    per: usize,
    /// Concurrent connection attempts of each sim's first connect.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Give up on any phase after this long.
    #[arg(long, default_value = "300s", value_parser = parse_secs)]
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

const PORT_BASE: u16 = 18_200;

/// The run's figures.
#[derive(Debug)]
struct Figures {
    connect_s: f64,
    apply_s: f64,
    applied: usize,
    back_p50_ms: f64,
    back_p99_ms: f64,
    back_max_ms: f64,
    back: usize,
    in_sync_s: f64,
    in_sync: usize,
    failed_attempts: u64,
}

async fn bench(cli: &Cli) -> Result<Figures> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if cli.controllers < 2 {
        bail!("--controllers: at least 2");
    }
    let total = cli.controllers * cli.per;
    let bin = match &cli.portcullis {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("executable without a directory")?
            .join("portcullis"),
    };
    let cluster = portcullis_testkit::postgres::Cluster::start(&[
        "fsync=on",
        "full_page_writes=on",
        "synchronous_commit=off",
        "shared_buffers=512MB",
        "max_connections=400",
    ])
    .map_err(|e| anyhow::anyhow!("starting PostgreSQL: {e}"))?;
    let db = cluster
        .fresh_database()
        .map_err(|e| anyhow::anyhow!("a database: {e}"))?;
    let dir = tempfile::tempdir()?;
    let pki = make_pki(dir.path())?;
    // Free ports for every controller and its metrics, all held until all are chosen.
    let mut held = Vec::new();
    for i in 0..cli.controllers {
        let base = PORT_BASE + u16::try_from(i)? * 2;
        held.push((bind_loopback(base).await?, bind_loopback(base + 100).await?));
    }
    let addrs: Vec<_> = held
        .iter()
        .map(|(a, b)| Ok((a.local_addr()?, b.local_addr()?)))
        .collect::<Result<_>>()?;
    drop(held);
    let urls: Vec<String> = addrs.iter().map(|(l, _)| format!("https://{l}")).collect();
    let mut controllers = Vec::new();
    for &(listen, metrics) in &addrs {
        let (c, _) =
            Controller::start_on(&bin, dir.path(), listen, metrics, std::ffi::OsStr::new(&db))
                .await?;
        controllers.push(c);
    }
    let admin_tls = {
        let role = portcullis_controller::identity::Role::Admin("bench".into());
        let (cert, key) = pki.cert_paths(&role);
        client_tls(&pki.ca_cert(), &cert, &key, None)?
    };
    let ch = Endpoint::from_shared(urls[0].clone())?
        .tls_config(admin_tls)?
        .connect()
        .await
        .context("admin connect")?;
    let mut admin = v1::admin_client::AdminClient::new(ch);

    // One sim per controller: its agents start there, the others are their failover.
    let t = Instant::now();
    let mut sims = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let mut args: Vec<OsString> = vec![
            "--concurrency".into(),
            cli.concurrency.to_string().into(),
            "sim".into(),
            "--url".into(),
            url.into(),
            "--n".into(),
            cli.per.to_string().into(),
            "--pki".into(),
            pki.dir().into(),
            "--first".into(),
            (i * cli.per).to_string().into(),
            "--backoff-min".into(),
            "250ms".into(),
            "--backoff-max".into(),
            "30000ms".into(),
        ];
        for k in 1..urls.len() {
            args.push("--failover".into());
            args.push(urls[(i + k) % urls.len()].clone().into());
        }
        sims.push(SimChild::spawn(args)?);
    }
    for sim in &mut sims {
        sim.expect("CERTS", cli.timeout).await?;
    }
    for sim in &mut sims {
        let ready = sim.expect("READY", cli.timeout).await?;
        let connected: usize = ready.get(1).map_or(Ok(0), |s| s.parse())?;
        if connected != cli.per {
            bail!("only {connected} of {} agents of a sim connected", cli.per);
        }
    }
    let connect_s = t.elapsed().as_secs_f64();
    eprintln!(
        "multi-fleet-bench: {total} agents on {} controllers",
        cli.controllers
    );

    let t = Instant::now();
    let applied = apply_all(&mut admin, total, cli.timeout).await?;
    let apply_s = t.elapsed().as_secs_f64();
    eprintln!("multi-fleet-bench: {applied} of {total} applied in {apply_s:.2} s");
    if applied != total {
        bail!("only {applied} of {total} hosts applied the revision");
    }

    // Kill the last controller; its agents come back on the others.
    let last = sims.len() - 1;
    sims[last].say("STORM").await?;
    let t = Instant::now();
    controllers.pop().context("a controller")?.kill().await?;
    let r = sims[last].expect("STORM", cli.timeout).await?;
    let num = |i: usize| -> Result<f64> {
        r.get(i)
            .context("short STORM line")?
            .parse::<f64>()
            .context("STORM line")
    };
    let back = r.get(1).map_or(Ok(0), |s| s.parse())?;
    // Then every host connected with its hash matching, as the first controller sees it.
    let (in_sync, in_sync_s) = loop {
        let status = admin
            .status(v1::StatusRequest {})
            .await
            .context("status")?
            .into_inner();
        let ok = status
            .hosts
            .iter()
            .filter(|h| h.connected && h.hash_match && h.applied_revision == h.desired_revision)
            .count();
        if ok == total || t.elapsed() > cli.timeout {
            break (ok, t.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for sim in sims {
        sim.stop().await;
    }
    for c in controllers {
        c.kill().await?;
    }
    Ok(Figures {
        connect_s,
        apply_s,
        applied,
        back_p50_ms: num(2)?,
        back_p99_ms: num(3)?,
        back_max_ms: num(4)?,
        back,
        in_sync_s,
        in_sync,
        failed_attempts: r.get(6).map_or(Ok(0), |s| s.parse())?,
    })
}

fn render(cli: &Cli, f: &Figures) -> String {
    let total = cli.controllers * cli.per;
    let mut t = Table::new(&["step", "figure"]);
    t.row(vec![
        format!("{total} agents connected ({} per controller)", cli.per),
        format!("{:.2} s", f.connect_s),
    ]);
    t.row(vec![
        "one revision through controller 1 → every host `Applied`".into(),
        format!("**{:.2} s** ({}/{total})", f.apply_s, f.applied),
    ]);
    t.row(vec![
        format!(
            "controller {} killed → its {} agents' sessions open on the others",
            cli.controllers, cli.per
        ),
        format!(
            "**{:.2} s** (p50 {:.0} ms, p99 {:.0} ms; {}/{} back; {} failed attempts)",
            f.back_max_ms / 1e3,
            f.back_p50_ms,
            f.back_p99_ms,
            f.back,
            cli.per,
            f.failed_attempts
        ),
    ]);
    t.row(vec![
        "… → `Status` on controller 1: every host connected, hash matching".into(),
        format!(
            "{:.2} s after the kill ({}/{total})",
            f.in_sync_s, f.in_sync
        ),
    ]);
    format!(
        "Machine: {}. {} `portcullis serve` processes on one PostgreSQL 15 database (a cluster started for the run on the same cores: Unix socket, fsync on, synchronous_commit=off), {} simulated agents each (one sim process per controller, each agent given the other controllers to fail over to, backoff 250 ms .. 30 s), loopback, TLS 1.3 mutual auth.\n\n{}",
        machine(),
        cli.controllers,
        cli.per,
        t.render()
    )
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
            let f = rt.block_on(bench(&cli))?;
            eprintln!("{f:?}");
            let out = render(&cli, &f);
            println!("{out}");
            if let Some(path) = &cli.write {
                write_section(path, "multi-fleet-bench", &out)?;
            }
            Ok(())
        }
    }
}
