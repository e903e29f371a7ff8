//! nf_tables over netlink: the ruleset generation (`NFT_MSG_GETGEN`) and the elements of
//! one of our sets (`NFT_MSG_GETSETELEM` dump), decoded into [`Element`]s; and the one
//! thing written this way, element additions and removals in one transaction
//! ([`write`], `netlink_write.rs`). Tables, sets, chains and rules are written by nft only.
//!
//! Used by [`super::NftDataplane::read_table`] so that verifying a large set does not go
//! through `nft -j list table` (nft's listing of interval sets and its JSON output cost
//! more than the apply at 10k elements). Strict on purpose: an element carrying anything
//! but a key (and key end, interval-end flag, nft's "interval open" user data) is not one
//! we could have written and is reported as [`Decoded::Unrecognized`]; the caller then
//! reads the table the slow, general way (`nft -j list table`), which shows it.
//!
//! Wire layout (kernel 5.6+ pipapo and rbtree, nft 1.0.x): keys in network byte order,
//! each field of a concatenation padded to 4 bytes. `inet_service` interval sets hold a
//! start element per range and an end element (`NFT_SET_ELEM_INTERVAL_END`, key = last
//! port + 1), except for a range that ends at 65535 (start flagged "interval open" in its
//! user data); nft also adds an end element at 0 when no range starts at 0. `ipv4_addr` /
//! `ipv6_addr` interval sets (address-list prefixes) have the same shape at 4 and 16
//! bytes; their hash sets hold one key per address. Concatenated
//! interval sets hold one element per range with `KEY` (first) and `KEY_END` (last).

use crate::nflog::wire::{Attrs, align4, be32, ne16, ne32};
use ipnet::{Ipv4Net, Ipv6Net};
use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};
use nix::sys::socket::{MsgFlags, setsockopt, sockopt};
use nix::sys::time::TimeVal;
use portcullis_policy::PortRange;
use portcullis_policy::ruleset::{Element, SetKey};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};

pub(super) const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub(super) const NFT_MSG_NEWSETELEM: u16 = 12;
pub(super) const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;

pub(super) const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
pub(super) const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
pub(super) const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

const NFPROTO_UNSPEC: u8 = 0;
pub(super) const NFPROTO_INET: u8 = 1;

const NFTA_GEN_ID: u16 = 1;
pub(super) const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub(super) const NFTA_SET_ELEM_LIST_SET: u16 = 2;
pub(super) const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
pub(super) const NFTA_LIST_ELEM: u16 = 1;
pub(super) const NFTA_SET_ELEM_KEY: u16 = 1;
pub(super) const NFTA_SET_ELEM_FLAGS: u16 = 3;
pub(super) const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_SET_ELEM_PAD: u16 = 8;
pub(super) const NFTA_SET_ELEM_KEY_END: u16 = 10;
pub(super) const NFTA_DATA_VALUE: u16 = 1;
pub(super) const NFT_SET_ELEM_INTERVAL_END: u32 = 1;
/// libnftnl's element user data: TLV type of the flags, and the "interval open" flag.
const NFTNL_UDATA_SET_ELEM_FLAGS: u8 = 1;
const NFTNL_SET_ELEM_F_INTERVAL_OPEN: u32 = 1;

/// Receive buffer: the kernel fills dump datagrams up to 32 KiB.
const RECV_BUF: usize = 64 * 1024;
/// A dump is synchronous in the kernel; this only guards against a wedged socket.
const RECV_TIMEOUT_SECS: i64 = 2;

/// A set's elements as read from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// Every kernel element was one of our shapes (not normalized yet).
    Elements(Vec<Element>),
    /// Something we would not have written; why.
    Unrecognized(String),
}

/// A NETLINK_NETFILTER socket in the calling thread's network namespace.
pub struct NfTables {
    link: Link,
    seq: u32,
    buf: Vec<u8>,
}

