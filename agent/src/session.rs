//! The agent's session with the controller (`portcullis-agent run`).
//!
//! Fail-static first: at start the last-known-good policy is re-applied before the
//! controller is contacted. Then: dial out over mutual TLS, send `Hello` (host, facts,
//! applied revision, kernel hash), apply every `Desired` through [`Agent::apply_policy`]
//! and answer `Applied`, send `Heartbeat`s with the kernel's hash. When the stream breaks,
//! reconnect; the kernel keeps enforcing meanwhile.
//!
//! With several controllers (or a name with several addresses) the order is
//! [`crate::failover::Rotation`]'s: the same controller again after a session ends (after
//! the usual jittered delay, none for commit-confirm's reconnect), the next one at once
//! when a connection cannot be established, and the jittered exponential [`Backoff`] only
//! after a whole round failed.
//! Nothing here ever flushes or opens the firewall on error.
//!
//! Facts come from the agent's [`crate::facts::FactSource`] and the kernel is the agent's
//! [`crate::Dataplane`], so the same session runs against fakes: the fleet simulator
//! (`bench/src/sim.rs`) runs thousands of them in one process, observing them through the
//! [`Companion`] hooks.

use crate::Agent;
use crate::clock::now_ms;
use crate::conditions::Conditions;
use crate::failover::{Candidate, OnController, Rotation, Step};
use crate::uplink::Uplink;
use anyhow::Context as _;
use portcullis_policy::HostPolicy;
use portcullis_proto::parts::Reassembly;
use portcullis_proto::{PROTOCOL_VERSION, v1};
use rand::Rng as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;

/// A subsystem riding on the session (drift detection, denial logs, ...).
#[tonic::async_trait]
pub trait Companion: Send + Sync {
    /// A session just opened (after `Hello`): e.g. resend what is not acknowledged yet.
    async fn on_connect(&self, _tx: &mpsc::Sender<v1::AgentMessage>) {}
    /// A controller message the core session does not handle itself.
    async fn on_message(
        &self,
        _msg: &v1::controller_message::Msg,
        _tx: &mpsc::Sender<v1::AgentMessage>,
    ) {
    }
    /// A `Desired` revision was applied and verified.
    async fn on_applied(&self, _report: &crate::AppliedReport) {}
    /// Observers (the fleet simulator's counters): a connection or its `Hello` failed;
    /// the session tries the next controller or backs off.
    async fn on_connect_failed(&self, _error: &anyhow::Error) {}
    /// Observers: every controller message, before the session handles it.
    async fn on_received(&self, _msg: &v1::controller_message::Msg) {}
    /// Observers: every `Applied` the session sent (applied or not).
    async fn on_answered(&self, _applied: &v1::Applied) {}
}

/// The companions and the uplink they share.
pub struct Companions {
    list: Vec<Arc<dyn Companion>>,
    link: watch::Sender<Option<mpsc::Sender<v1::AgentMessage>>>,
    conditions: Conditions,
    on: OnController,
}

impl Default for Companions {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Companions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Companions({})", self.list.len())
    }
}

impl Companions {
    pub fn new() -> Self {
        Self {
            list: Vec::new(),
            link: watch::channel(None).0,
            conditions: Conditions::default(),
            on: OnController::default(),
        }
    }
    /// Which controller the session is on (metrics).
    pub fn on_controller(&self) -> OnController {
        self.on.clone()
    }
    /// Where companions report what keeps them from working (sent in heartbeats).
    pub fn conditions(&self) -> Conditions {
        self.conditions.clone()
    }
    /// The uplink a companion uses to send when it has something to say.
    pub fn uplink(&self) -> Uplink {
        self.link.subscribe()
    }
    pub fn add(&mut self, c: Arc<dyn Companion>) {
        self.list.push(c);
    }
}

/// Where and how to reach the controllers.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// `https://IP:PORT` or `https://NAME:PORT`, one or more (the IP or name must be in
    /// the controller certificate's SANs); validated by [`crate::failover::parse_controllers`].
    pub controllers: Vec<String>,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The host this agent speaks for; must match the certificate's
    /// `portcullis://agent/<host>` (read from it when `None`).
    pub host: Option<String>,
    pub heartbeat: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Connect from this local address (`None`: the kernel's choice). The fleet
    /// simulator gives each agent an address of its own, as a real fleet has.
    pub source: Option<std::net::IpAddr>,
}

