//! The controller's Prometheus metrics (`serve --metrics-listen`).
//!
//! Two kinds: instruments the services update as things happen ([`Instruments`]: sessions
//! opened and closed by reason, agents' applies with their duration, denial batches by
//! outcome, store call latency), and values read at scrape time from what the controller
//! already keeps ([`Snapshot`]: connected agents, pre-authentication refusals, answers
//! that matched no question, the running rollout, and the store's counts of hosts by
//! drift state, rollouts by status and denial accounting).
//!
//! Cardinality stays flat at 10k hosts: no metric has a host label; hosts are counted per
//! state. Every label value comes from a fixed vocabulary.

use super::Shared;
use portcullis_metrics::collect;
use portcullis_metrics::prometheus_client::collector::Collector;
use portcullis_metrics::prometheus_client::encoding::DescriptorEncoder;
use portcullis_metrics::prometheus_client::metrics::counter::Counter;
use portcullis_metrics::prometheus_client::metrics::family::Family;
use portcullis_metrics::prometheus_client::metrics::histogram::Histogram;
use portcullis_metrics::prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One label, from a fixed vocabulary.
pub type Label = [(&'static str, &'static str); 1];

fn duration_histogram() -> Histogram {
    Histogram::new(collect::duration_buckets())
}

/// Instruments updated by the services.
#[derive(Debug, Clone)]
pub struct Instruments {
    /// Agent sessions admitted (Hello accepted).
    pub sessions_opened: Counter,
    /// Sessions refused before admission or closed after it, by reason.
    pub sessions_closed: Family<Label, Counter>,
    /// Apply reports from agents (`result` ok/failed), by the agent's apply duration.
    pub applies: Family<Label, Histogram, fn() -> Histogram>,
    /// Denial batches by outcome (`stored`, `invalid`, `store_failed`).
    pub denial_batches: Family<Label, Counter>,
}

impl Default for Instruments {
    fn default() -> Self {
        Self {
            sessions_opened: Counter::default(),
            sessions_closed: Family::default(),
            applies: Family::new_with_constructor(duration_histogram),
            denial_batches: Family::default(),
        }
    }
}

