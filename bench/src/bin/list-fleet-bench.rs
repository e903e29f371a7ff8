//! list-fleet-bench: one controller pushing a policy with a 1,000,000-entry blocklist
//! (`deny: [{ from: { file: blocked.txt } }]`) to N simulated agents over real mutual
//! TLS on loopback, side by side with the same pushes of a policy without lists.
//!
//! Process layout (so the controller's CPU and RSS are its own):
//!   list-fleet-bench           orchestrator: runs `one --kind plain`, then `one --kind
//!                              lists`, collects their JSON, encodes one `Desired` with the
//!                              full list and with the delta, prints the table.
//!   list-fleet-bench one ...   the controller (in-process `portcullis_controller::server::run`)
//!                              and the admin client; spawns
//!   list-fleet-bench sim ...   N simulated agents (`portcullis_bench::sim::model`, a
//!                              protocol model: 1,000 real agent sessions with their own copy
//!                              of a 1M list and its last-known-good do not fit this machine):
//!                              they take ListParts, resolve list deltas against the lists
//!                              they hold (`need_full` on a foreign base), compile, and answer
//!                              with the hash.
//!
//! Revisions: 1 = the list (every host gets it in full), 2 = the list plus one address
//! (a delta against revision 1), 3 = that address removed again (a delta against 2).
//! The plain policy changes one port per revision. Measured per revision: `Admin.Apply`
//! until every host reported `Applied` with the expected hash, the controller's CPU,
//! its RSS after the acks (and the peak so far), and what the agents received.
//!
//! `cargo run --release -p portcullis-bench --bin list-fleet-bench -- [--n 1000] [--entries 1000000] [--write docs/BENCHMARKS.md]`

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use portcullis_bench::fleet::{
    SimChild, SimCmd, apply_request, bind_loopback, cpu_now, inventory_yaml, make_pki, parse_secs,
    rss_now,
};
use portcullis_bench::{Table, machine, raise_nofile, write_section};
use portcullis_controller::pki::tls::client_tls;
use portcullis_controller::server::{ServeConfig, run};
use portcullis_policy::{AddrLists, Source, site};
use portcullis_proto::convert::list_against;
use portcullis_proto::v1;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::Command;
use tokio::sync::oneshot;
use tonic::transport::Endpoint;

#[derive(Parser, Debug)]
#[command(about = "Controller pushing a 1M-entry blocklist (full, then deltas) to N agents")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Simulated agents.
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// Entries of the blocklist (90% v4 addresses, 5% v4 prefixes, 4% v6 addresses, 1%
    /// v6 prefixes).
    #[arg(long, default_value_t = 1_000_000)]
    entries: usize,
    /// Concurrent connection attempts of the simulated agents.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Give up on any phase after this long.
    #[arg(long, default_value = "600s", value_parser = parse_secs)]
    timeout: Duration,
    /// Replace this benchmark's section of a markdown file (e.g. docs/BENCHMARKS.md).
    #[arg(long)]
    write: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// One controller run (internal).
    One {
        #[arg(long)]
        kind: Kind,
    },
    /// Simulated agents (internal).
    Sim(SimCmd),
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq, Serialize, Deserialize)]
enum Kind {
    /// `allow: [22/tcp, <port>/tcp]`, one changed port per revision.
    Plain,
    /// `allow: [22/tcp]` and `deny: [{ from: { file: blocked.txt } }]`.
    Lists,
}

/// One revision's push.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Push {
    revision: u64,
    applied: usize,
    push_s: f64,
    cpu_s: f64,
    rss_after_mib: f64,
    peak_mib: f64,
    /// What the agents received and answered during this push (from their `STATS`).
    answered: u64,
    lists_full: u64,
    lists_delta: u64,
    need_full: u64,
    failed: u64,
}

/// What one `one` run reports (a JSON line on stdout).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OneResult {
    kind: Kind,
    n: usize,
    connected: usize,
    rss_connected_mib: f64,
    pushes: Vec<Push>,
}

const PORT_BASE: u16 = 17_800;
/// Added by revision 2, removed by revision 3: outside every generated range.
const EXTRA: &str = "203.0.113.7";

