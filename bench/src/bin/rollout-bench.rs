//! rollout-bench: a rollout of one revision to N simulated agents in waves (`apply
//! --serial 10%`), with and without commit-confirmed (`--confirm-timeout 30s`), next to a
//! one-shot `apply` of a revision to the same agents, in the same run.
//!
//! Process layout (as fleet-bench):
//!   rollout-bench          orchestrator: one `one` child per N, collects its JSON, renders.
//!   rollout-bench one ...  the controller (`portcullis_controller::server::run`, in
//!                          process) and the admin client; spawns
//!   rollout-bench sim ...  N simulated agents (`portcullis_bench::sim`), which under
//!                          commit-confirmed close their session after `Applied` and come
//!                          back on a new mTLS connection whose `Hello` attests the new
//!                          revision, as the agent does, then count `Confirm`.
//!
//! Per N, after connect and one unmeasured round, each run pushes one new revision per
//! mode (the site policy opens one more port each time, so every push really changes the
//! agents' rules), modes in rotated order:
//!   apply         `ApplyRequest` without serial / confirm (the baseline): until N hosts
//!                 reported Applied with the expected hash;
//!   one-wave      `serial: "100%"`: the rollout engine with a single wave;
//!   waves         `serial: "10%"`: ten waves, each a barrier;
//!   waves-confirm `serial: "10%"`, `confirm_timeout_ms: 30000`: each host must apply, come
//!                 back on a new session attesting the revision, and be sent `Confirm`.
//! For rollouts: from the request to `RolloutFinished`, which must say `succeeded` with
//! every host applied / confirmed (else the bench fails). Controller CPU is user + system
//! time of the `one` process over the push (the controller plus the admin client reading
//! its event stream); per-wave time is `WaveStarted` -> `WaveFinished` as the admin
//! client sees them.
//!
//! `cargo run --release -p portcullis-bench --bin rollout-bench -- [--sizes 100,1000] [--runs 7] [--write docs/BENCHMARKS.md]`

use anyhow::{Context as _, Result, bail, ensure};
use clap::{Parser, Subcommand, ValueEnum};
use portcullis_bench::fleet::{
    SimChild, SimCmd, bind_loopback, cpu_now, inventory_yaml, make_pki, median, parse_secs, rss_now,
};
use portcullis_bench::{Table, machine, raise_nofile, write_section};
use portcullis_controller::identity::Role;
use portcullis_controller::pki::tls::client_tls;
use portcullis_controller::server::{ServeConfig, run};
use portcullis_proto::v1;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::Command;
use tokio::sync::oneshot;
use tokio_stream::StreamExt as _;
use tonic::transport::{Channel, Endpoint};

#[derive(Parser, Debug)]
#[command(about = "Rollout in waves (with and without commit-confirmed) vs one-shot apply")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Fleet sizes.
    #[arg(long, value_delimiter = ',', default_values_t = [100, 1000])]
    sizes: Vec<usize>,
    /// Measured runs per size (each pushes one revision per mode); medians are reported.
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Unmeasured rounds (one push per mode) after connect.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Modes, in the order of the first run (later runs rotate it).
    #[arg(long, value_delimiter = ',', default_values_t = [Mode::Apply, Mode::OneWave, Mode::Waves, Mode::WavesConfirm])]
    modes: Vec<Mode>,
    /// `--serial` of the wave modes.
    #[arg(long, default_value = "10%")]
    serial: String,
    /// `--confirm-timeout` of the waves-confirm mode.
    #[arg(long, default_value = "30s", value_parser = parse_secs)]
    confirm_timeout: Duration,
    /// Concurrent connection attempts of the simulated agents at start.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Give up on any phase after this long.
    #[arg(long, default_value = "300s", value_parser = parse_secs)]
    timeout: Duration,
    /// Replace this benchmark's section of a markdown file (e.g. docs/BENCHMARKS.md).
    #[arg(long)]
    write: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// One controller with `n` simulated agents, every mode (internal).
    One {
        #[arg(long)]
        n: usize,
    },
    /// Simulated agents (internal).
    Sim(SimCmd),
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq, Serialize, Deserialize)]
enum Mode {
    /// One-shot apply: no waves, no confirmation (baseline).
    Apply,
    /// `--serial 100%`: the rollout engine, one wave.
    OneWave,
    /// `--serial <serial>`.
    Waves,
    /// `--serial <serial> --confirm-timeout <confirm-timeout>`.
    WavesConfirm,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Apply => "apply",
            Mode::OneWave => "one-wave",
            Mode::Waves => "waves",
            Mode::WavesConfirm => "waves-confirm",
        })
    }
}

