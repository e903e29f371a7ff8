//! netns-fleet-bench: `portcullis apply` to real agents, each a `portcullis-agent run`
//! process applying real nftables in its own network namespace, joined by a bridge to the
//! controller's namespace (`portcullis serve`). Real binaries (target/release), real
//! certificates. Measures the wall time of the `portcullis apply` command (validate,
//! connect, Apply, every host Applied with the expected hash, exit 0).
//!
//! Everything it creates (namespaces, processes) is removed at the end, also on error.
//!
//! `cargo build --release --workspace --bins && target/release/netns-fleet-bench [--sizes 3,50] [--write docs/BENCHMARKS.md]`

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use portcullis_bench::{Stats, Table, machine, ms, write_section};
use portcullis_testkit::{Bridge, NetNs, terminate};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const CTL_PORT: u16 = 7443;

#[derive(Parser, Debug)]
#[command(about = "portcullis apply to real agents in network namespaces")]
struct Args {
    /// Fleet sizes (hosts); at most 200.
    #[arg(long, value_delimiter = ',', default_values_t = [3, 50])]
    sizes: Vec<usize>,
    /// Timed applies per size.
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Replace this benchmark's section of a markdown file (e.g. docs/BENCHMARKS.md).
    #[arg(long)]
    write: Option<PathBuf>,
}

/// A binary next to this one (target/release).
fn bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe.parent().context("exe dir")?.join(name);
    if !p.exists() {
        bail!(
            "{} not built: run `cargo build --release --workspace --bins`",
            p.display()
        );
    }
    Ok(p)
}

struct Node {
    ns: NetNs,
    v4: IpAddr,
}

/// Plugged into the bridge, addressed 10.77.X.Y/16.
fn attach(sw: &Bridge, ns: NetNs, index: usize) -> Result<Node> {
    let (hi, lo) = (index / 250, index % 250 + 1);
    let v4 = format!("10.77.{hi}.{lo}");
    sw.attach(&ns, &format!("{v4}/16"), None)?;
    Ok(Node {
        ns,
        v4: v4.parse()?,
    })
}

struct Lab {
    dir: tempfile::TempDir,
    ctl: Node,
    hosts: BTreeMap<String, Node>,
    controller: Option<Child>,
    agents: Vec<Child>,
    // Last: namespaces go after the processes in them.
    _sw: Bridge,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for a in &mut self.agents {
            terminate(a);
        }
        if let Some(c) = &mut self.controller {
            terminate(c);
        }
    }
}

fn host_name(i: usize) -> String {
    format!("h{i:03}")
}

