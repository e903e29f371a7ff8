//! A fleet in network namespaces: a bridge, a controller node, host nodes running real
//! agents, and an `outside` node for probes. Real binaries, real certificates, real packets.
//! Everything (processes, namespaces) is torn down on drop, also when a test panics.
//!
//! [`Fleet::with_controllers`] adds more controller nodes (10.77.0.2, .3, ...), each a
//! `portcullis serve` with its own database and the same PKI (one controller certificate
//! naming every controller's addresses); the `*_at(i, ..)` methods address controller `i`
//! (0 is [`Fleet::ctl`], the one every other method uses).
//!
//! [`Fleet::on_postgres`] / [`Fleet::with_shared_db`] put every controller on one
//! PostgreSQL database instead (a Unix-socket cluster: its socket directory is a path,
//! reachable from every namespace), so they share their state as in production.

#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

use anyhow::{Context as _, Result, bail};
use portcullis_testkit::{Bridge, NetNs, terminate};
use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const CTL_PORT: u16 = 7443;

/// Directory holding the workspace's binaries (next to this test's `deps/`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo build --workspace --bins` (cargo test --workspace does)",
        p.display()
    );
    p
}

pub struct Node {
    pub ns: NetNs,
    pub v4: IpAddr,
    pub v6: IpAddr,
}

impl Node {
    pub fn addr(&self, v6: bool) -> IpAddr {
        if v6 { self.v6 } else { self.v4 }
    }
}

pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub ctl: Node,
    /// Controllers 1.. (see [`Fleet::with_controllers`]); empty for one controller.
    pub more_ctls: Vec<Node>,
    pub hosts: BTreeMap<String, Node>,
    pub outside: Node,
    /// One PostgreSQL database for every controller (`--db`); `None`: a SQLite file each.
    db: Option<String>,
    controller: Option<Child>,
    more_controllers: Vec<Option<Child>>,
    agents: BTreeMap<String, Child>,
    // Declared last: namespaces go after the processes in them.
    _sw: Bridge,
}

fn attach(sw: &Bridge, ns: NetNs, octet: u8) -> Result<Node> {
    let (v4, v6) = (format!("10.77.0.{octet}"), format!("fd77::{octet:x}"));
    sw.attach(&ns, &format!("{v4}/24"), Some(&format!("{v6}/64")))?;
    Ok(Node {
        ns,
        v4: v4.parse()?,
        v6: v6.parse()?,
    })
}

impl Fleet {
    /// Namespaces and certificates for `hosts`; nothing started yet.
    pub fn new(hosts: &[&str]) -> Result<Self> {
        Self::with_controllers(hosts, 1)
    }

    /// [`Fleet::new`] with `controllers` controller nodes (1 to 9): 10.77.0.1, .2, ...
    pub fn with_controllers(hosts: &[&str], controllers: usize) -> Result<Self> {
        if !(1..=9).contains(&controllers) {
            bail!("1 to 9 controllers, not {controllers}");
        }
        let dir = tempfile::tempdir()?;
        let sw = Bridge::new()?;
        let ctl = attach(&sw, NetNs::new()?, 1)?;
        let mut more_ctls = Vec::new();
        for i in 1..controllers {
            more_ctls.push(attach(&sw, NetNs::new()?, u8::try_from(1 + i)?)?);
        }
        let outside = attach(&sw, NetNs::new()?, 100)?;
        let mut nodes = BTreeMap::new();
        for (i, h) in hosts.iter().enumerate() {
            let octet = u8::try_from(11 + i)?;
            nodes.insert((*h).to_string(), attach(&sw, NetNs::new()?, octet)?);
        }
        let fleet = Self {
            dir,
            ctl,
            more_controllers: more_ctls.iter().map(|_| None).collect(),
            more_ctls,
            hosts: nodes,
            outside,
            db: None,
            controller: None,
            agents: BTreeMap::new(),
            _sw: sw,
        };
        let pki = fleet.pki();
        let pki = pki.to_str().context("utf-8 path")?;
        fleet.portcullis_ok(&["ca", "init", "--dir", pki])?;
        // One certificate for every controller: it names all their addresses.
        let sans: Vec<String> = (0..controllers)
            .flat_map(|i| {
                let n = fleet.ctl_node(i);
                [n.v4.to_string(), n.v6.to_string()]
            })
            .collect();
        let mut args = vec!["ca", "issue", "controller"];
        for san in &sans {
            args.extend(["--san", san.as_str()]);
        }
        args.extend(["--dir", pki]);
        fleet.portcullis_ok(&args)?;
        for h in hosts {
            fleet.portcullis_ok(&["ca", "issue", "agent", h, "--dir", pki])?;
        }
        fleet.portcullis_ok(&["ca", "issue", "admin", "e2e", "--dir", pki])?;
        Ok(fleet)
    }

