//! Several controllers on one PostgreSQL store: a revision stored through any controller
//! reaches the agents connected to every other one. The apply's transaction announces
//! it (`store::publish`, a `NOTIFY` delivered at commit; one per apply, never per log
//! row); each controller listens on a connection of its own and pushes the revision to
//! the targeted hosts whose sessions it holds. After (re)connecting the listener catches
//! up from the hosts table (desired revision not yet applied), so a publish missed while
//! the database was unreachable is not lost. Another controller's rollout steps arrive
//! on the same channel and go to [`relay`]. With SQLite (one controller) nothing runs.

use super::Shared;
use super::compile::CompileCache;
use super::rollout::relay;
use crate::store::{self, PUBLISH_CHANNEL};
use futures::StreamExt as _;
use portcullis_proto::v1;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Listen until the process ends (returns at once on SQLite). Rollout notices go, in
/// order, to the relay task ([`relay::run`]), which ends with this one.
pub async fn run(shared: Arc<Shared>) {
    let mut delay = Duration::from_millis(250);
    let (relay_tx, relay_rx) = mpsc::channel(1024);
    let mut relay_rx = Some(relay_rx);
    loop {
        match shared.store.listen(PUBLISH_CHANNEL).await {
            Ok(None) => return,
            Ok(Some(mut rx)) => {
                delay = Duration::from_millis(250);
                tracing::info!(controller = %shared.controller_id, "listening for revisions published by other controllers");
                if let Some(r) = relay_rx.take() {
                    tokio::spawn(relay::run(shared.clone(), r));
                }
                let _ = relay_tx.send(relay::Input::CatchUp).await;
                catch_up(&shared).await;
                while let Some(payload) = rx.recv().await {
                    on_publish(&shared, &payload, &relay_tx).await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot listen for published revisions; retrying")
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// What another controller announced.
#[derive(Debug, PartialEq, Eq)]
enum Notice<'a> {
    /// A revision was stored: push it to our hosts it targets.
    Revision(u64),
    /// `drift --now` on that controller: have our hosts among these verify now (their
    /// reports go to the store, where it reads them).
    Verify(Vec<&'a str>),
    /// A step of that controller's rollout (see [`relay`]).
    Rollout(relay::Notice),
}

/// Pushes of a published revision in flight at once (the pool has 16 connections).
const PUSH_CONCURRENCY: usize = 16;

/// How long our hosts get to answer another controller's verify request.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(30);

async fn on_publish(shared: &Arc<Shared>, payload: &str, relay: &mpsc::Sender<relay::Input>) {
    let Some((from, notice)) = parse(payload) else {
        let shown: String = payload.chars().take(200).collect();
        tracing::warn!(payload = %shown, "unreadable publish notification ignored");
        return;
    };
    if from == shared.controller_id {
        return;
    }
    let revision = match notice {
        Notice::Revision(r) => r,
        Notice::Rollout(notice) => {
            let from = from.to_owned();
            let _ = relay.send(relay::Input::Notice { from, notice }).await;
            return;
        }
        Notice::Verify(hosts) => {
            let ours: Vec<String> = hosts
                .into_iter()
                .filter(|h| shared.registry.is_connected(h))
                .map(str::to_owned)
                .collect();
            if !ours.is_empty() {
                tracing::info!(
                    from,
                    hosts = ours.len(),
                    "verify requested by another controller"
                );
                let shared = shared.clone();
                tokio::spawn(async move {
                    super::drift::verify_now(&shared, &ours, VERIFY_TIMEOUT).await;
                });
            }
            return;
        }
    };
    let targets = match shared
        .store
        .call(move |c| store::revision_targets(c, revision))
        .await
    {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(revision, error = %format!("{e:#}"), "reading a published revision's hosts");
            return;
        }
    };
    // Each push reads the host's row and compiles its expected hash: a few at a time,
    // so the database's round trips overlap (one after another, 4,000 hosts took 6 s);
    // the compiles go through one cache (hosts share a handful of policies).
    let cache = tokio::sync::Mutex::new(CompileCache::new(revision));
    let cache = &cache;
    let pushed: usize = futures::stream::iter(targets)
        .map(|host| async move { usize::from(push(shared, &host, Some(cache)).await) })
        .buffer_unordered(PUSH_CONCURRENCY)
        .fold(0, |n, p| async move { n + p })
        .await;
    tracing::info!(
        revision,
        from,
        pushed,
        "revision published by another controller"
    );
}

fn parse(payload: &str) -> Option<(&str, Notice<'_>)> {
    let (from, rest) = payload.split_once(' ')?;
    if let Some(rest) = rest.strip_prefix("rollout ") {
        return Some((from, Notice::Rollout(relay::Notice::parse(rest)?)));
    }
    if let Some(hosts) = rest.strip_prefix("verify ") {
        return Some((from, Notice::Verify(hosts.split(',').collect())));
    }
    Some((from, Notice::Revision(rest.parse().ok()?)))
}

/// Hosts connected here whose desired revision is not what they applied.
async fn catch_up(shared: &Arc<Shared>) {
    let hosts = match shared.store.call(store::list_hosts).await {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "catching up on published revisions");
            return;
        }
    };
    for h in hosts {
        if h.desired_revision != 0
            && h.desired_revision != h.applied_revision
            && shared.registry.is_connected(&h.name)
        {
            push(shared, &h.name, None).await;
        }
    }
}

/// Send `host` its desired revision from the store, if its session is here and no
/// rollout drives it (its expected hash compiled through `cache` when given). Whether a
/// message was sent.
async fn push(
    shared: &Arc<Shared>,
    host: &str,
    cache: Option<&tokio::sync::Mutex<CompileCache<String>>>,
) -> bool {
    let Some(handle) = shared.registry.get(host) else {
        return false;
    };
    if shared.rollouts.holds(host) {
        return false;
    }
    match shared
        .desired_message_with(host, &handle.facts, cache)
        .await
    {
        Ok(Some(desired)) if relay::staged(shared, host, desired.revision).await => false,
        Ok(Some(desired)) => {
            let msg = v1::ControllerMessage {
                msg: Some(v1::controller_message::Msg::Desired(desired)),
            };
            handle.tx.send(Ok(msg)).await.is_ok()
        }
        Ok(None) => false,
        Err(status) => {
            tracing::error!(%host, error = %status.message(), "building a published revision's Desired");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn payloads_parse_or_are_refused() {
        use super::Notice;
        assert_eq!(super::parse("c1 42"), Some(("c1", Notice::Revision(42))));
        assert_eq!(
            super::parse("c1 verify h1,h2"),
            Some(("c1", Notice::Verify(vec!["h1", "h2"])))
        );
        assert_eq!(super::parse("c1"), None);
        assert_eq!(super::parse("c1 x"), None);
        assert_eq!(super::parse("c1 -1"), None);
        let Some(("c1", Notice::Rollout(n))) = super::parse("c1 rollout 3 confirm 9 h1") else {
            panic!("rollout notice")
        };
        assert_eq!(
            (n.rollout, n.revision, n.hosts),
            (3, 9, vec!["h1".to_string()])
        );
        assert_eq!(super::parse("c1 rollout 3 confirm 9"), None);
    }
}
