//! list-bench: a 1,000,000-entry address list (mixed v4/v6, addresses and prefixes) as
//! a `deny:` blocklist and as an `allow ... from: { file }` list, applied by the real
//! `portcullis-agent apply` in a fresh network namespace, side by side with
//! `ipset restore` of the same list into `hash:net` sets plus one iptables (and one
//! ip6tables) rule, in the same run.
//!
//! Per run: (a) ipset restore + rules; (b) first apply + verify (no table, no state);
//! (c) one address added (a list delta); (d) that address removed; (e) `verify` (a full
//! readback of the million elements); the agent's peak RSS (VmHWM) in each, and the size
//! of its last-known-good record.
//!
//! `cargo run --release -p portcullis-bench --bin list-bench -- [--entries 1000000] [--runs 3] [--write docs/BENCHMARKS.md]`

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use portcullis_agent::{Agent, NftDataplane, StateDir};
use portcullis_bench::{Stats, Table, machine, ms, write_section};
use portcullis_policy::{AddrLists, Facts, HostPolicy, Source, load_host_policy_with_lists};
use portcullis_testkit::NetNs;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "1M-address lists: portcullis-agent vs ipset restore, in a fresh namespace")]
struct Args {
    /// Entries in the list.
    #[arg(long, default_value_t = 1_000_000)]
    entries: usize,
    /// Timed runs.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The portcullis-agent binary (default: beside this one).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Replace this benchmark's section of a markdown file (e.g. docs/BENCHMARKS.md).
    #[arg(long)]
    write: Option<PathBuf>,
}

/// A deterministic list: 90 % v4 addresses, 5 % v4 /24s, 4 % v6 addresses, 1 % v6 /48s;
/// prefixes never overlap each other. Returns (file text, ipset v4 lines, ipset v6 lines).
fn list(n: usize) -> (String, Vec<String>, Vec<String>) {
    let (mut text, mut v4, mut v6) = (String::new(), Vec::new(), Vec::new());
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut seen = std::collections::HashSet::new();
    let (a4, p4, a6) = (n * 90 / 100, n * 5 / 100, n * 4 / 100);
    let p6 = n - a4 - p4 - a6;
    while seen.len() < a4 {
        // 11.0.0.0 - 99.255.255.255: away from the lab's 10.77/16.
        let a = 0x0b00_0000 + (next() % 0x5800_0000) as u32;
        if seen.insert(a) {
            let s = std::net::Ipv4Addr::from(a).to_string();
            v4.push(s.clone());
            let _ = writeln!(text, "{s}");
        }
    }
    // /24s in 100.0.0.0-163.255.255.0, distinct.
    for i in 0..p4 as u32 {
        let s = format!("{}/24", std::net::Ipv4Addr::from(0x6400_0000 + (i << 8)));
        v4.push(s.clone());
        let _ = writeln!(text, "{s}");
    }
    let mut seen6 = std::collections::HashSet::new();
    while seen6.len() < a6 {
        let a = (0x2001_0db8u128 << 96) | u128::from(next());
        if seen6.insert(a) {
            let s = std::net::Ipv6Addr::from(a).to_string();
            v6.push(s.clone());
            let _ = writeln!(text, "{s}");
        }
    }
    for i in 0..p6 as u128 {
        let s = format!(
            "{}/48",
            std::net::Ipv6Addr::from((0x2a00u128 << 112) | (i << 80))
        );
        v6.push(s.clone());
        let _ = writeln!(text, "{s}");
    }
    (text, v4, v6)
}

