//! The drift loop: is the kernel still enforcing last-known-good?
//!
//! Checks run on nftables events ([`monitor`], debounced), on a timer (the safety net,
//! default 30 s), when the controller asks (`VerifyNow`), and when a session opens. Each
//! check is a readback + semantic diff ([`Agent::check_drift_async`]); `drift: heal`
//! re-applies last-known-good at once, rate-limited by [`HealLimiter`] so a heal storm
//! backs off instead of spinning. Reports go to the controller as `DriftReport`s when
//! something changed (drift found, healed, back in sync), on request, and on connect,
//! with the coexistence findings ([`coexist`]). Other tables are only ever read.
//!
//! This is the agent's side of drift; the verdict itself is the pure
//! [`portcullis_policy::protocol::drift`] (what the agent logs is the verdict the
//! controller stores of its report), the controller's side is its `server::drift`.

pub mod coexist;
pub mod limiter;
pub mod monitor;

use crate::Agent;
use crate::agent::DriftCheck;
use crate::clock::now_ms;
use crate::session::Companion;
use crate::uplink::Uplink;
use limiter::{HealDecision, HealLimiter};
use portcullis_policy::protocol::drift::{self as verdict, DriftVerdict};
use portcullis_proto::v1;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, MissedTickBehavior};

/// How the drift loop runs.
#[derive(Debug, Clone)]
pub struct DriftConfig {
    /// Timer path: check at least this often.
    pub interval: Duration,
    /// Event path: follow the dataplane's change events (`nft monitor`).
    pub events: bool,
    /// Quiet time after an event before checking (a transaction emits many lines).
    pub debounce: Duration,
    /// Heals allowed per `heal_window` before backing off.
    pub heal_burst: usize,
    pub heal_window: Duration,
    pub heal_backoff_min: Duration,
    pub heal_backoff_max: Duration,
}

impl DriftConfig {
    pub fn new(interval: Duration, events: bool) -> Self {
        Self {
            interval,
            events,
            debounce: Duration::from_millis(50),
            heal_burst: 5,
            heal_window: Duration::from_secs(60),
            heal_backoff_min: Duration::from_secs(2),
            heal_backoff_max: Duration::from_secs(300),
        }
    }
}

/// Why a check ran (the `DriftReport.trigger` string).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Boot,
    Event,
    Timer,
    Retry,
    Connect,
    Request(u64),
}

impl Trigger {
    fn name(self) -> &'static str {
        match self {
            Self::Boot => "boot",
            Self::Event => "event",
            Self::Timer => "timer",
            Self::Retry => "retry",
            Self::Connect => "connect",
            Self::Request(_) => "request",
        }
    }
}

/// The drift loop as a session [`Companion`]: it answers `VerifyNow` and reports on connect.
#[derive(Debug)]
pub struct DriftCompanion {
    requests: mpsc::Sender<Trigger>,
}

impl DriftCompanion {
    /// Starts the loop (and the dataplane's event watch, `nft monitor`, if events are on)
    /// on the current runtime.
    pub fn spawn(agent: Agent, config: DriftConfig, uplink: Uplink) -> Arc<Self> {
        let (requests, rx) = mpsc::channel(256);
        let wake = Arc::new(Notify::new());
        if config.events {
            tokio::spawn(monitor::run(agent.dataplane().clone(), wake.clone()));
        }
        tracing::info!(
            interval_ms = u64::try_from(config.interval.as_millis()).unwrap_or(u64::MAX),
            events = config.events,
            "drift detection running"
        );
        tokio::spawn(run_loop(agent, config, uplink, rx, wake));
        Arc::new(Self { requests })
    }

    fn ask(&self, t: Trigger) {
        if self.requests.try_send(t).is_err() {
            tracing::warn!(
                trigger = t.name(),
                "drift loop busy; verification request dropped"
            );
        }
    }
}

#[tonic::async_trait]
impl Companion for DriftCompanion {
    async fn on_connect(&self, _tx: &mpsc::Sender<v1::AgentMessage>) {
        self.ask(Trigger::Connect);
    }

    async fn on_message(
        &self,
        msg: &v1::controller_message::Msg,
        _tx: &mpsc::Sender<v1::AgentMessage>,
    ) {
        if let v1::controller_message::Msg::Verify(v) = msg {
            self.ask(Trigger::Request(v.request_id));
        }
    }
}

/// The loop's memory between checks.
struct LoopState {
    limiter: HealLimiter,
    retry_at: Option<Instant>,
    /// (drift found, diff, kernel hash) of the last report sent.
    last_sent: Option<(bool, Vec<String>, String)>,
}

