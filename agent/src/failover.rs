//! Which controller the agent talks to: the configured list (validated and bounded), the
//! candidates of a round (one per address a controller's name resolves to) and the order
//! they are tried in.
//!
//! Pure: no I/O, no clock, no randomness of its own. The session shell
//! ([`crate::session`]) resolves names, dials and sleeps; [`Rotation`] decides who is
//! next:
//! - **stay**: after a session that was established ends (the controller closed it, the
//!   stream broke, or the reconnect of commit-confirm), the next round starts with the
//!   same candidate;
//! - **fail over**: a candidate that cannot be connected to, or whose session fails before
//!   it is established, is followed at once by the next candidate of the round;
//! - **back off**: only when every candidate of a round failed ([`Step::RoundFailed`]);
//! - **spread**: the order is a permutation keyed by a per-agent seed ([`seed_for`], from
//!   the host name), the same in every round and across restarts, and different from
//!   host to host: the agents of a controller that dies spread over the others instead
//!   of all landing on the same one.
//!
//! Must not: dial, resolve, sleep or log.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

/// Controller URLs accepted at most (more belong behind one DNS name or a load balancer).
pub const MAX_CONTROLLERS: usize = 16;
/// Addresses of one controller name tried at most per round (the rest are skipped).
pub const MAX_ADDRESSES: usize = 16;

/// One configured controller URL, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Controller {
    /// As given, e.g. `https://ctl.example.net:7443`.
    pub url: Arc<str>,
    /// The URL's host: the name the controller certificate must carry.
    pub host: String,
    pub port: u16,
    /// Set when `host` is an IP address (nothing to resolve).
    pub ip: Option<IpAddr>,
}

impl Controller {
    /// The one address to dial when the host is an IP address; `None`: resolve the name.
    pub fn literal(&self) -> Option<SocketAddr> {
        self.ip.map(|ip| SocketAddr::new(ip, self.port))
    }
}

/// Why the controller list is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControllersError {
    #[error(
        "no controller given: expected --controller https://HOST:PORT (repeatable) or \
         PORTCULLIS_CONTROLLER=URL[,URL...]"
    )]
    Empty,
    #[error(
        "{count} controllers given, at most {MAX_CONTROLLERS} are accepted \
         (put more behind one DNS name)"
    )]
    TooMany { count: usize },
    #[error("controller {position} of {count} is empty (a stray comma in PORTCULLIS_CONTROLLER?)")]
    Blank { position: usize, count: usize },
    #[error("controller {position} of {count}: {why}")]
    Bad {
        position: usize,
        count: usize,
        why: String,
    },
    #[error("controller {url:?} is given twice (entries {first} and {second})")]
    Duplicate {
        url: String,
        first: usize,
        second: usize,
    },
}

/// Validate the controller list (`--controller`, repeatable; `PORTCULLIS_CONTROLLER`,
/// comma-separated). Positions in errors count from 1.
pub fn parse_controllers<S: AsRef<str>>(urls: &[S]) -> Result<Vec<Controller>, ControllersError> {
    let count = urls.len();
    if count == 0 {
        return Err(ControllersError::Empty);
    }
    if count > MAX_CONTROLLERS {
        return Err(ControllersError::TooMany { count });
    }
    let mut seen: BTreeMap<(String, u16), usize> = BTreeMap::new();
    let mut out = Vec::with_capacity(count);
    for (i, url) in urls.iter().enumerate() {
        let (position, url) = (i + 1, url.as_ref().trim());
        if url.is_empty() {
            return Err(ControllersError::Blank { position, count });
        }
        let (_, target) = portcullis_trust::endpoint(url).map_err(|e| ControllersError::Bad {
            position,
            count,
            why: e.to_string(),
        })?;
        let (host, port) = (target.host().to_owned(), target.port());
        if let Some(first) = seen.insert((host.to_ascii_lowercase(), port), position) {
            return Err(ControllersError::Duplicate {
                url: url.to_owned(),
                first,
                second: position,
            });
        }
        out.push(Controller {
            url: Arc::from(url),
            ip: host.parse().ok(),
            host,
            port,
        });
    }
    Ok(out)
}

/// One address of one controller: what a connection attempt dials.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Candidate {
    /// Position in the configured list (from 0).
    pub controller: usize,
    pub url: Arc<str>,
    pub addr: SocketAddr,
}

impl std::fmt::Display for Candidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.url, self.addr)
    }
}

