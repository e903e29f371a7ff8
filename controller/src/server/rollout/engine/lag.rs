//! What a rollout does when it missed host events (its broadcast receiver lagged): re-read
//! each waiting host's attested state from the store, which is written before the event is
//! sent, so a host is never judged failed or unconfirmed because an event was lost.
//! Only positive evidence settles a host here; anything else keeps waiting for its deadline.

use super::Ctx;
use portcullis_policy::protocol::exchange::{Event, Exchange, Phase};
use std::collections::BTreeMap;

/// What the stored state of each waiting host says the missed events were: `Applied`
/// (for a host still applying) and, with commit-confirm, back on a newer session than
/// the one the revision went to here. A host whose kernel holds the revision with
/// another hash is only judged while it is still applying (a hash mismatch).
pub(super) async fn recheck_wave(
    ctx: &Ctx<'_>,
    machines: &BTreeMap<String, Exchange>,
    expected: &BTreeMap<String, String>,
    sent_on: &BTreeMap<String, Option<u64>>,
) -> Vec<(String, Event)> {
    let rev = ctx.plan.revision;
    let mut seen = Vec::new();
    for (host, machine) in machines {
        let Some((r, hash)) = ctx.attested(host).await else {
            continue;
        };
        if r != rev {
            continue;
        }
        let applying = machine.phase() == Phase::Applying;
        let exp = expected.get(host).map_or("", String::as_str);
        let applied = Event::Applied {
            revision: rev,
            ok: true,
            hash: hash.clone(),
            error: String::new(),
        };
        if !exp.is_empty() && hash != exp {
            if applying {
                seen.push((host.clone(), applied));
            }
            continue;
        }
        if applying {
            seen.push((host.clone(), applied));
        }
        if ctx.plan.confirm.is_zero() {
            continue;
        }
        // Back through the new rules: a session newer than the one the revision went to.
        let now = ctx.shared.registry.get(host).map(|h| h.session);
        let before = sent_on.get(host).copied().flatten();
        if now.is_some() && now != before {
            seen.push((
                host.clone(),
                Event::Back {
                    revision: rev,
                    hash,
                },
            ));
        }
    }
    seen
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
