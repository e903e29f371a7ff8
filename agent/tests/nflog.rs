//! NFLOG reader and aggregator against real packets: a `host`/`peer` namespace pair, a log
//! rule in `host`, the reader started inside `host`, probes sent from `peer`.
//!
//! Fails (does not skip) without root unless `PORTCULLIS_SKIP_NETNS=1`.

#![allow(clippy::unwrap_used)]

use portcullis_agent::nflog;
mod nflog_support;

use nflog::{Action, Aggregator, DenialEvent, DenialReader, ReaderConfig};
use nflog_support::{blast_udp, counters, load, ruleset};
use portcullis_testkit::{TcpOutcome, Topology, probe, require_root_netns};
use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant, SystemTime};

fn start_reader(topo: &Topology, cfg: ReaderConfig) -> (DenialReader, Receiver<DenialEvent>) {
    topo.ns("host")
        .enter(move || DenialReader::start_with(cfg))
        .expect("enter host")
        .expect("start reader")
}

/// Receives until `done(events)` or `within` elapsed.
fn collect(
    rx: &Receiver<DenialEvent>,
    within: Duration,
    mut done: impl FnMut(&[DenialEvent]) -> bool,
) -> Vec<DenialEvent> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while !done(&got) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        if let Ok(ev) = rx.recv_timeout(left.min(Duration::from_millis(50))) {
            got.push(ev);
        }
    }
    got
}

#[test]
fn probes_to_denied_ports_become_events_v4_and_v6() {
    if !require_root_netns() {
        return;
    }
    let topo = Topology::pair().expect("topology");
    load(topo.ns("host"), &ruleset(7, 1000, 1000)).expect("ruleset");
    let (reader, rx) = start_reader(&topo, ReaderConfig::default());
    let host = topo.endpoint(0, "host").clone();
    let peer = topo.endpoint(0, "peer").clone();
    // `ip -o link show eth0` → "2: eth0@if3: ..." (sysfs would show the caller's netns).
    let link = topo
        .ns("host")
        .ip(&["-o", "link", "show", "eth0"])
        .expect("ip link");
    let ifindex: u32 = link
        .split(':')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .expect("ifindex number");

    let started = SystemTime::now();
    for v6 in [false, true] {
        let tcp = SocketAddr::new(host.addr(v6), 22);
        let got =
            probe::tcp_connect(topo.ns("peer"), tcp, Duration::from_millis(300)).expect("tcp");
        assert_eq!(got, TcpOutcome::TimedOut, "the log rule drops");
        let udp = SocketAddr::new(host.addr(v6), 137);
        probe::udp_request(topo.ns("peer"), udp, Duration::from_millis(100)).expect("udp");
    }
    let want: Vec<(IpAddr, u8, u16)> = [false, true]
        .iter()
        .flat_map(|&v6| [(peer.addr(v6), 6, 22), (peer.addr(v6), 17, 137)])
        .collect();
    let has = |evs: &[DenialEvent], w: &(IpAddr, u8, u16)| {
        evs.iter().any(|e| (e.src, e.proto, e.dport) == *w)
    };
    let events = collect(&rx, Duration::from_secs(3), |evs| {
        want.iter().all(|w| has(evs, w))
    });
    for w in &want {
        assert!(has(&events, w), "no event for {w:?} in {events:#?}");
    }
    for e in &events {
        let v6 = e.src.is_ipv6();
        assert_eq!(e.dst, host.addr(v6), "{e:?}");
        assert_eq!(e.revision, Some(42), "{e:?}");
        assert_eq!(e.action, Action::Deny);
        assert_eq!(e.prefix, "pc r42 deny ");
        assert_eq!(e.ifindex_in, ifindex);
        assert_ne!(e.sport, 0);
        assert!(e.ts >= started - Duration::from_secs(1), "{e:?}");
    }
    let stats = reader.stop();
    assert_eq!(stats.received, stats.delivered + stats.dropped_by_agent);
    assert_eq!(
        (
            stats.dropped_by_agent,
            stats.socket_lost,
            stats.socket_overruns
        ),
        (0, 0, 0)
    );
    assert_eq!(stats.delivered, events.len() as u64, "{stats:?}");
}

