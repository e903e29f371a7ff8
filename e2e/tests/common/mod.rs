//! A fleet in network namespaces: a bridge, a controller node, host nodes running real
//! agents, and an `outside` node for probes. Real binaries, real certificates, real packets.
//! Everything (processes, namespaces) is torn down on drop, also when a test panics.

#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

use anyhow::{Context as _, Result, bail};
use portcullis_testkit::{Bridge, NetNs, terminate};
use std::collections::BTreeMap;
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
    pub hosts: BTreeMap<String, Node>,
    pub outside: Node,
    controller: Option<Child>,
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
        let dir = tempfile::tempdir()?;
        let sw = Bridge::new()?;
        let ctl = attach(&sw, NetNs::new()?, 1)?;
        let outside = attach(&sw, NetNs::new()?, 100)?;
        let mut nodes = BTreeMap::new();
        for (i, h) in hosts.iter().enumerate() {
            let octet = u8::try_from(11 + i)?;
            nodes.insert((*h).to_string(), attach(&sw, NetNs::new()?, octet)?);
        }
        let fleet = Self {
            dir,
            ctl,
            hosts: nodes,
            outside,
            controller: None,
            agents: BTreeMap::new(),
            _sw: sw,
        };
        let pki = fleet.pki();
        let pki = pki.to_str().context("utf-8 path")?;
        fleet.portcullis_ok(&["ca", "init", "--dir", pki])?;
        let (v4, v6) = (fleet.ctl.v4.to_string(), fleet.ctl.v6.to_string());
        fleet.portcullis_ok(&[
            "ca",
            "issue",
            "controller",
            "--san",
            &v4,
            "--san",
            &v6,
            "--dir",
            pki,
        ])?;
        for h in hosts {
            fleet.portcullis_ok(&["ca", "issue", "agent", h, "--dir", pki])?;
        }
        fleet.portcullis_ok(&["ca", "issue", "admin", "e2e", "--dir", pki])?;
        Ok(fleet)
    }

    pub fn pki(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    pub fn controller_url(&self) -> String {
        format!("https://{}:{CTL_PORT}", self.ctl.v4)
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
        let pki = self.pki();
        let mut c = self.ctl.ns.command(bin("portcullis"));
        c.args(args)
            .env("PORTCULLIS_CONTROLLER", self.controller_url())
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

    fn start_controller_full(&mut self, pki: &Path, extra: &[&str]) -> Result<()> {
        let child = self
            .ctl
            .ns
            .command(bin("portcullis"))
            .args(["serve", "--listen", &format!("[::]:{CTL_PORT}")])
            .arg("--db")
            .arg(self.dir.path().join("controller.db"))
            .arg("--pki")
            .arg(pki)
            .args(extra)
            .env("PORTCULLIS_LOG", "info,portcullis_controller=debug")
            .stdout(Stdio::null())
            .stderr(self.log("controller"))
            .spawn()?;
        self.controller = Some(child);
        // Ready when the port accepts.
        let addr = SocketAddr::new(self.ctl.v4, CTL_PORT);
        let ok = self.ctl.ns.enter(move || {
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
                "controller did not listen within 10 s:\n{}",
                self.read_log("controller")
            );
        }
        Ok(())
    }

    pub fn stop_controller(&mut self) {
        if let Some(mut c) = self.controller.take() {
            terminate(&mut c);
        }
    }

    pub fn start_agent(&mut self, host: &str) -> Result<()> {
        self.start_agent_with(host, &[])
    }

    /// [`Fleet::start_agent`] with extra `portcullis-agent run` flags (e.g. drift timing).
    pub fn start_agent_with(&mut self, host: &str, extra: &[&str]) -> Result<()> {
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
            .args(["--controller", &self.controller_url()])
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
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last = serde_json::Value::Null;
        while Instant::now() < deadline {
            let out = self.cli(&["status", "--json"]);
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
            "hosts {hosts:?} never became {what}; last status: {last:#}\n{}",
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

    /// `portcullis apply` that must succeed on every host.
    pub fn apply_ok(&self, inv: &Path, site: &Path) {
        let out = self.cli(&[
            "apply",
            "-i",
            inv.to_str().expect("utf-8"),
            site.to_str().expect("utf-8"),
            "--timeout",
            "20s",
        ]);
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
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let hosts: Vec<String> = self.agents.keys().cloned().collect();
        for h in hosts {
            self.stop_agent(&h);
        }
        self.stop_controller();
    }
}
