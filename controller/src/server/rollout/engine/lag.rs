//! What a rollout does when it missed host events (its broadcast receiver lagged): re-read
//! each waiting host's attested state from the store, which is written before the event is
//! sent, so a host is never judged failed or unconfirmed because an event was lost.
//! Only positive evidence settles a host here; anything else keeps waiting for its deadline.

use super::{Ctx, Phase};
use portcullis_proto::v1;
use std::collections::BTreeMap;
use std::time::Duration;

/// Hosts of a wave whose stored state answers what the missed events would have said:
/// applied (or hash mismatch), and with commit-confirm, back on a newer session. Returns
/// the settled hosts (removed from `phase`); moves applied ones to `AwaitReconnect`.
pub(super) async fn recheck_wave(
    ctx: &Ctx<'_>,
    phase: &mut BTreeMap<String, Phase>,
    expected: &BTreeMap<String, String>,
    sent_on: &BTreeMap<String, Option<u64>>,
    confirm: Duration,
) -> Vec<(String, v1::HostOutcome, String)> {
    let rev = ctx.plan.revision;
    let mut settled = Vec::new();
    let hosts: Vec<String> = phase.keys().cloned().collect();
    for host in hosts {
        let Some((r, hash)) = ctx.attested(&host).await else {
            continue;
        };
        if r != rev {
            continue;
        }
        let exp = expected.get(&host).cloned().unwrap_or_default();
        if !exp.is_empty() && hash != exp {
            if phase.get(&host) == Some(&Phase::Applying) {
                let revert = v1::Revert {
                    revision: rev,
                    reason: "hash mismatch".into(),
                };
                let _ = ctx
                    .send(&host, v1::controller_message::Msg::Revert(revert))
                    .await;
                phase.remove(&host);
                let why = format!("kernel hash {hash} != expected {exp}");
                settled.push((host, v1::HostOutcome::HashMismatch, why));
            }
            continue;
        }
        if confirm.is_zero() {
            phase.remove(&host);
            settled.push((host, v1::HostOutcome::Applied, String::new()));
            continue;
        }
        if phase.get(&host) == Some(&Phase::Applying) {
            ctx.record(&host, "applied", "waiting for the reconnect")
                .await;
            phase.insert(host.clone(), Phase::AwaitReconnect);
        }
        // Back through the new rules: a session newer than the one the revision went to.
        let now = ctx.shared.registry.get(&host).map(|h| h.session);
        let before = sent_on.get(&host).copied().flatten();
        if now.is_some() && now != before {
            let confirm = v1::Confirm { revision: rev };
            if ctx
                .send(&host, v1::controller_message::Msg::Confirm(confirm))
                .await
            {
                phase.remove(&host);
                settled.push((host, v1::HostOutcome::Confirmed, String::new()));
            }
        }
    }
    settled
}

/// Rollback hosts whose stored state shows the previous revision with its expected hash.
pub(super) async fn recheck_rollback(
    ctx: &Ctx<'_>,
    pending: &mut BTreeMap<String, (u64, String)>,
) -> Vec<(String, u64)> {
    let mut done = Vec::new();
    let hosts: Vec<(String, (u64, String))> = pending
        .iter()
        .map(|(h, v)| (h.clone(), v.clone()))
        .collect();
    for (host, (prev, exp)) in hosts {
        if let Some((r, hash)) = ctx.attested(&host).await
            && r == prev
            && (exp.is_empty() || hash == exp)
        {
            pending.remove(&host);
            done.push((host, prev));
        }
    }
    done
}
