//! A controller started in-process on loopback with a fresh PKI, and mTLS clients for it.

#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

use portcullis_controller::pki::Pki;
use portcullis_controller::pki::tls::client_tls;
use portcullis_controller::server::{ServeConfig, run};
use portcullis_proto::v1;
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio::sync::oneshot;
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
            db: self.dir.path().join("controller.db"),
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
        })),
    }
}
