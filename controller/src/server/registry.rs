//! Connected agents: one entry per host with the channel to its session stream, and a
//! broadcast of host events (applied, connected, disconnected) that rollouts wait on.
//!
//! In memory only; the store keeps the durable view. Must not block: std mutex held for
//! map operations only.

use portcullis_policy::Facts;
use portcullis_proto::v1;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

pub type Outbound = mpsc::Sender<Result<v1::ControllerMessage, Status>>;

#[derive(Debug, Clone)]
pub struct AgentHandle {
    pub session: u64,
    pub tx: Outbound,
    pub facts: Facts,
    pub agent_version: String,
    pub peer: String,
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

    /// Register a session; an older session of the same host is replaced (its stream ends
    /// when its sender is dropped).
    pub fn register(&self, host: &str, handle: AgentHandle) {
        self.lock().insert(host.to_string(), handle);
        let _ = self.events.send(HostEvent::Connected {
            host: host.to_string(),
        });
    }

    /// Remove the host's entry if it still belongs to `session`.
    pub fn unregister(&self, host: &str, session: u64) {
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
            let _ = self.events.send(HostEvent::Disconnected {
                host: host.to_string(),
            });
        }
    }

    pub fn get(&self, host: &str) -> Option<AgentHandle> {
        self.lock().get(host).cloned()
    }

    pub fn is_connected(&self, host: &str) -> bool {
        self.lock().contains_key(host)
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
