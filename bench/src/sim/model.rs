//! A protocol model of the agent, for the one benchmark whose fleet cannot be real agent
//! sessions: list-fleet-bench pushes a 1,000,000-entry list to 1,000 agents, and 1,000
//! real agent sessions would each hold their own copy of the list and its last-known-good
//! (~40 MB each: more than this machine's memory). Every other fleet benchmark runs the
//! real agent session ([`super::run`]).
//!
//! Each simulated agent here opens one real mutual-TLS session, takes `ListPart`s
//! (`portcullis_proto::parts`), resolves list deltas against the lists it holds with
//! `policy_from_wire` (`need_full` on a foreign base), compiles and answers `Applied` with
//! the hash; agents that received the same message share one resolve and compile, and
//! one copy of the list (`resolve`). Only what list-fleet-bench needs: no reconnect, no
//! failover, no `VerifyNow`, no commit-confirm, no fake kernel.
//!
//! The child-process protocol is [`super::run`]'s: `CERTS`, `READY`, `STATS` on stdin.

mod resolve;

use super::certs::{AgentCert, issue};
use super::counters::Counters;
use super::{SimArgs, facts};
use crate::storm::StormClock;
use anyhow::{Context as _, Result, bail};
use portcullis_proto::v1;
use rcgen::{Issuer, KeyPair};
use resolve::{Held, Resolved, Resolver};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// `Hello` of `host`, which has applied nothing yet.
fn hello(host: &str) -> v1::AgentMessage {
    v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::Hello(v1::Hello {
            protocol_version: portcullis_proto::PROTOCOL_VERSION,
            host: host.to_owned(),
            agent_version: "fleet-bench-sim".into(),
            facts: Some(v1::Facts::from(&facts(host))),
            applied_revision: 0,
            applied_hash: String::new(),
            kernel_hash: String::new(),
            conditions: Vec::new(),
            capabilities: vec![
                portcullis_proto::CAPABILITY_DENY_LISTS.into(),
                portcullis_proto::CAPABILITY_LIST_PARTS.into(),
            ],
        })),
    }
}

/// Answers `d` as an agent would: resolve its lists against `held` (replaced by the new
/// lists when it applies), compile with its facts, report the hash; `need_full` when a
/// delta's base is not what it holds.
fn answer(
    host: &str,
    d: &v1::Desired,
    held: &mut Held,
    resolver: &Resolver,
    counters: &Counters,
) -> v1::AgentMessage {
    let started = Instant::now();
    let result = match d.policy.as_ref() {
        None => Resolved::Failed("Desired without a policy".into()),
        Some(p) => {
            let deltas = p.lists.iter().filter(|l| !l.base_digest.is_empty()).count();
            let (deltas, full) = (deltas as u64, (p.lists.len() - deltas) as u64);
            counters.lists_delta.fetch_add(deltas, Ordering::Relaxed);
            counters.lists_full.fetch_add(full, Ordering::Relaxed);
            resolver.resolve(host, d.revision, p, held)
        }
    };
    let (ok, need_full, hash, error) = match result {
        Resolved::Ok { hash, lists } => {
            *held = lists;
            (true, false, hash, String::new())
        }
        Resolved::NeedFull(e) => {
            counters.need_full.fetch_add(1, Ordering::Relaxed);
            (false, true, String::new(), e)
        }
        Resolved::Failed(e) => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            (false, false, String::new(), e)
        }
    };
    v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::Applied(v1::Applied {
            revision: d.revision,
            ok,
            hash,
            error,
            duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            request_id: d.request_id,
            need_full,
            ..Default::default()
        })),
    }
}

type Outbound = mpsc::Sender<v1::AgentMessage>;
type Inbound = tonic::Streaming<v1::ControllerMessage>;