/// Where the datagrams come from: the kernel (each one received may also be kept, to
/// make fuzzing seeds), or recorded answers handed out in order whatever is asked (the
/// fuzz target drives the decoding with them; none left reads as a receive timeout).
enum Link {
    Kernel {
        sock: Socket,
        record: Option<Vec<Vec<u8>>>,
    },
    Replay(std::collections::VecDeque<Vec<u8>>),
}

impl NfTables {
    pub fn open() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        setsockopt(
            &sock,
            sockopt::ReceiveTimeout,
            &TimeVal::new(RECV_TIMEOUT_SECS, 0),
        )
        .map_err(io::Error::from)?;
        // Acks without the request echoed (an element batch is megabytes), with the
        // kernel's reason and the offending attribute's offset.
        sock.set_cap_ack(true)?;
        sock.set_ext_ack(true)?;
        Ok(Self {
            link: Link::Kernel { sock, record: None },
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    /// Another socket like this one, opened now in the calling thread's namespace, for a
    /// second thread to dump with: `None` when replaying or recording (the datagrams
    /// must come in one order).
    pub(super) fn fork(&self) -> io::Result<Option<Self>> {
        match &self.link {
            Link::Kernel { record: None, .. } => Self::open().map(Some),
            Link::Kernel { .. } | Link::Replay(_) => Ok(None),
        }
    }

    /// Answers every request with the next of `datagrams` (fuzzing and tests).
    pub(super) fn replay(datagrams: Vec<Vec<u8>>) -> Self {
        Self {
            link: Link::Replay(datagrams.into()),
            seq: 0,
            buf: vec![0; RECV_BUF],
        }
    }

    /// From now on keep a copy of every datagram received from the kernel.
    pub(super) fn start_recording(&mut self) {
        if let Link::Kernel { record, .. } = &mut self.link {
            *record = Some(Vec::new());
        }
    }

    /// The datagrams kept since [`Self::start_recording`].
    pub(super) fn recorded(&mut self) -> Vec<Vec<u8>> {
        match &mut self.link {
            Link::Kernel { record, .. } => record.take().unwrap_or_default(),
            Link::Replay(_) => Vec::new(),
        }
    }

    /// The ruleset generation: it changes with every committed transaction.
    pub fn generation(&mut self) -> io::Result<u32> {
        let seq = self.send(NFT_MSG_GETGEN, NLM_F_REQUEST, NFPROTO_UNSPEC, &[])?;
        let mut id = None;
        self.receive(seq, false, |kind, attrs| {
            if kind == NFT_MSG_NEWGEN {
                id = Attrs::new(attrs)
                    .find(|(t, _)| *t == NFTA_GEN_ID)
                    .and_then(|(_, v)| be32(v, 0));
            }
            Ok(())
        })?;
        id.ok_or_else(|| invalid("NFT_MSG_NEWGEN without a generation id"))
    }

    /// The elements of set `set` (of key type `key`) in table `inet <table>`.
    pub fn set_elements(&mut self, table: &str, set: &str, key: SetKey) -> io::Result<Decoded> {
        Ok(match self.raw_set_elements(table, set)? {
            Ok(raw) => decode(key, raw),
            Err(why) => Decoded::Unrecognized(why),
        })
    }

    /// The elements of set `set` in table `inet <table>` as the kernel holds them, or why
    /// one of them is not of our shapes.
    pub(super) fn raw_set_elements(
        &mut self,
        table: &str,
        set: &str,
    ) -> io::Result<Result<Vec<RawElement>, String>> {
        let mut attrs = Vec::new();
        push_attr_str(&mut attrs, NFTA_SET_ELEM_LIST_TABLE, table);
        push_attr_str(&mut attrs, NFTA_SET_ELEM_LIST_SET, set);
        let seq = self.send(
            NFT_MSG_GETSETELEM,
            NLM_F_REQUEST | NLM_F_DUMP,
            NFPROTO_INET,
            &attrs,
        )?;
        let mut raw = Vec::new();
        let mut odd: Option<String> = None;
        self.receive(seq, true, |kind, attrs| {
            if kind != NFT_MSG_NEWSETELEM {
                return Err(invalid(&format!("unexpected message type {kind}")));
            }
            for (t, v) in Attrs::new(attrs) {
                match t {
                    NFTA_SET_ELEM_LIST_TABLE | NFTA_SET_ELEM_LIST_SET => {
                        let name = if t == NFTA_SET_ELEM_LIST_TABLE {
                            table
                        } else {
                            set
                        };
                        if v.split(|b| *b == 0).next() != Some(name.as_bytes()) {
                            return Err(invalid("element dump of another set"));
                        }
                    }
                    NFTA_SET_ELEM_LIST_ELEMENTS => {
                        for (lt, elem) in Attrs::new(v) {
                            if lt != NFTA_LIST_ELEM {
                                return Err(invalid("unexpected attribute in element list"));
                            }
                            match RawElement::parse(elem) {
                                Ok(e) => raw.push(e),
                                Err(why) => {
                                    odd.get_or_insert(why);
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            Ok(())
        })?;
        Ok(match odd {
            Some(why) => Err(why),
            None => Ok(raw),
        })
    }

    /// One request (a dump, or a get answered by one message): the attributes of each
    /// answer, owned.
    pub(super) fn request(
        &mut self,
        msg: u16,
        dump: bool,
        family: u8,
        attrs: &[u8],
    ) -> io::Result<Vec<Vec<u8>>> {
        let flags = if dump {
            NLM_F_REQUEST | NLM_F_DUMP
        } else {
            NLM_F_REQUEST
        };
        let seq = self.send(msg, flags, family, attrs)?;
        let mut out = Vec::new();
        self.receive(seq, dump, |_, a| {
            out.push(a.to_vec());
            Ok(())
        })?;
        Ok(out)
    }

    fn send(&mut self, msg: u16, flags: u16, family: u8, attrs: &[u8]) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let len = NLMSG_HDRLEN + NFGENMSG_LEN + attrs.len();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
        out.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | msg).to_ne_bytes());
        out.extend_from_slice(&flags.to_ne_bytes());
        out.extend_from_slice(&self.seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        // nfgenmsg: family, version 0, resource id 0 (big endian).
        out.extend_from_slice(&[family, 0, 0, 0]);
        out.extend_from_slice(attrs);
        if let Link::Kernel { sock, .. } = &self.link {
            sock.send(&out, 0)?;
        }
        Ok(self.seq)
    }

    /// Sends one nfnetlink batch in one datagram (the kernel takes a batch only whole),
    /// the socket's send buffer raised to hold it; the receive buffer too, for its acks.
    fn send_batch(&mut self, batch: &[u8]) -> io::Result<()> {
        if let Link::Kernel { sock, .. } = &self.link {
            let size = batch.len().saturating_add(64 * 1024);
            setsockopt(sock, sockopt::SndBufForce, &size).map_err(io::Error::from)?;
            setsockopt(sock, sockopt::RcvBufForce, &(4 << 20)).map_err(io::Error::from)?;
            let n = sock.send(batch, 0)?;
            if n != batch.len() {
                return Err(invalid("netlink batch sent in part"));
            }
        }
        Ok(())
    }

    /// [`Self::recv`] without waiting: `WouldBlock` when nothing is queued.
    fn recv_nonblocking(&mut self) -> io::Result<usize> {
        match &mut self.link {
            Link::Kernel { sock, .. } => {
                let mut view = &mut self.buf[..];
                sock.recv(
                    &mut view,
                    (MsgFlags::MSG_TRUNC | MsgFlags::MSG_DONTWAIT).bits(),
                )
            }
            Link::Replay(_) => self.recv(),
        }
    }

    /// One datagram into `self.buf`: its real length (more than the buffer: cut).
    fn recv(&mut self) -> io::Result<usize> {
        match &mut self.link {
            Link::Kernel { sock, record } => {
                // MSG_TRUNC: `recv` returns the datagram's real length, so a cut one is
                // noticed.
                let n = {
                    let mut view = &mut self.buf[..];
                    sock.recv(&mut view, MsgFlags::MSG_TRUNC.bits())?
                };
                if let Some(record) = record {
                    record.push(self.buf[..n.min(self.buf.len())].to_vec());
                }
                Ok(n)
            }
            Link::Replay(datagrams) => {
                let d = datagrams
                    .pop_front()
                    .ok_or_else(|| io::Error::from(io::ErrorKind::WouldBlock))?;
                let n = d.len().min(self.buf.len());
                self.buf[..n].copy_from_slice(&d[..n]);
                Ok(d.len())
            }
        }
    }

    /// Receives the answer to request `seq`, calling `on_msg(nft message type, attributes)`
    /// for each message; until NLMSG_DONE for a dump, else until the first message.
    fn receive(
        &mut self,
        seq: u32,
        dump: bool,
        mut on_msg: impl FnMut(u16, &[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        loop {
            let n = self.recv()?;
            if n > self.buf.len() {
                return Err(invalid("netlink datagram larger than the receive buffer"));
            }
            let mut rest = &self.buf[..n];
            while rest.len() >= NLMSG_HDRLEN {
                let len = ne32(rest, 0).map_or(0, |l| l as usize);
                let kind = ne16(rest, 4).unwrap_or(0);
                let msg_seq = ne32(rest, 8).unwrap_or(0);
                if len < NLMSG_HDRLEN || len > rest.len() {
                    return Err(invalid("malformed netlink message"));
                }
                let body = &rest[NLMSG_HDRLEN..len];
                rest = rest.get(align4(len)..).unwrap_or(&[]);
                if msg_seq != seq {
                    continue; // a late answer to an earlier request
                }
                match kind {
                    NLMSG_ERROR => {
                        let code = body
                            .get(..4)
                            .and_then(|b| b.try_into().ok())
                            .map_or(0, i32::from_ne_bytes);
                        if code == 0 {
                            return Ok(()); // an ACK
                        }
                        // Saturating: i32::MIN (fuzzing found it) must not overflow.
                        return Err(io::Error::from_raw_os_error(code.saturating_neg()));
                    }
                    NLMSG_DONE => return Ok(()),
                    _ => {
                        let attrs = body.get(NFGENMSG_LEN..).unwrap_or(&[]);
                        on_msg(kind & 0xff, attrs)?;
                        if !dump {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
}

pub(super) fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

pub(super) fn push_attr_str(out: &mut Vec<u8>, kind: u16, value: &str) {
    let len = 4 + value.len() + 1;
    out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value.as_bytes());
    out.push(0);
    out.resize(out.len() + align4(len) - len, 0);
}

/// One kernel element, as far as we accept it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RawElement {
    pub key: Vec<u8>,
    pub key_end: Option<Vec<u8>>,
    pub interval_end: bool,
    pub interval_open: bool,
}

impl RawElement {
    /// The element, or why it is not one of ours.
    fn parse(attrs: &[u8]) -> Result<Self, String> {
        let mut e = RawElement {
            key: Vec::new(),
            key_end: None,
            interval_end: false,
            interval_open: false,
        };
        let mut has_key = false;
        for (t, v) in Attrs::new(attrs) {
            match t {
                NFTA_SET_ELEM_KEY => {
                    e.key = data_value(v).ok_or("element key without a value")?;
                    has_key = true;
                }
                NFTA_SET_ELEM_KEY_END => {
                    e.key_end = Some(data_value(v).ok_or("element key end without a value")?);
                }
                NFTA_SET_ELEM_FLAGS => match be32(v, 0) {
                    Some(0) => {}
                    Some(NFT_SET_ELEM_INTERVAL_END) => e.interval_end = true,
                    f => return Err(format!("element flags {f:?}")),
                },
                NFTA_SET_ELEM_USERDATA => {
                    // Only nft's own "interval open" flag; a comment is not ours.
                    match v {
                        [NFTNL_UDATA_SET_ELEM_FLAGS, 4, flags @ ..]
                            if flags.len() == 4
                                && ne32(flags, 0) == Some(NFTNL_SET_ELEM_F_INTERVAL_OPEN) =>
                        {
                            e.interval_open = true;
                        }
                        _ => return Err("element user data (comment?)".to_owned()),
                    }
                }
                NFTA_SET_ELEM_PAD => {}
                other => return Err(format!("element attribute {other}")),
            }
        }
        if has_key {
            Ok(e)
        } else {
            Err("element without a key".to_owned())
        }
    }
}

/// `NFTA_DATA_VALUE` inside a nested data attribute.
fn data_value(nested: &[u8]) -> Option<Vec<u8>> {
    let mut attrs = Attrs::new(nested);
    let (t, v) = attrs.next()?;
    (t == NFTA_DATA_VALUE && attrs.next().is_none()).then(|| v.to_vec())
}

/// The raw elements of a set of `key` as [`Element`]s, if they are all of our shape.
fn decode(key: SetKey, raw: Vec<RawElement>) -> Decoded {
    let decoded = match key {
        SetKey::Port => port_intervals(raw),
        SetKey::V4Port => raw
            .iter()
            .map(|e| {
                let (a, p) = concat_v4(&e.key)?;
                let (b, q) = concat_v4(e.key_end.as_deref()?)?;
                let ports = PortRange::new(p, q)?;
                (!e.interval_end && !e.interval_open && a <= b).then_some(())?;
                Some(
                    ipnet::Ipv4Subnets::new(a, b, 0)
                        .map(|n| Element::V4Port(n, ports))
                        .collect::<Vec<_>>(),
                )
            })
            .collect::<Option<Vec<_>>>()
            .map(|v| v.into_iter().flatten().collect()),
        SetKey::V6Port => raw
            .iter()
            .map(|e| {
                let (a, p) = concat_v6(&e.key)?;
                let (b, q) = concat_v6(e.key_end.as_deref()?)?;
                let ports = PortRange::new(p, q)?;
                (!e.interval_end && !e.interval_open && a <= b).then_some(())?;
                Some(
                    ipnet::Ipv6Subnets::new(a, b, 0)
                        .map(|n| Element::V6Port(n, ports))
                        .collect::<Vec<_>>(),
                )
            })
            .collect::<Option<Vec<_>>>()
            .map(|v| v.into_iter().flatten().collect()),
        SetKey::V4Addr => raw
            .iter()
            .map(|e| Some(Element::V4(Ipv4Net::from(v4(single_key(e)?)?))))
            .collect(),
        SetKey::V6Addr => raw
            .iter()
            .map(|e| Some(Element::V6(Ipv6Net::from(v6(single_key(e)?)?))))
            .collect(),
        SetKey::V4Net => intervals(raw, 4).map(|ranges| {
            ranges
                .into_iter()
                .flat_map(|(a, b)| {
                    // Width 4: both bounds fit in a u32.
                    let a = Ipv4Addr::from(u32::try_from(a).unwrap_or(u32::MAX));
                    let b = Ipv4Addr::from(u32::try_from(b).unwrap_or(u32::MAX));
                    ipnet::Ipv4Subnets::new(a, b, 0).map(Element::V4)
                })
                .collect()
        }),
        SetKey::V6Net => intervals(raw, 16).map(|ranges| {
            ranges
                .into_iter()
                .flat_map(|(a, b)| {
                    ipnet::Ipv6Subnets::new(Ipv6Addr::from(a), Ipv6Addr::from(b), 0)
                        .map(Element::V6)
                })
                .collect()
        }),
    };
    match decoded {
        Some(elements) => Decoded::Elements(elements),
        None => Decoded::Unrecognized(format!("elements of a {key} set not as nft writes them")),
    }
}

/// A port (2 bytes, network order).
fn port(b: &[u8]) -> Option<u16> {
    match b {
        [hi, lo] => Some(u16::from_be_bytes([*hi, *lo])),
        _ => None,
    }
}

/// `ipv4_addr . inet_service`: 4 bytes address, 2 bytes port, 2 bytes zero padding.
fn concat_v4(b: &[u8]) -> Option<(Ipv4Addr, u16)> {
    match b {
        [a, b, c, d, p0, p1, 0, 0] => Some((Ipv4Addr::new(*a, *b, *c, *d), port(&[*p0, *p1])?)),
        _ => None,
    }
}

/// `ipv6_addr . inet_service`: 16 bytes address, 2 bytes port, 2 bytes zero padding.
fn concat_v6(b: &[u8]) -> Option<(Ipv6Addr, u16)> {
    if b.len() != 20 || b[18..] != [0, 0] {
        return None;
    }
    let addr: [u8; 16] = b[..16].try_into().ok()?;
    Some((Ipv6Addr::from(addr), port(&b[16..18])?))
}

/// The key of a hash-set element: a key and nothing else.
fn single_key(e: &RawElement) -> Option<&[u8]> {
    (e.key_end.is_none() && !e.interval_end && !e.interval_open).then_some(e.key.as_slice())
}

fn v4(b: &[u8]) -> Option<Ipv4Addr> {
    let b: [u8; 4] = b.try_into().ok()?;
    Some(Ipv4Addr::from(b))
}

fn v6(b: &[u8]) -> Option<Ipv6Addr> {
    let b: [u8; 16] = b.try_into().ok()?;
    Some(Ipv6Addr::from(b))
}

/// A big-endian key of exactly `width` bytes (at most 16) as a number.
fn key_number(b: &[u8], width: usize) -> Option<u128> {
    (b.len() == width && width <= 16)
        .then(|| b.iter().fold(0u128, |n, byte| (n << 8) | u128::from(*byte)))
}

/// The ranges of an `inet_service` interval set from its start and end elements.
fn port_intervals(raw: Vec<RawElement>) -> Option<Vec<Element>> {
    intervals(raw, 2)?
        .into_iter()
        .map(|(a, b)| {
            let a = u16::try_from(a).ok()?;
            let b = u16::try_from(b).ok()?;
            Some(Element::Port(PortRange::new(a, b)?))
        })
        .collect()
}

/// The inclusive ranges of a one-field interval set whose keys are `width` bytes (2 for
/// `inet_service`, 4 for `ipv4_addr`, 16 for `ipv6_addr`), from its start elements and
/// end elements (key = last + 1); a range reaching the largest key has no end element,
/// its start is "interval open". nft's end element at 0 (when no range starts at 0) is
/// skipped; touching ranges stay apart.
pub(super) fn intervals(raw: Vec<RawElement>, width: usize) -> Option<Vec<(u128, u128)>> {
    let max = if width >= 16 {
        u128::MAX
    } else {
        (1u128 << (8 * width)) - 1
    };
    let mut points = raw
        .into_iter()
        .map(|e| {
            e.key_end.is_none().then_some(())?;
            Some((key_number(&e.key, width)?, e.interval_end, e.interval_open))
        })
        .collect::<Option<Vec<_>>>()?;
    // Ascending; at one key the end (of the range before) comes before the start.
    points.sort_unstable_by_key(|&(key, end, _)| (key, !end));
    let mut points = points.as_slice();
    // nft's end element at 0 when no range starts there.
    if let [(0, true, false), rest @ ..] = points {
        points = rest;
    }
    let mut out = Vec::new();
    loop {
        match points {
            [] => return Some(out),
            [(start, false, true)] => {
                out.push((*start, max));
                return Some(out);
            }
            [(start, false, false), (end, true, false), rest @ ..] if end > start => {
                out.push((*start, end - 1));
                points = rest;
            }
            _ => return None,
        }
    }
}

#[path = "netlink_write.rs"]
mod write;
pub(crate) use write::ElementOp;

#[cfg(test)]
mod tests {
    use super::*;

    fn start(p: u16) -> RawElement {
        RawElement {
            key: p.to_be_bytes().to_vec(),
            key_end: None,
            interval_end: false,
            interval_open: false,
        }
    }

    fn end(p: u16) -> RawElement {
        RawElement {
            interval_end: true,
            ..start(p)
        }
    }

    fn ports(d: Decoded) -> Vec<String> {
        match d {
            Decoded::Elements(e) => e.iter().map(ToString::to_string).collect(),
            Decoded::Unrecognized(why) => vec![format!("unrecognized: {why}")],
        }
    }

    #[test]
    fn port_intervals_as_the_kernel_dumps_them() {
        // Dumped in descending order, as rbtree does: 0, 22, 80-90, 65535 (open).
        let open = RawElement {
            interval_open: true,
            ..start(65535)
        };
        let raw = vec![
            open,
            end(91),
            start(80),
            end(23),
            start(22),
            end(1),
            start(0),
        ];
        assert_eq!(
            ports(decode(SetKey::Port, raw)),
            ["0", "22", "80-90", "65535"]
        );
        // nft's end at 0 when no range starts at 0; touching ranges stay apart.
        let raw = vec![end(0), start(25), end(26), start(26), end(27)];
        assert_eq!(ports(decode(SetKey::Port, raw)), ["25", "26"]);
        assert_eq!(ports(decode(SetKey::Port, vec![])), Vec::<String>::new());
    }

    #[test]
    fn odd_port_intervals_are_unrecognized() {
        for raw in [
            vec![start(25)],                     // no end, not open
            vec![start(25), start(30), end(31)], // two starts in a row
            vec![end(5), start(25), end(26)],    // an end that ends nothing
            vec![RawElement {
                key: vec![0, 0, 25],
                ..start(0)
            }],
        ] {
            assert!(
                matches!(decode(SetKey::Port, raw), Decoded::Unrecognized(_)),
                "accepted"
            );
        }
    }

    #[test]
    fn address_sets_as_the_kernel_dumps_them() {
        let k = |b: &[u8]| RawElement {
            key: b.to_vec(),
            ..start(0)
        };
        let hash = vec![k(&[10, 0, 0, 1]), k(&[192, 0, 2, 7])];
        assert_eq!(
            ports(decode(SetKey::V4Addr, hash)),
            ["10.0.0.1", "192.0.2.7"]
        );
        let mut six = [0u8; 16];
        six[..2].copy_from_slice(&[0x20, 0x01]);
        six[15] = 1;
        assert_eq!(ports(decode(SetKey::V6Addr, vec![k(&six)])), ["2001::1"]);
        let flagged = RawElement {
            interval_end: true,
            ..k(&[10, 0, 0, 1])
        };
        for (key, raw) in [
            (SetKey::V4Addr, vec![flagged]),
            (SetKey::V4Addr, vec![k(&six)]),
            (SetKey::V6Addr, vec![k(&[10, 0, 0, 1])]),
        ] {
            assert!(matches!(decode(key, raw), Decoded::Unrecognized(_)));
        }
        // 0.0.0.0/2 (no end at 0 then), touching /24s, 255.255.255.0/24 (open).
        let end = |b: &[u8]| RawElement {
            interval_end: true,
            ..k(b)
        };
        let open = RawElement {
            interval_open: true,
            ..k(&[255, 255, 255, 0])
        };
        let raw = vec![
            open,
            end(&[198, 51, 102, 0]),
            k(&[198, 51, 101, 0]),
            end(&[198, 51, 101, 0]),
            k(&[198, 51, 100, 0]),
            end(&[64, 0, 0, 0]),
            k(&[0, 0, 0, 0]),
        ];
        assert_eq!(
            ports(decode(SetKey::V4Net, raw)),
            [
                "0.0.0.0/2",
                "198.51.100.0/24",
                "198.51.101.0/24",
                "255.255.255.0/24"
            ]
        );
        // nft's end at 0; a range that is no prefix is its prefixes.
        let raw = vec![end(&[0; 4]), k(&[10, 0, 0, 1]), end(&[10, 0, 0, 4])];
        assert_eq!(
            ports(decode(SetKey::V4Net, raw)),
            ["10.0.0.1", "10.0.0.2/31"]
        );
        let mut top = [0xffu8; 16];
        top[2..].fill(0);
        let v6 = vec![RawElement {
            interval_open: true,
            ..k(&top)
        }];
        assert_eq!(ports(decode(SetKey::V6Net, v6)), ["ffff::/16"]);
        for raw in [
            vec![k(&[10, 0, 0, 0])],
            vec![k(&[10, 0, 0, 0]), end(&[10, 0, 0])],
            vec![k(&six), end(&[10, 0, 0, 9])],
        ] {
            assert!(matches!(
                decode(SetKey::V4Net, raw),
                Decoded::Unrecognized(_)
            ));
        }
    }

    #[test]
    fn concatenations_become_prefixes() {
        let e = |a: [u8; 4], p: u16, b: [u8; 4], q: u16| RawElement {
            key: [&a[..], &p.to_be_bytes(), &[0, 0]].concat(),
            key_end: Some([&b[..], &q.to_be_bytes(), &[0, 0]].concat()),
            interval_end: false,
            interval_open: false,
        };
        let raw = vec![
            e([10, 0, 0, 0], 8000, [10, 255, 255, 255], 8100),
            e([192, 0, 2, 7], 22, [192, 0, 2, 7], 22),
            e([10, 1, 0, 1], 443, [10, 1, 0, 5], 443),
        ];
        assert_eq!(
            ports(decode(SetKey::V4Port, raw)),
            [
                "10.0.0.0/8 . 8000-8100",
                "192.0.2.7/32 . 22",
                "10.1.0.1/32 . 443",
                "10.1.0.2/31 . 443",
                "10.1.0.4/31 . 443"
            ]
        );
        let mut bad = e([10, 0, 0, 0], 1, [10, 0, 0, 0], 1);
        bad.key_end = None;
        assert!(matches!(
            decode(SetKey::V4Port, vec![bad]),
            Decoded::Unrecognized(_)
        ));
    }

    #[test]
    fn element_attributes_we_do_not_write_are_unrecognized() {
        fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
            let len = 4 + value.len();
            let mut out = Vec::new();
            out.extend_from_slice(&u16::try_from(len).unwrap_or(0).to_ne_bytes());
            out.extend_from_slice(&kind.to_ne_bytes());
            out.extend_from_slice(value);
            out.resize(align4(len), 0);
            out
        }
        let key = attr(NFTA_SET_ELEM_KEY, &attr(NFTA_DATA_VALUE, &[0, 22]));
        assert_eq!(RawElement::parse(&key), Ok(start(22)));
        let open = [
            key.clone(),
            attr(NFTA_SET_ELEM_USERDATA, &[1, 4, 1, 0, 0, 0]),
        ]
        .concat();
        assert!(RawElement::parse(&open).is_ok_and(|e| e.interval_open));
        let comment = [
            key.clone(),
            attr(NFTA_SET_ELEM_USERDATA, &[0, 3, b'h', b'i', 0]),
        ]
        .concat();
        assert!(RawElement::parse(&comment).is_err());
        let timeout = [key.clone(), attr(4, &[0; 8])].concat();
        assert!(RawElement::parse(&timeout).is_err());
        let catchall = [key, attr(NFTA_SET_ELEM_FLAGS, &2u32.to_be_bytes())].concat();
        assert!(RawElement::parse(&catchall).is_err());
    }
}