impl Mode {
    fn label(self, cli: &Cli) -> String {
        match self {
            Mode::Apply => "`apply` one-shot (baseline)".to_owned(),
            Mode::OneWave => "`apply --serial 100%` (engine, 1 wave)".to_owned(),
            Mode::Waves => format!("`apply --serial {}`", cli.serial),
            Mode::WavesConfirm => format!(
                "`apply --serial {} --confirm-timeout {}s`",
                cli.serial,
                cli.confirm_timeout.as_secs()
            ),
        }
    }
}

/// One measured push.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Push {
    mode: Mode,
    revision: u64,
    /// Request -> all hosts applied (apply) / `RolloutFinished` (rollouts).
    total_s: f64,
    /// Request -> `Accepted` (validate, compile, anti-lockout check, store).
    accepted_s: f64,
    /// CPU of the controller process over the push.
    cpu_s: f64,
    /// CPU of the simulated agents' process over the push.
    sim_cpu_s: f64,
    /// `WaveStarted` -> `WaveFinished` of each wave.
    waves_s: Vec<f64>,
    /// Sum over the waves of `WaveStarted` -> the wave's last host result (send, apply,
    /// reconnect, confirm).
    settle_s: f64,
    /// Sum over the waves of the last host result -> `WaveFinished` (the health gates:
    /// `VerifyNow` to every host of the wave, their `DriftReport`s).
    gate_s: f64,
    /// Hosts applied (apply, rollouts without confirmation) or confirmed.
    ok: usize,
}

/// What one `one` run reports (a JSON line on stdout).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OneResult {
    n: usize,
    connect_s: f64,
    pushes: Vec<Push>,
    rss_after_mib: f64,
    /// Sim counters at the end: answered, reconnects, confirmed, reverts, reconnect errors,
    /// VerifyNow answered.
    sim_stats: Vec<u64>,
}

const PORT_BASE: u16 = 17_600;

/// ~2 KB policy (as fleet-bench: the seed services plus 80 ports) plus port `10000 + k`,
/// so push `k` changes every agent's rules.
fn site_yaml(k: usize) -> String {
    let mut s = String::from(
        "- name: fleet\n  hosts: all\n  policy:\n    allow:\n      - smtp/tcp\n      - http/tcp\n      - domain/udp\n",
    );
    for i in 0..80 {
        s.push_str(&format!("      - {}/tcp\n", 2000 + 2 * i));
    }
    s.push_str(&format!("      - {}/tcp\n", 10_000 + k));
    s
}

/// The simulated agents' counters (`STATS`).
async fn sim_stats(sim: &mut SimChild, timeout: Duration) -> Result<Vec<u64>> {
    sim.say("STATS").await?;
    sim.expect("STATS", timeout)
        .await?
        .iter()
        .map(|s| s.parse::<u64>().context("STATS field"))
        .collect()
}

