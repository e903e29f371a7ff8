//! Pieces of the reconnect-storm benchmark (reconnect-bench): the agent's reconnect
//! backoff, the clock that times every simulated agent's way back after a storm, and a
//! holder of idle TCP sockets from one source address (a hostile peer that opens
//! connections and never starts a TLS handshake).
//!
//! Nothing here asserts a time; it only measures.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpSocket;
use tokio::sync::Notify;

/// The agent's own reconnect backoff (`agent/src/session.rs`), so the simulated fleet
/// comes back exactly as a real one does.
pub use portcullis_agent::session::Backoff;

/// When each agent got back after the last [`StormClock::mark`]: its session re-opened
/// (TCP + TLS + `Hello` answered with the response headers, i.e. registered).
#[derive(Debug)]
pub struct StormClock {
    state: Mutex<StormState>,
    back: Notify,
    /// Connection attempts after a session ended (all storms).
    pub attempts: AtomicU64,
    /// Of those, the ones that failed (refused, TLS failed, timed out).
    pub failures: AtomicU64,
}

#[derive(Debug)]
struct StormState {
    mark: Option<Instant>,
    /// Per agent: mark → re-opened, and its failed attempts before that.
    back: Vec<Option<(Duration, u32)>>,
    count: usize,
}

/// One storm as the agents saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct StormReport {
    pub n: usize,
    pub back: usize,
    /// Per agent, mark → re-opened, sorted.
    pub times: Vec<Duration>,
    /// Agents that failed at least one attempt before getting back.
    pub refused_agents: usize,
    /// The most failed attempts of one agent before it got back.
    pub max_failures: u32,
}

impl StormReport {
    /// The `q` quantile (nearest rank) of the agents that got back; zero if none did.
    pub fn quantile(&self, q: f64) -> Duration {
        let n = self.times.len();
        if n == 0 {
            return Duration::ZERO;
        }
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        self.times[rank - 1]
    }
}

