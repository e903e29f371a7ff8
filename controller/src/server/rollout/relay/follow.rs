//! The relay task: carries out the notices [`super::check`] accepted, follows the hosts
//! of other controllers' waves (their sessions here: `Applied`, a new session's `Hello`,
//! `Reverted`) and stores what it sees of them as reports, one transaction per burst.

use super::super::super::Shared;
use super::super::desired::Desireds;
use super::{Input, Notice, check, check_host};
use crate::server::registry::HostEvent;
use crate::store::{
    self,
    relay::{Lease, Report, ReportKind, Step},
};
use portcullis_proto::v1;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// In a wave: sent (here or elsewhere), not settled.
    Wave,
    /// Being rolled back to `previous`.
    Rollback { previous: u64 },
}

/// A host of another controller's rollout this controller follows.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Watch {
    rollout: u64,
    revision: u64,
    mode: Mode,
    /// The session here the revision was sent on (`None`: sent elsewhere).
    sent_on: Option<u64>,
}

/// How often hosts of rollouts that are no longer running are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(5);

struct Relay {
    shared: Arc<Shared>,
    watched: BTreeMap<String, Watch>,
    /// Reports not stored yet (one transaction per burst).
    reports: Vec<(u64, Report)>,
}

/// Follow other controllers' rollouts until `inputs` closes (the listener stopped).
pub async fn run(shared: Arc<Shared>, mut inputs: mpsc::Receiver<Input>) {
    let mut events = shared.registry.subscribe();
    let mut reverted = shared.rollouts.subscribe_reverted();
    let mut relay = Relay {
        shared,
        watched: BTreeMap::new(),
        reports: Vec::new(),
    };
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    loop {
        tokio::select! {
            input = inputs.recv() => match input {
                Some(Input::Notice { from, notice }) => relay.on_notice(&from, notice).await,
                Some(Input::CatchUp) => relay.catch_up().await,
                None => return,
            },
            ev = events.recv() => match ev {
                Ok(ev) => relay.on_event(ev).await,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(skipped = n, "rollout relay lagged behind host events; re-checking from the store");
                    relay.recheck().await;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            r = reverted.recv() => {
                if let Ok((host, r)) = r {
                    relay.on_reverted(&host, &r);
                }
            }
            _ = prune.tick() => relay.prune().await,
        }
        if events.is_empty() || relay.reports.len() >= 512 {
            relay.flush().await;
        }
    }
}

impl Relay {
    fn me(&self) -> &str {
        &self.shared.controller_id
    }

    fn report(&mut self, rollout: u64, host: &str, kind: ReportKind, revision: u64) -> &mut Report {
        let controller = self.me().to_owned();
        self.reports.push((
            rollout,
            Report {
                id: 0,
                host: host.to_owned(),
                controller,
                kind,
                revision,
                hash: String::new(),
                detail: String::new(),
            },
        ));
        let last = self.reports.len() - 1;
        &mut self.reports[last].1
    }

    async fn flush(&mut self) {
        let reports = std::mem::take(&mut self.reports);
        if reports.is_empty() {
            return;
        }
        let n = reports.len();
        if let Err(e) = self
            .shared
            .store
            .call(move |c| {
                let tx = c.transaction()?;
                for (rollout, r) in &reports {
                    store::relay::add_report(&tx, *rollout, r)?;
                }
                tx.commit()
            })
            .await
        {
            // Its rollout then times these hosts out (they revert by themselves).
            tracing::error!(reports = n, error = %format!("{e:#}"), "storing rollout reports failed");
        }
    }

    async fn on_notice(&mut self, from: &str, n: Notice) {
        if n.step == Step::Abort {
            if self.shared.rollouts.abort(n.rollout) == Some(n.rollout) {
                tracing::warn!(
                    rollout = n.rollout,
                    from,
                    "rollout abort requested through another controller"
                );
            }
            return;
        }
        let id = n.rollout;
        let lease = match self
            .shared
            .store
            .call(move |c| store::relay::lease(c, id))
            .await
        {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(rollout = id, error = %format!("{e:#}"), "reading a rollout notice's rollout failed");
                return;
            }
        };
        if let Err(why) = check(lease.as_ref(), from, &n, store::now_ms()) {
            tracing::warn!(rollout = id, from, step = n.step.as_str(), hosts = n.hosts.len(), %why,
                "rollout notice ignored");
            return;
        }
        let Some(lease) = lease else { return };
        if n.step == Step::Done {
            self.watched.retain(|_, w| w.rollout != id);
            return;
        }
        let names = n.hosts.clone();
        let targets = match self
            .shared
            .store
            .call(move |c| store::relay::targets(c, id, &names))
            .await
        {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(rollout = id, error = %format!("{e:#}"), "reading a rollout notice's hosts failed");
                return;
            }
        };
        let mut ok = Vec::with_capacity(n.hosts.len());
        for host in n.hosts {
            match check_host(n.step, lease.revision, targets.get(&host)) {
                Ok(()) => ok.push(host),
                Err(why) => tracing::warn!(rollout = id, from, %host, step = n.step.as_str(), %why,
                    "rollout notice ignored for this host"),
            }
        }
        match n.step {
            Step::Send => self.send(&lease, from, ok).await,
            Step::Confirm => {
                for host in ok {
                    self.watched.remove(&host);
                    let msg = v1::controller_message::Msg::Confirm(v1::Confirm {
                        revision: lease.revision,
                    });
                    if self.to_session(&host, msg).await {
                        self.report(id, &host, ReportKind::Confirmed, lease.revision);
                    }
                }
            }
            Step::Revert => {
                for host in ok {
                    self.watched.remove(&host);
                    let reason = targets
                        .get(&host)
                        .map(|t| t.detail.clone())
                        .filter(|d| !d.is_empty())
                        .unwrap_or_else(|| format!("rollout {id} gave up on this host"));
                    let msg = v1::controller_message::Msg::Revert(v1::Revert {
                        revision: lease.revision,
                        reason,
                    });
                    self.to_session(&host, msg).await;
                }
            }
            Step::Release => {
                for host in ok {
                    self.watched.remove(&host);
                }
            }
            Step::Rollback => {
                for host in ok {
                    let previous = targets.get(&host).map_or(0, |t| t.previous_revision);
                    self.rollback(id, lease.revision, &host, previous).await;
                }
            }
            Step::Done | Step::Abort => {}
        }
    }

    /// Into `host`'s session here, if it has one.
    async fn to_session(&self, host: &str, msg: v1::controller_message::Msg) -> bool {
        let Some(handle) = self.shared.registry.get(host) else {
            return false;
        };
        handle
            .tx
            .send(Ok(v1::ControllerMessage { msg: Some(msg) }))
            .await
            .is_ok()
    }

    /// A wave of another controller's rollout: follow every host, send `Desired` (the
    /// staged revision, the rollout's confirm timeout) to the sessions held here.
    async fn send(&mut self, lease: &Lease, from: &str, hosts: Vec<String>) {
        let (id, rev) = (lease.id, lease.revision);
        for h in &hosts {
            let watch = Watch {
                rollout: id,
                revision: rev,
                mode: Mode::Wave,
                sent_on: None,
            };
            self.watched.insert(h.clone(), watch);
        }
        let held: Vec<String> = hosts
            .into_iter()
            .filter(|h| self.shared.registry.is_connected(h))
            .collect();
        if held.is_empty() {
            return;
        }
        let names = held.clone();
        let rows = self
            .shared
            .store
            .call(move |c| store::rollout::wave_policies(c, rev, &names))
            .await
            .unwrap_or_else(|e| {
                tracing::error!(rollout = id, error = %format!("{e:#}"), "reading a wave's policies failed");
                BTreeMap::new()
            });
        let mut desireds = Desireds::new(rev, lease.confirm_timeout_ms);
        let mut sent = 0usize;
        for host in &held {
            let Some(handle) = self.shared.registry.get(host) else {
                continue;
            };
            let built = match rows.get(host) {
                None => Err(format!("no desired r{rev} stored for this host")),
                Some((json, _)) => match desireds.expected(json, &handle.facts) {
                    None => Err("stored policy unreadable".to_string()),
                    Some(hash) => desireds.message(&self.shared, host, json, hash),
                },
            };
            let why = match built {
                Ok(d) => {
                    let msg = v1::ControllerMessage {
                        msg: Some(v1::controller_message::Msg::Desired(d)),
                    };
                    if handle.tx.send(Ok(msg)).await.is_ok() {
                        if let Some(w) = self.watched.get_mut(host) {
                            w.sent_on = Some(handle.session);
                        }
                        sent += 1;
                        continue;
                    }
                    "session closed while sending".to_string()
                }
                Err(why) => why,
            };
            self.report(id, host, ReportKind::Failed, rev).detail = why;
        }
        tracing::info!(
            rollout = id,
            revision = rev,
            from,
            hosts = held.len(),
            sent,
            "sent a wave of another controller's rollout to the sessions held here"
        );
    }

    /// Send `host` its desired revision (the rollout put `previous` back) if it is here,
    /// and report it applied.
    async fn rollback(&mut self, rollout: u64, revision: u64, host: &str, previous: u64) {
        let watch = Watch {
            rollout,
            revision,
            mode: Mode::Rollback { previous },
            sent_on: None,
        };
        self.watched.insert(host.to_owned(), watch);
        let Some(handle) = self.shared.registry.get(host) else {
            return;
        };
        match self.shared.desired_message(host, &handle.facts).await {
            Ok(Some(d)) if d.revision == previous => {
                let msg = v1::ControllerMessage {
                    msg: Some(v1::controller_message::Msg::Desired(d)),
                };
                if handle.tx.send(Ok(msg)).await.is_err() {
                    self.report(rollout, host, ReportKind::Failed, previous)
                        .detail = "session closed".into();
                }
            }
            _ => {
                self.report(rollout, host, ReportKind::Failed, previous)
                    .detail = format!("no stored r{previous}");
            }
        }
    }

    async fn on_event(&mut self, ev: HostEvent) {
        match ev {
            HostEvent::Applied { host, report } => {
                let Some(w) = self.watched.get(&host).cloned() else {
                    return;
                };
                let revision = match w.mode {
                    Mode::Wave => w.revision,
                    Mode::Rollback { previous } => previous,
                };
                if report.revision != revision {
                    return;
                }
                if let Mode::Rollback { .. } = w.mode {
                    self.watched.remove(&host);
                }
                let kind = if report.ok {
                    ReportKind::Applied
                } else {
                    ReportKind::Failed
                };
                let r = self.report(w.rollout, &host, kind, revision);
                r.hash = report.hash;
                r.detail = report.error;
            }
            HostEvent::Connected { host } => {
                let Some(w) = self.watched.get(&host).cloned() else {
                    return;
                };
                if w.mode != Mode::Wave {
                    return;
                }
                // A new session (its Hello is stored before the event): what it attests.
                let h = host.clone();
                let attested = self
                    .shared
                    .store
                    .call(move |c| store::rollout::host_applied(c, &h))
                    .await;
                if let Ok(Some((revision, hash))) = attested {
                    self.report(w.rollout, &host, ReportKind::Back, revision)
                        .hash = hash;
                }
            }
            HostEvent::Disconnected { .. } => {}
        }
    }

    fn on_reverted(&mut self, host: &str, r: &v1::Reverted) {
        if let Some(w) = self.watched.get(host).cloned()
            && w.mode == Mode::Wave
            && r.revision == w.revision
        {
            self.report(w.rollout, host, ReportKind::Reverted, r.revision)
                .detail = r.reason.clone();
        }
    }

    /// After missed events: what the store says of the hosts sent a revision here.
    async fn recheck(&mut self) {
        let sent: Vec<(String, Watch)> = self
            .watched
            .iter()
            .filter(|(_, w)| w.mode == Mode::Wave && w.sent_on.is_some())
            .map(|(h, w)| (h.clone(), w.clone()))
            .collect();
        for (host, w) in sent {
            let h = host.clone();
            let Ok(Some((revision, hash))) = self
                .shared
                .store
                .call(move |c| store::rollout::host_applied(c, &h))
                .await
            else {
                continue;
            };
            if revision != w.revision {
                continue;
            }
            let now = self.shared.registry.get(&host).map(|x| x.session);
            let kind = if now.is_some() && now != w.sent_on {
                ReportKind::Back
            } else {
                ReportKind::Applied
            };
            self.report(w.rollout, &host, kind, revision).hash = hash;
        }
    }

    /// Follow the hosts other controllers' running rollouts have in flight (a restart, or
    /// notices missed while the listener was away).
    async fn catch_up(&mut self) {
        let me = self.me().to_owned();
        let rows = self
            .shared
            .store
            .call(move |c| store::relay::in_flight_elsewhere(c, &me, store::now_ms()))
            .await;
        match rows {
            Ok(rows) => {
                for (rollout, _, revision, host) in rows {
                    self.watched.entry(host).or_insert(Watch {
                        rollout,
                        revision,
                        mode: Mode::Wave,
                        sent_on: None,
                    });
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "reading other controllers' rollouts failed")
            }
        }
    }

    /// Forget the hosts of rollouts that are no longer running.
    async fn prune(&mut self) {
        if self.watched.is_empty() {
            return;
        }
        if let Ok(running) = self.shared.store.call(store::relay::running_ids).await {
            self.watched.retain(|_, w| running.contains(&w.rollout));
        }
    }
}
