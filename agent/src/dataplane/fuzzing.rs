//! Entry points for the fuzz targets in `fuzz/` (not an API; hidden from the docs): the
//! netlink readback ([`super::netlink_table`] over [`super::netlink`]) driven by recorded
//! datagrams instead of the kernel, and the recording of a real kernel's answers that
//! seeds it.
//!
//! A recording is a sequence of frames, each a little-endian `u16` length and that many
//! bytes of one datagram, answered in order to the requests [`read_table_replay`] makes
//! (generation, table, objects, flowtables, sets and their elements, chains, rules,
//! generation: the order `NftDataplane::read_table_netlink` asks in). A length past the
//! end takes what is left.

use super::KernelTable;
use super::netlink::NfTables;
use super::nft::read_netlink_consistent;
use std::io;

/// What the netlink readback made of the kernel's answers (`Err`: why nft must read it).
pub type Decoded = Result<Option<KernelTable>, String>;

/// The datagrams of a recording.
pub fn unframe(mut input: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let [lo, hi, rest @ ..] = input {
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(rest.len());
        out.push(rest[..len].to_vec());
        input = &rest[len..];
    }
    out
}

/// A recording of `datagrams` (each cut at 65535 bytes).
pub fn frame(datagrams: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for d in datagrams {
        let len = u16::try_from(d.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&d[..usize::from(len)]);
    }
    out
}

/// Our table as the netlink readback decodes the recorded answers `input`.
pub fn read_table_replay(input: &[u8]) -> Decoded {
    read_netlink_consistent(&mut NfTables::replay(unframe(input)))
}

/// Reads our table from the kernel (the calling thread's network namespace) over netlink
/// and returns what was decoded with the recording of the kernel's answers.
pub fn record_table_read() -> io::Result<(Decoded, Vec<u8>)> {
    let mut nl = NfTables::open()?;
    nl.start_recording();
    let table = read_netlink_consistent(&mut nl);
    Ok((table, frame(&nl.recorded())))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_short_one_takes_the_rest() {
        let d = vec![vec![1, 2, 3], vec![], vec![9; 300]];
        assert_eq!(unframe(&frame(&d)), d);
        assert_eq!(unframe(&[5, 0, 1, 2]), vec![vec![1, 2]]);
        assert_eq!(unframe(&[7]), Vec::<Vec<u8>>::new());
    }

    #[test]
    fn error_code_i32_min_is_an_error_not_an_overflow() {
        // fuzz/artifacts-regressions/readback_netlink/neg-overflow: an NLMSG_ERROR
        // answering the first request with error code i32::MIN.
        let mut d = Vec::new();
        for v in [20u32, 2, 1, 0] {
            match v {
                2 => d.extend_from_slice(&[2, 0, 0, 0]), // type NLMSG_ERROR, flags 0
                _ => d.extend_from_slice(&v.to_ne_bytes()),
            }
        }
        d.extend_from_slice(&i32::MIN.to_ne_bytes());
        let err = read_table_replay(&frame(&[d])).unwrap_err();
        assert!(err.starts_with("netlink: "), "{err}");
    }

    #[test]
    fn no_answer_is_an_error_not_a_hang() {
        let err = read_table_replay(&[]).unwrap_err();
        assert!(err.starts_with("netlink: "), "{err}");
    }
}