/// Runs `cmd` to completion, sampling its peak RSS (VmHWM, KiB) until it exits.
fn timed(mut cmd: Command) -> Result<(Duration, u64, String)> {
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn")?;
    let pid = child.id();
    let mut hwm = 0u64;
    let status_path = format!("/proc/{pid}/status");
    loop {
        if let Ok(s) = std::fs::read_to_string(&status_path)
            && let Some(line) = s.lines().find(|l| l.starts_with("VmHWM:"))
        {
            let kib = line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            hwm = hwm.max(kib);
        }
        if child.try_wait()?.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = started.elapsed();
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((elapsed, hwm, stdout))
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    let st = Command::new(program).args(args).status()?;
    if !st.success() {
        bail!("{program} {args:?}: {st}");
    }
    Ok(())
}

struct Case {
    name: &'static str,
    policy: &'static str,
}

const CASES: [Case; 2] = [
    Case {
        name: "deny: [{ from: { file } }] (blocklist)",
        policy: "allow: [smtp/tcp]\ndeny:\n  - { from: { file: list.txt } }\n",
    },
    Case {
        name: "allow 22/tcp from: { file }",
        policy: "allow:\n  - { port: 22, proto: tcp, from: { file: list.txt } }\n",
    },
];

#[derive(Default)]
struct Row {
    ipset: Stats,
    first: Stats,
    first_reported: Stats,
    add: Stats,
    add_reported: Stats,
    remove: Stats,
    remove_reported: Stats,
    inproc_add: Stats,
    inproc_remove: Stats,
    verify: Stats,
    rss_first: u64,
    rss_delta: u64,
    lkg_bytes: u64,
    delta_seen: bool,
}

fn bench_case(c: &Case, args: &Args, agent: &Path, ipset_file: &Path, text: &str) -> Result<Row> {
    let mut row = Row::default();
    for _ in 0..args.runs {
        // (a) ipset restore into hash:net sets + one rule per family.
        let t = Instant::now();
        run("ipset", &["restore", "-f", &ipset_file.to_string_lossy()])?;
        run(
            "iptables",
            &[
                "-A",
                "INPUT",
                "-p",
                "tcp",
                "--dport",
                "22",
                "-m",
                "set",
                "--match-set",
                "pc4",
                "src",
                "-j",
                "ACCEPT",
            ],
        )?;
        run(
            "ip6tables",
            &[
                "-A",
                "INPUT",
                "-p",
                "tcp",
                "--dport",
                "22",
                "-m",
                "set",
                "--match-set",
                "pc6",
                "src",
                "-j",
                "ACCEPT",
            ],
        )?;
        row.ipset.push(t.elapsed());
        eprintln!("    ipset restore + rules {:?}", t.elapsed());
        run("iptables", &["-F", "INPUT"])?;
        run("ip6tables", &["-F", "INPUT"])?;
        run("ipset", &["destroy", "pc4"])?;
        run("ipset", &["destroy", "pc6"])?;

        // (b)-(e): the agent, fresh state each run.
        let dir = tempfile::tempdir()?;
        let state = dir.path().join("state");
        let policy = dir.path().join("policy.yml");
        std::fs::write(&policy, c.policy)?;
        let list = dir.path().join("list.txt");
        std::fs::write(&list, text)?;
        let agent_cmd = |sub: &[&str]| {
            let mut cmd = Command::new(agent);
            cmd.args(sub).env("PORTCULLIS_STATE_DIR", &state);
            cmd
        };
        let apply = || {
            let p = policy.to_string_lossy().into_owned();
            let mut cmd = agent_cmd(&["apply", "--policy"]);
            cmd.arg(p);
            timed(cmd)
        };
        let (d, rss, out) = apply()?;
        eprintln!(
            "    first apply {d:?}, peak RSS {} MiB, {} ms reported",
            rss / 1024,
            reported(&out)
        );
        row.first_reported
            .push(Duration::from_millis(reported(&out)));
        row.first.push(d);
        row.rss_first = row.rss_first.max(rss);
        std::fs::write(&list, format!("{text}203.0.113.77\n"))?;
        let (d, rss, out) = apply()?;
        row.delta_seen |= out.contains("list delta");
        eprintln!(
            "    one added {d:?} (delta: {}) {}",
            out.contains("list delta"),
            reported(&out)
        );
        row.add_reported.push(Duration::from_millis(reported(&out)));
        row.add.push(d);
        row.rss_delta = row.rss_delta.max(rss);
        std::fs::write(&list, text)?;
        let (d, rss, out) = apply()?;
        row.remove_reported
            .push(Duration::from_millis(reported(&out)));
        row.remove.push(d);
        row.rss_delta = row.rss_delta.max(rss);
        let (d, _, out) = timed(agent_cmd(&["verify"]))?;
        if !out.contains("in sync") {
            bail!("not in sync after the deltas: {out}");
        }
        eprintln!("    verify {d:?}");
        row.verify.push(d);
        row.lkg_bytes = std::fs::read_dir(&state)?
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .max()
            .unwrap_or(0);
        timed(agent_cmd(&["remove"]))?;

        // (f) what a running agent spends on a pushed one-address change: the same
        // reconciles in this process, last-known-good already in memory.
        let a = Agent::new(
            Arc::new(NftDataplane::default()),
            StateDir::new(dir.path().join("inproc")),
        );
        let load = |text: &str| -> Result<HostPolicy> {
            let lists = AddrLists::parse(&[Source::new("list.txt", text)])
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            load_host_policy_with_lists(&Source::new("policy.yml", c.policy), &lists)
                .map_err(|e| anyhow::anyhow!("{e}"))
        };
        let facts = Facts {
            hostname: "bench".into(),
            ..Facts::default()
        };
        let (p1, p2) = (load(text)?, load(&format!("{text}203.0.113.77\n"))?);
        a.reconcile(&p1, &facts, 1)?;
        let t = Instant::now();
        let r = a.reconcile(&p2, &facts, 2)?;
        row.inproc_add.push(t.elapsed());
        if !r.diff.iter().any(|l| l.contains("list delta")) {
            bail!("in-process change was not a delta: {:?}", r.diff);
        }
        let t = Instant::now();
        a.reconcile(&p1, &facts, 3)?;
        row.inproc_remove.push(t.elapsed());
        eprintln!(
            "    in-process: added {:?}, removed {:?}",
            row.inproc_add.median(),
            row.inproc_remove.median()
        );
        a.remove(true)?;
    }
    Ok(row)
}

/// The agent's own apply + verify time from `apply`'s output (`..., 32 ms)`).
fn reported(out: &str) -> u64 {
    out.lines()
        .find(|l| l.starts_with("applied:"))
        .and_then(|l| l.rsplit(", ").next())
        .and_then(|t| t.strip_suffix(" ms)"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn med(s: &Stats) -> String {
    format!("{} / {}", ms(s.median()), ms(s.p90()))
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !portcullis_testkit::require_root_netns() {
        bail!("list-bench needs root and `ip netns` (it creates its own namespace)");
    }
    let agent = match &args.agent {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .join("portcullis-agent"),
    };
    if !agent.exists() {
        bail!(
            "{} not found: build it first (cargo build --release -p portcullis-agent)",
            agent.display()
        );
    }
    eprintln!("list-bench: generating {} entries ...", args.entries);
    let (text, v4, v6) = list(args.entries);
    let dir = tempfile::tempdir()?;
    let ipset_file = dir.path().join("ipset.txt");
    let mut ipset = String::new();
    let _ = writeln!(
        ipset,
        "create pc4 hash:net family inet hashsize 1048576 maxelem {}",
        v4.len() + 1
    );
    let _ = writeln!(
        ipset,
        "create pc6 hash:net family inet6 hashsize 65536 maxelem {}",
        v6.len() + 1
    );
    for a in &v4 {
        let _ = writeln!(ipset, "add pc4 {a}");
    }
    for a in &v6 {
        let _ = writeln!(ipset, "add pc6 {a}");
    }
    std::fs::write(&ipset_file, ipset)?;
    let ns = NetNs::new()?;
    eprintln!("list-bench: namespace {}, {} runs", ns.name(), args.runs);
    let rows = ns.enter(|| -> Result<Vec<Row>> {
        CASES
            .iter()
            .map(|c| {
                eprintln!("  {} ...", c.name);
                bench_case(c, &args, &agent, &ipset_file, &text)
            })
            .collect()
    })??;
    drop(ns);

    let mut out = format!(
        "Machine: {}. {} entries ({} v4, {} v6; 90 % v4 addresses, 5 % v4 /24, 4 % v6 addresses, 1 % v6 /48), {} runs, medians (ipset and verify: median / p90) in ms. Each step is a separate `portcullis-agent` process (`apply --policy`, `verify`) in one fresh namespace: \"process\" is its wall time (reading and parsing the million-line list file, loading last-known-good, ...), \"agent-reported\" the apply + verify inside it (what a running agent spends on a pushed revision). ipset: `ipset restore` of the same entries into two `hash:net` sets + one iptables and one ip6tables rule.\n\n",
        machine(),
        args.entries,
        v4.len(),
        v6.len(),
        args.runs
    );
    let mut t = Table::new(&[
        "policy",
        "ipset restore + rules",
        "first apply + verify: process / agent-reported",
        "one address added: process / agent-reported",
        "one address removed: process / agent-reported",
        "running agent: one added / removed",
        "`verify` (full readback)",
        "agent peak RSS first / delta",
        "last-known-good",
        "delta path taken",
    ]);
    for (c, r) in CASES.iter().zip(&rows) {
        t.row(vec![
            c.name.to_string(),
            med(&r.ipset),
            format!(
                "{} / {}",
                ms(r.first.median()),
                ms(r.first_reported.median())
            ),
            format!("{} / {}", ms(r.add.median()), ms(r.add_reported.median())),
            format!(
                "{} / {}",
                ms(r.remove.median()),
                ms(r.remove_reported.median())
            ),
            format!(
                "{} / {}",
                ms(r.inproc_add.median()),
                ms(r.inproc_remove.median())
            ),
            med(&r.verify),
            format!("{} / {} MiB", r.rss_first / 1024, r.rss_delta / 1024),
            format!("{:.1} MB", r.lkg_bytes as f64 / 1e6),
            if r.delta_seen { "yes" } else { "no" }.to_string(),
        ]);
    }
    out.push_str(&t.render());
    println!("{out}");
    if let Some(path) = &args.write {
        write_section(path, "list-bench", &out)?;
    }
    Ok(())
}
