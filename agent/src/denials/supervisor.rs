//! The denial pipeline's supervisor thread: opens the spool, binds the NFLOG group the
//! applied policy logs to, aggregates, and starts over when something breaks.
//!
//! - **The group follows the policy.** The group read is the applied policy's
//!   `log.group` (from [`crate::Agent::log_group`], updated by every successful apply,
//!   revert and heal); before any policy is applied it is `--nflog-group`. When a policy
//!   with another group is applied, the current interval is drained and spooled, and the
//!   reader is restarted on the new group: the logs never go blind on a mismatch.
//! - **Failing safe.** A spool that cannot be opened or a group that cannot be bound (EBUSY:
//!   another program such as ulogd holds it) sets the `denials` condition (sent to the
//!   controller in every heartbeat, shown by `portcullis status`) and is retried with
//!   exponential backoff (1 s .. 60 s). It never returns an error to the session and never
//!   touches the ruleset: the policy keeps being enforced without its logs.

use super::{DenialConfig, Denials, IfNames, over_limit_counter, to_wire};
use crate::conditions::Conditions;
use crate::denials::Spool;
use crate::nflog::{self, Aggregator, DenialReader, ReaderConfig};
use std::sync::Arc;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// The condition key of this subsystem.
pub const CONDITION: &str = "denials";
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// Sleeps `d`, or less when the applied policy's group is no longer `tried` (a group that
/// was busy need not delay reading the next one).
fn pause(group: &watch::Receiver<Option<u16>>, tried: Option<u16>, d: Duration) {
    let until = Instant::now() + d;
    let moved = || tried.is_some() && group.borrow().is_some_and(|g| Some(g) != tried);
    while Instant::now() < until && !moved() {
        std::thread::sleep(
            Duration::from_millis(100).min(until.saturating_duration_since(Instant::now())),
        );
    }
}

/// Why one reader's run ended.
enum Stop {
    /// The applied policy logs to another group now.
    GroupChanged,
    /// The reading thread ended (socket error).
    ReaderStopped,
    /// The agent is shutting down (the group watch is gone).
    Shutdown,
}

impl Denials {
    /// Runs forever on its own thread (see the module docs).
    pub(super) fn supervise(
        self: Arc<Self>,
        config: DenialConfig,
        mut group: watch::Receiver<Option<u16>>,
        conditions: Conditions,
    ) {
        let mut backoff = RETRY_MIN;
        let changes = group.clone();
        let fail = |what: String, tried: Option<u16>, backoff: &mut Duration| {
            let text = format!(
                "{what}; retrying in {} (the policy is enforced; its denials are not collected)",
                humantime::format_duration(*backoff)
            );
            tracing::error!(condition = %text, "denial pipeline not running");
            conditions.set(CONDITION, text);
            pause(&changes, tried, *backoff);
            *backoff = (*backoff * 2).min(RETRY_MAX);
        };
        loop {
            if self.spool().is_none() {
                match Spool::open(&config.spool_dir, config.spool_max_bytes) {
                    Ok(spool) => {
                        tracing::info!(spooled = spool.len(), "denial spool open");
                        // What fails next (if anything) is another problem: retry it soon.
                        backoff = RETRY_MIN;
                        *self.spool() = Some(spool);
                        self.notify.notify_one();
                    }
                    Err(e) => {
                        fail(
                            format!("cannot open the denial spool: {e}"),
                            None,
                            &mut backoff,
                        );
                        continue;
                    }
                }
            }
            let want = group.borrow_and_update().unwrap_or(config.group);
            let started = DenialReader::start_with(ReaderConfig {
                group: want,
                ..ReaderConfig::default()
            });
            let (reader, rx) = match started {
                Ok(r) => r,
                Err(e) => {
                    fail(
                        format!("cannot read NFLOG group {want} (held by another program?): {e}"),
                        Some(want),
                        &mut backoff,
                    );
                    continue;
                }
            };
            conditions.clear(CONDITION);
            backoff = RETRY_MIN;
            tracing::info!(
                group = want,
                rcvbuf = reader.rcvbuf(),
                "denial reader started"
            );
            match self.aggregate(&config, reader, rx, &mut group, want) {
                Stop::GroupChanged => {
                    tracing::info!(
                        from = want,
                        "the applied policy logs to another NFLOG group; switching"
                    );
                }
                Stop::ReaderStopped => {
                    fail(
                        format!("the NFLOG reader of group {want} stopped"),
                        Some(want),
                        &mut backoff,
                    );
                }
                Stop::Shutdown => return,
            }
        }
    }

    /// Folds events into one batch per interval and spools it, until [`Stop`].
    fn aggregate(
        &self,
        config: &DenialConfig,
        reader: DenialReader,
        rx: std::sync::mpsc::Receiver<nflog::DenialEvent>,
        group: &mut watch::Receiver<Option<u16>>,
        current: u16,
    ) -> Stop {
        let mut agg = Aggregator::new(config.host.clone(), config.interval);
        let mut names = IfNames::default();
        names.refresh();
        // No table yet means counters at zero: a table created later starts from 0, so
        // nothing denied over the limit before the first reading goes uncounted.
        let start = over_limit_counter(config.dataplane.as_ref()).or(Some(0));
        agg.baseline(SystemTime::now(), &reader.stats(), start);
        let mut last = Instant::now();
        let tick = (config.interval / 4).max(Duration::from_millis(10));
        let stop = loop {
            let stop = match rx.recv_timeout(tick) {
                Ok(ev) => {
                    agg.push(ev);
                    while let Ok(ev) = rx.try_recv() {
                        agg.push(ev);
                    }
                    None
                }
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => Some(Stop::ReaderStopped),
            };
            let stop = stop.or(match group.has_changed() {
                Err(_) => Some(Stop::Shutdown),
                Ok(true) if group.borrow_and_update().is_some_and(|g| g != current) => {
                    Some(Stop::GroupChanged)
                }
                Ok(_) => None,
            });
            if stop.is_none() && last.elapsed() < config.interval {
                continue;
            }
            last = Instant::now();
            // Every interval, and once more before stopping (nothing read is lost).
            self.spool_batch(config, &mut agg, &reader, &mut names);
            if let Some(stop) = stop {
                break stop;
            }
        };
        drop(reader);
        stop
    }

    fn spool_batch(
        &self,
        config: &DenialConfig,
        agg: &mut Aggregator,
        reader: &DenialReader,
        names: &mut IfNames,
    ) {
        let counter = over_limit_counter(config.dataplane.as_ref());
        let Some(batch) = agg.drain(SystemTime::now(), &reader.stats(), counter) else {
            return;
        };
        let wire = to_wire(batch, names);
        let (entries, seen) = (wire.entries.len(), wire.seen);
        self.stats.record(&wire);
        let appended = match self.spool().as_mut() {
            Some(spool) => spool.append(wire).map_err(|e| e.to_string()),
            None => Err("no spool".to_owned()),
        };
        match appended {
            Ok(seq) => tracing::debug!(seq, entries, seen, "denial batch spooled"),
            // Counted by the spool: the next batch stored reports it as spool_dropped.
            Err(e) => {
                tracing::error!(error = %e, seen, "cannot spool a denial batch; lost and counted")
            }
        }
        self.notify.notify_one();
    }
}