/// Jittered exponential backoff ("full jitter"): a random delay in [0, current], with
/// `current` starting at `min` and doubling up to `max`. The first retry is jittered too,
/// so a fleet whose controller restarts does not come back in the same instant (with
/// [min, current] every agent retried exactly `min` after the cut: reconnect-bench).
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            current: min,
        }
    }
    /// After a session that lasted: the next failure starts from `min` again.
    pub fn reset(&mut self) {
        self.current = self.min;
    }
    /// The upper bound of the next delay.
    pub fn current(&self) -> Duration {
        self.current
    }
    pub fn next_delay(&mut self) -> Duration {
        let upper = self.current.max(self.min);
        self.current = (self.current * 2).min(self.max);
        let ms = rand::rng().random_range(0..=upper.as_millis());
        Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
    }
}

/// The host named in an agent certificate's `portcullis://agent/<host>` SAN URI.
pub fn host_from_cert(path: &Path) -> anyhow::Result<String> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem)
        .map_err(|e| anyhow::anyhow!("{}: not a PEM certificate: {e}", path.display()))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("{}: bad certificate: {e}", path.display()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| anyhow::anyhow!("{}: bad SAN extension: {e}", path.display()))?;
    san.into_iter()
        .flat_map(|s| s.value.general_names.iter())
        .find_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => {
                u.strip_prefix("portcullis://agent/").map(str::to_owned)
            }
            _ => None,
        })
        .with_context(|| {
            format!(
                "{}: no portcullis://agent/<host> SAN URI: is this an agent certificate?",
                path.display()
            )
        })
}

/// Run until `shutdown` completes. Errors only for unusable configuration (bad
/// certificate files); network failures are retried forever.
pub async fn run(
    agent: Agent,
    config: SessionConfig,
    mut companions: Companions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let host = match &config.host {
        Some(h) => h.clone(),
        None => host_from_cert(&config.cert)?,
    };
    // Our TLS: refuses a revoked or expired controller certificate.
    let endpoint = crate::dial::Dialer::new(&config, agent.state().path())?;
    companions.add(Arc::new(crate::dial::RevocationsCompanion(
        endpoint.revocations(),
    )));

    // Fail-static: enforce last-known-good before talking to anyone.
    match agent.restore_last_known_good().await {
        Ok(Some(r)) => tracing::info!(revision = r.revision, hash = %r.hash, changed = r.changed,
            "last-known-good enforced before contacting the controller"),
        Ok(None) => tracing::info!("no last-known-good policy yet"),
        Err(e) => tracing::error!(error = %e,
            "could not re-apply last-known-good; the kernel keeps what it has"),
    }

    // Commit-confirmed: a pending revert survives restarts and runs even while offline.
    let confirm = Arc::new(crate::confirm::Confirmer::open(&agent, companions.uplink()));
    let _watch = crate::confirm::WatchGuard(tokio::spawn(confirm.clone().watch()));
    tokio::pin!(shutdown);
    let mut backoff = Backoff::new(config.backoff_min, config.backoff_max);
    let mut rotation = Rotation::new(crate::failover::seed_for(&host));
    let on = companions.on.clone();
    loop {
        let candidates = tokio::select! {
            c = endpoint.candidates() => c,
            () = &mut shutdown => return Ok(()),
        };
        let skipped = rotation.begin_round(candidates);
        if skipped > 0 {
            tracing::warn!(
                skipped,
                max = crate::failover::MAX_ADDRESSES,
                "a controller name has too many addresses; trying only some this round"
            );
        }
        let delay = loop {
            let candidate = match rotation.step() {
                Step::Try(c) => c,
                Step::RoundFailed => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%host, delay_ms = millis(delay),
                        "no controller could be reached; backing off, still enforcing the last applied policy");
                    break delay;
                }
            };
            let opened = tokio::select! {
                o = open(&agent, &host, &endpoint, &candidate, &companions) => o,
                () = &mut shutdown => return Ok(()),
            };
            let (tx, inbound) = match opened {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(%host, controller = %candidate.url, address = %candidate.addr,
                        error = %format!("{e:#}"), "cannot establish a session; trying the next controller");
                    for c in &companions.list {
                        c.on_connect_failed(&e).await;
                    }
                    continue;
                }
            };
            let moved = rotation.established(&candidate);
            on.connected(&candidate, moved);
            if moved {
                tracing::warn!(%host, controller = %candidate.url, address = %candidate.addr,
                    "session open on another controller (failed over)");
            } else {
                tracing::info!(%host, controller = %candidate.url, address = %candidate.addr, "session open");
            }
            let started = Instant::now();
            let result = tokio::select! {
                r = serve(&agent, tx, inbound, config.heartbeat, &companions, &confirm) => r,
                () = &mut shutdown => return Ok(()),
            };
            companions.link.send_replace(None);
            on.disconnected();
            let ended_ok = result.is_ok();
            match result {
                Ok(()) => {
                    tracing::warn!(%host, controller = %candidate.url, address = %candidate.addr,
                    "controller closed the session")
                }
                Err(e) => {
                    tracing::warn!(%host, controller = %candidate.url, address = %candidate.addr,
                    error = %format!("{e:#}"), "session failed")
                }
            }
            if started.elapsed() > Duration::from_secs(30) {
                backoff.reset();
            }
            // Awaiting Confirm: come back at once, through the new rules.
            break match (ended_ok, confirm.awaiting()) {
                (true, Some(_)) => Duration::ZERO,
                _ => backoff.next_delay(),
            };
        };
        tracing::info!(
            delay_ms = millis(delay),
            "reconnecting after backoff; still enforcing the last applied policy"
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {},
            () = &mut shutdown => return Ok(()),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn kernel_hash(agent: &Agent) -> String {
    match agent.verify() {
        Ok(v) => v.actual_hash.map(|h| h.0).unwrap_or_default(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the kernel table back");
            String::new()
        }
    }
}

/// The kernel's hash and the counters of our rules that saw packets (the controller's
/// accept evidence for `apply --check --replay`), from one readback.
fn kernel_snapshot(agent: &Agent) -> (String, Vec<v1::RuleHits>) {
    match agent.kernel_snapshot() {
        Ok(Some((hash, counters))) => (
            hash,
            counters
                .into_iter()
                .filter(|c| c.packets > 0)
                .map(|c| v1::RuleHits {
                    chain: c.chain,
                    index: u32::try_from(c.index).unwrap_or(u32::MAX),
                    packets: c.packets,
                    bytes: c.bytes,
                })
                .collect(),
        ),
        Ok(None) => (String::new(), Vec::new()),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the kernel table back");
            (String::new(), Vec::new())
        }
    }
}

