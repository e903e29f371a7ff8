//! Parsing one `recv` buffer of NFLOG netlink messages into [`DenialEvent`]s, in place.
//!
//! The buffer holds several netlink messages (the kernel batches up to the queue threshold
//! or the group's buffer size, ~22 with the defaults), each NFULNL_MSG_PACKET carrying
//! attributes and the first bytes of the L3 packet. IPv4 (IHL) and IPv6 (extension-header
//! walk) are parsed; non-first fragments and truncated copies keep ports 0.
//!
//! Pure: no I/O, no clock (the caller passes the receive time), one allocation per event
//! (the prefix string). Must not panic on any input.

use super::wire::{
    self, Attrs, NFGENMSG_LEN, NFULA_IFINDEX_INDEV, NFULA_PAYLOAD, NFULA_PREFIX, NFULA_SEQ,
    NFULA_TIMESTAMP, NFULNL_PACKET_TYPE, NLMSG_DONE, NLMSG_ERROR, NLMSG_HDRLEN, NLMSG_NOOP,
    NLMSG_OVERRUN,
};
use super::{Action, DenialEvent};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why one logged packet could not be turned into an event (it is still counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("NFLOG message without a payload (copy mode not `packet`?)")]
    NoPayload,
    #[error("payload is not an IPv4 or IPv6 packet")]
    NotIp,
    #[error("payload shorter than its IP header")]
    Truncated,
    #[error("malformed NFLOG attributes")]
    BadAttributes,
}

/// What a buffer contained besides the events handed to the callback.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParseOutcome {
    /// NFULNL_MSG_PACKET messages (events, parsed or not).
    pub packets: u64,
    /// Events that failed to parse (included in `packets`).
    pub malformed: u64,
    /// The buffer was cut inside a netlink header: the rest of it was skipped.
    pub truncated: bool,
    /// `(sequence, errno)` of the last NLMSG_ERROR (errno 0 = ACK).
    pub ack: Option<(u32, i32)>,
}

/// Parses every netlink message in `buf`; calls `on_packet(nfula_seq, event)` for each
/// logged packet, in order. `recv_time` stands in for packets without NFULA_TIMESTAMP.
pub fn parse_buffer(
    buf: &[u8],
    recv_time: SystemTime,
    mut on_packet: impl FnMut(Option<u32>, Result<DenialEvent, ParseError>),
) -> ParseOutcome {
    let mut out = ParseOutcome::default();
    let mut rest = buf;
    while rest.len() >= NLMSG_HDRLEN {
        let (Some(len), Some(kind)) = (wire::ne32(rest, 0), wire::ne16(rest, 4)) else {
            break;
        };
        let len = len as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            out.truncated = true;
            break;
        }
        let body = &rest[NLMSG_HDRLEN..len];
        match kind {
            NFULNL_PACKET_TYPE => {
                out.packets += 1;
                let (seq, event) = parse_packet(body, recv_time);
                if event.is_err() {
                    out.malformed += 1;
                }
                on_packet(seq, event);
            }
            NLMSG_ERROR => {
                let errno = body
                    .get(0..4)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, i32::from_ne_bytes);
                let seq = wire::ne32(rest, 8).unwrap_or(0);
                // Saturating: i32::MIN (fuzzing found it) must not overflow.
                out.ack = Some((seq, errno.saturating_neg()));
            }
            NLMSG_DONE | NLMSG_NOOP | NLMSG_OVERRUN => {}
            _ => {}
        }
        rest = rest.get(wire::align4(len)..).unwrap_or(&[]);
    }
    if !rest.is_empty() && rest.len() < NLMSG_HDRLEN {
        out.truncated = true;
    }
    out
}

