//! NFLOG wire format: the constants the parser needs, an attribute walker, and
//! [`encode_packet`], which builds an NFULNL_MSG_PACKET message laid out like the kernel's
//! (`nfnetlink_log.c`), for unit tests and the parse benchmark.
//!
//! Must not allocate on the parse path; the encoder is for tests and benchmarks only.

use std::net::IpAddr;

pub const NLMSG_HDRLEN: usize = 16;
pub const NFGENMSG_LEN: usize = 4;
pub const NLA_HDRLEN: usize = 4;
pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLMSG_OVERRUN: u16 = 4;
pub const NLM_F_MULTI: u16 = 2;
/// `NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_PACKET`.
pub const NFULNL_PACKET_TYPE: u16 = 4 << 8;
const NLA_TYPE_MASK: u16 = 0x3fff;

pub const NFULA_PACKET_HDR: u16 = 1;
pub const NFULA_TIMESTAMP: u16 = 3;
pub const NFULA_IFINDEX_INDEV: u16 = 4;
pub const NFULA_HWADDR: u16 = 8;
pub const NFULA_PAYLOAD: u16 = 9;
pub const NFULA_PREFIX: u16 = 10;
pub const NFULA_SEQ: u16 = 12;
pub const NFULA_HWTYPE: u16 = 15;
pub const NFULA_HWHEADER: u16 = 16;
pub const NFULA_HWLEN: u16 = 17;

/// 4-byte netlink alignment.
pub const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Reads a big-endian u16 at `at` (caller checked the bounds).
pub fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// Reads a big-endian u32 at `at`.
pub fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Reads a big-endian u64 at `at`.
pub fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Reads a native-endian u16/u32 (netlink headers are host order).
pub fn ne16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

pub fn ne32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Iterates `(type, value)` over netlink attributes; stops at the first malformed one
/// (and sets `truncated`).
#[derive(Debug)]
pub struct Attrs<'a> {
    buf: &'a [u8],
    pub truncated: bool,
}

impl<'a> Attrs<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            truncated: false,
        }
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.len() < NLA_HDRLEN {
            return None;
        }
        let len = usize::from(ne16(self.buf, 0)?);
        let kind = ne16(self.buf, 2)? & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > self.buf.len() {
            self.truncated = true;
            return None;
        }
        let value = &self.buf[NLA_HDRLEN..len];
        self.buf = self.buf.get(align4(len)..).unwrap_or(&[]);
        Some((kind, value))
    }
}

/// What [`encode_packet`] puts into one message.
#[derive(Debug, Clone)]
pub struct SynthPacket<'a> {
    pub group: u16,
    pub ifindex_in: u32,
    pub prefix: &'a str,
    pub seq: Option<u32>,
    /// (seconds, microseconds) since the epoch.
    pub timestamp: Option<(u64, u64)>,
    /// L3 packet (the kernel copies at most the configured copy range).
    pub payload: &'a [u8],
}

