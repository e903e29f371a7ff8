//! apply-bench: the agent's apply + verify against raw `nft -f` of the same ruleset text,
//! interleaved in the same run, inside a fresh network namespace (deleted at the end).
//!
//! For each policy (the seed; 10 / 1,000 / 10,000 allow entries as plain ports and as
//! `from:` CIDR × port concatenations), every iteration:
//!   (a) raw: `nft -f FILE` where FILE is exactly `compile(policy, rev).to_nft_script()`
//!       (add + delete + full table: a real replace, the kernel holds another revision);
//!   (b) `Agent::reconcile` with `NftDataplane` at the next revision (the log prefix carries
//!       the revision, so the ruleset differs and a real transaction happens): compile,
//!       last-known-good load, change description, apply (meanwhile, on a second thread:
//!       hash + last-known-good written to its temporary file), verifying readback
//!       (parsed), semantic compare, last-known-good put in place.
//! Then a step-by-step breakdown of (b) through the same public functions, and the cost of
//! each readback `read_table` can use (netlink only; terse listing + netlink elements;
//! `nft -j list table` + parse).
//!
//! `cargo run --release -p portcullis-bench --bin apply-bench -- [--runs N] [--write docs/BENCHMARKS.md]`

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use ipnet::{IpNet, Ipv4Net};
use portcullis_agent::{Agent, Dataplane, LastKnownGood, NftDataplane, StateDir};
use portcullis_bench::{Stats, Table, machine, ms, ratio, write_section};
use portcullis_policy::{
    AllowEntry, Facts, HostPolicy, InterfaceFacts, PortRange, Proto, compile, diff, parse_readback,
};
use portcullis_testkit::NetNs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "Agent apply + verify vs raw nft -f, in a fresh network namespace")]
struct Args {
    /// Timed iterations per policy (each: one raw nft -f and one reconcile).
    #[arg(long, default_value_t = 11)]
    runs: usize,
    /// Policy sizes (allow entries).
    #[arg(long, value_delimiter = ',', default_values_t = [10, 1000, 10000])]
    sizes: Vec<usize>,
    /// Replace this benchmark's section of a markdown file (e.g. docs/BENCHMARKS.md).
    #[arg(long)]
    write: Option<PathBuf>,
    /// Skip the per-step breakdown and readback alternatives.
    #[arg(long)]
    quick: bool,
}

struct Case {
    name: String,
    entries: usize,
    policy: HostPolicy,
}

fn entry(proto: Proto, port: u16, from: Vec<IpNet>) -> AllowEntry {
    AllowEntry {
        proto,
        ports: PortRange::single(port),
        from,
        lists: Vec::new(),
        label: format!("{port}/{proto}"),
    }
}

fn policy(mut allow: Vec<AllowEntry>) -> HostPolicy {
    allow.sort();
    allow.dedup();
    HostPolicy {
        allow,
        ..HostPolicy::default()
    }
}

/// The seed: smtp/tcp, http/tcp, domain/udp.
fn seed() -> Case {
    Case {
        name: "seed (smtp, http, domain)".to_owned(),
        entries: 3,
        policy: policy(vec![
            entry(Proto::Tcp, 25, vec![]),
            entry(Proto::Tcp, 80, vec![]),
            entry(Proto::Udp, 53, vec![]),
        ]),
    }
}