/// How long a session closing for commit-confirmed waits for the controller to end its
/// side (it has read everything we sent, `Applied` included).
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// How long the controller has to answer `Hello` (it allows 10 s for the Hello itself).
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);

/// Connect and send `Hello`: the session is established when the controller accepts it.
async fn open(
    agent: &Agent,
    host: &str,
    endpoint: &crate::dial::Dialer,
    to: &Candidate,
    companions: &Companions,
) -> anyhow::Result<(
    mpsc::Sender<v1::AgentMessage>,
    tonic::Streaming<v1::ControllerMessage>,
)> {
    let channel = endpoint
        .connect(to)
        .await
        .with_context(|| format!("connecting to the controller {to}"))?;
    let mut client = v1::session_client::SessionClient::new(channel)
        .max_decoding_message_size(portcullis_proto::DESIRED_MAX_MESSAGE_BYTES)
        .max_encoding_message_size(portcullis_proto::SESSION_MAX_MESSAGE_BYTES);
    let facts = agent.facts().gather().await.context("gathering facts")?;
    let lkg = agent.last_known_good().ok().flatten();
    let hello = v1::Hello {
        protocol_version: PROTOCOL_VERSION,
        host: host.to_owned(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        facts: Some(v1::Facts::from(&facts)),
        applied_revision: lkg.as_ref().map_or(0, |l| l.revision),
        applied_hash: lkg.as_ref().map(|l| l.hash.0.clone()).unwrap_or_default(),
        kernel_hash: kernel_hash(agent),
        conditions: conditions(agent, &companions.conditions),
        capabilities: CAPABILITIES.iter().map(|c| (*c).to_owned()).collect(),
    };
    let (tx, rx) = mpsc::channel(16);
    tx.send(v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::Hello(hello)),
    })
    .await
    .context("session channel closed")?;
    let inbound = tokio::time::timeout(OPEN_TIMEOUT, client.open(ReceiverStream::new(rx)))
        .await
        .map_err(|_| anyhow::anyhow!("no answer to Hello within {}s", OPEN_TIMEOUT.as_secs()))?
        .context("opening the session")?
        .into_inner();
    Ok((tx, inbound))
}