/// One NFULNL_MSG_PACKET body (nfgenmsg + attributes).
fn parse_packet(
    body: &[u8],
    recv_time: SystemTime,
) -> (Option<u32>, Result<DenialEvent, ParseError>) {
    let mut seq = None;
    let mut ifindex_in = 0;
    let mut prefix: &[u8] = &[];
    let mut ts = None;
    let mut payload = None;
    let mut attrs = Attrs::new(body.get(NFGENMSG_LEN..).unwrap_or(&[]));
    for (kind, value) in attrs.by_ref() {
        match kind {
            NFULA_SEQ => seq = wire::be32(value, 0),
            NFULA_IFINDEX_INDEV => ifindex_in = wire::be32(value, 0).unwrap_or(0),
            NFULA_PREFIX => prefix = value,
            NFULA_TIMESTAMP => {
                if let (Some(sec), Some(usec)) = (wire::be64(value, 0), wire::be64(value, 8)) {
                    // Checked: `Duration + Duration` panics on overflow (fuzzing found it).
                    ts = Duration::new(sec, 0)
                        .checked_add(Duration::from_micros(usec))
                        .and_then(|d| UNIX_EPOCH.checked_add(d));
                }
            }
            NFULA_PAYLOAD => payload = Some(value),
            _ => {}
        }
    }
    if attrs.truncated {
        return (seq, Err(ParseError::BadAttributes));
    }
    let event = payload
        .ok_or(ParseError::NoPayload)
        .and_then(parse_l3)
        .map(|l3| {
            let prefix = String::from_utf8_lossy(prefix.split(|b| *b == 0).next().unwrap_or(&[]))
                .into_owned();
            let (revision, action) = parse_prefix(&prefix);
            DenialEvent {
                ts: ts.unwrap_or(recv_time),
                ifindex_in,
                ifname: None,
                src: l3.src,
                dst: l3.dst,
                proto: l3.proto,
                sport: l3.sport,
                dport: l3.dport,
                prefix,
                revision,
                action,
            }
        });
    (seq, event)
}

/// `pc r<rev> deny ` → `(Some(rev), Deny)`; `pc r<rev> audit ` → `(Some(rev), Audit)`;
/// anything else → `(None, Deny)`.
pub fn parse_prefix(prefix: &str) -> (Option<u64>, Action) {
    let mut words = prefix.split_ascii_whitespace();
    let (Some("pc"), Some(rev), Some(verb)) = (words.next(), words.next(), words.next()) else {
        return (None, Action::Deny);
    };
    let Some(rev) = rev.strip_prefix('r').and_then(|r| r.parse::<u64>().ok()) else {
        return (None, Action::Deny);
    };
    match verb {
        "deny" => (Some(rev), Action::Deny),
        "audit" => (Some(rev), Action::Audit),
        _ => (None, Action::Deny),
    }
}

struct L3 {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    sport: u16,
    dport: u16,
}

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_SCTP: u8 = 132;
const IPPROTO_UDPLITE: u8 = 136;
const IPPROTO_DCCP: u8 = 33;

fn ports(proto: u8, l4: Option<&[u8]>) -> (u16, u16) {
    if !matches!(
        proto,
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP | IPPROTO_UDPLITE | IPPROTO_DCCP
    ) {
        return (0, 0);
    }
    match l4 {
        Some(h) => (wire::be16(h, 0).unwrap_or(0), wire::be16(h, 2).unwrap_or(0)),
        None => (0, 0),
    }
}

fn parse_l3(p: &[u8]) -> Result<L3, ParseError> {
    match p.first().map(|b| b >> 4) {
        Some(4) => parse_v4(p),
        Some(6) => parse_v6(p),
        _ => Err(ParseError::NotIp),
    }
}

fn parse_v4(p: &[u8]) -> Result<L3, ParseError> {
    let ihl = usize::from(p[0] & 0x0f) * 4;
    if ihl < 20 || p.len() < 20 {
        return Err(ParseError::Truncated);
    }
    let octets = |at: usize| -> [u8; 4] { [p[at], p[at + 1], p[at + 2], p[at + 3]] };
    let proto = p[9];
    let frag_offset = wire::be16(p, 6).unwrap_or(0) & 0x1fff;
    let l4 = if frag_offset == 0 { p.get(ihl..) } else { None };
    let (sport, dport) = ports(proto, l4);
    Ok(L3 {
        src: IpAddr::V4(Ipv4Addr::from(octets(12))),
        dst: IpAddr::V4(Ipv4Addr::from(octets(16))),
        proto,
        sport,
        dport,
    })
}

