//! The agent's Prometheus metrics (`portcullis-agent run --metrics-listen`).
//!
//! Instruments updated as things happen ([`Instruments`]: apply and verify durations by
//! outcome, kept by [`crate::Agent`]; [`DenialStats`]: what the spooled denial batches
//! counted, kept by the denial pipeline) and values read at scrape time ([`Exposition`]):
//! the counters of every rule of our table (one readback), last-known-good's revision and
//! age, the spool's depth, the conditions (failing subsystems) and the controller the
//! session is on.
//!
//! Labels are bounded: rules are labelled by chain and position (our table has a few
//! dozen rules; at most [`MAX_RULES`] are exported), conditions by subsystem key, the
//! controller by URL and address (one series, the current one).

use crate::Agent;
use crate::conditions::Conditions;
use crate::denials::Denials;
use crate::failover::OnController;
use portcullis_metrics::collect;
use portcullis_metrics::prometheus_client::collector::Collector;
use portcullis_metrics::prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use portcullis_metrics::prometheus_client::metrics::MetricType;
use portcullis_metrics::prometheus_client::metrics::counter::{ConstCounter, Counter};
use portcullis_metrics::prometheus_client::metrics::family::Family;
use portcullis_metrics::prometheus_client::metrics::gauge::ConstGauge;
use portcullis_metrics::prometheus_client::metrics::histogram::Histogram;
use portcullis_metrics::prometheus_client::registry::{Registry, Unit};
use portcullis_policy::RuleCounter;
use portcullis_proto::v1;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

/// Rules exported at most (anything beyond is not ours).
pub const MAX_RULES: usize = 256;

type Label = [(&'static str, &'static str); 1];
type Histograms = Family<Label, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(collect::duration_buckets())
}

/// Apply and verify durations, by outcome.
#[derive(Debug, Clone)]
pub struct Instruments {
    pub apply: Histograms,
    pub verify: Histograms,
    /// Applies that failed before or after the kernel transaction.
    pub apply_errors: Counter,
}

impl Default for Instruments {
    fn default() -> Self {
        Self {
            apply: Family::new_with_constructor(duration_histogram),
            verify: Family::new_with_constructor(duration_histogram),
            apply_errors: Counter::default(),
        }
    }
}

impl Instruments {
    pub(crate) fn applied<T, E>(&self, r: &Result<T, E>, took: Duration) {
        let result = if r.is_ok() { "ok" } else { "failed" };
        if r.is_err() {
            self.apply_errors.inc();
        }
        self.apply
            .get_or_create(&[("result", result)])
            .observe(took.as_secs_f64());
    }

    pub(crate) fn verified<E>(&self, r: &Result<crate::report::VerifyReport, E>, took: Duration) {
        use crate::report::VerifyStatus;
        let result = match r {
            Ok(v) => match v.status {
                VerifyStatus::InSync => "in_sync",
                VerifyStatus::Drifted => "drifted",
                VerifyStatus::NothingApplied => "nothing_applied",
            },
            Err(_) => "failed",
        };
        self.verify
            .get_or_create(&[("result", result)])
            .observe(took.as_secs_f64());
    }
}

/// Sums over the denial batches spooled since start.
#[derive(Debug, Default)]
pub struct DenialStats {
    seen: AtomicU64,
    sent: AtomicU64,
    dropped_by_agent: AtomicU64,
    socket_overruns: AtomicU64,
    socket_lost: AtomicU64,
    kernel_suppressed: AtomicU64,
    spool_dropped: AtomicU64,
    batches: AtomicU64,
}

impl DenialStats {
    /// Count one batch about to be spooled.
    pub fn record(&self, b: &v1::DenialBatch) {
        self.seen.fetch_add(b.seen, Relaxed);
        self.sent.fetch_add(b.sent, Relaxed);
        self.dropped_by_agent.fetch_add(b.dropped_by_agent, Relaxed);
        self.socket_overruns.fetch_add(b.socket_overruns, Relaxed);
        self.socket_lost.fetch_add(b.socket_lost, Relaxed);
        self.kernel_suppressed
            .fetch_add(b.kernel_suppressed, Relaxed);
        self.spool_dropped.fetch_add(b.spool_dropped, Relaxed);
        self.batches.fetch_add(1, Relaxed);
    }

