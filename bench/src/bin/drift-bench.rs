//! drift-bench: `portcullis drift` (the `Admin.Drift` call) across N simulated agents.
//!
//! One process: the real controller (`portcullis_controller::server::run`) on loopback,
//! N in-process fake agents over real mutual TLS (one certificate each), and the admin
//! client. The fake agents apply a revision like real ones (compile, report the hash) and
//! answer every `VerifyNow` with a `DriftReport` carrying that hash, so the controller does
//! its full work: fan-out, waiting on N request ids, N store writes, compiling the
//! expected hash of every host for attestation. Not measured here: nft itself (a real
//! agent's readback is ~4 ms, in parallel across hosts).
//!
//! `cargo run --release -p portcullis-bench --bin drift-bench -- [--sizes 100,1000] [--runs 7] [--write docs/BENCHMARKS-drift.md]`

use anyhow::{Result, bail};
use clap::Parser;
use portcullis_bench::sim::{facts, host_name};
use portcullis_bench::{Stats, Table, machine, ms, raise_nofile, write_section};
use portcullis_controller::identity::Role;
use portcullis_controller::pki::Pki;
use portcullis_controller::pki::tls::client_tls;
use portcullis_controller::server::{ServeConfig, run};
use portcullis_policy::{HostPolicy, compile};
use portcullis_proto::v1;
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

#[derive(Parser, Debug)]
#[command(about = "portcullis drift across N simulated mTLS agents")]
struct Cli {
    #[arg(long, value_delimiter = ',', default_values_t = [100, 1000])]
    sizes: Vec<usize>,
    /// Measured `drift` calls per size (after one warm-up call).
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Replace the `drift` section of this markdown file.
    #[arg(long)]
    write: Option<PathBuf>,
}

fn site_yaml() -> String {
    "- name: fleet\n  hosts: all\n  policy:\n    allow: [smtp/tcp, http/tcp, domain/udp, 22/tcp]\n"
        .to_owned()
}

fn inventory_yaml(n: usize) -> String {
    let mut s = String::from("all:\n  children:\n    sim:\n      hosts:\n");
    for i in 0..n {
        s.push_str(&format!("        {}:\n", host_name(i)));
    }
    s
}

fn issue(issuer: &Issuer<'_, KeyPair>, i: usize) -> Result<(String, String, String)> {
    let host = host_name(i);
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("agent/{host}"));
    params.subject_alt_names = vec![SanType::URI(
        format!("portcullis://agent/{host}").try_into()?,
    )];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let serial = u64::try_from(i)? + 0x6000_0000;
    params.serial_number = Some(SerialNumber::from_slice(&serial.to_be_bytes()));
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((host, cert.pem(), key.serialize_pem()))
}

/// One fake agent: Hello, apply every Desired (compile -> hash), answer VerifyNow.
async fn fake_agent(
    url: String,
    ca: Certificate,
    (host, cert, key): (String, String, String),
    opened: oneshot::Sender<Result<()>>,
) {
    let connect = async {
        let tls = ClientTlsConfig::new()
            .ca_certificate(ca)
            .identity(Identity::from_pem(cert, key));
        let channel = Endpoint::from_shared(url)?
            .tls_config(tls)?
            .connect()
            .await?;
        let mut client = v1::session_client::SessionClient::new(channel);
        let (tx, rx) = mpsc::channel(8);
        let hello = v1::Hello {
            protocol_version: portcullis_proto::PROTOCOL_VERSION,
            host: host.clone(),
            agent_version: "drift-bench".into(),
            facts: Some(v1::Facts::from(&facts(&host))),
            ..Default::default()
        };
        tx.send(v1::AgentMessage {
            msg: Some(v1::agent_message::Msg::Hello(hello)),
        })
        .await?;
        let inbound = client.open(ReceiverStream::new(rx)).await?.into_inner();
        Ok::<_, anyhow::Error>((tx, inbound))
    };
    let (tx, mut inbound) = match connect.await {
        Ok(s) => {
            let _ = opened.send(Ok(()));
            s
        }
        Err(e) => {
            let _ = opened.send(Err(e));
            return;
        }
    };
    let (mut revision, mut hash) = (0, String::new());
    while let Some(Ok(msg)) = inbound.next().await {
        let reply = match msg.msg {
            Some(v1::controller_message::Msg::Desired(d)) => {
                let compiled = d
                    .policy
                    .as_ref()
                    .and_then(|p| HostPolicy::try_from(p).ok())
                    .and_then(|p| compile(&p, &facts(&host), d.revision).ok());
                let ok = compiled.is_some();
                if let Some(r) = compiled {
                    (revision, hash) = (d.revision, r.hash().0);
                }
                v1::agent_message::Msg::Applied(v1::Applied {
                    revision: d.revision,
                    ok,
                    hash: hash.clone(),
                    request_id: d.request_id,
                    ..Default::default()
                })
            }
            Some(v1::controller_message::Msg::Verify(v)) => {
                v1::agent_message::Msg::Drift(v1::DriftReport {
                    revision,
                    in_sync: true,
                    expected_hash: hash.clone(),
                    kernel_hash: hash.clone(),
                    trigger: "request".into(),
                    request_id: v.request_id,
                    ..Default::default()
                })
            }
            _ => continue,
        };
        if tx
            .send(v1::AgentMessage { msg: Some(reply) })
            .await
            .is_err()
        {
            return;
        }
    }
}

