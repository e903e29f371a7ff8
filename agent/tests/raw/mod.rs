//! Hand-made packets for the real-packet tests: IPv4 and IPv6 datagrams of every
//! port-based transport (tcp SYN, udp, udplite, sctp, dccp headers with the destination
//! port at offset 2), IPv6 fragments (also the RFC 7112 case: a first fragment holding
//! only extension headers), sent from a raw socket (`IPPROTO_RAW`: the kernel sends the
//! bytes as they are, headers included, and never fragments them itself).
//!
//! Also a "witness" nftables table for the namespace that receives them: a base chain
//! hooked after ours (priority filter + 10) records the source port of every packet our
//! table let through, so a test reads the kernel's verdict for each probe.
//!
//! Only used inside namespaces the tests made; sends nothing else.

#![allow(dead_code)]

use portcullis_policy::Proto;
use portcullis_testkit::NetNs;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const IPPROTO_RAW: i32 = 255;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_DEST: u8 = 60;

/// The internet checksum (RFC 1071) of `parts`, concatenated.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    let mut odd: Option<u8> = None;
    for b in parts.iter().flat_map(|p| p.iter()) {
        match odd.take() {
            None => odd = Some(*b),
            Some(hi) => sum += u32::from(u16::from_be_bytes([hi, *b])),
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The pseudo-header the tcp/udp/udplite/dccp checksums cover.
fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend(s.octets());
            p.extend(d.octets());
            p.extend([0, proto]);
            p.extend((len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend(s.octets());
            p.extend(d.octets());
            p.extend((len as u32).to_be_bytes());
            p.extend([0, 0, 0, proto]);
        }
        _ => panic!("mixed families"),
    }
    p
}

/// A transport segment (header + `payload`) for `proto`, checksummed where the
/// protocol's receiver would check it (tcp, udp, udplite; sctp's crc32c and dccp's are
/// left zero: the kernel here has neither stack, and nft looks at ports only).
pub fn segment(
    proto: Proto,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend(sport.to_be_bytes());
    h.extend(dport.to_be_bytes());
    let sum_at = match proto {
        Proto::Tcp => {
            h.extend(1u32.to_be_bytes()); // seq
            h.extend(0u32.to_be_bytes()); // ack
            h.extend([5 << 4, 0x02]); // data offset 5 words, SYN
            h.extend(64240u16.to_be_bytes()); // window
            h.extend([0, 0, 0, 0]); // checksum, urgent
            Some(16)
        }
        Proto::Udp | Proto::Udplite => {
            // udplite: the length field is the checksum coverage (0: everything).
            let len = if proto == Proto::Udp {
                (8 + payload.len()) as u16
            } else {
                0
            };
            h.extend(len.to_be_bytes());
            h.extend([0, 0]);
            Some(6)
        }
        Proto::Sctp => {
            h.extend([0, 0, 0, 1]); // verification tag
            h.extend([0, 0, 0, 0]); // crc32c
            None
        }
        Proto::Dccp => {
            // data offset 3 words, ccval/cscov, checksum, type Request (0) + X=0, seq.
            h.extend([3, 0, 0, 0, 0, 0, 0, 1]);
            None
        }
    };
    h.extend(payload);
    if let Some(at) = sum_at {
        let ph = pseudo(src, dst, proto.number(), h.len());
        let mut sum = checksum(&[&ph, &h]);
        if sum == 0 && proto != Proto::Tcp {
            sum = 0xffff;
        }
        h[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    }
    h
}

/// An IPv4 packet around `body` (next protocol `proto`).
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![0x45, 0];
    p.extend(((20 + body.len()) as u16).to_be_bytes());
    p.extend([0, 0, 0x40, 0, 64, proto, 0, 0]); // id 0, DF, ttl 64
    p.extend(src.octets());
    p.extend(dst.octets());
    let sum = checksum(&[&p]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend(body);
    p
}

/// An IPv6 packet around `body` (first next header `next`).
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend((body.len() as u16).to_be_bytes());
    p.extend([next, 64]);
    p.extend(src.octets());
    p.extend(dst.octets());
    p.extend(body);
    p
}

/// One complete (unfragmented) probe of `proto` from `src:sport` to `dst:dport`.
pub fn packet(proto: Proto, src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Vec<u8> {
    let seg = segment(proto, src, dst, sport, dport, b"portcullis probe");
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ipv4(s, d, proto.number(), &seg),
        (IpAddr::V6(s), IpAddr::V6(d)) => ipv6(s, d, proto.number(), &seg),
        _ => panic!("mixed families"),
    }
}

/// The fragments of `len` bytes cut at `cuts` (offsets, multiples of 8): (start, end,
/// more fragments follow).
fn pieces(len: usize, cuts: &[usize]) -> Vec<(usize, usize, bool)> {
    let mut bounds = vec![0];
    bounds.extend(cuts.iter().copied());
    bounds.push(len);
    let last = bounds.len() - 2;
    bounds
        .windows(2)
        .enumerate()
        .map(|(i, w)| {
            assert!(
                w[0].is_multiple_of(8),
                "fragment offsets are multiples of 8"
            );
            (w[0], w[1], i < last)
        })
        .collect()
}

/// `inner` (what follows the IPv6 header: extension headers and the segment, first
/// next header `next`) cut into fragments at the byte offsets `cuts` (multiples of 8),
/// each a complete IPv6 packet with a Fragment header (identification `id`).
pub fn fragments(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next: u8,
    inner: &[u8],
    cuts: &[usize],
    id: u32,
) -> Vec<Vec<u8>> {
    pieces(inner.len(), cuts)
        .into_iter()
        .map(|(start, end, more)| {
            let more = u16::from(more);
            let mut body = vec![next, 0];
            body.extend((((start / 8) as u16) << 3 | more).to_be_bytes());
            body.extend(id.to_be_bytes());
            body.extend(&inner[start..end]);
            ipv6(src, dst, NEXTHDR_FRAGMENT, &body)
        })
        .collect()
}

/// `segment` (a transport segment of protocol `proto`) cut into IPv4 fragments at the
/// byte offsets `cuts` (multiples of 8), identification `id`.
pub fn fragments_v4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    segment: &[u8],
    cuts: &[usize],
    id: u16,
) -> Vec<Vec<u8>> {
    pieces(segment.len(), cuts)
        .into_iter()
        .map(|(start, end, more)| {
            let more: u16 = if more { 0x2000 } else { 0 };
            let body = &segment[start..end];
            let mut p = vec![0x45, 0];
            p.extend(((20 + body.len()) as u16).to_be_bytes());
            p.extend(id.to_be_bytes());
            p.extend((more | (start / 8) as u16).to_be_bytes());
            p.extend([64, proto, 0, 0]);
            p.extend(src.octets());
            p.extend(dst.octets());
            let sum = checksum(&[&p]);
            p[10..12].copy_from_slice(&sum.to_be_bytes());
            p.extend(body);
            p
        })
        .collect()
}