    /// [`Fleet::with_controllers`] with every controller on the PostgreSQL database `db`
    /// (a connection string, e.g. from `Cluster::fresh_database`).
    pub fn with_shared_db(hosts: &[&str], controllers: usize, db: String) -> Result<Self> {
        let mut fleet = Self::with_controllers(hosts, controllers)?;
        fleet.db = Some(db);
        Ok(fleet)
    }

    /// [`Fleet::with_shared_db`] on a fresh database of the test process's cluster
    /// ([`portcullis_testkit::require_postgres`]); `None` when PostgreSQL tests are
    /// skipped (`PORTCULLIS_SKIP_POSTGRES=1`), a panic when there is no cluster otherwise.
    pub fn on_postgres(hosts: &[&str], controllers: usize) -> Result<Option<Self>> {
        let Some(cluster) = portcullis_testkit::require_postgres() else {
            return Ok(None);
        };
        let db = cluster.fresh_database().map_err(anyhow::Error::msg)?;
        Self::with_shared_db(hosts, controllers, db).map(Some)
    }

    /// The controllers' shared PostgreSQL database, if they have one.
    pub fn db(&self) -> Option<&str> {
        self.db.as_deref()
    }

    pub fn pki(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    pub fn controller_url(&self) -> String {
        self.controller_url_at(0)
    }

    /// How many controller nodes there are.
    pub fn controllers(&self) -> usize {
        1 + self.more_ctls.len()
    }

    /// Controller `i`'s node (0: [`Fleet::ctl`]).
    pub fn ctl_node(&self, i: usize) -> &Node {
        match i {
            0 => &self.ctl,
            _ => &self.more_ctls[i - 1],
        }
    }

    pub fn controller_url_at(&self, i: usize) -> String {
        format!("https://{}:{CTL_PORT}", self.ctl_node(i).v4)
    }

    /// Every controller's URL, in order.
    pub fn controller_urls(&self) -> Vec<String> {
        (0..self.controllers())
            .map(|i| self.controller_url_at(i))
            .collect()
    }

    /// `portcullis ARGS` in the host's own namespace (CA commands).
    pub fn portcullis_ok(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(bin("portcullis")).args(args).output()?;
        if !out.status.success() {
            bail!(
                "portcullis {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The operator CLI, run in the controller's namespace with the admin certificate.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_command(args).output().expect("running portcullis")
    }

    /// [`Fleet::cli`] not started yet (to run it in the background).
    pub fn cli_command(&self, args: &[&str]) -> Command {
        self.cli_command_at(0, args)
    }

    /// [`Fleet::cli`] against controller `i` (run in its namespace).
    pub fn cli_at(&self, i: usize, args: &[&str]) -> Output {
        self.cli_command_at(i, args)
            .output()
            .expect("running portcullis")
    }

    /// [`Fleet::cli_command`] against controller `i`.
    pub fn cli_command_at(&self, i: usize, args: &[&str]) -> Command {
        let pki = self.pki();
        let mut c = self.ctl_node(i).ns.command(bin("portcullis"));
        c.args(args)
            .env("PORTCULLIS_CONTROLLER", self.controller_url_at(i))
            .env("PORTCULLIS_CERT", pki.join("admin-e2e.crt"))
            .env("PORTCULLIS_KEY", pki.join("admin-e2e.key"))
            .env("PORTCULLIS_CA", pki.join("ca.crt"))
            .env("HOME", self.dir.path());
        c
    }

    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "portcullis {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON output")
    }

    fn log(&self, name: &str) -> Stdio {
        std::fs::File::create(self.dir.path().join(format!("{name}.log")))
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null())
    }

    pub fn read_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    pub fn start_controller(&mut self) -> Result<()> {
        let pki = self.pki();
        self.start_controller_with_pki(&pki)
    }

    /// [`Fleet::start_controller`] with another PKI directory (e.g. a stolen key's copy).
    pub fn start_controller_with_pki(&mut self, pki: &Path) -> Result<()> {
        self.start_controller_full(pki, &[])
    }

    /// [`Fleet::start_controller`] with extra `serve` flags.
    pub fn start_controller_with(&mut self, extra: &[&str]) -> Result<()> {
        let pki = self.pki();
        self.start_controller_full(&pki, extra)
    }

