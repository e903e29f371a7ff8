//! Address lists on their way to agents: every `Desired` goes out through
//! [`ListTracker::outgoing`], which
//! - refuses a policy with `deny:` entries or address lists for an agent that did not
//!   announce [`CAPABILITY_DENY_LISTS`] (an older agent would ignore those fields and
//!   enforce less than the policy says);
//! - sends each list as a delta against the list the host holds (the lists of the last
//!   `Desired` it applied on this controller) when that is smaller, else in full;
//! - keeps what it sent by request id, so that an agent answering `need_full` (its base was
//!   not what we thought) gets the same `Desired` again with every list in full.
//!
//! Lists are shared `Arc`s (one per list per revision), and the packed wire form of each
//! list and of each (base, new) delta is computed once and shared (`Bytes`), so a push to
//! 1,000 hosts costs one diff, not a thousand. In memory only: after a controller restart
//! (or a reconnect) a host's first push carries full lists.

use portcullis_policy::{AddrList, HostPolicy};
use portcullis_proto::convert::list_against;
use portcullis_proto::{CAPABILITY_DENY_LISTS, v1};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// Lists by name, as a policy holds them.
pub type Lists = BTreeMap<String, Arc<AddrList>>;

/// Request ids remembered per host (an agent answers each Desired once).
const MAX_IN_FLIGHT: usize = 8;
/// Wire forms kept (full lists and deltas); cleared when full.
const MAX_CACHED: usize = 256;

#[derive(Debug, Default)]
struct HostLists {
    capable: bool,
    /// What the host applied last (as far as this controller saw).
    held: Option<Lists>,
    /// Per request id: the Desired without its lists, and the lists it carried.
    in_flight: Vec<(u64, v1::Desired, Lists)>,
}

/// One wire form: the lists it came from are kept alive with it, so the pointers in the
/// key cannot be reused by other lists while it is cached.
type WireKey = (usize, usize);
type Wire = (v1::AddressList, Option<Arc<AddrList>>, Arc<AddrList>);

#[derive(Debug, Default)]
pub struct ListTracker {
    hosts: Mutex<HashMap<String, HostLists>>,
    wire: Mutex<HashMap<WireKey, Wire>>,
}

/// Why a policy was not sent to a host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the agent does not enforce `deny:` entries or address lists (it did not announce `{CAPABILITY_DENY_LISTS}`): upgrade portcullis-agent on this host; nothing was sent"
)]
pub struct Unsupported;

/// A policy that needs [`CAPABILITY_DENY_LISTS`].
pub fn needs_lists(policy: &HostPolicy) -> bool {
    !policy.deny.is_empty() || !policy.lists.is_empty()
}

impl ListTracker {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, HostLists>) -> T) -> T {
        let mut g = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// A session of `host` opened, announcing `capabilities`; what it held before is
    /// not known any more.
    pub fn connected(&self, host: &str, capabilities: &[String]) {
        let capable = capabilities.iter().any(|c| c == CAPABILITY_DENY_LISTS);
        self.with(|h| {
            h.insert(
                host.to_string(),
                HostLists {
                    capable,
                    ..HostLists::default()
                },
            )
        });
    }

    /// Whether `host`'s session announced [`CAPABILITY_DENY_LISTS`].
    pub fn capable(&self, host: &str) -> bool {
        self.with(|h| h.get(host).is_some_and(|e| e.capable))
    }

    /// `desired` (its policy without lists, as [`wire_without_lists`] makes it) with
    /// `policy`'s lists added for `host`: deltas where smaller. Refused for an agent
    /// without the capability when the policy needs it.
    pub fn outgoing(
        &self,
        host: &str,
        mut desired: v1::Desired,
        policy: &HostPolicy,
    ) -> Result<v1::Desired, Unsupported> {
        let (capable, held) = self.with(|h| {
            h.get(host)
                .map(|e| (e.capable, e.held.clone()))
                .unwrap_or_default()
        });
        if needs_lists(policy) && !capable {
            return Err(Unsupported);
        }
        if policy.lists.is_empty() {
            return Ok(desired);
        }
        let lists = policy.lists.clone();
        let bare = desired.clone();
        if let Some(p) = desired.policy.as_mut() {
            p.lists = lists
                .iter()
                .map(|(name, l)| {
                    let base = held.as_ref().and_then(|h| h.get(name));
                    self.wire_of(name, l, base)
                })
                .collect();
        }
        self.with(|h| {
            if let Some(e) = h.get_mut(host) {
                if e.in_flight.len() >= MAX_IN_FLIGHT {
                    e.in_flight.remove(0);
                }
                e.in_flight.push((desired.request_id, bare, lists));
            }
        });
        Ok(desired)
    }

    /// `host` answered request `request_id`: applied (`ok`), or asked for the full
    /// lists (`need_full`: the same Desired comes back with every list in full).
    pub fn answered(&self, host: &str, a: &v1::Applied) -> Option<v1::Desired> {
        let (sent, lists) = self.with(|h| {
            let e = h.get_mut(host)?;
            let i = e
                .in_flight
                .iter()
                .position(|(id, ..)| *id == a.request_id)?;
            let (_, d, lists) = e.in_flight.remove(i);
            if a.ok {
                e.held = Some(lists.clone());
            } else if a.need_full {
                e.held = None;
            }
            Some((d, lists))
        })?;
        if a.ok || !a.need_full {
            return None;
        }
        let mut d = sent;
        if let Some(p) = d.policy.as_mut() {
            p.lists = lists
                .iter()
                .map(|(name, l)| self.wire_of(name, l, None))
                .collect();
        }
        Some(d)
    }

    /// The wire form of list `l` (against `base` when given), computed once.
    fn wire_of(
        &self,
        name: &str,
        l: &Arc<AddrList>,
        base: Option<&Arc<AddrList>>,
    ) -> v1::AddressList {
        let key = (
            Arc::as_ptr(l) as usize,
            base.map_or(0, |b| Arc::as_ptr(b) as usize),
        );
        let mut cache = self.wire.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((w, ..)) = cache.get(&key)
            && w.name == name
        {
            return w.clone();
        }
        let w = list_against(name, l, base.map(|b| &**b));
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(key, (w.clone(), base.cloned(), l.clone()));
        w
    }
}

/// The wire policy without its lists (they are added per host by
/// [`ListTracker::outgoing`]).
pub fn wire_without_lists(policy: &HostPolicy) -> v1::HostPolicy {
    v1::HostPolicy::from(&HostPolicy {
        lists: BTreeMap::new(),
        ..policy.clone()
    })
}