/// Push revision `k` in `mode` and follow it to the end; fails unless every host made it.
async fn push(
    admin: &mut v1::admin_client::AdminClient<Channel>,
    sim: &mut SimChild,
    mode: Mode,
    n: usize,
    k: usize,
    cli: &Cli,
) -> Result<Push> {
    let mut req = v1::ApplyRequest {
        site_name: "site.yml".into(),
        site_yaml: site_yaml(k),
        inventory_name: "inventory.yml".into(),
        inventory_yaml: inventory_yaml(n),
        ..Default::default()
    };
    match mode {
        Mode::Apply => {}
        Mode::OneWave => req.serial = "100%".into(),
        Mode::Waves => req.serial = cli.serial.clone(),
        Mode::WavesConfirm => {
            req.serial = cli.serial.clone();
            req.confirm_timeout_ms = u64::try_from(cli.confirm_timeout.as_millis())?;
        }
    }
    let rollout = mode != Mode::Apply;
    let want = if mode == Mode::WavesConfirm {
        v1::HostOutcome::Confirmed
    } else {
        v1::HostOutcome::Applied
    } as i32;
    let confirmed_before = if mode == Mode::WavesConfirm {
        sim_stats(sim, cli.timeout).await?[2]
    } else {
        0
    };

    let (cpu0, sim0, t0) = (cpu_now(), sim.cpu(), Instant::now());
    let mut stream = admin.apply(req).await?.into_inner();
    let deadline = tokio::time::Instant::now() + cli.timeout;
    let (mut accepted_s, mut revision, mut ok) = (0.0, 0, 0usize);
    let mut wave_started: Vec<Option<Instant>> = Vec::new();
    let mut waves_s = Vec::new();
    let (mut settle_s, mut gate_s) = (0.0, 0.0);
    let mut last_host: Option<Instant> = None;
    loop {
        let ev = tokio::time::timeout_at(deadline, stream.next())
            .await
            .with_context(|| format!("{mode}: no end within {:?} ({ok}/{n} ok)", cli.timeout))?
            .with_context(|| format!("{mode}: the stream ended early ({ok}/{n} ok)"))??;
        match ev.event {
            Some(v1::apply_event::Event::Accepted(a)) => {
                accepted_s = t0.elapsed().as_secs_f64();
                revision = a.revision;
                ensure!(
                    a.offline.is_empty(),
                    "{mode}: {} host(s) offline, e.g. {}",
                    a.offline.len(),
                    a.offline[0]
                );
                ensure!(
                    rollout == (a.rollout_id != 0),
                    "{mode}: rollout id {}",
                    a.rollout_id
                );
            }
            Some(v1::apply_event::Event::WaveStarted(w)) => {
                let i = usize::try_from(w.index)?;
                if wave_started.len() <= i {
                    wave_started.resize(i + 1, None);
                }
                wave_started[i] = Some(Instant::now());
            }
            Some(v1::apply_event::Event::WaveFinished(w)) => {
                let i = usize::try_from(w.index)?;
                let started = wave_started
                    .get(i)
                    .copied()
                    .flatten()
                    .context("WaveFinished before WaveStarted")?;
                let settled = last_host.take().unwrap_or(started).max(started);
                settle_s += settled.duration_since(started).as_secs_f64();
                gate_s += settled.elapsed().as_secs_f64();
                waves_s.push(started.elapsed().as_secs_f64());
                ensure!(
                    w.failed == 0,
                    "{mode}: wave {i}: {} host(s) failed",
                    w.failed
                );
            }
            Some(v1::apply_event::Event::Host(h)) => {
                if h.outcome != want {
                    bail!(
                        "{mode}: host {} outcome {:?} (want {:?}): {}",
                        h.host,
                        v1::HostOutcome::try_from(h.outcome),
                        v1::HostOutcome::try_from(want),
                        h.error
                    );
                }
                ok += 1;
                last_host = Some(Instant::now());
                if !rollout && ok == n {
                    break;
                }
            }
            Some(v1::apply_event::Event::Finished(f)) => {
                ensure!(
                    f.status == "succeeded",
                    "{mode}: rollout {} {}: {} (rolled back: {:?}, rollback failed: {:?})",
                    f.rollout_id,
                    f.status,
                    f.reason,
                    f.rolled_back,
                    f.rollback_failed
                );
                break;
            }
            _ => {}
        }
    }
    let total_s = t0.elapsed().as_secs_f64();
    let (cpu_s, sim_cpu_s) = (cpu_now() - cpu0, (sim.cpu() - sim0).max(0.0));
    ensure!(ok == n, "{mode}: {ok}/{n} hosts ok");
    if mode == Mode::WavesConfirm {
        // RolloutFinished follows the last Confirm sent; let the agents count them.
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let got = sim_stats(sim, cli.timeout).await?[2] - confirmed_before;
            if got >= u64::try_from(n)? {
                break;
            }
            ensure!(
                Instant::now() < until,
                "{mode}: the agents got {got}/{n} Confirm"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(Push {
        mode,
        revision,
        total_s,
        accepted_s,
        cpu_s,
        sim_cpu_s,
        waves_s,
        settle_s,
        gate_s,
        ok,
    })
}

/// One controller with `n` simulated agents: every mode, `warmup + runs` times.
async fn one(n: usize, cli: &Cli) -> Result<OneResult> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let pki = make_pki(dir.path())?;
    let listener = bind_loopback(PORT_BASE).await?;
    let url = format!("https://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let config = ServeConfig {
        db: dir.path().join("controller.db").into(),
        db_ca: None,
        pki: pki.dir().to_path_buf(),
        // Reconnecting agents may briefly hold two connections.
        max_connections: 2 * n + 64,
        pre_auth: Default::default(),
        logs: Default::default(),
    };
    let server = tokio::spawn(run(config, listener, async {
        let _ = stop_rx.await;
    }));
    let mut admin = {
        let (cert, key) = pki.cert_paths(&Role::Admin("bench".into()));
        let ch = Endpoint::from_shared(url.clone())?
            .tls_config(client_tls(&pki.ca_cert(), &cert, &key, None)?)?
            .connect()
            .await
            .context("admin connect")?;
        v1::admin_client::AdminClient::new(ch)
    };

    let mut sim = SimChild::start(&url, pki.dir(), n, cli.concurrency)?;
    sim.expect("CERTS", cli.timeout).await?;
    let t0 = Instant::now();
    let ready = sim.expect("READY", cli.timeout).await?;
    let connect_s = t0.elapsed().as_secs_f64();
    let connected: usize = ready.get(1).map_or(Ok(0), |s| s.parse())?;
    ensure!(connected == n, "only {connected}/{n} agents connected");

    let mut pushes = Vec::new();
    let mut k = 0;
    for round in 0..cli.warmup + cli.runs {
        let mut modes = cli.modes.clone();
        let len = modes.len().max(1);
        modes.rotate_left(round % len);
        for mode in modes {
            k += 1;
            let p = push(&mut admin, &mut sim, mode, n, k, cli).await?;
            eprintln!(
                "  n={n} {}{mode}: r{} {:.3} s, CPU {:.3} s, {} wave(s)",
                if round < cli.warmup { "(warm-up) " } else { "" },
                p.revision,
                p.total_s,
                p.cpu_s,
                p.waves_s.len()
            );
            if round >= cli.warmup {
                pushes.push(p);
            }
        }
    }
    let rss_after_mib = rss_now();
    let sim_stats = sim_stats(&mut sim, cli.timeout).await?;
    sim.stop().await;
    drop(admin);
    let _ = stop_tx.send(());
    // Sessions the agents left open would hold a graceful stop; don't wait long.
    if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(5), server).await {
        eprintln!("server: {e:#}");
    }
    Ok(OneResult {
        n,
        connect_s,
        pushes,
        rss_after_mib,
        sim_stats,
    })
}

