//! The netlink readback (`agent/src/dataplane/netlink_table.rs` over `netlink.rs`): the
//! decoding of the kernel's answers (netlink headers, errors, dumps, table, set, element,
//! chain and rule attributes, expressions) into a ruleset, driven by recorded datagrams.
//! Checks: nothing panics or hangs; a decoded table renders, hashes, and its counters
//! name its chains.
//!
//! Input: a recording (`u16` little-endian length + datagram, repeated; see
//! `portcullis_agent::dataplane::fuzzing`), answered in order to the readback's requests.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_agent::dataplane::fuzzing::read_table_replay;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(table)) = read_table_replay(data) {
        let _ = table.ruleset.to_nft_script();
        let _ = table.ruleset.hash();
        for c in &table.counters {
            assert!(
                table.ruleset.chains.contains_key(&c.chain),
                "counter of no chain"
            );
        }
    }
});