/// One established session: serve `Desired` and send heartbeats until it breaks.
async fn serve(
    agent: &Agent,
    tx: mpsc::Sender<v1::AgentMessage>,
    mut inbound: tonic::Streaming<v1::ControllerMessage>,
    heartbeat: Duration,
    companions: &Companions,
    confirm: &crate::confirm::Confirmer,
) -> anyhow::Result<()> {
    companions.link.send_replace(Some(tx.clone()));
    for c in &companions.list {
        c.on_connect(&tx).await;
    }
    confirm.connected().await;
    let mut ticker = tokio::time::interval(heartbeat);
    ticker.tick().await;
    let mut parts = Reassembly::new(portcullis_proto::DESIRED_MAX_MESSAGE_BYTES);
    loop {
        tokio::select! {
            msg = next_message(&mut inbound, &mut parts) => {
                let Some(msg) = msg? else {
                    return Ok(());
                };
                if let Some(m) = &msg.msg {
                    for c in &companions.list {
                        c.on_received(m).await;
                    }
                }
                match msg.msg {
                    Some(v1::controller_message::Msg::Desired(d)) => {
                        let confirming = d.confirm_timeout_ms > 0;
                        // The confirm record is durable before anything is applied; if it
                        // cannot be, nothing is (a crash after the apply must find it).
                        let begun = if confirming {
                            confirm.begin(d.revision, d.confirm_timeout_ms).await
                        } else {
                            confirm.unconfirmed(d.revision).await;
                            Ok(())
                        };
                        let (applied, report) = match begun {
                            Ok(()) => apply_desired(agent, &d).await,
                            Err(e) => (not_applied(agent, &d, e.to_string(), 0), None),
                        };
                        let ok = report.is_some();
                        // Before anything can fail: the deadline is watched from here (and
                        // a revision without one supersedes the pending one only if applied).
                        confirm.applied(d.revision, ok).await;
                        for c in &companions.list {
                            c.on_answered(&applied).await;
                        }
                        tx.send(v1::AgentMessage { msg: Some(v1::agent_message::Msg::Applied(applied)) })
                            .await
                            .context("session channel closed")?;
                        if let (true, Some(m)) = (ok, &d.management) {
                            crate::restore::keep_management(agent.state(), &m.entries);
                        }
                        if let Some(r) = report {
                            for c in &companions.list {
                                c.on_applied(&r).await;
                            }
                        }
                        if confirming && ok {
                            tracing::info!(revision = d.revision,
                                "reconnecting through the new rules to be confirmed");
                            // End our side so `Applied` is delivered before the
                            // connection goes: the controller then ends its side.
                            companions.link.send_replace(None);
                            drop(tx);
                            let drained = async { while let Some(Ok(_)) = inbound.next().await {} };
                            let t0 = Instant::now();
                            let ended = tokio::time::timeout(CLOSE_GRACE, drained).await.is_ok();
                            tracing::debug!(ended, elapsed_ms = t0.elapsed().as_millis(), "session closed for confirmation");
                            return Ok(());
                        }
                    }
                    Some(v1::controller_message::Msg::Confirm(c)) => confirm.confirm(c.revision).await,
                    Some(v1::controller_message::Msg::Revert(r)) => {
                        confirm.revert(r.revision, &r.reason).await;
                    }
                    Some(other) => {
                        for c in &companions.list {
                            c.on_message(&other, &tx).await;
                        }
                    }
                    None => {}
                }
            }
            _ = ticker.tick() => {
                let (kernel_hash, rule_hits) = kernel_snapshot(agent);
                let hb = v1::Heartbeat {
                    applied_revision: agent.last_known_good().ok().flatten().map_or(0, |l| l.revision),
                    kernel_hash,
                    verified_unix_ms: now_ms(),
                    rule_hits,
                    conditions: conditions(agent, &companions.conditions),
                };
                tx.send(v1::AgentMessage { msg: Some(v1::agent_message::Msg::Heartbeat(hb)) })
                    .await
                    .context("session channel closed")?;
            }
        }
    }
}