fn parse_v6(p: &[u8]) -> Result<L3, ParseError> {
    if p.len() < 40 {
        return Err(ParseError::Truncated);
    }
    let addr = |at: usize| -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&p[at..at + 16]);
        Ipv6Addr::from(a)
    };
    let mut next = p[6];
    let mut at = 40;
    let mut l4 = None;
    // At most 8 extension headers; anything deeper is not worth walking.
    for _ in 0..8 {
        match next {
            // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
            0 | 43 | 60 => {
                let (Some(&nh), Some(&len)) = (p.get(at), p.get(at + 1)) else {
                    break;
                };
                next = nh;
                at += (usize::from(len) + 1) * 8;
            }
            // Fragment: 8 bytes; only the first fragment carries the transport header.
            44 => {
                let (Some(&nh), Some(off)) = (p.get(at), wire::be16(p, at + 2)) else {
                    break;
                };
                next = nh;
                at += 8;
                if off & 0xfff8 != 0 {
                    break;
                }
            }
            // AH: (len + 2) * 4 bytes.
            51 => {
                let (Some(&nh), Some(&len)) = (p.get(at), p.get(at + 1)) else {
                    break;
                };
                next = nh;
                at += (usize::from(len) + 2) * 4;
            }
            _ => {
                l4 = p.get(at..);
                break;
            }
        }
    }
    let (sport, dport) = ports(next, l4);
    Ok(L3 {
        src: IpAddr::V6(addr(8)),
        dst: IpAddr::V6(addr(24)),
        proto: next,
        sport,
        dport,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::nflog::wire::{SynthPacket, encode_done, encode_packet, ip_packet};

    fn one(payload: &[u8], seq: Option<u32>) -> Vec<u8> {
        let mut buf = Vec::new();
        let p = SynthPacket {
            group: 7,
            ifindex_in: 3,
            prefix: "pc r42 deny ",
            seq,
            timestamp: Some((1_700_000_000, 250_000)),
            payload,
        };
        encode_packet(&mut buf, &p, true);
        buf
    }

    type Parsed = Vec<(Option<u32>, Result<DenialEvent, ParseError>)>;

    fn parse_all(buf: &[u8]) -> (Parsed, ParseOutcome) {
        let mut got = Vec::new();
        let out = parse_buffer(buf, UNIX_EPOCH, |s, e| got.push((s, e)));
        (got, out)
    }

    #[test]
    fn v4_tcp_with_timestamp_seq_and_prefix() {
        let src: IpAddr = "10.77.1.2".parse().unwrap();
        let dst: IpAddr = "10.77.1.1".parse().unwrap();
        let mut buf = one(&ip_packet(src, dst, 6, 40000, 22), Some(9));
        encode_done(&mut buf);
        let (got, out) = parse_all(&buf);
        assert_eq!(out.packets, 1);
        assert_eq!(out.malformed, 0);
        assert!(!out.truncated);
        let (seq, ev) = &got[0];
        let ev = ev.as_ref().unwrap();
        assert_eq!(*seq, Some(9));
        assert_eq!(
            (ev.src, ev.dst, ev.proto, ev.sport, ev.dport),
            (src, dst, 6, 40000, 22)
        );
        assert_eq!(
            (ev.revision, ev.action, ev.ifindex_in),
            (Some(42), Action::Deny, 3)
        );
        assert_eq!(ev.prefix, "pc r42 deny ");
        assert_eq!(ev.ts, UNIX_EPOCH + Duration::from_millis(1_700_000_000_250));
    }

    #[test]
    fn v6_udp_through_extension_headers() {
        let src: IpAddr = "fd77:0:0:1::2".parse().unwrap();
        let dst: IpAddr = "fd77:0:0:1::1".parse().unwrap();
        let mut p = ip_packet(src, dst, 17, 5353, 137);
        // Insert a hop-by-hop (8 bytes) and a first fragment header (offset 0).
        p[6] = 0;
        let l4 = p.split_off(40);
        p.extend_from_slice(&[44, 0, 1, 4, 0, 0, 0, 0]);
        p.extend_from_slice(&[17, 0, 0, 1, 0, 0, 0, 1]);
        p.extend_from_slice(&l4);
        let (got, _) = parse_all(&one(&p, None));
        let ev = got[0].1.as_ref().unwrap();
        assert_eq!(
            (ev.src, ev.dst, ev.proto, ev.sport, ev.dport),
            (src, dst, 17, 5353, 137)
        );
    }

    #[test]
    fn non_first_fragment_keeps_ports_zero() {
        let mut p = ip_packet(
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            17,
            1,
            2,
        );
        p[6] = 0x20; // MF
        p[7] = 0x10; // offset 16 * 8
        let (got, _) = parse_all(&one(&p, None));
        let ev = got[0].1.as_ref().unwrap();
        assert_eq!((ev.proto, ev.sport, ev.dport), (17, 0, 0));
    }

    #[test]
    fn prefixes() {
        assert_eq!(parse_prefix("pc r42 deny "), (Some(42), Action::Deny));
        assert_eq!(parse_prefix("pc r7 audit "), (Some(7), Action::Audit));
        assert_eq!(parse_prefix("pc rx deny "), (None, Action::Deny));
        assert_eq!(parse_prefix("fail2ban "), (None, Action::Deny));
        assert_eq!(parse_prefix(""), (None, Action::Deny));
    }

    #[test]
    fn garbage_is_counted_never_panics() {
        let (got, out) = parse_all(&one(&[0x45, 0, 0], Some(1)));
        assert_eq!(got[0].1, Err(ParseError::Truncated));
        assert_eq!((out.packets, out.malformed), (1, 1));
        let (got, _) = parse_all(&one(&[0x11; 40], None));
        assert_eq!(got[0].1, Err(ParseError::NotIp));
        // Every prefix of a valid buffer, and byte flips: no panic.
        let buf = one(
            &ip_packet("::1".parse().unwrap(), "::2".parse().unwrap(), 6, 1, 2),
            Some(3),
        );
        for cut in 0..buf.len() {
            let _ = parse_all(&buf[..cut]);
            let mut flipped = buf.clone();
            flipped[cut] ^= 0xff;
            let _ = parse_all(&flipped);
        }
    }

    #[test]
    fn ack_is_reported() {
        let mut buf = Vec::new();
        buf.extend_from_slice(&36u32.to_ne_bytes());
        buf.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        buf.extend_from_slice(&0u16.to_ne_bytes());
        buf.extend_from_slice(&5u32.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&(-16i32).to_ne_bytes());
        buf.extend_from_slice(&[0; 16]);
        let (_, out) = parse_all(&buf);
        assert_eq!(out.ack, Some((5, 16)));
    }

    #[test]
    fn timestamp_past_the_end_of_time_falls_back_to_the_receive_time() {
        // fuzz/artifacts-regressions/nflog_parse/timestamp-overflow: seconds + microseconds
        // overflowed `Duration + Duration` (a panic, in release builds too).
        let payload = ip_packet(
            "10.77.0.9".parse().unwrap(),
            "10.77.1.2".parse().unwrap(),
            6,
            40000,
            23,
        );
        for timestamp in [(u64::MAX, u64::MAX), (u64::MAX, 0), (0, u64::MAX)] {
            let mut buf = Vec::new();
            let p = SynthPacket {
                group: 7,
                ifindex_in: 3,
                prefix: "pc r7 deny ",
                seq: None,
                timestamp: Some(timestamp),
                payload: &payload,
            };
            encode_packet(&mut buf, &p, false);
            let (got, out) = parse_all(&buf);
            assert_eq!((out.packets, out.malformed), (1, 0));
            let ev = got[0].1.as_ref().unwrap();
            assert_eq!(ev.dport, 23);
            assert!(
                timestamp == (0, u64::MAX) || ev.ts == UNIX_EPOCH,
                "{timestamp:?}"
            );
        }
    }

    #[test]
    fn error_code_i32_min_is_an_error_not_an_overflow() {
        // fuzz/artifacts-regressions/nflog_parse/neg-overflow (cargo fuzz, nflog_parse).
        let buf = [
            0x15, 0, 0, 0, 0x02, 0, 0x65, 0, 0, 0, 0, 0x0d, 0, 0, 0, 0, 0, 0, 0, 0x80, 0x80, 0x80,
            0x80,
        ];
        let (_, out) = parse_all(&buf);
        assert_eq!(out.ack, Some((0x0d00_0000, i32::MAX)));
    }
}