    /// Denials seen (NFLOG packets received) so far.
    pub fn seen(&self) -> u64 {
        self.seen.load(Relaxed)
    }
}

/// What a scrape reads besides the instruments.
struct Snapshot {
    agent: Agent,
    denials: Option<Arc<Denials>>,
    conditions: Conditions,
    /// Which controller the session is on (unset: not exported).
    on: OnceLock<OnController>,
    /// The rule counters of the last readback, refreshed before each encode.
    rules: Mutex<Vec<RuleCounter>>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Snapshot")
    }
}

fn rule_family(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rules: &[RuleCounter],
    value: fn(&RuleCounter) -> u64,
) -> Result<(), std::fmt::Error> {
    let mut family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for r in rules.iter().take(MAX_RULES) {
        let position = r.index.to_string();
        let labels = [("chain", r.chain.as_str()), ("position", position.as_str())];
        ConstCounter::new(value(r)).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let rules = self.rules.lock().unwrap_or_else(|p| p.into_inner()).clone();
        rule_family(
            &mut e,
            "agent_rule_packets",
            "Packets matched by each rule of table inet portcullis",
            &rules,
            |r| r.packets,
        )?;
        rule_family(
            &mut e,
            "agent_rule_bytes",
            "Bytes matched by each rule of table inet portcullis",
            &rules,
            |r| r.bytes,
        )?;
        let lkg = self.agent.last_known_good().ok().flatten();
        let revision = lkg.as_ref().map_or(0, |l| l.revision);
        collect::gauge(
            &mut e,
            "agent_applied_revision",
            "Revision of last-known-good (0: none)",
            None,
            revision as f64,
        )?;
        let age = lkg
            .as_ref()
            .and_then(|l| humantime::parse_rfc3339(&l.applied_at).ok())
            .and_then(|t| SystemTime::now().duration_since(t).ok());
        if let Some(age) = age {
            let unit = Unit::Seconds;
            collect::gauge(
                &mut e,
                "agent_last_known_good_age",
                "Time since last-known-good was applied and verified",
                Some(&unit),
                age.as_secs_f64(),
            )?;
        }
        let conditions = self.conditions.keys();
        let pairs: Vec<(&str, i64)> = conditions.iter().map(|k| (*k, 1)).collect();
        collect::gauges(
            &mut e,
            "agent_condition",
            "Subsystems failing now (1 per failing subsystem)",
            "subsystem",
            &pairs,
        )?;
        collect::gauge(
            &mut e,
            "agent_conditions",
            "Failing subsystems",
            None,
            pairs.len() as f64,
        )?;
        if let Some(on) = self.on.get() {
            controller_families(&mut e, on)?;
        }
        if let Some(d) = &self.denials {
            let s = d.stats();
            collect::counter(
                &mut e,
                "agent_denials_seen",
                "Denied packets logged by NFLOG and read by the agent",
                s.seen.load(Relaxed),
            )?;
            collect::counter(
                &mut e,
                "agent_denials_sent",
                "Denied packets aggregated into spooled batches",
                s.sent.load(Relaxed),
            )?;
            collect::counters(
                &mut e,
                "agent_denials_lost",
                "Denied packets not aggregated, by cause",
                "cause",
                &[
                    ("agent_rate_limit", s.dropped_by_agent.load(Relaxed)),
                    ("socket_gap", s.socket_lost.load(Relaxed)),
                    ("kernel_rate_limit", s.kernel_suppressed.load(Relaxed)),
                ],
            )?;
            collect::counter(
                &mut e,
                "agent_nflog_overruns",
                "ENOBUFS on the NFLOG socket (lost netlink messages)",
                s.socket_overruns.load(Relaxed),
            )?;
            collect::counter(
                &mut e,
                "agent_spool_dropped_batches",
                "Denial batches dropped from a full spool",
                s.spool_dropped.load(Relaxed),
            )?;
            collect::counter(
                &mut e,
                "agent_denial_batches",
                "Denial batches spooled",
                s.batches.load(Relaxed),
            )?;
            if let Some((batches, bytes)) = d.spool_depth() {
                collect::gauge(
                    &mut e,
                    "agent_spool_batches",
                    "Unacknowledged denial batches in the spool",
                    None,
                    batches as f64,
                )?;
                let unit = Unit::Bytes;
                collect::gauge(
                    &mut e,
                    "agent_spool",
                    "Size of the unacknowledged spool",
                    Some(&unit),
                    bytes as f64,
                )?;
            }
        }
        Ok(())
    }
}

