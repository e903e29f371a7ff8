//! NFLOG: one `recv` buffer of netlink messages parsed into denial events, which are then
//! folded into a batch as the agent does. Checks: nothing panics; malformed packets are a
//! subset of the packets; the batch satisfies its accounting invariant (`seen` = sum of
//! the counts + dropped) and survives a serde round trip.
//!
//! Input: the raw datagram, as the kernel would hand it to the reader.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_agent::nflog::{Aggregator, ReaderStats, parse_buffer, parse_prefix};
use std::time::{Duration, UNIX_EPOCH};

fuzz_target!(|data: &[u8]| {
    let now = UNIX_EPOCH + Duration::from_secs(1_750_000_000);
    // A small cap so that the overflow entry is reached.
    let mut agg = Aggregator::new("h1", Duration::from_secs(1)).with_max_entries(4);
    agg.baseline(now, &ReaderStats::default(), Some(0));
    let mut stats = ReaderStats::default();
    let outcome = parse_buffer(data, now, |_seq, event| {
        stats.received += 1;
        match event {
            Ok(ev) => {
                let _ = parse_prefix(&ev.prefix);
                stats.delivered += 1;
                agg.push(ev);
            }
            Err(e) => {
                let _ = e.to_string();
                stats.malformed += 1;
                stats.dropped_by_agent += 1;
            }
        }
    });
    assert!(outcome.malformed <= outcome.packets);
    assert_eq!(outcome.packets, stats.received);
    assert_eq!(outcome.malformed, stats.malformed);
    let later = now + Duration::from_secs(2);
    if let Some(batch) = agg.flush(later, &stats, Some(3)) {
        assert!(batch.is_consistent(), "inconsistent batch: {batch:?}");
        let json = serde_json::to_string(&batch).expect("batch serializes");
        let back: portcullis_agent::nflog::DenialBatch =
            serde_json::from_str(&json).expect("batch deserializes");
        assert_eq!(back, batch);
    }
});