/// The candidates of `controllers`, given each one's resolved addresses (`resolved[i]`
/// for controller `i`; ignored for an IP-address URL). Duplicates are dropped.
pub fn candidates(controllers: &[Controller], resolved: &[Vec<SocketAddr>]) -> Vec<Candidate> {
    let mut out = Vec::new();
    for (i, c) in controllers.iter().enumerate() {
        let addrs: Vec<SocketAddr> = match c.literal() {
            Some(a) => vec![a],
            None => resolved.get(i).cloned().unwrap_or_default(),
        };
        for addr in addrs {
            let cand = Candidate {
                controller: i,
                url: c.url.clone(),
                addr,
            };
            if !out.contains(&cand) {
                out.push(cand);
            }
        }
    }
    out
}

/// The per-agent seed of the order: from the host name, so one host keeps its order
/// across restarts and two hosts (almost always) differ.
pub fn seed_for(host: &str) -> u64 {
    fnv1a(host.as_bytes())
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// splitmix64's finalizer: a good mix of seed and candidate.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What the shell does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Connect to this candidate (with a short timeout).
    Try(Candidate),
    /// Every candidate of this round failed (or there was none): back off, then begin
    /// another round.
    RoundFailed,
}

/// The failover order of one agent.
#[derive(Debug, Clone)]
pub struct Rotation {
    seed: u64,
    /// The candidate of the last established session: each round starts with it.
    home: Option<Candidate>,
    /// What this round has not tried yet, in order.
    round: VecDeque<Candidate>,
}

impl Rotation {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            home: None,
            round: VecDeque::new(),
        }
    }

    /// The candidate of the last established session.
    pub fn home(&self) -> Option<&Candidate> {
        self.home.as_ref()
    }

    fn rank(&self, c: &Candidate) -> (u64, Candidate) {
        let key = fnv1a(format!("{}|{}", c.url, c.addr).as_bytes());
        (mix(self.seed ^ key), c.clone())
    }

    /// This agent's order of `candidates`, at most [`MAX_ADDRESSES`] per controller
    /// (which ones depends on the seed too, so a fleet spreads over a large name). The
    /// same set gives the same order, whatever order it comes in.
    pub fn order(&self, candidates: Vec<Candidate>) -> Vec<Candidate> {
        let mut ranked: Vec<(u64, Candidate)> = candidates.iter().map(|c| self.rank(c)).collect();
        ranked.sort();
        ranked.dedup();
        let mut per_controller: BTreeMap<usize, usize> = BTreeMap::new();
        ranked
            .into_iter()
            .filter(|(_, c)| {
                let n = per_controller.entry(c.controller).or_default();
                *n += 1;
                *n <= MAX_ADDRESSES
            })
            .map(|(_, c)| c)
            .collect()
    }

    /// Begin a round over `candidates`: this agent's order, starting with the last
    /// established session's candidate (or, when that one is gone, the one after it).
    /// Returns how many candidates were left out by [`MAX_ADDRESSES`].
    pub fn begin_round(&mut self, candidates: Vec<Candidate>) -> usize {
        let given = {
            let mut c = candidates.clone();
            c.sort();
            c.dedup();
            c.len()
        };
        let order = self.order(candidates);
        let skipped = given - order.len();
        let start = match &self.home {
            Some(home) => {
                let home = self.rank(home);
                order.iter().position(|c| self.rank(c) >= home).unwrap_or(0)
            }
            None => 0,
        };
        let mut round = VecDeque::from(order);
        round.rotate_left(start);
        self.round = round;
        skipped
    }

    /// The next candidate of the round, or [`Step::RoundFailed`] when none is left.
    pub fn step(&mut self) -> Step {
        match self.round.pop_front() {
            Some(c) => Step::Try(c),
            None => Step::RoundFailed,
        }
    }

    /// A session with `c` was established: it is where the next round starts. Ends the
    /// round. `true` when this is a failover (the last session was on another candidate).
    pub fn established(&mut self, c: &Candidate) -> bool {
        self.round.clear();
        let moved = self.home.as_ref().is_some_and(|h| h != c);
        self.home = Some(c.clone());
        moved
    }
}

/// Which controller the session is on now, and how often it failed over: set by the
/// session, read by the metrics.
#[derive(Debug, Clone, Default)]
pub struct OnController(Arc<Mutex<OnState>>);

/// A snapshot of [`OnController`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OnState {
    /// The candidate of the established session; `None` while disconnected.
    pub current: Option<Candidate>,
    /// Sessions established on another candidate than the one before.
    pub failovers: u64,
}

impl OnController {
    fn lock(&self) -> std::sync::MutexGuard<'_, OnState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// A session on `c` was established (`moved`: from [`Rotation::established`]).
    pub fn connected(&self, c: &Candidate, moved: bool) {
        let mut s = self.lock();
        s.current = Some(c.clone());
        s.failovers += u64::from(moved);
    }
    pub fn disconnected(&self) {
        self.lock().current = None;
    }
    pub fn get(&self) -> OnState {
        self.lock().clone()
    }
}

#[cfg(test)]
mod tests;
