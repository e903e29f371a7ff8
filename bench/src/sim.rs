//! Simulated agents for fleet-bench: N mutual-TLS sessions from one process, each with its
//! own agent certificate (issued in memory from the bench CA), sending `Hello` and
//! answering every `Desired` with `Applied` and the hash it compiles (like a real agent,
//! minus nftables).
//!
//! Runs in a child process (`fleet-bench sim ...`) so the controller's process holds only
//! its own side of the connections (fds, CPU, RSS measured apart). Prints `CERTS <s>`
//! when the certificates are ready, `READY <s>` when every session is open (the
//! controller returned the response headers, i.e. it processed the Hello), and exits when
//! its stdin closes.

use anyhow::{Context as _, Result};
use portcullis_policy::{Facts, HostPolicy, InterfaceFacts, compile};
use portcullis_proto::v1;
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tokio::io::AsyncReadExt as _;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// Host name of simulated agent `i`.
pub fn host_name(i: usize) -> String {
    format!("sim{i:05}")
}

/// The facts every simulated agent reports (hostname aside).
pub fn facts(host: &str) -> Facts {
    Facts {
        hostname: host.to_owned(),
        interfaces: vec![InterfaceFacts {
            name: "eth0".into(),
            index: 2,
            up: true,
            addrs: vec![],
        }],
        default_route_interface: Some("eth0".into()),
    }
}

pub struct SimArgs {
    pub url: String,
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub n: usize,
    pub concurrency: usize,
}

struct AgentCert {
    host: String,
    cert_pem: String,
    key_pem: String,
}

fn issue(issuer: &Issuer<'_, KeyPair>, i: usize) -> Result<AgentCert> {
    let host = host_name(i);
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("agent/{host}"));
    params.subject_alt_names = vec![
        SanType::DnsName(host.clone().try_into()?),
        SanType::URI(format!("portcullis://agent/{host}").try_into()?),
    ];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let serial = u64::try_from(i)? + 0x5000_0000;
    params.serial_number = Some(SerialNumber::from_slice(&serial.to_be_bytes()));
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = params.signed_by(&key, issuer)?;
    Ok(AgentCert {
        host,
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn hello(host: &str) -> v1::AgentMessage {
    v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::Hello(v1::Hello {
            protocol_version: portcullis_proto::PROTOCOL_VERSION,
            host: host.to_owned(),
            agent_version: "fleet-bench-sim".into(),
            facts: Some(v1::Facts::from(&facts(host))),
            ..Default::default()
        })),
    }
}

/// Answers `d` as an agent would: compile with its facts, report the hash.
fn answer(host: &str, d: &v1::Desired) -> v1::AgentMessage {
    let started = Instant::now();
    let result = d
        .policy
        .as_ref()
        .context("Desired without a policy")
        .and_then(|p| HostPolicy::try_from(p).map_err(|e| anyhow::anyhow!("{e}")))
        .and_then(|p| Ok(compile(&p, &facts(host), d.revision)?));
    let (ok, hash, error) = match result {
        Ok(r) => (true, r.hash().0, String::new()),
        Err(e) => (false, String::new(), e.to_string()),
    };
    v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::Applied(v1::Applied {
            revision: d.revision,
            ok,
            hash,
            error,
            duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            ..Default::default()
        })),
    }
}

async fn run_agent(
    url: String,
    ca: Certificate,
    cert: AgentCert,
    opened: mpsc::Sender<Result<()>>,
    answered: Arc<AtomicU64>,
) {
    let session = async {
        let tls = ClientTlsConfig::new()
            .ca_certificate(ca)
            .identity(Identity::from_pem(&cert.cert_pem, &cert.key_pem));
        let channel = Endpoint::from_shared(url)?
            .tls_config(tls)?
            .connect()
            .await
            .context("connect")?;
        let mut client = v1::session_client::SessionClient::new(channel);
        let (tx, rx) = mpsc::channel(8);
        tx.send(hello(&cert.host)).await?;
        let inbound = client
            .open(ReceiverStream::new(rx))
            .await
            .context("open")?
            .into_inner();
        Ok::<_, anyhow::Error>((tx, inbound))
    };
    let (tx, mut inbound) = match session.await {
        Ok(s) => {
            let _ = opened.send(Ok(())).await;
            s
        }
        Err(e) => {
            let _ = opened.send(Err(e)).await;
            return;
        }
    };
    drop(opened);
    while let Some(Ok(msg)) = inbound.next().await {
        if let Some(v1::controller_message::Msg::Desired(d)) = msg.msg {
            let reply = answer(&cert.host, &d);
            if tx.send(reply).await.is_err() {
                return;
            }
            answered.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The child process's main: issue, connect, then serve until stdin closes.
pub async fn run(args: SimArgs) -> Result<()> {
    let t = Instant::now();
    let issuer = Issuer::from_ca_cert_pem(&args.ca_cert_pem, KeyPair::from_pem(&args.ca_key_pem)?)?;
    let certs = (0..args.n)
        .map(|i| issue(&issuer, i))
        .collect::<Result<Vec<_>>>()?;
    println!("CERTS {:.3}", t.elapsed().as_secs_f64());

    let t = Instant::now();
    let ca = Certificate::from_pem(&args.ca_cert_pem);
    let answered = Arc::new(AtomicU64::new(0));
    let permits = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let (opened_tx, mut opened_rx) = mpsc::channel(1024);
    for cert in certs {
        let permit = permits.clone().acquire_owned().await?;
        let (url, ca, opened, answered) = (
            args.url.clone(),
            ca.clone(),
            opened_tx.clone(),
            answered.clone(),
        );
        // The permit is released once this agent's session is open (or failed).
        let (done_tx, done_rx) = mpsc::channel::<Result<()>>(1);
        tokio::spawn(run_agent(url, ca, cert, done_tx, answered));
        tokio::spawn(async move {
            let mut done_rx = done_rx;
            let r = done_rx
                .recv()
                .await
                .unwrap_or_else(|| Err(anyhow::anyhow!("agent task ended")));
            drop(permit);
            let _ = opened.send(r).await;
        });
    }
    drop(opened_tx);
    let mut ok = 0usize;
    let mut failed = 0usize;
    let mut first_error = None;
    while let Some(r) = opened_rx.recv().await {
        match r {
            Ok(()) => ok += 1,
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    if let Some(e) = first_error {
        eprintln!("sim: {failed} session(s) failed; first: {e}");
    }
    println!("READY {:.3} {ok} {failed}", t.elapsed().as_secs_f64());

    // Serve until the parent closes our stdin.
    let mut buf = [0u8; 64];
    let mut stdin = tokio::io::stdin();
    while stdin.read(&mut buf).await.unwrap_or(0) > 0 {}
    eprintln!(
        "sim: {} Desired answered; exiting",
        answered.load(Ordering::Relaxed)
    );
    Ok(())
}