/// The blocklist: `entries` lines, deterministic, no two entries overlapping (90% v4 /32
/// in 10.0.0.0/8, 5% v4 /24-/28 each in its own /24 of 11.0.0.0/8, 4% v6 /128 in
/// 2001:db8:1::/48, 1% v6 /48-/55 each in its own /48 of 2001:db9::/32).
fn blocklist(entries: usize) -> String {
    let v4_prefixes = entries / 20;
    let v6_addrs = entries / 25;
    let v6_prefixes = entries / 100;
    let v4_addrs = entries - v4_prefixes - v6_addrs - v6_prefixes;
    let mut s = String::with_capacity(entries * 18);
    // A stride coprime with 2^24 spreads the addresses over the /8 without repeats.
    for i in 0..v4_addrs {
        let a = (10u32 << 24) | ((i as u32).wrapping_mul(2_654_435) & 0x00ff_ffff);
        let _ = writeln!(s, "{}", std::net::Ipv4Addr::from(a));
    }
    for i in 0..v4_prefixes {
        let a = (11u32 << 24) + ((i as u32) << 8);
        let _ = writeln!(s, "{}/{}", std::net::Ipv4Addr::from(a), 24 + i % 5);
    }
    for i in 0..v6_addrs {
        let a = (0x2001_0db8_0001u128 << 80) | (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let _ = writeln!(s, "{}", std::net::Ipv6Addr::from(a));
    }
    for i in 0..v6_prefixes {
        let a = (0x2001_0db9u128 << 96) | ((i as u128) << 80);
        let _ = writeln!(s, "{}/{}", std::net::Ipv6Addr::from(a), 48 + i % 8);
    }
    s
}

/// The list file of revision `revision` (2 has [`EXTRA`], 1 and 3 do not).
fn list_of(base: &str, revision: u64) -> String {
    if revision == 2 {
        format!("{base}{EXTRA}\n")
    } else {
        base.to_owned()
    }
}

fn site_of(kind: Kind, revision: u64) -> String {
    match kind {
        Kind::Plain => format!(
            "- name: fleet\n  hosts: all\n  policy:\n    allow:\n      - 22/tcp\n      - {}/tcp\n",
            10_000 + revision
        ),
        Kind::Lists => "- name: fleet\n  hosts: all\n  policy:\n    allow:\n      - 22/tcp\n    deny:\n      - from: { file: blocked.txt }\n".to_owned(),
    }
}

fn request(kind: Kind, revision: u64, n: usize, base: &str) -> v1::ApplyRequest {
    v1::ApplyRequest {
        site_name: "site.yml".into(),
        site_yaml: site_of(kind, revision),
        inventory_name: "inventory.yml".into(),
        inventory_yaml: inventory_yaml(n),
        lists: match kind {
            Kind::Plain => Vec::new(),
            Kind::Lists => vec![v1::ListFile {
                name: "blocked.txt".into(),
                content: list_of(base, revision),
            }],
        },
        ..Default::default()
    }
}

/// Peak resident memory of this process so far (`VmHWM`), MiB.
fn peak_now() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The simulated agents' counters (`STATS`).
async fn sim_stats(sim: &mut SimChild) -> Result<Vec<u64>> {
    sim.say("STATS").await?;
    sim.expect("STATS", Duration::from_secs(60))
        .await?
        .iter()
        .map(|s| s.parse::<u64>().context("STATS field"))
        .collect()
}

/// One controller run of `kind`, in this process.
async fn one(kind: Kind, cli: &Cli) -> Result<OneResult> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n = cli.n;
    let dir = tempfile::tempdir()?;
    let pki = make_pki(dir.path())?;
    let listener = bind_loopback(PORT_BASE).await?;
    let url = format!("https://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let config = ServeConfig {
        db: dir.path().join("controller.db").into(),
        db_ca: None,
        pki: pki.dir().to_path_buf(),
        max_connections: n + 64,
        pre_auth: Default::default(),
        logs: Default::default(),
    };
    let server = tokio::spawn(run(config, listener, async {
        let _ = stop_rx.await;
    }));
    let admin_tls = {
        let (cert, key) = pki.cert_paths(&portcullis_controller::identity::Role::Admin(
            "bench".into(),
        ));
        client_tls(&pki.ca_cert(), &cert, &key, None)?
    };
    let ch = Endpoint::from_shared(url.clone())?
        .tls_config(admin_tls)?
        .connect()
        .await
        .context("admin connect")?;
    let mut admin = v1::admin_client::AdminClient::new(ch)
        .max_decoding_message_size(portcullis_controller::server::limits::ADMIN_MAX_ENCODE)
        .max_encoding_message_size(portcullis_controller::server::limits::ADMIN_MAX_DECODE);
    let base = match kind {
        Kind::Plain => String::new(),
        Kind::Lists => blocklist(cli.entries),
    };

    let mut sim = SimChild::start(&url, pki.dir(), n, cli.concurrency)?;
    sim.expect("CERTS", cli.timeout).await?;
    let ready = sim.expect("READY", cli.timeout).await?;
    let connected: usize = ready.get(1).map_or(Ok(0), |s| s.parse())?;
    let rss_connected = rss_now();

    let mut pushes = Vec::new();
    for revision in 1..=3u64 {
        let before = sim_stats(&mut sim).await?;
        let req = request(kind, revision, n, &base);
        let (cpu_a, t) = (cpu_now(), Instant::now());
        let applied = apply_request(&mut admin, req, n, cli.timeout).await?;
        let push_s = t.elapsed().as_secs_f64();
        let cpu_s = cpu_now() - cpu_a;
        let (rss_after, peak) = (rss_now(), peak_now());
        let after = sim_stats(&mut sim).await?;
        let d = |i: usize| after.get(i).copied().unwrap_or(0) - before.get(i).copied().unwrap_or(0);
        let p = Push {
            revision,
            applied,
            push_s,
            cpu_s,
            rss_after_mib: rss_after,
            peak_mib: peak,
            answered: d(0),
            lists_full: d(6),
            lists_delta: d(7),
            need_full: d(8),
            failed: d(9),
        };
        eprintln!("  {kind:?} {p:?}");
        pushes.push(p);
    }
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
        rss_connected_mib: rss_connected,
        pushes,
    })
}

