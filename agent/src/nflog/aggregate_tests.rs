//! Unit tests of the aggregator: folding, the key cap, interval handling, and the
//! accounting invariant over many pseudo-random event sequences (seeded, deterministic).

use super::*;
use std::time::UNIX_EPOCH;

fn t(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + ms)
}

fn ev(src: &str, proto: u8, dport: u16, ms: u64) -> DenialEvent {
    DenialEvent {
        ts: t(ms),
        ifindex_in: 2,
        ifname: None,
        src: src.parse().unwrap(),
        dst: "10.77.1.1".parse().unwrap(),
        proto,
        sport: 40000,
        dport,
        prefix: "pc r42 deny ".into(),
        revision: Some(42),
        action: Action::Deny,
    }
}

fn stats(dropped: u64, overruns: u64, lost: u64) -> ReaderStats {
    ReaderStats {
        dropped_by_agent: dropped,
        socket_overruns: overruns,
        socket_lost: lost,
        ..ReaderStats::default()
    }
}

#[test]
fn folds_per_src_proto_dport_with_first_and_last_seen() {
    let mut a = Aggregator::new("h1", Duration::from_secs(1));
    a.baseline(t(0), &ReaderStats::default(), Some(100));
    a.push(ev("10.77.1.2", 6, 22, 30));
    a.push(ev("10.77.1.2", 6, 22, 10));
    a.push(ev("10.77.1.2", 17, 22, 20));
    a.push(ev("10.77.1.3", 6, 22, 40));
    assert_eq!(a.flush(t(999), &stats(0, 0, 0), Some(100)), None);
    let b = a.flush(t(1000), &stats(2, 1, 5), Some(130)).unwrap();
    assert_eq!(b.seq, 0);
    assert_eq!(b.host, "h1");
    assert_eq!((b.interval_start, b.interval_end), (t(0), t(1000)));
    assert_eq!(b.entries.len(), 3);
    let first = &b.entries[0];
    assert_eq!((first.proto, first.dport, first.count), (6, 22, 2));
    assert_eq!((first.first_seen, first.last_seen), (t(10), t(30)));
    assert_eq!((b.seen, b.sent, b.dropped_by_agent), (6, 4, 2));
    assert_eq!(
        (b.socket_overruns, b.socket_lost, b.kernel_suppressed),
        (1, 5, Some(30))
    );
    assert!(b.is_consistent());
    // Next interval: counters are increases, the seq moves on.
    a.push(ev("10.77.1.2", 6, 22, 1500));
    let b = a.flush(t(2000), &stats(2, 1, 5), Some(131)).unwrap();
    assert_eq!(
        (b.seq, b.seen, b.dropped_by_agent, b.kernel_suppressed),
        (1, 1, 0, Some(1))
    );
}

#[test]
fn quiet_interval_emits_nothing_and_unknown_kernel_counter_is_none() {
    let mut a = Aggregator::new("h1", Duration::from_secs(1));
    assert_eq!(a.flush(t(0), &ReaderStats::default(), None), None);
    assert_eq!(a.flush(t(1000), &ReaderStats::default(), None), None);
    a.push(ev("10.77.1.2", 6, 22, 1100));
    let b = a.flush(t(2000), &ReaderStats::default(), Some(5)).unwrap();
    assert_eq!(
        b.kernel_suppressed, None,
        "first reading is only a baseline"
    );
    assert_eq!(b.interval_start, t(1000));
}

#[test]
fn counter_restart_counts_the_new_reading() {
    assert_eq!(increase(10, 4), 6);
    assert_eq!(increase(3, 40), 3);
    let mut a = Aggregator::new("h", Duration::from_secs(1));
    a.baseline(t(0), &stats(10, 0, 0), Some(1000));
    let b = a.drain(t(1), &stats(2, 0, 0), Some(7)).unwrap();
    assert_eq!((b.dropped_by_agent, b.kernel_suppressed), (2, Some(7)));
}