#[test]
fn flood_above_the_limit_is_counted_seen_plus_suppressed() {
    if !require_root_netns() {
        return;
    }
    const SENT: u64 = 500;
    let topo = Topology::pair().expect("topology");
    load(topo.ns("host"), &ruleset(7, 10, 10)).expect("ruleset");
    let (reader, rx) = start_reader(&topo, ReaderConfig::default());
    let mut agg = Aggregator::new("host", Duration::from_secs(1));
    let before = counters(topo.ns("host")).expect("counters");
    agg.baseline(SystemTime::now(), &reader.stats(), Some(before[1]));

    let dst = SocketAddr::new(topo.endpoint(0, "host").addr(false), 137);
    blast_udp(topo.ns("peer"), dst, SENT, 32).expect("blast");

    // Wait until every packet is accounted for by the kernel counters, then for the reader.
    let deadline = Instant::now() + Duration::from_secs(5);
    let after = loop {
        let c = counters(topo.ns("host")).expect("counters");
        if c[0] + c[1] - before[0] - before[1] >= SENT || Instant::now() > deadline {
            break c;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let logged = after[0] - before[0];
    let events = collect(&rx, Duration::from_secs(3), |evs| {
        let s = reader.stats();
        evs.len() as u64 + s.dropped_by_agent + s.socket_lost >= logged
    });
    for ev in events {
        agg.push(ev);
    }
    let stats = reader.stats();
    let batch = agg
        .drain(SystemTime::now(), &stats, Some(after[1]))
        .expect("a batch");
    assert!(batch.is_consistent(), "{batch:?}");
    let suppressed = batch.kernel_suppressed.expect("two counter readings");
    eprintln!(
        "flood: sent {SENT}, logged {logged}, seen {}, suppressed {suppressed}, lost {}",
        batch.seen, batch.socket_lost
    );
    assert_eq!(
        batch.seen + batch.socket_lost,
        logged,
        "{batch:?} {stats:?}"
    );
    assert_eq!(
        batch.seen + batch.socket_lost + suppressed,
        SENT,
        "{batch:?}"
    );
    assert!(
        (10..SENT).contains(&logged),
        "the limit must cut the flood: logged {logged}"
    );
    assert_eq!(batch.entries.len(), 1);
    assert_eq!(batch.entries[0].count, batch.sent);
    assert_eq!((batch.entries[0].proto, batch.entries[0].dport), (17, 137));
}

#[test]
fn a_second_reader_on_the_same_group_is_refused() {
    if !require_root_netns() {
        return;
    }
    let topo = Topology::pair().expect("topology");
    let (_first, _rx) = start_reader(&topo, ReaderConfig::default());
    let second = topo
        .ns("host")
        .enter(|| DenialReader::start(7, 16))
        .expect("enter");
    let err = second.expect_err("group 7 is taken");
    assert!(
        matches!(err, nflog::NflogError::Refused { group: 7, .. }),
        "{err}"
    );
}

#[test]
fn losses_in_the_socket_and_the_agent_are_counted_exactly() {
    if !require_root_netns() {
        return;
    }
    const SENT: u64 = 20_000;
    let topo = Topology::pair().expect("topology");
    load(topo.ns("host"), &ruleset(7, 1_000_000, 1_000_000)).expect("ruleset");
    // A tiny socket buffer and a tiny channel nobody drains: both kinds of loss.
    let cfg = ReaderConfig {
        rcvbuf: 4096,
        capacity: 100,
        ..ReaderConfig::default()
    };
    let (reader, rx) = start_reader(&topo, cfg);
    let dst = SocketAddr::new(topo.endpoint(0, "host").addr(false), 137);
    blast_udp(topo.ns("peer"), dst, SENT, 32).expect("blast");
    std::thread::sleep(Duration::from_millis(300));
    // A lost final batch shows up as a sequence gap at the next logged packet.
    blast_udp(topo.ns("peer"), dst, 1, 32).expect("one more");
    let deadline = Instant::now() + Duration::from_secs(5);
    let (logged, stats) = loop {
        let logged = counters(topo.ns("host")).expect("counters")[0];
        let s = reader.stats();
        if s.received + s.socket_lost >= logged || Instant::now() > deadline {
            break (logged, s);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("loss: logged {logged}, {stats:?}");
    assert!(logged > SENT * 9 / 10, "veth dropped too much: {logged}");
    assert_eq!(stats.received + stats.socket_lost, logged, "{stats:?}");
    assert_eq!(stats.received, stats.delivered + stats.dropped_by_agent);
    assert_eq!(stats.delivered, 100, "the channel holds 100");
    if stats.socket_lost > 0 {
        assert!(stats.socket_overruns > 0, "{stats:?}");
    }
    assert_eq!(rx.try_iter().count(), 100);
}