/// A new connection (TCP + TLS 1.3 mutual handshake, like the agent's) and a session
/// opened with a `Hello`.
async fn connect(url: &str, ca: &Certificate, cert: &AgentCert) -> Result<(Outbound, Inbound)> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(ca.clone())
        .identity(Identity::from_pem(&cert.cert_pem, &cert.key_pem));
    // The agent's endpoint settings (agent/src/dial.rs).
    let channel = Endpoint::from_shared(url.to_owned())?
        .connect_timeout(std::time::Duration::from_secs(5))
        .http2_keep_alive_interval(std::time::Duration::from_secs(20))
        .keep_alive_timeout(std::time::Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .tls_config(tls)?
        .local_address(Some(cert.source))
        .connect()
        .await
        .context("connect")?;
    // The agent's message limits (agent/src/session.rs): a Desired with full lists is big.
    let mut client = v1::session_client::SessionClient::new(channel)
        .max_decoding_message_size(portcullis_proto::DESIRED_MAX_MESSAGE_BYTES)
        .max_encoding_message_size(portcullis_proto::SESSION_MAX_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel(8);
    tx.send(hello(&cert.host)).await?;
    let inbound = client
        .open(ReceiverStream::new(rx))
        .await
        .context("open")?
        .into_inner();
    Ok((tx, inbound))
}

/// One simulated agent: what it shares with the others and what it is.
struct Agent {
    args: Arc<SimArgs>,
    ca: Certificate,
    cert: AgentCert,
    counters: Arc<Counters>,
    resolver: Arc<Resolver>,
}

async fn run_agent(a: Agent, opened: mpsc::Sender<Result<()>>) {
    // The lists of the policy it applied last.
    let mut held = Held::new();
    let (tx, inbound) = match connect(&a.args.url, &a.ca, &a.cert).await {
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
    serve(&a, &mut held, tx, inbound).await;
}

/// Answers the controller until the session ends.
async fn serve(a: &Agent, held: &mut Held, tx: Outbound, mut inbound: Inbound) {
    let (cert, counters) = (&a.cert, &a.counters);
    let mut parts =
        portcullis_proto::parts::Reassembly::new(portcullis_proto::DESIRED_MAX_MESSAGE_BYTES);
    loop {
        let Some(Ok(msg)) = inbound.next().await else {
            return;
        };
        match msg.msg {
            Some(v1::controller_message::Msg::ListPart(p)) => {
                let Ok(()) = parts.part(p) else {
                    return;
                };
            }
            Some(v1::controller_message::Msg::Desired(mut d)) => {
                if parts.complete(&mut d).is_err() {
                    return;
                }
                let reply = answer(&cert.host, &d, held, &a.resolver, counters);
                if tx.send(reply).await.is_err() {
                    return;
                }
                counters.answered.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// The child process's main: issue, connect, then serve until stdin closes. A `STATS`
/// line on stdin is answered with `STATS <answered> <reconnects> <confirmed> <reverts>
/// <reconnect errors> <verified> <lists in full> <lists as delta> <need_full> <failed>`
/// on stdout.
pub async fn run_model(args: SimArgs) -> Result<()> {
    if args.reconnect.is_some() || !args.failover.is_empty() {
        bail!("the protocol model does not reconnect or fail over: use `sim::run`");
    }
    let t = Instant::now();
    let issuer = Issuer::from_ca_cert_pem(&args.ca_cert_pem, KeyPair::from_pem(&args.ca_key_pem)?)?;
    let certs = (0..args.n)
        .map(|i| issue(&issuer, args.first + i))
        .collect::<Result<Vec<_>>>()?;
    println!("CERTS {:.3}", t.elapsed().as_secs_f64());

    let t = Instant::now();
    let ca = Certificate::from_pem(&args.ca_cert_pem);
    let counters = Arc::new(Counters::default());
    let clock = Arc::new(StormClock::new(args.n));
    let resolver = Arc::new(Resolver::default());
    let permits = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let args = Arc::new(args);
    let (opened_tx, opened_rx) = mpsc::channel(1024);
    for cert in certs {
        let permit = permits.clone().acquire_owned().await?;
        let opened = opened_tx.clone();
        let agent = Agent {
            args: args.clone(),
            ca: ca.clone(),
            cert,
            counters: counters.clone(),
            resolver: resolver.clone(),
        };
        // The permit is released once this agent's session is open (or failed).
        let (done_tx, done_rx) = mpsc::channel::<Result<()>>(1);
        tokio::spawn(run_agent(agent, done_tx));
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
    super::ready_then_serve(opened_rx, t, &counters, &clock).await;
    eprintln!(
        "sim: {} Desired answered; exiting",
        counters.answered.load(Ordering::Relaxed)
    );
    Ok(())
}