impl Lab {
    fn new(n: usize) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let sw = Bridge::new()?;
        let ctl = attach(&sw, NetNs::new()?, 0)?;
        let mut hosts = BTreeMap::new();
        for i in 0..n {
            hosts.insert(host_name(i), attach(&sw, NetNs::new()?, i + 10)?);
        }
        let lab = Self {
            dir,
            ctl,
            hosts,
            controller: None,
            agents: Vec::new(),
            _sw: sw,
        };
        let pki = lab.pki();
        let pki = pki.to_str().context("utf-8 path")?;
        lab.portcullis_ok(&["ca", "init", "--dir", pki])?;
        let v4 = lab.ctl.v4.to_string();
        lab.portcullis_ok(&["ca", "issue", "controller", "--san", &v4, "--dir", pki])?;
        for h in lab.hosts.keys() {
            lab.portcullis_ok(&["ca", "issue", "agent", h, "--dir", pki])?;
        }
        lab.portcullis_ok(&["ca", "issue", "admin", "bench", "--dir", pki])?;
        Ok(lab)
    }

    fn pki(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    fn url(&self) -> String {
        format!("https://{}:{CTL_PORT}", self.ctl.v4)
    }

    fn portcullis_ok(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(bin("portcullis")?).args(args).output()?;
        if !out.status.success() {
            bail!(
                "portcullis {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn log(&self, name: &str) -> Stdio {
        std::fs::File::create(self.dir.path().join(format!("{name}.log")))
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null())
    }

    fn cli(&self, args: &[&str]) -> Result<Output> {
        let pki = self.pki();
        Ok(self
            .ctl
            .ns
            .command(bin("portcullis")?)
            .args(args)
            .env("PORTCULLIS_CONTROLLER", self.url())
            .env("PORTCULLIS_CERT", pki.join("admin-bench.crt"))
            .env("PORTCULLIS_KEY", pki.join("admin-bench.key"))
            .env("PORTCULLIS_CA", pki.join("ca.crt"))
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .output()?)
    }

    fn start(&mut self) -> Result<()> {
        let pki = self.pki();
        let child = self
            .ctl
            .ns
            .command(bin("portcullis")?)
            .args(["serve", "--listen", &format!("0.0.0.0:{CTL_PORT}")])
            .arg("--db")
            .arg(self.dir.path().join("controller.db"))
            .arg("--pki")
            .arg(&pki)
            .env("PORTCULLIS_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(self.log("controller"))
            .spawn()?;
        self.controller = Some(child);
        let addr = SocketAddr::new(self.ctl.v4, CTL_PORT);
        let up = self.ctl.ns.enter(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        })?;
        if !up {
            bail!("controller did not listen within 10 s");
        }
        let url = self.url();
        for (h, node) in &self.hosts {
            let child = node
                .ns
                .command(bin("portcullis-agent")?)
                .arg("run")
                .args(["--controller", &url])
                .arg("--ca")
                .arg(pki.join("ca.crt"))
                .arg("--cert")
                .arg(pki.join(format!("agent-{h}.crt")))
                .arg("--key")
                .arg(pki.join(format!("agent-{h}.key")))
                .arg("--state-dir")
                .arg(self.dir.path().join(format!("state-{h}")))
                .env("PORTCULLIS_BACKOFF_MAX", "1s")
                .env("PORTCULLIS_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(self.log(&format!("agent-{h}")))
                .spawn()?;
            self.agents.push(child);
        }
        Ok(())
    }

    /// Waits until `status --json` shows every host connected.
    fn wait_connected(&self) -> Result<Duration> {
        let t = Instant::now();
        let deadline = t + Duration::from_secs(60);
        while Instant::now() < deadline {
            let out = self.cli(&["status", "--json"])?;
            if out.status.success() {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                let connected = v["hosts"]
                    .as_array()
                    .map_or(0, |a| a.iter().filter(|h| h["connected"] == true).count());
                if connected == self.hosts.len() {
                    return Ok(t.elapsed());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("not every agent connected within 60 s")
    }

    fn write(&self, name: &str, text: &str) -> Result<PathBuf> {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text)?;
        Ok(p)
    }

    fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(20).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

const SITE: &str = "- name: seed\n  hosts: all\n  policy:\n    interface: default\n    allow:\n      - smtp/tcp\n      - http/tcp\n      - domain/udp\n";

struct Row {
    n: usize,
    connect: Duration,
    status: Stats,
    apply: Stats,
}

fn bench(n: usize, runs: usize) -> Result<Row> {
    let mut lab = Lab::new(n)?;
    let mut inv = String::from("all:\n  children:\n    fleet:\n      hosts:\n");
    for h in lab.hosts.keys() {
        inv.push_str(&format!("        {h}:\n"));
    }
    let inv = lab.write("inventory.yml", &inv)?;
    let site = lab.write("site.yml", SITE)?;
    let (inv, site) = (
        inv.to_str().context("utf-8")?.to_owned(),
        site.to_str().context("utf-8")?.to_owned(),
    );
    let t = Instant::now();
    lab.start()?;
    lab.wait_connected()?;
    let connect = t.elapsed();
    let mut row = Row {
        n,
        connect,
        status: Stats::default(),
        apply: Stats::default(),
    };
    // The first apply creates the table everywhere; the timed ones replace it (each
    // revision is a new ruleset: the log prefix carries the revision).
    for i in 0..=runs {
        let t = Instant::now();
        let out = lab.cli(&["apply", "-i", &inv, &site, "--timeout", "60s"])?;
        let elapsed = t.elapsed();
        if !out.status.success() {
            bail!(
                "portcullis apply failed ({}): {}\n{}\ncontroller log:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                lab.log_tail("controller")
            );
        }
        if i > 0 {
            row.apply.push(elapsed);
        }
        // The CLI's own floor: process start, TLS handshake, one unary call.
        let t = Instant::now();
        let out = lab.cli(&["status", "--json"])?;
        if out.status.success() {
            row.status.push(t.elapsed());
        }
    }
    // Spot check: the last host's kernel holds our table.
    if let Some((_, node)) = lab.hosts.iter().next_back() {
        node.ns
            .run_ok("nft", &["list", "table", "inet", "portcullis"])
            .context("our table in the last host")?;
    }
    Ok(row)
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !portcullis_testkit::require_root_netns() {
        bail!("netns-fleet-bench needs root and `ip netns`");
    }
    if args.sizes.iter().any(|&n| n > 200) {
        bail!("at most 200 hosts");
    }
    let _ = bin("portcullis")?;
    let _ = bin("portcullis-agent")?;
    let mut rows = Vec::new();
    for &n in &args.sizes {
        eprintln!("netns-fleet-bench: {n} agents ...");
        rows.push(bench(n, args.runs)?);
    }
    let mut out = format!(
        "Machine: {}. One namespace per agent on a bridge; `portcullis serve` in its own \
         namespace; real `portcullis-agent run` processes applying nftables (seed policy); \
         {} timed applies per size after a first one that creates the tables. Times in ms, \
         median / p90.\n\n",
        machine(),
        args.runs
    );
    let mut t = Table::new(&[
        "agents",
        "start → all connected",
        "`portcullis apply` → exit 0 (all Applied, verified)",
        "`portcullis status` (CLI floor)",
        "target",
    ]);
    for r in &rows {
        t.row(vec![
            r.n.to_string(),
            ms(r.connect),
            format!("{} / {}", ms(r.apply.median()), ms(r.apply.p90())),
            format!("{} / {}", ms(r.status.median()), ms(r.status.p90())),
            if r.n >= 50 {
                "< 600 ms for 50 hosts (Ansible: 29.6 s)".to_owned()
            } else {
                "-".to_owned()
            },
        ]);
    }
    out.push_str(&t.render());
    println!("{out}");
    if let Some(path) = &args.write {
        write_section(path, "netns-fleet-bench", &out)?;
    }
    Ok(())
}