/// The next message from the controller, a `Desired` sent in parts put back together
/// ([`portcullis_proto::parts`]). Cancel-safe: a part is staged as soon as it is read.
async fn next_message(
    inbound: &mut tonic::Streaming<v1::ControllerMessage>,
    parts: &mut Reassembly,
) -> anyhow::Result<Option<v1::ControllerMessage>> {
    use v1::controller_message::Msg;
    loop {
        let Some(msg) = inbound.next().await.transpose().context("session stream")? else {
            return Ok(None);
        };
        match msg.msg {
            Some(Msg::ListPart(p)) => parts.part(p).context("the controller's list parts")?,
            Some(Msg::Desired(mut d)) => {
                let unused = parts
                    .complete(&mut d)
                    .context("the controller's Desired in parts")?;
                if unused > 0 {
                    tracing::warn!(
                        revision = d.revision,
                        unused,
                        "list parts no list asked for were dropped"
                    );
                }
                return Ok(Some(v1::ControllerMessage {
                    msg: Some(Msg::Desired(d)),
                }));
            }
            msg => return Ok(Some(v1::ControllerMessage { msg })),
        }
    }
}

/// The conditions reported to the controller: the companions' and a fail-closed host's.
fn conditions(agent: &Agent, companions: &Conditions) -> Vec<String> {
    let mut lines = companions.lines();
    if let Some(fc) = crate::restore::fail_closed(agent.state()) {
        lines.insert(0, format!("fail-closed: {fc}"));
    }
    lines
}

/// What this agent announces in `Hello.capabilities`.
pub const CAPABILITIES: &[&str] = &[
    portcullis_proto::CAPABILITY_DENY_LISTS,
    portcullis_proto::CAPABILITY_LIST_PARTS,
];

/// The policy of a `Desired`, its list deltas resolved against the lists of the policy
/// in force. `Err((why, need_full))`: `need_full` when a delta's base is not ours.
fn desired_policy(agent: &Agent, d: &v1::Desired) -> Result<HostPolicy, (String, bool)> {
    let p = d
        .policy
        .as_ref()
        .ok_or_else(|| ("Desired without a policy".to_owned(), false))?;
    let held = agent
        .state()
        .load_shared()
        .ok()
        .flatten()
        .map(|l| l.policy.lists.clone())
        .unwrap_or_default();
    portcullis_proto::convert::policy_from_wire(p, &held).map_err(|e| {
        let need_full = matches!(
            e,
            portcullis_proto::convert::PolicyFromWire::Lists(
                portcullis_proto::convert::ListError::BaseMismatch { .. }
            )
        );
        (e.to_string(), need_full)
    })
}

async fn apply_desired(
    agent: &Agent,
    d: &v1::Desired,
) -> (v1::Applied, Option<crate::AppliedReport>) {
    let started = Instant::now();
    let policy = match desired_policy(agent, d) {
        Ok(p) => Ok(p),
        Err((e, true)) => {
            let duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            let mut a = not_applied(agent, d, e, duration_us);
            a.need_full = true;
            return (a, None);
        }
        Err((e, false)) => Err(e),
    };
    let result = match policy {
        Ok(p) => agent
            .apply_policy(&p, d.revision)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    let duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    match result {
        Ok(r) => {
            if !d.expected_hash.is_empty() && d.expected_hash != r.hash.0 {
                tracing::warn!(revision = d.revision, expected = %d.expected_hash, actual = %r.hash,
                    "applied hash differs from the controller's expectation");
            }
            let applied = v1::Applied {
                revision: d.revision,
                ok: true,
                hash: r.hash.0.clone(),
                error: String::new(),
                duration_us,
                changes: r.diff.join("\n"),
                request_id: d.request_id,
                need_full: false,
            };
            (applied, Some(r))
        }
        Err(error) => (not_applied(agent, d, error, duration_us), None),
    }
}

/// The `Applied` of a revision that was not applied (the previous ruleset stays).
fn not_applied(agent: &Agent, d: &v1::Desired, error: String, duration_us: u64) -> v1::Applied {
    tracing::error!(revision = d.revision, %error, "apply failed; previous ruleset stays");
    v1::Applied {
        revision: d.revision,
        ok: false,
        hash: kernel_hash(agent),
        error,
        duration_us,
        changes: String::new(),
        request_id: d.request_id,
        need_full: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered_within_bounds() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(2), "{d:?}");
        }
        assert_eq!(b.current, Duration::from_secs(2));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
        // The first retry is spread over [0, min], not all at `min`.
        let firsts: std::collections::BTreeSet<Duration> = (0..50)
            .map(|_| Backoff::new(Duration::from_millis(250), Duration::from_secs(30)).next_delay())
            .collect();
        assert!(firsts.len() > 10, "{firsts:?}");
        assert!(firsts.iter().all(|d| *d <= Duration::from_millis(250)));
    }
}
