//! The controller's checks on what agents and operators send about denials
//! (`controller/src/server/logs/validate.rs`): a `DenialBatch` from an agent, a
//! `LogsRequest` from an operator. Checks: nothing panics; an accepted batch keeps every
//! entry, with a count in range, a time range in order and canonical addresses (or the
//! aggregator's overflow entry, protocol and port 0).
//!
//! Input: one byte (even: a batch, odd: a logs request), 8 bytes of the controller's
//! clock (ms since the epoch, little endian), then the encoded message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_controller::server::logs::validate::{self, MAX_COUNTER, OVERFLOW_SRC, host_batch};
use portcullis_proto::v1;
use prost::Message;
use std::net::IpAddr;

fuzz_target!(|data: &[u8]| {
    let [sel, c0, c1, c2, c3, c4, c5, c6, c7, bytes @ ..] = data else {
        return;
    };
    let now_ms = i64::from_le_bytes([*c0, *c1, *c2, *c3, *c4, *c5, *c6, *c7]);
    if sel % 2 == 1 {
        if let Ok(req) = v1::LogsRequest::decode(bytes) {
            let _ = validate::filter(&req).map_err(|e| e.to_string());
            let _ = validate::parse_source(&req.source_cidr);
        }
        return;
    }
    let Ok(batch) = v1::DenialBatch::decode(bytes) else {
        return;
    };
    let entries = batch.entries.len();
    match host_batch("h1", batch, now_ms) {
        Ok(hb) => {
            assert_eq!(hb.rows.len(), entries);
            for r in &hb.rows {
                assert!((1..=MAX_COUNTER).contains(&r.count));
                assert!(r.first_ms <= r.last_ms);
                if r.src == OVERFLOW_SRC {
                    assert_eq!((r.proto, r.dport), (0, 0), "overflow entry with a port");
                    continue;
                }
                let src: IpAddr = r.src.parse().expect("stored src is an address");
                assert_eq!(src.to_string(), r.src, "stored src is canonical");
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
