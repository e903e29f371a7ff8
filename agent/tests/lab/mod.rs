//! Shared harness for the agent's real-packet tests: a testkit topology, a private state
//! dir, and the `portcullis-agent` binary run inside the `host` namespace.
//!
//! Only namespaces created here are touched; they are deleted when the `Lab` drops.

#![allow(dead_code)]

use portcullis_testkit::{TcpOutcome, TcpServer, Topology, UdpEcho, UdpOutcome, probe};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

/// How long a "dropped" answer is waited for.
pub const DROP_WAIT: Duration = Duration::from_millis(400);
/// How long an "accepted" answer may take.
pub const ACCEPT_WAIT: Duration = Duration::from_secs(2);

pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis-agent");

pub const SEED: &str = "allow:\n  - smtp/tcp\n  - domain/udp\n  - http/tcp\n";

pub struct Lab {
    pub topo: Topology,
    pub dir: tempfile::TempDir,
}

impl Lab {
    /// `host` (10.77.1.1, fd77:0:0:1::1) and `peer` (.2 / ::2) on one veth pair (`eth0`).
    pub fn pair() -> Self {
        Self::with(Topology::pair().expect("topology"))
    }

    pub fn with(topo: Topology) -> Self {
        Self {
            topo,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Writes `text` to `<tempdir>/<name>` and returns the path.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write file");
        path
    }

    /// Runs `portcullis-agent <args>` inside the host namespace.
    pub fn agent(&self, args: &[&str]) -> Output {
        self.topo
            .ns("host")
            .command(BIN)
            .args(args)
            .env("PORTCULLIS_STATE_DIR", self.state_dir())
            .env_remove("PORTCULLIS_POLICY")
            .env_remove("PORTCULLIS_SITE")
            .env_remove("PORTCULLIS_INVENTORY")
            .env_remove("PORTCULLIS_HOST")
            .env_remove("PORTCULLIS_REVISION")
            .output()
            .expect("run portcullis-agent")
    }

    /// Runs the agent and asserts exit 0; returns stdout.
    pub fn agent_ok(&self, args: &[&str]) -> String {
        let out = self.agent(args);
        assert!(
            out.status.success(),
            "portcullis-agent {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes `yaml` as a one-host policy file and applies it.
    pub fn apply_policy(&self, yaml: &str, extra: &[&str]) -> String {
        let path = self.file("policy.yml", yaml);
        let path = path.to_string_lossy().into_owned();
        let mut args = vec!["apply", "--policy", path.as_str()];
        args.extend_from_slice(extra);
        self.agent_ok(&args)
    }

    pub fn show_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.agent_ok(&["show", "--json"])).expect("show --json")
    }

    /// `nft <args>` in the host namespace; stdout (panics on failure).
    pub fn nft(&self, args: &[&str]) -> String {
        self.topo.ns("host").run_ok("nft", args).expect("nft")
    }

    /// Loads an nft script in the host namespace.
    pub fn nft_script(&self, script: &str) {
        let path = self.file("script.nft", script);
        self.nft(&["-f", &path.to_string_lossy()]);
    }

    /// The address of `node` on link `link` in the given family.
    pub fn addr(&self, link: usize, node: &str, v6: bool) -> IpAddr {
        self.topo.endpoint(link, node).addr(v6)
    }

    pub fn tcp_server(&self, node: &str, addr: IpAddr, port: u16) -> TcpServer {
        TcpServer::start(self.topo.ns(node), SocketAddr::new(addr, port)).expect("tcp listen")
    }

    pub fn udp_echo(&self, node: &str, addr: IpAddr, port: u16) -> UdpEcho {
        UdpEcho::start(self.topo.ns(node), SocketAddr::new(addr, port)).expect("udp echo")
    }

    /// TCP probe from `from` to `to:port`; waits [`ACCEPT_WAIT`] or [`DROP_WAIT`].
    pub fn tcp(&self, from: &str, to: IpAddr, port: u16, wait: Duration) -> TcpOutcome {
        probe::tcp_connect(self.topo.ns(from), SocketAddr::new(to, port), wait).expect("probe")
    }

    pub fn udp(&self, from: &str, to: IpAddr, port: u16, wait: Duration) -> UdpOutcome {
        probe::udp_request(self.topo.ns(from), SocketAddr::new(to, port), wait).expect("probe")
    }
}

/// Sum of deny-rule packets in `show --json`.
pub fn deny_packets(show: &serde_json::Value) -> u64 {
    show["deny_packets"].as_u64().expect("deny_packets")
}