/// `agent_controller{url,address}` (1, only while a session is established),
/// `agent_controller_connected` and `agent_controller_failovers`.
fn controller_families(
    e: &mut DescriptorEncoder<'_>,
    on: &OnController,
) -> Result<(), std::fmt::Error> {
    let state = on.get();
    let mut family = e.encode_descriptor(
        "agent_controller",
        "The controller the session is on (1; no series while disconnected)",
        None,
        MetricType::Gauge,
    )?;
    if let Some(c) = &state.current {
        let address = c.addr.to_string();
        let labels = [("url", &*c.url), ("address", address.as_str())];
        ConstGauge::new(1i64).encode(family.encode_family(&labels)?)?;
    }
    collect::gauge(
        e,
        "agent_controller_connected",
        "1 while a session with a controller is established",
        None,
        if state.current.is_some() { 1.0 } else { 0.0 },
    )?;
    collect::counter(
        e,
        "agent_controller_failovers",
        "Sessions established on another controller (or address) than the one before",
        state.failovers,
    )
}

/// The agent's registry and how to refresh it for a scrape.
#[derive(Debug, Clone)]
pub struct Exposition {
    registry: Arc<Registry>,
    snapshot: Arc<Snapshot>,
}

impl Exposition {
    pub fn new(agent: Agent, denials: Option<Arc<Denials>>, conditions: Conditions) -> Self {
        let mut registry = Registry::with_prefix("portcullis");
        let m = agent.metrics();
        registry.register_with_unit(
            "agent_apply_duration",
            "Applies (compile, nft transaction, readback), by result",
            Unit::Seconds,
            m.apply.clone(),
        );
        registry.register_with_unit(
            "agent_verify_duration",
            "Verifications of the kernel against last-known-good, by result",
            Unit::Seconds,
            m.verify.clone(),
        );
        registry.register(
            "agent_apply_errors",
            "Applies that failed",
            m.apply_errors.clone(),
        );
        let snapshot = Arc::new(Snapshot {
            agent,
            denials,
            conditions,
            on: OnceLock::new(),
            rules: Mutex::new(Vec::new()),
        });
        registry.register_collector(Box::new(snapshot.clone()));
        Self {
            registry: Arc::new(registry),
            snapshot,
        }
    }

    /// Export which controller the session is on (`agent_controller*`).
    pub fn with_controller(self, on: OnController) -> Self {
        let _ = self.snapshot.on.set(on);
        self
    }

    /// Read the table's counters (bounded by 5 s; the last ones stay on failure), encode.
    pub async fn render(&self) -> Result<String, portcullis_metrics::Error> {
        let agent = self.snapshot.agent.clone();
        let read = tokio::task::spawn_blocking(move || agent.kernel_snapshot());
        match tokio::time::timeout(Duration::from_secs(5), read).await {
            Ok(Ok(Ok(table))) => {
                let rules = table.map(|(_, c)| c).unwrap_or_default();
                *self
                    .snapshot
                    .rules
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = rules;
            }
            Ok(Ok(Err(error))) => {
                tracing::warn!(%error, "metrics: reading the table's counters failed")
            }
            Ok(Err(error)) => tracing::warn!(%error, "metrics: counter readback task failed"),
            Err(_) => tracing::warn!("metrics: reading the table's counters timed out"),
        }
        portcullis_metrics::encode(&self.registry)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::StateDir;
    use crate::dataplane::FakeDataplane;
    use portcullis_policy::{Facts, HostPolicy};

    fn line<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
    }

