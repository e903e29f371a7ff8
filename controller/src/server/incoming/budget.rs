//! The pre-authentication budgets: how many sockets may exist in all, how many may be
//! still handshaking, and how many of those from one source. Slots are RAII guards: a
//! socket's slot is released when it is dropped, whatever ended it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The pre-authentication limits besides the connection cap (`serve` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreAuth {
    /// `--max-pending-handshakes`: sockets still handshaking, all sources together.
    pub max_pending: usize,
    /// `--max-pending-per-source`: sockets still handshaking from one source.
    pub max_pending_per_source: usize,
    /// `--tls-handshake-timeout`.
    pub handshake_timeout: Duration,
    /// `--tcp-keepalive`: idle time before the first probe.
    pub tcp_keepalive: Duration,
    /// `--max-connections-per-identity`: authenticated connections of one certificate.
    pub max_per_identity: usize,
}

impl Default for PreAuth {
    fn default() -> Self {
        let l = Limits::default();
        Self {
            max_pending: l.max_pending,
            max_pending_per_source: l.max_pending_per_source,
            handshake_timeout: l.handshake_timeout,
            tcp_keepalive: l.tcp_keepalive,
            max_per_identity: l.max_per_identity,
        }
    }
}

/// The pre-authentication limits (`serve` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Sockets in all (handshaking + established).
    pub max_connections: usize,
    /// Sockets still handshaking, all sources together (capped at half the total).
    pub max_pending: usize,
    /// Sockets still handshaking from one source address (IPv6: one /64).
    pub max_pending_per_source: usize,
    /// Deadline for the TLS handshake.
    pub handshake_timeout: Duration,
    /// TCP keepalive idle time on accepted sockets.
    pub tcp_keepalive: Duration,
    /// Authenticated connections one certificate may hold at once: a compromised agent
    /// (or a leaked admin key) cannot take the slots the rest of the fleet needs.
    pub max_per_identity: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 19_000,
            max_pending: 1024,
            max_pending_per_source: 16,
            handshake_timeout: Duration::from_secs(5),
            tcp_keepalive: Duration::from_secs(60),
            max_per_identity: 16,
        }
    }
}

impl Limits {
    /// The pending budget actually used: never more than half of all connections.
    pub fn pending_budget(&self) -> usize {
        self.max_pending.min(self.max_connections / 2).max(1)
    }
}

/// Counts of what the accept loop refused or closed (logged; tests read them).
#[derive(Debug, Default)]
pub struct Refusals {
    pub full: AtomicU64,
    pub pending_full: AtomicU64,
    pub per_source: AtomicU64,
    pub handshake_timeout: AtomicU64,
    pub handshake_failed: AtomicU64,
    pub revoked: AtomicU64,
    /// Handshaken connections closed because their certificate held its maximum.
    pub per_identity: AtomicU64,
}

#[derive(Debug)]
pub(super) struct Budget {
    limits: Limits,
    pending_budget: usize,
    established: AtomicUsize,
    /// (pending in all, pending per source key).
    pending: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// The per-source key: the IPv4 address, or the /64 of an IPv6 one.
fn source_key(addr: IpAddr) -> IpAddr {
    match addr.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

pub(super) struct PendingSlot {
    budget: Arc<Budget>,
    source: IpAddr,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut p = self
            .budget
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        p.0 = p.0.saturating_sub(1);
        if let Some(n) = p.1.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                p.1.remove(&self.source);
            }
        }
    }
}

pub(super) struct EstablishedSlot(pub(super) Arc<Budget>);

impl Drop for EstablishedSlot {
    fn drop(&mut self) {
        self.0.established.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Budget {
    pub(super) fn admit(
        self: &Arc<Self>,
        peer: IpAddr,
        refusals: &Refusals,
    ) -> Result<PendingSlot, &'static str> {
        let source = source_key(peer);
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let from_source = p.1.get(&source).copied().unwrap_or(0);
        if p.0 + self.established.load(Ordering::Relaxed) >= self.limits.max_connections {
            refusals.full.fetch_add(1, Ordering::Relaxed);
            return Err("connection limit reached");
        }
        if p.0 >= self.pending_budget {
            refusals.pending_full.fetch_add(1, Ordering::Relaxed);
            return Err("pending-handshake budget exhausted");
        }
        if from_source >= self.limits.max_pending_per_source {
            refusals.per_source.fetch_add(1, Ordering::Relaxed);
            return Err("too many pending handshakes from this source");
        }
        p.0 += 1;
        *p.1.entry(source).or_insert(0) += 1;
        Ok(PendingSlot {
            budget: self.clone(),
            source,
        })
    }
}

impl Budget {
    pub(super) fn new(limits: Limits) -> Self {
        Self {
            limits,
            pending_budget: limits.pending_budget(),
            established: AtomicUsize::new(0),
            pending: Mutex::new((0, HashMap::new())),
        }
    }

    /// A handshake finished: the socket now counts as established.
    pub(super) fn establish(self: &Arc<Self>) -> EstablishedSlot {
        self.established.fetch_add(1, Ordering::Relaxed);
        EstablishedSlot(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_group_ipv6_by_64() {
        let a: IpAddr = "fd77::1".parse().expect("ip");
        let b: IpAddr = "fd77::ffff:1".parse().expect("ip");
        let c: IpAddr = "fd77:0:0:1::1".parse().expect("ip");
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        let mapped: IpAddr = "::ffff:10.77.0.1".parse().expect("ip");
        assert_eq!(
            source_key(mapped),
            "10.77.0.1".parse::<IpAddr>().expect("ip")
        );
    }

    #[test]
    fn budgets_per_source_pending_and_total() {
        let limits = Limits {
            max_connections: 10,
            max_pending: 100,
            max_pending_per_source: 3,
            ..Limits::default()
        };
        let budget = Arc::new(Budget::new(limits));
        let r = Refusals::default();
        let one: IpAddr = "127.0.0.1".parse().expect("ip");
        let held: Vec<_> = (0..3)
            .map(|_| budget.admit(one, &r).expect("admit"))
            .collect();
        assert!(budget.admit(one, &r).is_err(), "per-source limit");
        // The pending budget is half of 10: two more sources fill it.
        let two: IpAddr = "127.0.0.2".parse().expect("ip");
        let more: Vec<_> = (0..2)
            .map(|_| budget.admit(two, &r).expect("admit"))
            .collect();
        let three: IpAddr = "127.0.0.3".parse().expect("ip");
        assert!(budget.admit(three, &r).is_err(), "pending budget");
        assert_eq!(r.per_source.load(Ordering::Relaxed), 1);
        assert_eq!(r.pending_full.load(Ordering::Relaxed), 1);
        drop(held);
        drop(more);
        // Established connections count against the total, not the pending budget.
        budget.established.store(9, Ordering::Relaxed);
        let last = budget.admit(three, &r).expect("one slot left");
        assert!(budget.admit(one, &r).is_err(), "total");
        assert_eq!(r.full.load(Ordering::Relaxed), 1);
        drop(last);
        assert_eq!(budget.pending.lock().expect("lock").0, 0);
        assert!(budget.pending.lock().expect("lock").1.is_empty());
    }
}
