//! End-to-end NFLOG throughput: a netns pair, UDP blast from `peer` to a denied port on
//! `host`, the agent's reader (inside `host`) feeding an aggregator on another thread.

use crate::nflog::{Aggregator, DenialReader, ReaderConfig};
use crate::nflog_support::{blast_udp, counters, load, ruleset};
use portcullis_testkit::Topology;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// One line of the end-to-end table.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub name: String,
    pub sent: u64,
    pub send_rate: f64,
    /// Packets that reached the log rule and were logged (its counter).
    pub logged: u64,
    /// Events the consumer got (agent: delivered; ulogd: rows written).
    pub received: u64,
    /// Counted losses: socket (NFLOG seq gaps) + agent drops; `None`: not counted.
    pub counted_lost: Option<u64>,
    pub overruns: Option<u64>,
    /// Events received per wall second (blast start → last event).
    pub rate: f64,
    /// Events per CPU-second of the reading process/thread.
    pub per_cpu_s: Option<f64>,
    pub per_recv: Option<f64>,
}

pub fn default_cfg() -> ReaderConfig {
    ReaderConfig::default()
}

pub fn small_cfg() -> ReaderConfig {
    ReaderConfig {
        nlbufsiz: 4096,
        ..ReaderConfig::default()
    }
}

pub fn setup() -> (Topology, SocketAddr) {
    let topo = Topology::pair().expect("topology");
    load(topo.ns("host"), &ruleset(7, 1_000_000, 1_000_000)).expect("ruleset");
    let dst = SocketAddr::new(topo.endpoint(0, "host").addr(false), 137);
    (topo, dst)
}

/// CPU seconds (user + system) of `/proc/<path>/stat`.
pub fn cpu_seconds(stat_path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

fn reader_thread_stat(group: u16) -> Option<String> {
    let want = format!("nflog-{group}");
    for t in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() == want {
            return Some(t.path().join("stat").display().to_string());
        }
    }
    None
}

pub fn agent(n: u64, name: &str, cfg: ReaderConfig) -> Row {
    let (topo, dst) = setup();
    let (reader, rx) = topo
        .ns("host")
        .enter(move || DenialReader::start_with(cfg))
        .expect("enter")
        .expect("reader");
    let stat = reader_thread_stat(cfg.group).expect("reader thread");
    let cpu0 = cpu_seconds(&stat).unwrap_or(0.0);
    let before = counters(topo.ns("host")).expect("counters");
    let done = Arc::new(AtomicBool::new(false));
    let consumer_done = Arc::clone(&done);
    let consumer = std::thread::spawn(move || {
        let mut agg = Aggregator::new("bench", Duration::from_secs(1));
        let mut got = 0u64;
        let mut last = Instant::now();
        let mut batches = 0;
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(ev) => {
                    agg.push(ev);
                    got += 1;
                    last = Instant::now();
                }
                Err(_) if consumer_done.load(Ordering::Relaxed) => break,
                Err(_) => {}
            }
            if got.is_multiple_of(4096)
                && agg
                    .flush(SystemTime::now(), &Default::default(), None)
                    .is_some()
            {
                batches += 1;
            }
        }
        (got, last, batches)
    });
    let start = Instant::now();
    let took = blast_udp(topo.ns("peer"), dst, n, 32).expect("blast");
    // Wait until the reader accounted for every logged packet (or stalls for 2 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut logged;
    loop {
        let c = counters(topo.ns("host")).expect("counters");
        logged = c[0] - before[0];
        let s = reader.stats();
        if s.received + s.socket_lost >= logged && logged + c[1] - before[1] >= n
            || Instant::now() > deadline
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let cpu = cpu_seconds(&stat).unwrap_or(0.0) - cpu0;
    let stats = reader.stop();
    done.store(true, Ordering::Relaxed);
    let (got, last, _batches) = consumer.join().expect("consumer");
    let wall = last.saturating_duration_since(start).as_secs_f64();
    assert_eq!(stats.received, stats.delivered + stats.dropped_by_agent);
    assert_eq!(got, stats.delivered);
    Row {
        name: name.to_owned(),
        sent: n,
        send_rate: n as f64 / took.as_secs_f64(),
        logged,
        received: got,
        counted_lost: Some(stats.socket_lost + stats.dropped_by_agent),
        overruns: Some(stats.socket_overruns),
        rate: got as f64 / wall,
        per_cpu_s: (cpu > 0.0).then(|| stats.received as f64 / cpu),
        per_recv: (stats.batches > 0).then(|| stats.received as f64 / stats.batches as f64),
    }
}

pub fn print(rows: &[Row]) {
    println!(
        "| reader | sent | send pkt/s | logged (rule counter) | received | lost, counted | \
         uncounted loss | ENOBUFS | events/s (wall) | events per CPU-s | events/recv |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let opt = |v: Option<u64>| v.map_or("n/a".to_owned(), |v| v.to_string());
    for r in rows {
        let uncounted = match r.counted_lost {
            Some(c) => r.logged.saturating_sub(r.received + c),
            None => r.logged.saturating_sub(r.received),
        };
        println!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {:.0} | {} | {} |",
            r.name,
            r.sent,
            r.send_rate,
            r.logged,
            r.received,
            opt(r.counted_lost),
            uncounted,
            opt(r.overruns),
            r.rate,
            r.per_cpu_s.map_or("n/a".to_owned(), |v| format!("{v:.0}")),
            r.per_recv.map_or("n/a".to_owned(), |v| format!("{v:.1}")),
        );
    }
}