    #[tokio::test]
    async fn applies_verifies_rule_counters_and_conditions_show_in_the_exposition() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeDataplane::new());
        let agent = Agent::new(fake.clone(), StateDir::new(dir.path()));
        let conditions = Conditions::default();
        let e = Exposition::new(agent.clone(), None, conditions.clone());
        let before = e.render().await.unwrap();
        assert_eq!(
            line(&before, "portcullis_agent_applied_revision"),
            Some("0.0")
        );
        assert!(!before.contains("last_known_good_age"), "{before}");

        agent
            .reconcile(&HostPolicy::default(), &Facts::default(), 1)
            .unwrap();
        fake.fail_next_apply("boom");
        let p = HostPolicy {
            log_group: 9,
            ..HostPolicy::default()
        };
        assert!(agent.reconcile(&p, &Facts::default(), 2).is_err());
        agent.verify().unwrap();
        fake.hit("input", 0, 7, 420);
        conditions.set("denials", "cannot bind NFLOG group 7");

        let t = e.render().await.unwrap();
        let ok = "portcullis_agent_apply_duration_seconds_count{result=\"ok\"}";
        let failed = "portcullis_agent_apply_duration_seconds_count{result=\"failed\"}";
        assert_eq!(line(&t, ok), Some("1"), "{t}");
        assert_eq!(line(&t, failed), Some("1"), "{t}");
        assert_eq!(
            line(&t, "portcullis_agent_apply_errors_total"),
            Some("1"),
            "{t}"
        );
        let in_sync = "portcullis_agent_verify_duration_seconds_count{result=\"in_sync\"}";
        assert_eq!(line(&t, in_sync), Some("1"), "{t}");
        assert_eq!(
            line(&t, "portcullis_agent_applied_revision"),
            Some("1.0"),
            "{t}"
        );
        assert!(line(&t, "portcullis_agent_last_known_good_age_seconds").is_some());
        let packets = "portcullis_agent_rule_packets_total{chain=\"input\",position=\"0\"}";
        assert_eq!(line(&t, packets), Some("7"), "{t}");
        let bytes = "portcullis_agent_rule_bytes_total{chain=\"input\",position=\"0\"}";
        assert_eq!(line(&t, bytes), Some("420"), "{t}");
        let cond = "portcullis_agent_condition{subsystem=\"denials\"}";
        assert_eq!(line(&t, cond), Some("1"), "{t}");
        assert_eq!(line(&t, "portcullis_agent_conditions"), Some("1.0"), "{t}");
    }

    #[tokio::test]
    async fn the_controller_of_the_session_and_failovers_show_in_the_exposition() {
        use crate::failover::{Candidate, OnController};
        let dir = tempfile::tempdir().unwrap();
        let agent = Agent::new(Arc::new(FakeDataplane::new()), StateDir::new(dir.path()));
        let on = OnController::default();
        let e = Exposition::new(agent, None, Conditions::default()).with_controller(on.clone());
        let t = e.render().await.unwrap();
        assert_eq!(
            line(&t, "portcullis_agent_controller_connected"),
            Some("0.0"),
            "{t}"
        );
        assert!(!t.contains("portcullis_agent_controller{"), "{t}");

        let c = |i: usize| Candidate {
            controller: i,
            url: format!("https://10.77.0.{}:7443", i + 1).into(),
            addr: format!("10.77.0.{}:7443", i + 1).parse().unwrap(),
        };
        on.connected(&c(0), false);
        on.disconnected();
        on.connected(&c(1), true);
        let t = e.render().await.unwrap();
        let series = "portcullis_agent_controller{url=\"https://10.77.0.2:7443\",address=\"10.77.0.2:7443\"}";
        assert_eq!(line(&t, series), Some("1"), "{t}");
        assert_eq!(t.matches("portcullis_agent_controller{").count(), 1, "{t}");
        assert_eq!(
            line(&t, "portcullis_agent_controller_connected"),
            Some("1.0"),
            "{t}"
        );
        assert_eq!(
            line(&t, "portcullis_agent_controller_failovers_total"),
            Some("1"),
            "{t}"
        );
    }
}