impl StormClock {
    pub fn new(n: usize) -> Self {
        Self {
            state: Mutex::new(StormState {
                mark: None,
                back: vec![None; n],
                count: 0,
            }),
            back: Notify::new(),
            attempts: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StormState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts timing a storm now; forgets the previous one.
    pub fn mark(&self) {
        let mut s = self.lock();
        s.mark = Some(Instant::now());
        s.back.iter_mut().for_each(|b| *b = None);
        s.count = 0;
    }

    /// Agent `i` re-opened its session after `failures` failed attempts (only its first
    /// time after the mark counts).
    pub fn reopened(&self, i: usize, failures: u32) {
        let mut s = self.lock();
        let Some(mark) = s.mark else { return };
        let at = mark.elapsed();
        let fresh = match s.back.get_mut(i) {
            Some(slot @ None) => {
                *slot = Some((at, failures));
                true
            }
            _ => false,
        };
        if fresh {
            s.count += 1;
            if s.count == s.back.len() {
                self.back.notify_waiters();
            }
        }
    }

    /// Waits until every agent is back or `timeout` passes, then reports.
    pub async fn wait(&self, timeout: Duration) -> StormReport {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.back.notified();
            {
                let s = self.lock();
                if s.count == s.back.len() {
                    break;
                }
            }
            let poll = tokio::time::Instant::now() + Duration::from_millis(200);
            if tokio::time::timeout_at(poll.min(deadline), notified)
                .await
                .is_err()
                && tokio::time::Instant::now() >= deadline
            {
                break;
            }
        }
        let s = self.lock();
        let back: Vec<(Duration, u32)> = s.back.iter().flatten().copied().collect();
        let mut times: Vec<Duration> = back.iter().map(|b| b.0).collect();
        times.sort();
        StormReport {
            n: s.back.len(),
            back: times.len(),
            times,
            refused_agents: back.iter().filter(|b| b.1 > 0).count(),
            max_failures: back.iter().map(|b| b.1).max().unwrap_or(0),
        }
    }
}

/// What the idle sockets did.
#[derive(Debug, Default)]
pub struct IdleCounters {
    /// TCP connections established (the controller accepted them).
    pub opened: AtomicU64,
    /// Connection attempts refused or failed (controller down, backlog full).
    pub refused: AtomicU64,
    /// Of the opened ones, those the controller closed (EOF or reset).
    pub closed_by_peer: AtomicU64,
    /// Open right now.
    pub open_now: AtomicUsize,
    /// Slots that have been open at least once.
    pub slots_up: AtomicUsize,
}

/// `count` TCP sockets from `source` to `target` that send nothing. Each slot holds its
/// socket until the controller closes it, then opens a new one after `reopen` (so the
/// controller sees up to `count` idle connections from one address at all times).
/// Stops (closing every socket) when dropped.
pub struct IdleSockets {
    pub counters: Arc<IdleCounters>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl IdleSockets {
    pub fn start(source: IpAddr, target: SocketAddr, count: usize, reopen: Duration) -> Self {
        let counters = Arc::new(IdleCounters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..count)
            .map(|_| {
                let (counters, stop) = (counters.clone(), stop.clone());
                tokio::spawn(hold(source, target, reopen, counters, stop))
            })
            .collect();
        Self {
            counters,
            stop,
            tasks,
        }
    }

    /// Waits (at most `timeout`) until every slot has had a connection open.
    pub async fn wait_up(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        while self.counters.slots_up.load(Ordering::Relaxed) < self.tasks.len()
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.counters.slots_up.load(Ordering::Relaxed)
    }
}

impl Drop for IdleSockets {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn hold(
    source: IpAddr,
    target: SocketAddr,
    reopen: Duration,
    c: Arc<IdleCounters>,
    stop: Arc<AtomicBool>,
) {
    let mut up = false;
    while !stop.load(Ordering::Relaxed) {
        let stream = async {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(source, 0))?;
            socket.connect(target).await
        };
        match stream.await {
            Ok(mut s) => {
                c.opened.fetch_add(1, Ordering::Relaxed);
                c.open_now.fetch_add(1, Ordering::Relaxed);
                if !up {
                    up = true;
                    c.slots_up.fetch_add(1, Ordering::Relaxed);
                }
                // Send nothing; a read returns only when the controller closes.
                let mut buf = [0u8; 64];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                c.open_now.fetch_sub(1, Ordering::Relaxed);
                c.closed_by_peer.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                c.refused.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(reopen).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_full_jitter_doubling_to_the_cap() {
        let (min, max) = (Duration::from_millis(250), Duration::from_secs(2));
        let mut b = Backoff::new(min, max);
        assert!(b.next_delay() <= min);
        for _ in 0..8 {
            assert!(b.next_delay() <= max);
        }
        assert_eq!(b.current(), max);
        b.reset();
        assert!(b.next_delay() <= min);
    }

    #[tokio::test]
    async fn storm_clock_counts_each_agent_once_after_the_mark() {
        let clock = StormClock::new(3);
        clock.reopened(0, 0); // before any mark: ignored
        clock.mark();
        clock.reopened(1, 2);
        clock.reopened(1, 0);
        clock.reopened(0, 0);
        let r = clock.wait(Duration::from_millis(50)).await;
        assert_eq!((r.n, r.back, r.times.len()), (3, 2, 2));
        assert_eq!((r.refused_agents, r.max_failures), (1, 2));
        clock.reopened(2, 0);
        let r = clock.wait(Duration::from_secs(5)).await;
        assert_eq!(r.back, 3);
        assert!(r.quantile(0.5) <= r.quantile(1.0));
        clock.mark();
        let r = clock.wait(Duration::from_millis(10)).await;
        assert_eq!(r.back, 0);
        assert_eq!(r.quantile(0.99), Duration::ZERO);
    }
}