/// Appends one NFULNL_MSG_PACKET message to `out`, attributes in the kernel's order:
/// PACKET_HDR, PREFIX, [IFINDEX_INDEV], HWADDR, HWTYPE, HWLEN, HWHEADER, [TIMESTAMP],
/// [SEQ], PAYLOAD.
pub fn encode_packet(out: &mut Vec<u8>, p: &SynthPacket<'_>, multi: bool) {
    let start = out.len();
    out.extend_from_slice(&[0; NLMSG_HDRLEN]);
    let family: u8 = if p.payload.first().is_some_and(|b| b >> 4 == 6) {
        10
    } else {
        2
    };
    out.extend_from_slice(&[family, 0]);
    out.extend_from_slice(&p.group.to_be_bytes());
    let hw_proto: u16 = if family == 10 { 0x86dd } else { 0x0800 };
    let mut hdr = hw_proto.to_be_bytes().to_vec();
    hdr.extend_from_slice(&[1, 0]); // hook NF_INET_LOCAL_IN, pad
    put_attr(out, NFULA_PACKET_HDR, &hdr);
    let mut prefix = p.prefix.as_bytes().to_vec();
    prefix.push(0);
    put_attr(out, NFULA_PREFIX, &prefix);
    if p.ifindex_in != 0 {
        put_attr(out, NFULA_IFINDEX_INDEV, &p.ifindex_in.to_be_bytes());
    }
    let mut hwaddr = vec![0, 6, 0, 0]; // hw_addrlen (be16), pad
    hwaddr.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0, 0]);
    put_attr(out, NFULA_HWADDR, &hwaddr);
    put_attr(out, NFULA_HWTYPE, &1u16.to_be_bytes());
    put_attr(out, NFULA_HWLEN, &14u16.to_be_bytes());
    let mut eth = [0u8; 14];
    eth[12..].copy_from_slice(&hw_proto.to_be_bytes());
    put_attr(out, NFULA_HWHEADER, &eth);
    if let Some((sec, usec)) = p.timestamp {
        let mut ts = sec.to_be_bytes().to_vec();
        ts.extend_from_slice(&usec.to_be_bytes());
        put_attr(out, NFULA_TIMESTAMP, &ts);
    }
    if let Some(seq) = p.seq {
        put_attr(out, NFULA_SEQ, &seq.to_be_bytes());
    }
    put_attr(out, NFULA_PAYLOAD, p.payload);
    let len = out.len() - start;
    let flags: u16 = if multi { NLM_F_MULTI } else { 0 };
    let mut nlh = Vec::with_capacity(NLMSG_HDRLEN);
    nlh.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
    nlh.extend_from_slice(&NFULNL_PACKET_TYPE.to_ne_bytes());
    nlh.extend_from_slice(&flags.to_ne_bytes());
    nlh.extend_from_slice(&[0; 8]); // seq, portid
    out[start..start + NLMSG_HDRLEN].copy_from_slice(&nlh);
}

/// Appends an `NLMSG_DONE` (the kernel ends a multi-part batch with one).
pub fn encode_done(out: &mut Vec<u8>) {
    out.extend_from_slice(&20u32.to_ne_bytes());
    out.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
    out.extend_from_slice(&NLM_F_MULTI.to_ne_bytes());
    out.extend_from_slice(&[0; 12]);
}

fn put_attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = NLA_HDRLEN + value.len();
    out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len() + align4(len) - len, 0);
}

/// A minimal L3+L4 packet (IPv4 without options or IPv6 without extension headers) with a
/// TCP (20-byte) or UDP (8-byte) header, for tests and benchmarks.
pub fn ip_packet(src: IpAddr, dst: IpAddr, proto: u8, sport: u16, dport: u16) -> Vec<u8> {
    let l4_len: usize = if proto == 6 { 20 } else { 8 };
    let mut l4 = vec![0u8; l4_len];
    l4[0..2].copy_from_slice(&sport.to_be_bytes());
    l4[2..4].copy_from_slice(&dport.to_be_bytes());
    let mut p = Vec::with_capacity(40 + l4_len);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = u16::try_from(20 + l4_len).unwrap_or(u16::MAX);
            p.extend_from_slice(&[0x45, 0]);
            p.extend_from_slice(&total.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let s6 = match s {
                IpAddr::V6(a) => a,
                IpAddr::V4(a) => a.to_ipv6_mapped(),
            };
            let d6 = match d {
                IpAddr::V6(a) => a,
                IpAddr::V4(a) => a.to_ipv6_mapped(),
            };
            p.extend_from_slice(&[0x60, 0, 0, 0]);
            p.extend_from_slice(&u16::try_from(l4_len).unwrap_or(u16::MAX).to_be_bytes());
            p.extend_from_slice(&[proto, 64]);
            p.extend_from_slice(&s6.octets());
            p.extend_from_slice(&d6.octets());
        }
    }
    p.extend_from_slice(&l4);
    p
}
