//! Connected agents: one entry per host with the channel to its session stream, and a
//! broadcast of host events (applied, connected, disconnected) that rollouts wait on.
//!
//! A newer session for a host replaces the older one, and the older one is ended (its
//! [`AgentHandle::end`] is cancelled: its reads stop and its stream closes with
//! `ABORTED`), so it can neither receive that host's pushes nor write reports for it.
//!
//! In memory only; the store keeps the durable view. Must not block: std mutex held for
//! map operations only.

use portcullis_policy::Facts;
use portcullis_proto::v1;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::Status;

pub type Outbound = mpsc::Sender<Result<v1::ControllerMessage, Status>>;

#[derive(Debug, Clone)]
pub struct AgentHandle {
    pub session: u64,
    pub tx: Outbound,
    pub facts: Facts,
    pub agent_version: String,
    pub peer: String,
    /// Cancelled when this session is replaced by a newer one of the same host.
    pub end: CancellationToken,
}

/// The session's outbound stream: what `rx` yields until `end` is cancelled (the session
/// was replaced), then `ABORTED` and the end. With `parts` (the agent announced
/// [`portcullis_proto::CAPABILITY_LIST_PARTS`]) a `Desired` with big address lists goes
/// out as its lists in parts, then itself ([`portcullis_proto::parts::split`]), so the
/// stream's encode buffer never grows to a whole list.
pub fn outbound_stream(
    rx: mpsc::Receiver<Result<v1::ControllerMessage, Status>>,
    end: CancellationToken,
    parts: bool,
) -> impl futures::Stream<Item = Result<v1::ControllerMessage, Status>> + Send + 'static {
    use futures::StreamExt as _;
    let ended = end.clone();
    tokio_stream::wrappers::ReceiverStream::new(rx)
        .flat_map(move |m| match m {
            Ok(v1::ControllerMessage {
                msg: Some(v1::controller_message::Msg::Desired(d)),
            }) if parts => futures::future::Either::Left(futures::stream::iter(
                portcullis_proto::parts::split(d, portcullis_proto::parts::PART_BYTES)
                    .into_iter()
                    .map(Ok),
            )),
            // Every other message as it is, without an allocation per message.
            other => {
                futures::future::Either::Right(futures::stream::once(std::future::ready(other)))
            }
        })
        .take_until(end.cancelled_owned())
        .chain(
            futures::stream::once(async move {
                ended.is_cancelled().then(|| {
                    Err(Status::aborted(
                        "replaced by a newer session of the same host",
                    ))
                })
            })
            .filter_map(std::future::ready),
        )
}

/// Something a waiting rollout may care about.
#[derive(Debug, Clone)]
pub enum HostEvent {
    Connected { host: String },
    Applied { host: String, report: v1::Applied },
    Disconnected { host: String },
}

#[derive(Debug)]
pub struct Registry {
    agents: Mutex<HashMap<String, AgentHandle>>,
    /// The conditions each connected agent last reported (Hello / Heartbeat), bounded.
    conditions: Mutex<HashMap<String, Vec<String>>>,
    events: broadcast::Sender<HostEvent>,
    next_session: AtomicU64,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(65_536);
        Self {
            agents: Mutex::new(HashMap::new()),
            conditions: Mutex::new(HashMap::new()),
            events,
            next_session: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, AgentHandle>> {
        // A panic while holding this lock leaves the map consistent (single operations).
        self.agents.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn new_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Register a session; an older session of the same host is replaced and ended.
    pub fn register(&self, host: &str, handle: AgentHandle) {
        let (session, peer) = (handle.session, handle.peer.clone());
        let old = self.lock().insert(host.to_string(), handle);
        if let Some(old) = old {
            tracing::warn!(%host, old_peer = %old.peer, new_peer = %peer, new_session = session,
                "a newer session for this host replaces the open one: closing the older");
            old.end.cancel();
        }
        let _ = self.events.send(HostEvent::Connected {
            host: host.to_string(),
        });
    }

    /// Remove the host's entry if it still belongs to `session`; whether it did (false:
    /// a newer session of the host replaced it).
    pub fn unregister(&self, host: &str, session: u64) -> bool {
        let removed = {
            let mut map = self.lock();
            if map.get(host).is_some_and(|h| h.session == session) {
                map.remove(host);
                true
            } else {
                false
            }
        };
        if removed {
            self.conditions_map().remove(host);
            let _ = self.events.send(HostEvent::Disconnected {
                host: host.to_string(),
            });
        }
        removed
    }

    pub fn get(&self, host: &str) -> Option<AgentHandle> {
        self.lock().get(host).cloned()
    }

    /// Every registered session (a snapshot).
    pub fn handles(&self) -> Vec<AgentHandle> {
        self.lock().values().cloned().collect()
    }

    pub fn is_connected(&self, host: &str) -> bool {
        self.lock().contains_key(host)
    }

    fn conditions_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<String>>> {
        self.conditions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records what the agent of `host` reports as wrong (at most 16 lines of 512 bytes:
    /// agent-controlled input).
    pub fn set_conditions(&self, host: &str, lines: &[String]) {
        let lines: Vec<String> = lines
            .iter()
            .take(16)
            .map(|l| {
                let mut end = l.len().min(512);
                while !l.is_char_boundary(end) {
                    end -= 1;
                }
                l[..end].to_owned()
            })
            .collect();
        let mut map = self.conditions_map();
        if lines.is_empty() {
            map.remove(host);
        } else {
            map.insert(host.to_owned(), lines);
        }
    }

    /// The conditions the connected agent of `host` last reported.
    pub fn conditions(&self, host: &str) -> Vec<String> {
        self.conditions_map().get(host).cloned().unwrap_or_default()
    }

    pub fn connected_count(&self) -> usize {
        self.lock().len()
    }

    pub fn applied(&self, host: &str, report: v1::Applied) {
        let _ = self.events.send(HostEvent::Applied {
            host: host.to_string(),
            report,
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<HostEvent> {
        self.events.subscribe()
    }
}