async fn run_loop(
    agent: Agent,
    config: DriftConfig,
    uplink: Uplink,
    mut requests: mpsc::Receiver<Trigger>,
    wake: Arc<Notify>,
) {
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut state = LoopState {
        limiter: HealLimiter::new(
            config.heal_burst,
            config.heal_window,
            config.heal_backoff_min,
            config.heal_backoff_max,
        ),
        retry_at: None,
        last_sent: None,
    };
    let mut trigger = Trigger::Boot;
    loop {
        let detected_ms = now_ms();
        check_and_report(&agent, &uplink, &mut state, trigger, detected_ms).await;
        let retry_at = state.retry_at;
        trigger = tokio::select! {
            () = wake.notified() => {
                tokio::time::sleep(config.debounce).await;
                Trigger::Event
            }
            _ = ticker.tick() => Trigger::Timer,
            Some(t) = requests.recv() => t,
            () = sleep_until(retry_at), if retry_at.is_some() => Trigger::Retry,
        };
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

async fn check_and_report(
    agent: &Agent,
    uplink: &Uplink,
    state: &mut LoopState,
    trigger: Trigger,
    detected_ms: i64,
) {
    let mut suppressed_until = None;
    let limiter = &mut state.limiter;
    let result = agent
        .check_drift_async(|| match limiter.decide(std::time::Instant::now()) {
            HealDecision::Allowed => true,
            HealDecision::Suppressed { until } => {
                suppressed_until = Some(until);
                false
            }
        })
        .await;
    let check = match result {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(trigger = trigger.name(), error = %e, "drift check failed");
            if let Trigger::Request(id) = trigger {
                let report = v1::DriftReport {
                    request_id: id,
                    trigger: trigger.name().to_owned(),
                    diff: vec![format!("cannot verify the kernel: {e}")],
                    detected_unix_ms: detected_ms,
                    ..Default::default()
                };
                send(uplink, report).await;
            }
            return;
        }
    };
    if check.healed || check.heal_error.is_some() {
        state.limiter.record(std::time::Instant::now());
    }
    let heal_suppressed = suppressed_until.is_some() && check.wants_heal();
    state.retry_at = if check.wants_heal() {
        // Suppressed: retry when the backoff ends; failed: retry on the next allowed slot.
        suppressed_until
            .map(Instant::from_std)
            .or_else(|| Some(Instant::now() + Duration::from_secs(2)))
    } else {
        None
    };
    log_check(&check, trigger, heal_suppressed);
    let kernel_hash = check
        .kernel_hash
        .as_ref()
        .map(|h| h.0.clone())
        .unwrap_or_default();
    // The state now (a healed check is in sync), so the heal's own events re-report nothing.
    let summary = if check.in_sync() {
        (false, Vec::new(), kernel_hash.clone())
    } else {
        (true, check.diff.clone(), kernel_hash.clone())
    };
    let changed = state.last_sent.as_ref() != Some(&summary) || check.healed;
    let must = matches!(trigger, Trigger::Request(_) | Trigger::Connect);
    if !(must || changed) {
        return;
    }
    let coexistence = coexistence(agent).await;
    let report = v1::DriftReport {
        revision: check.revision.unwrap_or(0),
        in_sync: check.in_sync(),
        expected_hash: check
            .expected_hash
            .as_ref()
            .map(|h| h.0.clone())
            .unwrap_or_default(),
        kernel_hash,
        diff: check.diff.clone(),
        healed: check.healed,
        heal_error: check.heal_error.clone().unwrap_or_default(),
        trigger: trigger.name().to_owned(),
        request_id: match trigger {
            Trigger::Request(id) => id,
            _ => 0,
        },
        detected_unix_ms: if check.found_drift() { detected_ms } else { 0 },
        healed_unix_ms: if check.healed { now_ms() } else { 0 },
        coexistence,
        heal_suppressed,
    };
    if send(uplink, report).await {
        state.last_sent = Some(summary);
    }
}

/// The verdict of a check, as the controller will store it from the report.
fn verdict_of(check: &DriftCheck, heal_suppressed: bool) -> DriftVerdict {
    verdict::reported(&verdict::Report {
        revision: check.revision.unwrap_or(0),
        in_sync: check.in_sync(),
        kernel_hash: check.kernel_hash.as_ref().map_or("", |h| h.0.as_str()),
        diff: &check.diff,
        healed: check.healed,
        heal_suppressed,
        heal_error: check.heal_error.as_deref().unwrap_or_default(),
    })
}

fn log_check(check: &DriftCheck, trigger: Trigger, heal_suppressed: bool) {
    let trigger = trigger.name();
    let diff = check.diff.join("; ");
    let revision = check.revision.unwrap_or(0);
    match (verdict_of(check, heal_suppressed), &check.heal_error) {
        (DriftVerdict::InSync | DriftVerdict::Unreachable, _) => {
            tracing::debug!(trigger, "drift check: in sync");
        }
        (DriftVerdict::Healed, _) => {
            tracing::warn!(trigger, revision, %diff, "drift found and healed");
        }
        (DriftVerdict::Drifted, Some(e)) => {
            tracing::error!(trigger, revision, %diff, error = %e, "drift found; heal failed");
        }
        (DriftVerdict::HealSuppressed, _) => {
            tracing::warn!(trigger, revision, %diff, "drift found; heal storm, backing off");
        }
        (DriftVerdict::Drifted, None) => {
            tracing::warn!(trigger, revision, %diff, "drift found (drift: report; left in place)");
        }
    }
}

/// Foreign base chains on our hooks; empty if they cannot be read (logged).
async fn coexistence(agent: &Agent) -> Vec<v1::CoexistenceFinding> {
    let dp = agent.dataplane().clone();
    let json = match tokio::task::spawn_blocking(move || dp.read_ruleset()).await {
        Ok(Ok(Some(json))) => json,
        Ok(Ok(None)) => return Vec::new(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot list the ruleset for coexistence findings");
            return Vec::new();
        }
        Err(e) => {
            tracing::warn!(error = %e, "coexistence task failed");
            return Vec::new();
        }
    };
    match coexist::findings(&json) {
        Ok(f) => f
            .into_iter()
            .map(|f| v1::CoexistenceFinding {
                family: f.family,
                table: f.table,
                chain: f.chain,
                hook: f.hook,
                priority: i32::try_from(f.priority).unwrap_or(0),
                policy: f.policy,
                rules: f.rules,
                has_drop: f.has_drop,
                note: f.note,
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "coexistence findings unavailable");
            Vec::new()
        }
    }
}

/// Sends on the current session; `false` when disconnected (the next connect re-reports).
async fn send(uplink: &Uplink, report: v1::DriftReport) -> bool {
    let tx = uplink.borrow().clone();
    let Some(tx) = tx else {
        return false;
    };
    tx.send(v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::Drift(report)),
    })
    .await
    .is_ok()
}