    /// Start controller `i` (0: as [`Fleet::start_controller`]); controller `i > 0` has
    /// its own database (`controller-<i>.db`, unless the fleet has a shared one) and log
    /// (`controller-<i>`).
    pub fn start_controller_at(&mut self, i: usize) -> Result<()> {
        let pki = self.pki();
        self.start_controller_full_at(i, &pki, &[])
    }

    fn start_controller_full(&mut self, pki: &Path, extra: &[&str]) -> Result<()> {
        self.start_controller_full_at(0, pki, extra)
    }

    fn controller_name(i: usize) -> String {
        match i {
            0 => "controller".to_owned(),
            _ => format!("controller-{i}"),
        }
    }

    fn controller_slot(&mut self, i: usize) -> &mut Option<Child> {
        match i {
            0 => &mut self.controller,
            _ => &mut self.more_controllers[i - 1],
        }
    }

    fn start_controller_full_at(&mut self, i: usize, pki: &Path, extra: &[&str]) -> Result<()> {
        let name = Self::controller_name(i);
        let node = self.ctl_node(i);
        let db = match &self.db {
            Some(shared) => shared.into(),
            None => self.dir.path().join(format!("{name}.db")).into_os_string(),
        };
        let child = node
            .ns
            .command(bin("portcullis"))
            .args(["serve", "--listen", &format!("[::]:{CTL_PORT}")])
            .arg("--db")
            .arg(db)
            .arg("--pki")
            .arg(pki)
            .args(extra)
            .env("PORTCULLIS_LOG", "info,portcullis_controller=debug")
            .stdout(Stdio::null())
            .stderr(self.log(&name))
            .spawn()?;
        let addr = SocketAddr::new(node.v4, CTL_PORT);
        *self.controller_slot(i) = Some(child);
        // Ready when the port accepts.
        let ok = self.ctl_node(i).ns.enter(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        })?;
        if !ok {
            bail!(
                "{name} did not listen within 10 s:\n{}",
                self.read_log(&name)
            );
        }
        Ok(())
    }

    pub fn stop_controller(&mut self) {
        self.stop_controller_at(0);
    }

    pub fn stop_controller_at(&mut self, i: usize) {
        if let Some(mut c) = self.controller_slot(i).take() {
            terminate(&mut c);
        }
    }

    /// SIGKILL controller `i`: no chance to close its sessions or its database.
    pub fn kill_controller(&mut self, i: usize) {
        if let Some(mut c) = self.controller_slot(i).take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn start_agent(&mut self, host: &str) -> Result<()> {
        self.start_agent_with(host, &[])
    }

    /// [`Fleet::start_agent`] with extra `portcullis-agent run` flags (e.g. drift timing).
    pub fn start_agent_with(&mut self, host: &str, extra: &[&str]) -> Result<()> {
        let url = self.controller_url();
        self.start_agent_to(host, &[url], extra)
    }

    /// [`Fleet::start_agent_with`] given `controllers` (one `--controller` each).
    pub fn start_agent_to(
        &mut self,
        host: &str,
        controllers: &[String],
        extra: &[&str],
    ) -> Result<()> {
        let pki = self.pki();
        // "ctl": an agent on the controller's own host (issue its certificate first).
        let node = if host == "ctl" {
            &self.ctl
        } else {
            self.hosts.get(host).context("unknown host")?
        };
        let state = self.dir.path().join(format!("state-{host}"));
        let child = node
            .ns
            .command(bin("portcullis-agent"))
            .arg("run")
            .args(
                controllers
                    .iter()
                    .flat_map(|c| ["--controller", c.as_str()]),
            )
            .arg("--ca")
            .arg(pki.join("ca.crt"))
            .arg("--cert")
            .arg(pki.join(format!("agent-{host}.crt")))
            .arg("--key")
            .arg(pki.join(format!("agent-{host}.key")))
            .arg("--state-dir")
            .arg(&state)
            .args(extra)
            .env("PORTCULLIS_BACKOFF_MAX", "1s")
            .env("PORTCULLIS_LOG", "info,portcullis_agent=debug")
            .stdout(Stdio::null())
            .stderr(self.log(&format!("agent-{host}")))
            .spawn()?;
        self.agents.insert(host.to_string(), child);
        Ok(())
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill_agent(&mut self, host: &str) {
        if let Some(mut c) = self.agents.remove(host) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn stop_agent(&mut self, host: &str) {
        if let Some(mut c) = self.agents.remove(host) {
            terminate(&mut c);
        }
    }

    /// Wait until `status --json` shows `pred` true for every listed host.
    pub fn wait_status(
        &self,
        hosts: &[&str],
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        self.wait_status_at(0, hosts, what, Duration::from_secs(15), pred)
    }

    /// [`Fleet::wait_status`] on controller `i`, waiting at most `within`.
    pub fn wait_status_at(
        &self,
        i: usize,
        hosts: &[&str],
        what: &str,
        within: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + within;
        let mut last = serde_json::Value::Null;
        while Instant::now() < deadline {
            let out = self.cli_at(i, &["status", "--json"]);
            if out.status.success() {
                last = serde_json::from_slice(&out.stdout).unwrap_or_default();
                let all = hosts.iter().all(|h| {
                    last["hosts"]
                        .as_array()
                        .and_then(|a| a.iter().find(|x| x["host"] == *h))
                        .is_some_and(&pred)
                });
                if all {
                    return last;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "hosts {hosts:?} never became {what} on controller {i} within {within:?}; \
             last status: {last:#}\n{}",
            self.logs()
        );
    }

    /// Every process log, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        if let Ok(rd) = std::fs::read_dir(self.dir.path()) {
            let mut names: Vec<_> = rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect();
            names.sort();
            for p in names {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                s.push_str(&format!("--- {} (tail)\n", p.display()));
                for l in tail.into_iter().rev() {
                    s.push_str(l);
                    s.push('\n');
                }
            }
        }
        s
    }

    /// Send `n` UDP datagrams from `outside` to `dst`.
    pub fn blast_udp(&self, dst: SocketAddr, n: usize) {
        self.outside
            .ns
            .enter(move || {
                let bind = if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
                let s = std::net::UdpSocket::bind(bind).expect("bind");
                for i in 0..n {
                    let _ = s.send_to(b"portcullis-e2e", dst);
                    if i % 50 == 49 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            })
            .expect("enter outside");
    }

    /// `GET /metrics` of `host`'s agent (`--metrics-listen <its v4>:<port>`), fetched in
    /// its namespace; `None` while it does not answer.
    pub fn agent_metrics(&self, host: &str, port: u16) -> Option<String> {
        let addr = SocketAddr::new(self.hosts[host].v4, port);
        self.hosts[host]
            .ns
            .enter(move || {
                let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                write!(s, "GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                Ok::<_, std::io::Error>(out)
            })
            .ok()?
            .ok()
    }

    /// The controller `host`'s agent has its session on, from its metrics on `port`
    /// (`portcullis_agent_controller{url=..} 1`); `None` while it has none.
    pub fn session_on(&self, host: &str, port: u16) -> Option<usize> {
        let text = self.agent_metrics(host, port)?;
        let urls = self.controller_urls();
        text.lines()
            .filter_map(|l| l.strip_prefix("portcullis_agent_controller{url=\""))
            .filter(|l| l.ends_with("} 1"))
            .find_map(|l| urls.iter().position(|u| l.starts_with(&format!("{u}\""))))
    }

    /// Wait until [`Fleet::session_on`] names a controller `ok` accepts; returns it.
    pub fn wait_session(
        &self,
        host: &str,
        port: u16,
        within: Duration,
        ok: impl Fn(usize) -> bool,
    ) -> usize {
        let deadline = Instant::now() + within;
        loop {
            match self.session_on(host, port) {
                Some(i) if ok(i) => return i,
                on if Instant::now() > deadline => {
                    panic!(
                        "{host}: session on {on:?} after {within:?}\n{}",
                        self.logs()
                    )
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// `portcullis apply` that must succeed on every host.
    pub fn apply_ok(&self, inv: &Path, site: &Path) {
        self.apply_ok_at(0, inv, site);
    }

    /// [`Fleet::apply_ok`] through controller `i`.
    pub fn apply_ok_at(&self, i: usize, inv: &Path, site: &Path) {
        let out = self.cli_at(
            i,
            &[
                "apply",
                "-i",
                inv.to_str().expect("utf-8"),
                site.to_str().expect("utf-8"),
                "--timeout",
                "20s",
            ],
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "apply failed:\n{}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write file");
        p
    }

    /// [`Fleet::write`] as an executable ([`portcullis_testkit::write_executable`]).
    pub fn executable(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        portcullis_testkit::write_executable(&p, text).expect("write executable");
        p
    }
}

/// `cmd`'s output, or a panic if it has not finished within `within` (it is killed).
pub fn output_within(mut cmd: Command, within: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning");
    let deadline = Instant::now() + within;
    while child.try_wait().expect("waiting").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still running after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().expect("collecting output")
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let hosts: Vec<String> = self.agents.keys().cloned().collect();
        for h in hosts {
            self.stop_agent(&h);
        }
        for i in 0..self.controllers() {
            self.stop_controller_at(i);
        }
    }
}
