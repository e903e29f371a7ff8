//! `nft -j list table` / `nft -j list ruleset` readback parsing (`policy::readback`, the
//! typed path and the `serde_json::Value` one). Checks: nothing panics; a document the
//! table parser takes, the ruleset parser takes the same way; a parsed ruleset renders,
//! hashes, and has no difference with itself.
//!
//! Input: the JSON text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_policy::{diff, parse_readback, parse_ruleset_readback};

fuzz_target!(|data: &[u8]| {
    let Ok(json) = std::str::from_utf8(data) else {
        return;
    };
    let table = parse_readback(json);
    let ruleset = parse_ruleset_readback(json);
    match (&table, &ruleset) {
        (Ok(t), Ok(Some(r))) => assert_eq!(t, r, "table and ruleset readback differ"),
        (Ok(_), Ok(None)) => {}
        (Ok(_), Err(e)) => panic!("the table parser took it, the ruleset parser: {e}"),
        (Err(e), _) => {
            let _ = e.to_string();
        }
    }
    if let Ok((rs, counters)) = table {
        let _ = rs.to_nft_script();
        let _ = rs.hash();
        assert!(diff(&rs, &rs).is_empty(), "a ruleset differs from itself");
        for c in counters {
            assert!(rs.chains.contains_key(&c.chain), "counter of no chain");
        }
    }
});