/// Runs `list-fleet-bench one` in a child process and parses its JSON line.
async fn run_one(kind: Kind, cli: &Cli) -> Result<OneResult> {
    let kind_arg = match kind {
        Kind::Plain => "plain",
        Kind::Lists => "lists",
    };
    let out = Command::new(std::env::current_exe()?)
        .args(["--n", &cli.n.to_string()])
        .args(["--entries", &cli.entries.to_string()])
        .args(["--concurrency", &cli.concurrency.to_string()])
        .args(["--timeout", &format!("{}s", cli.timeout.as_secs())])
        .args(["one", "--kind", kind_arg])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "list-fleet-bench one --kind {kind_arg} failed ({})",
            out.status
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().context("no result line")?;
    Ok(serde_json::from_str(line)?)
}

/// Encoded sizes of one `Desired` for host 0: (plain, lists in full, the revision 1 → 2
/// delta).
fn desired_sizes(cli: &Cli) -> Result<(usize, usize, usize)> {
    let base = blocklist(cli.entries);
    let policy_of = |kind: Kind, revision: u64| -> Result<portcullis_policy::HostPolicy> {
        let req = request(kind, revision, 1, &base);
        let srcs: Vec<Source> = req
            .lists
            .iter()
            .map(|l| Source::new(&l.name, &l.content))
            .collect();
        let lists = AddrLists::parse(&srcs).map_err(|d| anyhow::anyhow!("{d}"))?;
        let fleet = site::load_fleet_with_lists(
            &Source::new("site.yml", &req.site_yaml),
            &Source::new("inventory.yml", &req.inventory_yaml),
            &lists,
        )
        .map_err(|d| anyhow::anyhow!("invalid bench site: {d}"))?;
        let host0 = portcullis_bench::sim::host_name(0);
        fleet
            .hosts
            .get(&host0)
            .cloned()
            .context("host 0 not targeted")
    };
    let desired = |policy: v1::HostPolicy| {
        v1::Desired {
            revision: 2,
            policy: Some(policy),
            expected_hash: "0".repeat(64),
            request_id: u64::MAX,
            ..Default::default()
        }
        .encoded_len()
    };
    let plain = desired(v1::HostPolicy::from(&policy_of(Kind::Plain, 2)?));
    let (r1, r2) = (policy_of(Kind::Lists, 1)?, policy_of(Kind::Lists, 2)?);
    let full = desired(v1::HostPolicy::from(&r2));
    let mut wire = v1::HostPolicy::from(&r2);
    wire.lists = r2
        .lists
        .iter()
        .map(|(name, l)| list_against(name, l, r1.lists.get(name).map(|b| &**b)))
        .collect();
    let delta = desired(wire);
    Ok((plain, full, delta))
}