impl Instruments {
    /// Count a session refused or ended for `reason`.
    pub fn session_closed(&self, reason: &'static str) {
        self.sessions_closed
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// Record an agent's apply report.
    pub fn applied(&self, ok: bool, duration_us: u64) {
        let result = if ok { "ok" } else { "failed" };
        self.applies
            .get_or_create(&[("result", result)])
            .observe(Duration::from_micros(duration_us).as_secs_f64());
    }

    /// Count a denial batch by outcome.
    pub fn denial_batch(&self, outcome: &'static str) {
        self.denial_batches
            .get_or_create(&[("outcome", outcome)])
            .inc();
    }
}

/// Values read at scrape time.
#[derive(Debug)]
struct Snapshot {
    shared: Arc<Shared>,
    /// The store's counts, refreshed before each encode.
    store: Mutex<crate::store::StoreGauges>,
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = &self.shared;
        let connected = i64::try_from(s.registry.connected_count()).unwrap_or(i64::MAX);
        collect::gauge(
            &mut e,
            "agents_connected",
            "Agents with an open session",
            None,
            connected as f64,
        )?;
        let r = &s.refusals;
        collect::counters(
            &mut e,
            "preauth_refused_connections",
            "Connections closed before authentication, by limit",
            "reason",
            &[
                ("max_connections", r.full.load(Relaxed)),
                ("pending_handshakes", r.pending_full.load(Relaxed)),
                ("pending_per_source", r.per_source.load(Relaxed)),
                ("handshake_timeout", r.handshake_timeout.load(Relaxed)),
                ("handshake_failed", r.handshake_failed.load(Relaxed)),
                ("revoked", r.revoked.load(Relaxed)),
                ("per_identity", r.per_identity.load(Relaxed)),
            ],
        )?;
        collect::counter(
            &mut e,
            "connections_cut",
            "Open connections cut (certificate revoked or expired)",
            s.connections.cut_total(),
        )?;
        use super::answers::Kind;
        collect::counters(
            &mut e,
            "ignored_answers",
            "Agent answers that matched no question put to that host (another host's id, a replay)",
            "kind",
            &[
                ("drift", s.unmatched.get(Kind::Drift)),
                ("applied", s.unmatched.get(Kind::Applied)),
                ("reverted", s.unmatched.get(Kind::Reverted)),
            ],
        )?;
        let running = s.rollouts.running();
        collect::gauge(
            &mut e,
            "rollout_running",
            "1 while a rollout runs",
            None,
            f64::from(u8::from(running.is_some())),
        )?;
        collect::gauge(
            &mut e,
            "rollout_running_id",
            "Id of the running rollout (0: none)",
            None,
            running.unwrap_or(0) as f64,
        )?;
        let g = self.store.lock().unwrap_or_else(|p| p.into_inner()).clone();
        collect::gauge(
            &mut e,
            "hosts_known",
            "Hosts the store knows",
            None,
            g.hosts as f64,
        )?;
        let drift: Vec<(&str, i64)> = g.drift.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        collect::gauges(
            &mut e,
            "hosts_drift",
            "Hosts by the state of their last drift report",
            "state",
            &drift,
        )?;
        let ro: Vec<(&str, i64)> = g.rollouts.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        collect::gauges(&mut e, "rollouts", "Rollouts by status", "status", &ro)?;
        let rh: Vec<(&str, i64)> = g
            .rollout_hosts
            .iter()
            .map(|(k, n)| (k.as_str(), *n))
            .collect();
        collect::gauges(
            &mut e,
            "rollout_hosts",
            "Hosts of the newest rollout by state",
            "state",
            &rh,
        )?;
        let d = g.denials;
        collect::counter(
            &mut e,
            "denial_events_seen",
            "Denied packets the agents saw (stored batches)",
            d.seen,
        )?;
        collect::counter(
            &mut e,
            "denial_events_stored",
            "Denied packets stored (sum of row counts)",
            d.stored,
        )?;
        collect::counters(
            &mut e,
            "denial_events_lost",
            "Denied packets seen but not stored, by cause",
            "cause",
            &[
                ("agent_rate_limit", d.dropped_by_agent),
                ("socket_overrun", d.socket_overruns),
                ("socket_gap", d.socket_lost),
                ("kernel_rate_limit", d.kernel_suppressed),
                ("spool_full", d.spool_dropped),
            ],
        )?;
        Ok(())
    }
}

/// The registry of one controller and how to refresh it for a scrape.
#[derive(Debug, Clone)]
pub struct Exposition {
    registry: Arc<Registry>,
    snapshot: Arc<Snapshot>,
}

impl Exposition {
    pub fn new(shared: Arc<Shared>) -> Self {
        let mut registry = Registry::with_prefix("portcullis");
        let m = &shared.metrics;
        registry.register(
            "sessions_opened",
            "Agent sessions admitted",
            m.sessions_opened.clone(),
        );
        registry.register(
            "sessions_closed",
            "Agent sessions refused or ended, by reason",
            m.sessions_closed.clone(),
        );
        registry.register_with_unit(
            "apply_duration",
            "Applies the agents reported, by result, and how long the agent took",
            Unit::Seconds,
            m.applies.clone(),
        );
        registry.register(
            "denial_batches",
            "Denial batches received, by outcome",
            m.denial_batches.clone(),
        );
        registry.register_with_unit(
            "store_call_duration",
            "Store calls (waiting for the connection included)",
            Unit::Seconds,
            shared.store.latency().clone(),
        );
        let snapshot = Arc::new(Snapshot {
            shared,
            store: Mutex::new(Default::default()),
        });
        registry.register_collector(Box::new(snapshot.clone()));
        Self {
            registry: Arc::new(registry),
            snapshot,
        }
    }

    /// Refresh the store counts, then encode.
    pub async fn render(&self) -> Result<String, portcullis_metrics::Error> {
        let store = self.snapshot.shared.store.clone();
        let read = store.call(crate::store::store_gauges);
        match tokio::time::timeout(Duration::from_secs(4), read).await {
            Ok(Ok(g)) => {
                *self
                    .snapshot
                    .store
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = g
            }
            // The last counts stay; the scrape still answers.
            Ok(Err(error)) => tracing::warn!(%error, "metrics: reading store counts failed"),
            Err(_) => tracing::warn!("metrics: reading store counts timed out"),
        }
        portcullis_metrics::encode(&self.registry)
    }
}
