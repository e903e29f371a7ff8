//! A controller started in-process on loopback with a fresh PKI, mTLS clients for it, and
//! a fake agent session ([`FakeAgent`]) that tests make misbehave.

#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

pub mod sim;

use portcullis_controller::pki::Pki;
use portcullis_controller::pki::tls::client_tls;
use portcullis_controller::server::{ServeConfig, run};
use portcullis_proto::v1;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

pub struct TestController {
    pub addr: SocketAddr,
    pub pki: Pki,
    pub dir: tempfile::TempDir,
    /// Denial log retention used by [`TestController::serve`].
    pub logs: portcullis_controller::server::logs::LogsConfig,
    /// Connection cap and pre-authentication limits used by [`TestController::serve`].
    pub max_connections: usize,
    pub pre_auth: portcullis_controller::server::incoming::PreAuth,
    /// The store (`None`: an SQLite file in `dir`).
    pub db: Option<portcullis_controller::store::DbSpec>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestController {
    pub async fn start() -> Self {
        Self::start_with_logs(Default::default()).await
    }

    /// Start with the given denial log retention.
    pub async fn start_with_logs(logs: portcullis_controller::server::logs::LogsConfig) -> Self {
        Self::start_with(logs, 1000, Default::default()).await
    }

    /// Start with the given connection cap and pre-authentication limits.
    pub async fn start_with_limits(
        max_connections: usize,
        pre_auth: portcullis_controller::server::incoming::PreAuth,
    ) -> Self {
        Self::start_with(Default::default(), max_connections, pre_auth).await
    }

    async fn start_with(
        logs: portcullis_controller::server::logs::LogsConfig,
        max_connections: usize,
        pre_auth: portcullis_controller::server::incoming::PreAuth,
    ) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let pki_dir = dir.path().join("pki");
        Pki::init(&pki_dir, false).unwrap();
        let pki = Pki::new(&pki_dir);
        pki.issue_controller(&["127.0.0.1".into(), "localhost".into()], false)
            .unwrap();
        let mut c = Self {
            addr: "127.0.0.1:0".parse().unwrap(),
            pki,
            dir,
            logs,
            max_connections,
            pre_auth,
            db: None,
            shutdown: None,
            handle: None,
        };
        c.serve().await;
        c
    }

    /// A controller on the store `db` (e.g. PostgreSQL shared with others).
    pub async fn start_on(db: portcullis_controller::store::DbSpec) -> Self {
        let mut c = Self::start().await;
        c.stop().await;
        c.db = Some(db);
        c.serve().await;
        c
    }

    /// Another controller on the same store and PKI (certificates of one verify on both).
    pub async fn peer(&self) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Self {
            addr: "127.0.0.1:0".parse().unwrap(),
            pki: Pki::new(self.pki.dir()),
            dir,
            logs: self.logs.clone(),
            max_connections: self.max_connections,
            pre_auth: self.pre_auth,
            db: self.db.clone(),
            shutdown: None,
            handle: None,
        };
        c.serve().await;
        c
    }

    /// (Re)start the server on a fresh port, same PKI and database.
    pub async fn serve(&mut self) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let config = ServeConfig {
            db: self
                .db
                .clone()
                .unwrap_or_else(|| self.dir.path().join("controller.db").into()),
            db_ca: None,
            pki: self.pki.dir().to_path_buf(),
            max_connections: self.max_connections,
            pre_auth: self.pre_auth,
            logs: self.logs.clone(),
        };
        self.shutdown = Some(tx);
        self.handle = Some(tokio::spawn(run(config, listener, async {
            let _ = rx.await;
        })));
    }

    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// A channel presenting `cert`/`key`, trusting `ca`.
    pub async fn channel_with(&self, ca: PathBuf, cert: PathBuf, key: PathBuf) -> Channel {
        let tls = client_tls(&ca, &cert, &key, None).unwrap();
        Endpoint::from_shared(self.url())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn agent_channel(&self, host: &str) -> Channel {
        let issued = self.pki.issue_agent(host, true).unwrap();
        self.channel_with(self.pki.ca_cert(), issued.cert, issued.key)
            .await
    }

    pub async fn admin(&self, name: &str) -> v1::admin_client::AdminClient<Channel> {
        let issued = self.pki.issue_admin(name, true).unwrap();
        let ch = self
            .channel_with(self.pki.ca_cert(), issued.cert, issued.key)
            .await;
        v1::admin_client::AdminClient::new(ch)
    }
}

