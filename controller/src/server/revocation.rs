//! Revocation that takes effect: a watcher re-reads `revoked.txt` (through
//! [`crate::identity::RevocationList`], one `stat` a tick) and cuts every open connection
//! whose certificate serial is revoked, so agent sessions and admin streams end within
//! [`TICK`] of `portcullis ca revoke`. New connections are checked at the handshake.
//!
//! It also distributes the signed list (`revoked.txt` + `revoked.sig`) to agents: every
//! session gets it after `Hello` ([`Distribution::message`]) and again when it changes,
//! so agents can refuse a revoked controller certificate.

use super::Shared;
use portcullis_proto::v1;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// (mtime and size of revoked.sig, the message) last read.
type Current = (Option<(SystemTime, u64)>, Option<v1::SignedRevocations>);

/// The signed revocation list agents are sent.
#[derive(Debug)]
pub struct Distribution {
    pki: crate::pki::Pki,
    current: Mutex<Current>,
}

impl Distribution {
    pub fn new(pki_dir: PathBuf) -> Self {
        let this = Self {
            pki: crate::pki::Pki::new(pki_dir),
            current: Mutex::new((None, None)),
        };
        this.refresh();
        this
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-read when `revoked.sig` changed; `true` if the list to distribute changed.
    fn refresh(&self) -> bool {
        let stamp = std::fs::metadata(self.pki.revoked_sig_path())
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        if stamp.is_some() && self.lock().0 == stamp {
            return false;
        }
        let msg = self
            .pki
            .signed_revocations()
            .map(|(list, signature)| v1::SignedRevocations { list, signature });
        let mut cur = self.lock();
        let changed = cur.1 != msg;
        *cur = (stamp, msg);
        changed
    }

    /// The message for a new session, if there is a signed list.
    pub fn message(&self) -> Option<v1::ControllerMessage> {
        self.lock().1.clone().map(|r| v1::ControllerMessage {
            msg: Some(v1::controller_message::Msg::Revocations(r)),
        })
    }
}

/// How often the revocation list is checked.
pub const TICK: Duration = Duration::from_millis(500);

/// Run until aborted.
pub async fn watch(shared: Arc<Shared>) {
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if shared.signed_revocations.refresh()
            && let Some(msg) = shared.signed_revocations.message()
        {
            let handles = shared.registry.handles();
            tracing::info!(
                sessions = handles.len(),
                "sending the new signed revocation list to agents"
            );
            for h in handles {
                // Never block the watcher on one slow session.
                let _ = h.tx.try_send(Ok(msg.clone()));
            }
        }
        let serials = shared.revoked.serials();
        if serials.is_empty() {
            continue;
        }
        let cut = shared.connections.cut_revoked(&serials);
        if cut > 0 {
            tracing::warn!(
                cut,
                revoked = serials.len(),
                "closed connections of revoked certificates"
            );
        }
    }
}