#[test]
fn overflow_past_the_cap_is_one_entry_still_counted() {
    let mut a = Aggregator::new("h", Duration::from_secs(1)).with_max_entries(3);
    for port in 0..10u16 {
        a.push(ev("10.0.0.1", 17, port, u64::from(port)));
    }
    let b = a.drain(t(1000), &ReaderStats::default(), None).unwrap();
    assert_eq!(b.entries.len(), 4);
    let o = b.entries.last().unwrap();
    assert!(o.overflow);
    assert_eq!(
        (o.count, o.dport, o.first_seen, o.last_seen),
        (7, 0, t(3), t(9))
    );
    assert_eq!(b.sent, 10);
    assert!(b.is_consistent());
}

#[test]
fn serde_round_trip() {
    let mut a = Aggregator::new("h", Duration::from_secs(1)).with_next_seq(41);
    a.push(ev("fd77:0:0:1::2", 6, 443, 5));
    let b = a.drain(t(1000), &stats(1, 0, 0), None).unwrap();
    let json = serde_json::to_string(&b).unwrap();
    let back: DenialBatch = serde_json::from_str(&json).unwrap();
    assert_eq!(back, b);
    assert_eq!(back.seq, 41);
}

#[test]
fn forged_batches_are_inconsistent() {
    let mut a = Aggregator::new("h", Duration::from_secs(1));
    a.push(ev("10.0.0.1", 6, 22, 0));
    let mut b = a.drain(t(1000), &ReaderStats::default(), None).unwrap();
    b.sent += 1;
    assert!(!b.is_consistent());
    b.sent -= 1;
    b.entries[0].count = u64::MAX;
    assert!(!b.is_consistent());
}

/// xorshift64*: a seeded generator, so the "any sequence" test is deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn invariant_seen_equals_sent_plus_dropped_for_any_sequence() {
    for seed in 1..=300u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let cap = 1 + rng.below(20) as usize;
        let mut a =
            Aggregator::new("h", Duration::from_millis(1 + rng.below(50))).with_max_entries(cap);
        let mut reader = ReaderStats::default();
        let (mut pushed, mut dropped) = (0u64, 0u64);
        let (mut sum_seen, mut sum_sent, mut sum_dropped) = (0u64, 0u64, 0u64);
        let mut now = 0u64;
        let mut last_seq = None;
        let steps = rng.below(400);
        for _ in 0..steps {
            match rng.below(10) {
                0..=6 => {
                    let src = format!("10.0.{}.{}", rng.below(3), rng.below(5));
                    let proto = if rng.below(2) == 0 { 6 } else { 17 };
                    a.push(ev(&src, proto, rng.below(8) as u16, now));
                    pushed += 1;
                }
                7 => {
                    let n = rng.below(4);
                    reader.dropped_by_agent += n;
                    dropped += n;
                }
                _ => {
                    now += rng.below(30);
                    if let Some(b) = a.flush(t(now), &reader, None) {
                        assert!(b.is_consistent(), "seed {seed}: {b:?}");
                        assert!(b.entries.len() <= cap + 1);
                        assert_eq!(
                            b.seen,
                            b.entries.iter().map(|e| e.count).sum::<u64>() + b.dropped_by_agent
                        );
                        assert!(last_seq.is_none_or(|s| b.seq == s + 1));
                        last_seq = Some(b.seq);
                        sum_seen += b.seen;
                        sum_sent += b.sent;
                        sum_dropped += b.dropped_by_agent;
                    }
                }
            }
        }
        if let Some(b) = a.drain(t(now + 1), &reader, None) {
            assert!(b.is_consistent());
            sum_seen += b.seen;
            sum_sent += b.sent;
            sum_dropped += b.dropped_by_agent;
        }
        assert_eq!(sum_sent, pushed, "seed {seed}");
        assert_eq!(sum_dropped, dropped, "seed {seed}");
        assert_eq!(sum_seen, pushed + dropped, "seed {seed}");
    }
}