pub const INVENTORY: &str = "all:\n  children:\n    web:\n      hosts:\n        h1:\n        h2:\n";
pub const SITE: &str =
    "- name: web\n  hosts: web\n  policy:\n    allow:\n      - http/tcp\n      - domain/udp\n";

pub fn apply_request(site: &str, limit: &str) -> v1::ApplyRequest {
    v1::ApplyRequest {
        site_name: "site.yml".into(),
        site_yaml: site.into(),
        inventory_name: "inventory.yml".into(),
        inventory_yaml: INVENTORY.into(),
        limit: limit.into(),
        ..Default::default()
    }
}

pub fn hello(host: &str) -> v1::AgentMessage {
    v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::Hello(v1::Hello {
            protocol_version: portcullis_proto::PROTOCOL_VERSION,
            host: host.into(),
            agent_version: "test".into(),
            facts: Some(v1::Facts {
                hostname: host.into(),
                interfaces: vec![],
                default_route_interface: "eth0".into(),
            }),
            applied_revision: 0,
            applied_hash: String::new(),
            kernel_hash: String::new(),
            conditions: Vec::new(),
            capabilities: vec![portcullis_proto::CAPABILITY_DENY_LISTS.into()],
        })),
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A fake agent's session over the host's own certificate: what it sends (`tx`), what
/// the controller sends it (`inbound`). Waits give up after `deadline` (5 s unless
/// [`FakeAgent::within`] says otherwise).
pub struct FakeAgent {
    pub tx: mpsc::Sender<v1::AgentMessage>,
    pub inbound: tonic::Streaming<v1::ControllerMessage>,
    deadline: Duration,
}

impl FakeAgent {
    /// Opens the session for `host` and sends its `Hello`.
    pub async fn open(ctl: &TestController, host: &str) -> Self {
        let ch = ctl.agent_channel(host).await;
        let mut client = v1::session_client::SessionClient::new(ch);
        let (tx, rx) = mpsc::channel(64);
        tx.send(hello(host)).await.unwrap();
        let inbound = client
            .open(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Self {
            tx,
            inbound,
            deadline: Duration::from_secs(5),
        }
    }

    /// The same session with another deadline for its waits.
    pub fn within(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    pub async fn send(&self, batch: v1::DenialBatch) {
        let msg = v1::AgentMessage {
            msg: Some(v1::agent_message::Msg::Denials(batch)),
        };
        self.tx.send(msg).await.unwrap();
    }

    /// The next acknowledgement's seq, or the status that ended the stream (other
    /// messages are skipped); panics after the deadline.
    pub async fn next_ack(&mut self) -> Result<u64, tonic::Status> {
        loop {
            let msg = tokio::time::timeout(self.deadline, self.inbound.next())
                .await
                .expect("nothing from the controller within the deadline")
                .ok_or_else(|| tonic::Status::cancelled("stream ended"))??;
            if let Some(v1::controller_message::Msg::DenialAck(a)) = msg.msg {
                return Ok(a.seq);
            }
        }
    }

    /// Sends the batch and waits for its acknowledgement (panics on the session's end).
    pub async fn store(&mut self, batch: v1::DenialBatch) {
        let seq = batch.seq;
        self.send(batch).await;
        assert_eq!(self.next_ack().await.unwrap(), seq);
    }

    /// Waits until the controller's side of the stream ends (error or end) and returns
    /// the status it ended with, if any; panics after `within`.
    pub async fn ends_within(&mut self, within: Duration) -> Option<tonic::Status> {
        tokio::time::timeout(within, async {
            loop {
                match self.inbound.next().await {
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Some(e),
                    None => return None,
                }
            }
        })
        .await
        .expect("the stream was not closed in time")
    }

    /// The status that ends the session within the deadline (`Ok` if it just ended).
    pub async fn end(&mut self) -> tonic::Status {
        let deadline = self.deadline;
        self.ends_within(deadline)
            .await
            .unwrap_or_else(|| tonic::Status::ok("stream ended"))
    }
}