/// A Destination Options header of `len` bytes (a multiple of 8, at least 8) filled with
/// PadN, followed by next header `next`.
pub fn dest_opts(next: u8, len: usize) -> Vec<u8> {
    assert!(len >= 8 && len.is_multiple_of(8));
    let mut h = vec![next, (len / 8 - 1) as u8];
    let mut left = len - 2;
    while left > 0 {
        let n = left.min(257);
        if n == 1 {
            h.push(0); // Pad1
        } else {
            h.push(1); // PadN
            h.push((n - 2) as u8);
            h.extend(std::iter::repeat_n(0u8, n - 2));
        }
        left -= n;
    }
    h
}

pub const DEST_OPTS: u8 = NEXTHDR_DEST;

/// Sends each of `packets` (complete IP packets of `dst`'s family) from inside `ns`.
pub fn send(ns: &NetNs, dst: IpAddr, packets: &[Vec<u8>]) {
    let packets = packets.to_vec();
    ns.enter(move || {
        let domain = if dst.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let s = Socket::new(domain, Type::RAW, Some(Protocol::from(IPPROTO_RAW))).expect("raw");
        let to = SockAddr::from(SocketAddr::new(dst, 0));
        for p in &packets {
            s.send_to(p, &to).expect("raw send");
        }
    })
    .expect("enter");
}

/// The witness table's script: after our table, record the source port of every tcp,
/// udp, udplite, sctp, dccp packet in the probe range that got through.
pub const WITNESS: &str = "table inet witness {
	set seen { type inet_service; flags dynamic; size 65535; }
	chain input {
		type filter hook input priority filter + 10; policy accept;
		meta l4proto { tcp, udp, udplite, sctp, dccp } th sport 20000-29999 add @seen { th sport }
	}
}
";

/// Empties the witness set.
pub fn witness_reset(ns: &NetNs) {
    ns.run_ok("nft", &["flush", "set", "inet", "witness", "seen"])
        .expect("flush witness");
}

/// The source ports the witness saw.
pub fn witness_seen(ns: &NetNs) -> BTreeSet<u16> {
    let out = ns
        .run_ok("nft", &["-j", "list", "set", "inet", "witness", "seen"])
        .expect("list witness");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i.get("set"))
        .flat_map(|s| s["elem"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| {
            e.as_u64()
                .or_else(|| e["elem"]["val"].as_u64())
                .and_then(|p| u16::try_from(p).ok())
        })
        .collect()
}

/// Sets a sysctl inside `ns` (e.g. `net/ipv4/conf/all/rp_filter`), by its /proc/sys path.
pub fn sysctl(ns: &NetNs, path: &str, value: &str) {
    let script = format!("echo {value} > /proc/sys/{path}");
    ns.run_ok("sh", &["-c", &script]).expect("sysctl");
}

/// A counter of `/proc/net/snmp6` in `ns` (e.g. `Ip6ReasmOKs`).
pub fn snmp6(ns: &NetNs, name: &str) -> u64 {
    let text = ns.run_ok("cat", &["/proc/net/snmp6"]).expect("snmp6");
    text.lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(name)).then(|| w.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("{name} not in /proc/net/snmp6"))
}