/// Runs `rollout-bench one` in a child process and parses its JSON line.
async fn run_one(n: usize, cli: &Cli) -> Result<OneResult> {
    let modes: Vec<String> = cli.modes.iter().map(ToString::to_string).collect();
    let out = Command::new(std::env::current_exe()?)
        .args(["--runs", &cli.runs.to_string()])
        .args(["--warmup", &cli.warmup.to_string()])
        .args(["--modes", &modes.join(",")])
        .args(["--serial", &cli.serial])
        .args([
            "--confirm-timeout",
            &format!("{}s", cli.confirm_timeout.as_secs()),
        ])
        .args(["--concurrency", &cli.concurrency.to_string()])
        .args(["--timeout", &format!("{}s", cli.timeout.as_secs())])
        .args(["one", "--n", &n.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .output()
        .await?;
    if !out.status.success() {
        bail!("rollout-bench one --n {n} failed ({})", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().context("no result line")?;
    Ok(serde_json::from_str(line)?)
}

fn render(results: &[OneResult], cli: &Cli) -> String {
    let mut out = format!(
        "Machine: {}. Loopback, TLS 1.3 mutual auth; the controller (in process with the admin \
         client) and all simulated agents (one process) share the 2 vCPU. Every push is a new \
         revision that opens one more port (~2 KB policy, 84 entries); {} measured run(s) per \
         size after {} warm-up round(s), modes in rotated order; medians over the runs.\n\n",
        machine(),
        cli.runs,
        cli.warmup,
    );
    let mut t = Table::new(&[
        "agents",
        "mode",
        "waves",
        "total s",
        "vs apply",
        "controller CPU s",
        "CPU % of 1 core",
        "wave median s",
        "wave max s",
        "accepted s",
        "agents' CPU s",
        "ok",
    ]);
    for r in results {
        let of =
            |mode: Mode| -> Vec<&Push> { r.pushes.iter().filter(|p| p.mode == mode).collect() };
        let base = median(
            &of(Mode::Apply)
                .iter()
                .map(|p| p.total_s)
                .collect::<Vec<_>>(),
        );
        for &mode in &cli.modes {
            let ps = of(mode);
            if ps.is_empty() {
                continue;
            }
            let m = |f: &dyn Fn(&Push) -> f64| median(&ps.iter().map(|p| f(p)).collect::<Vec<_>>());
            let total = m(&|p| p.total_s);
            let cpu = m(&|p| p.cpu_s);
            let waves = ps[0].waves_s.len();
            let wave = |f: &dyn Fn(&[f64]) -> f64| -> String {
                if waves == 0 {
                    "-".to_owned()
                } else {
                    format!("{:.3}", m(&|p| f(&p.waves_s)))
                }
            };
            t.row(vec![
                r.n.to_string(),
                mode.label(cli),
                if waves == 0 {
                    "-".to_owned()
                } else {
                    waves.to_string()
                },
                format!("{total:.3}"),
                if base > 0.0 {
                    format!("{:.2}×", total / base)
                } else {
                    "-".to_owned()
                },
                format!("{cpu:.3}"),
                format!("{:.0}", 100.0 * m(&|p| p.cpu_s / p.total_s)),
                wave(&median),
                wave(&|w| w.iter().copied().fold(0.0, f64::max)),
                format!("{:.3}", m(&|p| p.accepted_s)),
                format!("{:.3}", m(&|p| p.sim_cpu_s)),
                format!("{}/{}", ps.iter().map(|p| p.ok).min().unwrap_or(0), r.n),
            ]);
        }
    }
    out.push_str(&t.render());
    out.push_str(
        "\nWhere a push's time goes (median s): \"accepted\" as above; \"hosts\" = sum over \
         the waves of `WaveStarted` → the wave's last host result (send `Desired`, agents \
         apply and answer; under commit-confirmed also reconnect, `Hello`, `Confirm`); \
         \"gate\" = sum of the wave's last host result → `WaveFinished` (the health gate: \
         `VerifyNow` to every host of the wave and its `DriftReport`); \"rest\" = the \
         remainder (between waves, the end of the rollout).\n\n",
    );
    let mut b = Table::new(&[
        "agents", "mode", "total", "accepted", "hosts", "gate", "rest",
    ]);
    for r in results {
        for &mode in cli.modes.iter().filter(|m| **m != Mode::Apply) {
            let ps: Vec<&Push> = r.pushes.iter().filter(|p| p.mode == mode).collect();
            if ps.is_empty() {
                continue;
            }
            let m = |f: &dyn Fn(&Push) -> f64| median(&ps.iter().map(|p| f(p)).collect::<Vec<_>>());
            b.row(vec![
                r.n.to_string(),
                mode.label(cli),
                format!("{:.3}", m(&|p| p.total_s)),
                format!("{:.3}", m(&|p| p.accepted_s)),
                format!("{:.3}", m(&|p| p.settle_s)),
                format!("{:.3}", m(&|p| p.gate_s)),
                format!(
                    "{:.3}",
                    m(&|p| p.total_s - p.accepted_s - p.settle_s - p.gate_s)
                ),
            ]);
        }
    }
    out.push_str(&b.render());
    out.push_str(&format!(
        "\n\"total\": request → all N hosts reported `Applied` with the expected hash (one-shot \
         apply) or → `RolloutFinished` `succeeded` (rollouts; the bench fails on any other \
         status or host outcome). \"controller CPU\": user + system time of the controller's \
         process over the push; \"CPU %\" = that / total. \"wave\": `WaveStarted` → \
         `WaveFinished` (median and max over the waves of a push). \"accepted\": request → \
         `Accepted` (parse, compile per host, anti-lockout check, store). \"agents' CPU\": the \
         simulated agents' process (real agent sessions on an in-memory kernel: compile, apply, \
         read back, last-known-good per host; under commit-confirmed also the durable confirm \
         record, the new TLS connection and `Hello`). Under commit-confirmed every agent's `Confirm` is \
         also counted on the agents' side.\n\nCommand: `cargo run --release -p portcullis-bench \
         --bin rollout-bench -- --sizes {} --runs {} --write docs/BENCHMARKS.md`\n",
        cli.sizes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        cli.runs,
    ));
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
        Some(Cmd::One { n }) => {
            let r = rt.block_on(one(*n, &cli))?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        None => {
            let mut results = Vec::new();
            for &n in &cli.sizes {
                eprintln!("rollout-bench: {n} agents ...");
                let r = rt.block_on(run_one(n, &cli))?;
                eprintln!(
                    "  connect {:.2} s, RSS after {:.0} MiB, sim counters {:?}",
                    r.connect_s, r.rss_after_mib, r.sim_stats
                );
                results.push(r);
            }
            let out = render(&results, &cli);
            println!("{out}");
            if let Some(path) = &cli.write {
                write_section(path, "rollout-bench", &out)?;
            }
            Ok(())
        }
    }
}