/// `n` distinct ports, alternating tcp/udp, never adjacent (so no two merge into a range):
/// sets `allow_tcp` and `allow_udp` with n/2 interval elements each.
fn ports(n: usize) -> Result<Case> {
    let allow = (0..n)
        .map(|i| {
            let proto = if i % 2 == 0 { Proto::Tcp } else { Proto::Udp };
            let port = u16::try_from(2000 + 2 * (i / 2)).context("too many entries")?;
            Ok(entry(proto, port, vec![]))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Case {
        name: format!("{n} ports"),
        entries: n,
        policy: policy(allow),
    })
}

/// `n` entries `{ port: P, proto: tcp, from: [10.77.X.0/24] }`: 100 ports × n/100
/// non-adjacent /24s, one concatenated interval element each in `allow_tcp_v4`.
fn from_cidrs(n: usize) -> Result<Case> {
    let allow = (0..n)
        .map(|i| {
            let port = u16::try_from(2000 + 2 * (i % 100)).context("port")?;
            let k = i / 100;
            let (hi, lo) = (u8::try_from(k / 128).context("too many")?, (k % 128) * 2);
            let net = Ipv4Net::new(Ipv4Addr::new(10, 77 + hi, u8::try_from(lo)?, 0), 24)?;
            Ok(entry(Proto::Tcp, port, vec![IpNet::V4(net)]))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Case {
        name: format!("{n} from: CIDR × port"),
        entries: n,
        policy: policy(allow),
    })
}

fn facts() -> Facts {
    Facts {
        hostname: "bench".into(),
        interfaces: vec![InterfaceFacts {
            name: "lo".into(),
            index: 1,
            up: true,
            addrs: Vec::new(),
        }],
        default_route_interface: None,
    }
}

/// Runs `nft args`, failing with its stderr.
fn nft(args: &[&str]) -> Result<Duration> {
    let t = Instant::now();
    let out = Command::new("nft")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running nft")?;
    let elapsed = t.elapsed();
    if !out.status.success() {
        bail!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(elapsed)
}

fn file_arg(p: &Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 temp path")
}

struct Row {
    case: String,
    entries: usize,
    elements: usize,
    script_kb: f64,
    raw: Stats,
    agent: Stats,
    reported: Stats,
}

struct Steps {
    case: String,
    compile: Stats,
    lkg_load: Stats,
    describe: Stats,
    apply: Stats,
    prepare: Stats,
    verify: Stats,
    compare: Stats,
    commit: Stats,
}

struct Alternatives {
    case: String,
    json: Stats,
    json_parse: Stats,
    split: Stats,
    netlink: Stats,
    json_kb: f64,
}

fn timed<T>(stats: &mut Stats, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let t = Instant::now();
    let v = f()?;
    stats.push(t.elapsed());
    Ok(v)
}

fn bench_case(case: &Case, args: &Args, dir: &Path, rev0: &mut u64) -> Result<Row> {
    let facts = facts();
    let state = dir.join(format!("state-{}", *rev0));
    let agent = Agent::new(Arc::new(NftDataplane::default()), StateDir::new(&state));
    let script_path = dir.join("raw.nft");
    // Start from our table holding this policy (a create), then time replaces only.
    *rev0 += 1;
    agent.reconcile(&case.policy, &facts, *rev0)?;
    let first = compile(&case.policy, &facts, *rev0)?;
    let mut row = Row {
        case: case.name.clone(),
        entries: case.entries,
        elements: first.element_count(),
        script_kb: first.to_nft_script().len() as f64 / 1024.0,
        raw: Stats::default(),
        agent: Stats::default(),
        reported: Stats::default(),
    };
    for _ in 0..args.runs {
        *rev0 += 1;
        let script = compile(&case.policy, &facts, *rev0)?.to_nft_script();
        std::fs::write(&script_path, &script)?;
        row.raw.push(nft(&["-f", file_arg(&script_path)?])?);
        *rev0 += 1;
        let t = Instant::now();
        let report = agent.reconcile(&case.policy, &facts, *rev0)?;
        row.agent.push(t.elapsed());
        row.reported.push(Duration::from_millis(report.elapsed_ms));
        if !report.changed {
            bail!("reconcile did not change the table: the benchmark is wrong");
        }
    }
    Ok(row)
}

/// The steps of `Agent::reconcile` on a changed ruleset, one by one, through the same
/// public functions.
fn breakdown(
    case: &Case,
    args: &Args,
    dir: &Path,
    rev0: &mut u64,
) -> Result<(Steps, Alternatives)> {
    let facts = facts();
    let dp = NftDataplane::default();
    let state = StateDir::new(dir.join(format!("steps-{}", *rev0)));
    // Start with our table and a last-known-good record, as reconcile would.
    *rev0 += 1;
    Agent::new(Arc::new(dp.clone()), state.clone()).reconcile(&case.policy, &facts, *rev0)?;
    let mut s = Steps {
        case: case.name.clone(),
        compile: Stats::default(),
        lkg_load: Stats::default(),
        describe: Stats::default(),
        apply: Stats::default(),
        prepare: Stats::default(),
        verify: Stats::default(),
        compare: Stats::default(),
        commit: Stats::default(),
    };
    let mut alt = Alternatives {
        case: case.name.clone(),
        json: Stats::default(),
        json_parse: Stats::default(),
        split: Stats::default(),
        netlink: Stats::default(),
        json_kb: 0.0,
    };
    for _ in 0..args.runs {
        *rev0 += 1;
        let desired = timed(&mut s.compile, || Ok(compile(&case.policy, &facts, *rev0)?))?;
        let current = timed(&mut s.lkg_load, || Ok(state.load_shared()?))?.context("no LKG")?;
        timed(&mut s.describe, || Ok(diff(&desired, &current.ruleset)))?;
        timed(&mut s.apply, || Ok(dp.replace(&desired)?))?;
        // In reconcile this runs on a second thread while nft applies.
        let prepared = timed(&mut s.prepare, || {
            let hash = desired.hash();
            let lkg = LastKnownGood::with_hash(case.policy.clone(), *rev0, desired.clone(), hash);
            Ok(state.prepare(Arc::new(lkg))?)
        })?;
        let actual = timed(&mut s.verify, || Ok(dp.read_table()?))?.context("table absent")?;
        timed(&mut s.compare, || {
            if !diff(&desired, &actual.ruleset).is_empty()
                || prepared.record().ruleset != actual.ruleset
            {
                bail!("readback differs");
            }
            Ok(())
        })?;
        timed(&mut s.commit, || Ok(prepared.commit()?))?;
        let t = Instant::now();
        let json = dp.read_back()?.context("table absent")?;
        alt.json.push(t.elapsed());
        alt.json_kb = json.len() as f64 / 1024.0;
        timed(&mut alt.json_parse, || Ok(parse_readback(&json)?))?;
        let split = timed(&mut alt.split, || {
            dp.read_table_split().map_err(|why| anyhow::anyhow!(why))
        })?;
        let netlink = timed(&mut alt.netlink, || {
            dp.read_table_netlink().map_err(|why| anyhow::anyhow!(why))
        })?;
        if split.as_ref().map(|t| &t.ruleset) != Some(&desired)
            || netlink.as_ref().map(|t| &t.ruleset) != Some(&desired)
        {
            bail!("a readback differs from the compiled ruleset");
        }
    }
    Ok((s, alt))
}

fn med_p90(s: &Stats) -> String {
    format!("{} / {}", ms(s.median()), ms(s.p90()))
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !portcullis_testkit::require_root_netns() {
        bail!("apply-bench needs root and `ip netns` (it creates its own namespace)");
    }
    let mut cases = vec![seed()];
    for &n in &args.sizes {
        cases.push(ports(n)?);
    }
    for &n in &args.sizes {
        cases.push(from_cidrs(n)?);
    }
    let dir = tempfile::tempdir()?;
    let ns = NetNs::new()?;
    eprintln!(
        "apply-bench: namespace {}, {} runs per case",
        ns.name(),
        args.runs
    );
    let (rows, steps) = ns.enter(|| -> Result<_> {
        let mut rev = 0u64;
        let mut rows = Vec::new();
        for c in &cases {
            eprintln!("  {} ...", c.name);
            rows.push(bench_case(c, &args, dir.path(), &mut rev)?);
        }
        let mut steps = Vec::new();
        if !args.quick {
            for c in &cases {
                eprintln!("  breakdown {} ...", c.name);
                steps.push(breakdown(c, &args, dir.path(), &mut rev)?);
            }
        }
        Ok((rows, steps))
    })??;
    drop(ns);

    let mut out = String::new();
    out.push_str(&format!(
        "Machine: {}. {} runs per case, raw and agent interleaved; times in ms, median / p90.\n\n",
        machine(),
        args.runs
    ));
    let mut t = Table::new(&[
        "policy",
        "allow entries",
        "set elements",
        "script KB",
        "(a) raw `nft -f`",
        "(b) apply + verify",
        "agent-reported",
        "ratio b/a (median)",
    ]);
    for r in &rows {
        t.row(vec![
            r.case.clone(),
            r.entries.to_string(),
            r.elements.to_string(),
            format!("{:.1}", r.script_kb),
            med_p90(&r.raw),
            med_p90(&r.agent),
            ms(r.reported.median()),
            ratio(r.agent.median(), r.raw.median()),
        ]);
    }
    out.push_str(&t.render());
    if !steps.is_empty() {
        out.push_str("\nWhere (b) goes, step by step (median ms; same public functions as `Agent::reconcile`):\n\n");
        let mut t = Table::new(&[
            "policy",
            "compile",
            "LKG load",
            "describe (diff vs LKG)",
            "apply `nft -f -`",
            "hash + LKG write (during apply)",
            "verify readback (`read_table`)",
            "compare",
            "LKG commit",
        ]);
        for (s, _) in &steps {
            t.row(vec![
                s.case.clone(),
                ms(s.compile.median()),
                ms(s.lkg_load.median()),
                ms(s.describe.median()),
                ms(s.apply.median()),
                ms(s.prepare.median()),
                ms(s.verify.median()),
                ms(s.compare.median()),
                ms(s.commit.median()),
            ]);
        }
        out.push_str(&t.render());
        out.push_str("\nThe readbacks `read_table` chooses from, fastest first (median ms, process included):\n\n");
        let mut t = Table::new(&[
            "policy",
            "1. netlink only",
            "2. `nft -j -t list ruleset inet` + netlink elements",
            "3. `nft -j list table`",
            "+ its `parse_readback`",
            "JSON KB",
        ]);
        for (_, a) in &steps {
            t.row(vec![
                a.case.clone(),
                ms(a.netlink.median()),
                ms(a.split.median()),
                ms(a.json.median()),
                ms(a.json_parse.median()),
                format!("{:.0}", a.json_kb),
            ]);
        }
        out.push_str(&t.render());
    }
    println!("{out}");
    if let Some(path) = &args.write {
        write_section(path, "apply-bench", &out)?;
    }
    Ok(())
}