fn render(plain: &OneResult, lists: &OneResult, sizes: (usize, usize, usize), cli: &Cli) -> String {
    let mut out = format!(
        "Machine: {}. Loopback, TLS 1.3 mutual auth; the controller (`portcullis_controller::server::run`) \
         and the admin client in one process, {} simulated agents in another (`sim::model`, a protocol \
         model of the agent: each resolves list deltas against the lists it holds with \
         `policy_from_wire`, answers `need_full` on a foreign base, compiles and answers with the hash; \
         agents that received the same message share one resolve + compile and one copy of the list). Blocklist: {} entries (90% v4 addresses, 5% v4 \
         prefixes, 4% v6 addresses, 1% v6 prefixes); revision 2 adds `{EXTRA}`, revision 3 removes it. \
         One `Desired` encoded: {} bytes without lists, {} bytes with the list in full (sent to these \
         agents, which announce `list-parts`, as `ListPart`s of at most 32 KiB before the `Desired`), \
         {} bytes as the 1 → 2 delta. Controller RSS with every agent connected, before revision 1: {:.0} MiB (plain \
         run), {:.0} MiB (lists run, the generated list text included).\n\n",
        machine(),
        cli.n,
        cli.entries,
        sizes.0,
        sizes.1,
        sizes.2,
        plain.rss_connected_mib,
        lists.rss_connected_mib,
    );
    let mut t = Table::new(&[
        "policy",
        "revision",
        "Apply → all acked s",
        "controller CPU s",
        "RSS after MiB",
        "peak RSS MiB",
        "lists full / delta",
        "need_full",
        "applied",
    ]);
    for r in [plain, lists] {
        for p in &r.pushes {
            let (policy, what) = match (r.kind, p.revision) {
                (Kind::Plain, _) => ("no lists (baseline)", "one port changed"),
                (Kind::Lists, 1) => ("1M-entry blocklist", "the list"),
                (Kind::Lists, 2) => ("1M-entry blocklist", "+1 address"),
                (Kind::Lists, _) => ("1M-entry blocklist", "−1 address"),
            };
            t.row(vec![
                policy.to_owned(),
                format!("{} ({what})", p.revision),
                format!("{:.3}", p.push_s),
                format!("{:.3}", p.cpu_s),
                format!("{:.0}", p.rss_after_mib),
                format!("{:.0}", p.peak_mib),
                format!("{} / {}", p.lists_full, p.lists_delta),
                p.need_full.to_string(),
                format!("{}/{}", p.applied, r.n),
            ]);
        }
    }
    out.push_str(&t.render());
    out.push_str(
        "\n\"Apply → all acked\": from the `Admin.Apply` call (parse site, inventory and list files, \
         compile, store the revision, push) until the stream reported every host `Applied` with the \
         expected hash. CPU and RSS are the controller process's; \"peak\" is its `VmHWM` so far. \
         \"lists full / delta\": address lists the agents received during that push.\n",
    );
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
        Some(Cmd::One { kind }) => {
            let r = rt.block_on(one(*kind, &cli))?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        None => {
            eprintln!("list-fleet-bench: {} agents, no lists ...", cli.n);
            let plain = rt.block_on(run_one(Kind::Plain, &cli))?;
            eprintln!(
                "list-fleet-bench: {} agents, {}-entry blocklist ...",
                cli.n, cli.entries
            );
            let lists = rt.block_on(run_one(Kind::Lists, &cli))?;
            let sizes = desired_sizes(&cli)?;
            let out = render(&plain, &lists, sizes, &cli);
            println!("{out}");
            if let Some(path) = &cli.write {
                write_section(path, "list-fleet-bench", &out)?;
            }
            Ok(())
        }
    }
}