struct Measured {
    n: usize,
    connect: Duration,
    drift: Stats,
}

async fn one(n: usize, runs: usize) -> Result<Measured> {
    let dir = tempfile::tempdir()?;
    let pki_dir = dir.path().join("pki");
    Pki::init(&pki_dir, false)?;
    let pki = Pki::new(&pki_dir);
    pki.issue_controller(&["127.0.0.1".into()], false)?;
    pki.issue_admin("bench", false)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("https://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let config = ServeConfig {
        db: dir.path().join("controller.db").into(),
        db_ca: None,
        pki: pki_dir.clone(),
        max_connections: n + 64,
        pre_auth: Default::default(),
        logs: Default::default(),
    };
    let server = tokio::spawn(run(config, listener, async {
        let _ = stop_rx.await;
    }));

    let issuer = Issuer::from_ca_cert_pem(
        &std::fs::read_to_string(pki.ca_cert())?,
        KeyPair::from_pem(&std::fs::read_to_string(pki.ca_key())?)?,
    )?;
    let certs = (0..n)
        .map(|i| issue(&issuer, i))
        .collect::<Result<Vec<_>>>()?;
    let ca = Certificate::from_pem(std::fs::read_to_string(pki.ca_cert())?);
    let t = Instant::now();
    let permits = Arc::new(Semaphore::new(64));
    let mut opened = Vec::with_capacity(n);
    for c in certs {
        let permit = permits.clone().acquire_owned().await?;
        let (tx, rx) = oneshot::channel();
        tokio::spawn(fake_agent(url.clone(), ca.clone(), c, tx));
        opened.push(tokio::spawn(async move {
            let r = rx
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("agent ended")));
            drop(permit);
            r
        }));
    }
    for o in opened {
        o.await??;
    }
    let connect = t.elapsed();
    eprintln!("n={n}: {n} agents connected in {} ms", ms(connect));

    let (cert, key) = pki.cert_paths(&Role::Admin("bench".into()));
    let ch = Endpoint::from_shared(url)?
        .tls_config(client_tls(&pki.ca_cert(), &cert, &key, None)?)?
        .connect()
        .await?;
    let mut admin = v1::admin_client::AdminClient::new(ch);
    let req = v1::ApplyRequest {
        site_name: "site.yml".into(),
        site_yaml: site_yaml(),
        inventory_name: "inventory.yml".into(),
        inventory_yaml: inventory_yaml(n),
        ..Default::default()
    };
    let mut stream = admin.apply(req).await?.into_inner();
    let mut applied = 0;
    while applied < n {
        match tokio::time::timeout(Duration::from_secs(120), stream.next()).await {
            Ok(Some(Ok(ev))) => {
                if let Some(v1::apply_event::Event::Host(_)) = ev.event {
                    applied += 1;
                }
            }
            other => bail!("apply did not finish: {applied}/{n} ({other:?})"),
        }
    }

    let mut drift = Stats::default();
    for k in 0..=runs {
        let t = Instant::now();
        let resp = admin
            .drift(v1::DriftRequest {
                pattern: String::new(),
                timeout_ms: 30_000,
            })
            .await?
            .into_inner();
        let took = t.elapsed();
        let in_sync = resp
            .hosts
            .iter()
            .filter(|h| h.state == v1::DriftState::InSync as i32)
            .count();
        if in_sync != n {
            bail!("drift: {in_sync}/{n} in sync: {:?}", resp.hosts.first());
        }
        if k > 0 {
            drift.push(took);
        }
    }
    // The fake agents' streams never end: stop without waiting for a graceful drain.
    let _ = stop_tx.send(());
    server.abort();
    Ok(Measured { n, connect, drift })
}

#[tokio::main]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    raise_nofile()?;
    let mut table = Table::new(&[
        "agents",
        "connect (mTLS)",
        "drift median",
        "drift p90",
        "drift min",
    ]);
    for &n in &cli.sizes {
        let m = one(n, cli.runs).await?;
        eprintln!("n={} drift median {}", m.n, ms(m.drift.median()));
        table.row(vec![
            m.n.to_string(),
            ms(m.connect),
            ms(m.drift.median()),
            ms(m.drift.p90()),
            ms(m.drift.min()),
        ]);
    }
    let body = format!(
        "### `portcullis drift` across simulated agents\n\n{}\n\nIn-process controller, fake agents over real mutual TLS on loopback; each `drift` \
         sends `VerifyNow` to every agent, waits for every `DriftReport`, stores each and \
         recompiles each host's expected hash. {} measured calls per size after a warm-up.\n\n\
         Machine: {}\n\nCommand: `cargo run --release -p portcullis-bench --bin drift-bench -- --sizes {}`\n",
        table.render(),
        cli.runs,
        machine(),
        cli.sizes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
    );
    println!("{body}");
    if let Some(path) = &cli.write {
        write_section(path, "drift", &body)?;
    }
    Ok(())
}
