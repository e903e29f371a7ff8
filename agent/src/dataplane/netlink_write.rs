//! Element additions and removals over netlink, in one nf_tables transaction: an nfnetlink
//! batch (`NFNL_MSG_BATCH_BEGIN` .. `NFNL_MSG_BATCH_END`) of `NFT_MSG_DELSETELEM` and
//! `NFT_MSG_NEWSETELEM` messages, every one with `NLM_F_ACK`, additions with
//! `NLM_F_CREATE | NLM_F_EXCL` (adding a present element fails, as removing an absent
//! one does). The kernel handles the whole batch inside `sendmsg` and commits it all or
//! aborts it all; every answer is queued by the time `send` returns, so they are read
//! without blocking.
//!
//! Elements are encoded as nft 1.0.x writes them on `add element`: a hash-set key; for a
//! one-field interval set a start element and an end element (`NFT_SET_ELEM_INTERVAL_END`,
//! key = last + 1), or, for a range reaching the largest key, a start flagged "interval
//! open" in its user data and no end; for a concatenation `KEY` + `KEY_END`. nft's end
//! element at 0 (written only when a set is created) is never added or removed here. The
//! kernel matches an element by key *and* interval-end flag, so removing a prefix leaves
//! the start of a touching neighbour (same key, other flag) in place. Part of
//! [`super`]: it owns no socket of its own.

use super::{
    NFNL_SUBSYS_NFTABLES, NFPROTO_INET, NFT_SET_ELEM_INTERVAL_END, NFTA_DATA_VALUE, NFTA_LIST_ELEM,
    NFTA_SET_ELEM_FLAGS, NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_KEY_END, NFTA_SET_ELEM_LIST_ELEMENTS,
    NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_USERDATA, NLM_F_REQUEST,
    NLMSG_ERROR, NLMSG_HDRLEN, NfTables, invalid, push_attr_str,
};
use crate::nflog::wire::{align4, ne16, ne32};
use portcullis_policy::ruleset::{Element, SetKey};
use std::io;

const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_DELSETELEM: u16 = 14;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
/// Reply flag: extended-ack attributes follow the echoed header.
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSGERR_ATTR_OFFS: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;
/// nft's element user data "interval open" (see [`super::RawElement`]).
const UDATA_INTERVAL_OPEN: [u8; 6] = [1, 4, 1, 0, 0, 0];
/// Element bytes per message: far below the 64 KiB an attribute length can say.
const MESSAGE_ELEMENTS_BYTES: usize = 32 * 1024;

/// One element change as the kernel takes it.
pub(crate) struct ElementOp<'a> {
    pub set: &'a str,
    pub key: SetKey,
    pub element: &'a Element,
    pub add: bool,
}

/// A message of the batch: its sequence number and the elements in it, by the offset
/// of their attribute inside the message.
struct Sent<'a> {
    seq: u32,
    elements: Vec<(usize, &'a ElementOp<'a>)>,
}

impl NfTables {
    /// Applies `ops` (removals first, then additions, in the order given) in table `inet
    /// <table>` as one transaction. An error names the element the kernel refused when
    /// it says which (extended ack); nothing was changed then.
    pub(crate) fn update_elements(&mut self, table: &str, ops: &[ElementOp<'_>]) -> io::Result<()> {
        let mut batch = Vec::new();
        let mut sent: Vec<Sent<'_>> = Vec::new();
        self.seq = self.seq.wrapping_add(1);
        let begin = self.seq;
        push_msg(
            &mut batch,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            begin,
            0,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        let removals = ops.iter().filter(|o| !o.add);
        let additions = ops.iter().filter(|o| o.add);
        let mut group: Vec<&ElementOp<'_>> = Vec::new();
        let mut bytes = 0;
        for op in removals.chain(additions) {
            let split = group.last().is_some_and(|l| {
                l.set != op.set || l.add != op.add || bytes >= MESSAGE_ELEMENTS_BYTES
            });
            if split {
                sent.push(self.push_elements(&mut batch, table, &group)?);
                group.clear();
                bytes = 0;
            }
            bytes += 48;
            group.push(op);
        }
        if !group.is_empty() {
            sent.push(self.push_elements(&mut batch, table, &group)?);
        }
        self.seq = self.seq.wrapping_add(1);
        let end = self.seq;
        push_msg(
            &mut batch,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            end,
            0,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        if sent.is_empty() {
            return Ok(());
        }
        self.send_batch(&batch)?;
        self.batch_answers(begin, &sent)
    }

    /// One NEWSETELEM/DELSETELEM message of `group` (one set, one direction).
    fn push_elements<'a>(
        &mut self,
        batch: &mut Vec<u8>,
        table: &str,
        group: &[&'a ElementOp<'a>],
    ) -> io::Result<Sent<'a>> {
        let first = group
            .first()
            .ok_or_else(|| invalid("empty element group"))?;
        let mut attrs = Vec::new();
        push_attr_str(&mut attrs, NFTA_SET_ELEM_LIST_TABLE, table);
        push_attr_str(&mut attrs, NFTA_SET_ELEM_LIST_SET, first.set);
        let list_at = attrs.len();
        attrs.extend_from_slice(&[0, 0, 0, 0]);
        let mut elements = Vec::with_capacity(group.len());
        for op in group {
            for (key, end, open) in encode(op.key, op.element)? {
                // Offset in the message: header, nfgenmsg, attributes so far.
                elements.push((NLMSG_HDRLEN + 4 + attrs.len(), *op));
                let at = begin_nest(&mut attrs, NFTA_LIST_ELEM);
                let k = begin_nest(&mut attrs, NFTA_SET_ELEM_KEY);
                push_attr(&mut attrs, NFTA_DATA_VALUE, &key.0);
                end_nest(&mut attrs, k)?;
                if let Some(key_end) = key.1 {
                    let k = begin_nest(&mut attrs, NFTA_SET_ELEM_KEY_END);
                    push_attr(&mut attrs, NFTA_DATA_VALUE, &key_end);
                    end_nest(&mut attrs, k)?;
                }
                if end {
                    push_attr(
                        &mut attrs,
                        NFTA_SET_ELEM_FLAGS,
                        &NFT_SET_ELEM_INTERVAL_END.to_be_bytes(),
                    );
                }
                if open && first.add {
                    push_attr(&mut attrs, NFTA_SET_ELEM_USERDATA, &UDATA_INTERVAL_OPEN);
                }
                end_nest(&mut attrs, at)?;
            }
        }
        let list_len = u16::try_from(attrs.len() - list_at)
            .map_err(|_| invalid("element message too long"))?;
        attrs[list_at..list_at + 2].copy_from_slice(&list_len.to_ne_bytes());
        attrs[list_at + 2..list_at + 4]
            .copy_from_slice(&(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED).to_ne_bytes());
        let (msg, flags) = if first.add {
            (
                super::NFT_MSG_NEWSETELEM,
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            )
        } else {
            (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK)
        };
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        push_msg(
            batch,
            (NFNL_SUBSYS_NFTABLES << 8) | msg,
            flags,
            seq,
            NFPROTO_INET,
            0,
            &attrs,
        );
        Ok(Sent { seq, elements })
    }

    /// Reads the answers to a batch: one ack or error per message. The first error wins.
    fn batch_answers(&mut self, begin: u32, sent: &[Sent<'_>]) -> io::Result<()> {
        let mut acked = 0usize;
        let mut failure: Option<io::Error> = None;
        loop {
            let n = match self.recv_nonblocking() {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            if n > self.buf.len() {
                return Err(invalid("netlink datagram larger than the receive buffer"));
            }
            let mut rest = &self.buf[..n];
            while rest.len() >= NLMSG_HDRLEN {
                let len = ne32(rest, 0).map_or(0, |l| l as usize);
                let kind = ne16(rest, 4).unwrap_or(0);
                let flags = ne16(rest, 6).unwrap_or(0);
                if len < NLMSG_HDRLEN || len > rest.len() {
                    return Err(invalid("malformed netlink message"));
                }
                let body = &rest[NLMSG_HDRLEN..len];
                rest = rest.get(align4(len)..).unwrap_or(&[]);
                if kind != NLMSG_ERROR {
                    continue;
                }
                let code = body
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, i32::from_ne_bytes);
                let seq = ne32(body, 4 + 8).unwrap_or(0);
                acked += 1;
                if code == 0 || failure.is_some() {
                    continue;
                }
                let errno = io::Error::from_raw_os_error(code.saturating_neg());
                let (msg, offset) = if flags & NLM_F_ACK_TLVS != 0 {
                    ext_ack(body.get(4 + NLMSG_HDRLEN..).unwrap_or(&[]))
                } else {
                    (None, None)
                };
                let what = match sent.iter().find(|s| s.seq == seq) {
                    Some(s) => match offset
                        .and_then(|o| s.elements.iter().rev().find(|(at, _)| *at <= o as usize))
                    {
                        Some((_, op)) => format!(
                            "{} {} in set {}",
                            if op.add { "adding" } else { "removing" },
                            op.element,
                            op.set
                        ),
                        None => "an element message".to_owned(),
                    },
                    None if seq == begin => "the batch".to_owned(),
                    None => "the commit".to_owned(),
                };
                let detail = msg.map(|m| format!(" ({m})")).unwrap_or_default();
                failure = Some(io::Error::new(
                    errno.kind(),
                    format!("{what}: {errno}{detail}"),
                ));
            }
        }
        match failure {
            Some(e) => Err(e),
            None if acked < sent.len() => Err(invalid(&format!(
                "{acked} answers to {} element messages",
                sent.len()
            ))),
            None => Ok(()),
        }
    }
}

impl NfTables {
    /// Whether each of `elements` is in set `set` (of `key`) of table `inet <table>`: one
    /// `NFT_MSG_GETSETELEM` by key per element for a hash set (the kernel answers it from
    /// the hash, ENOENT when absent); for an interval set one dump of its elements,
    /// looked up exactly (the kernel's get of an interval key answers the range around
    /// it, not whether this prefix is an element).
    pub(crate) fn has_elements(
        &mut self,
        table: &str,
        set: &str,
        key: SetKey,
        elements: &[Element],
    ) -> io::Result<Vec<bool>> {
        if key.interval() {
            let held: std::collections::BTreeSet<Element> =
                match self.set_elements(table, set, key)? {
                    super::Decoded::Elements(e) => e.into_iter().collect(),
                    super::Decoded::Unrecognized(why) => {
                        return Err(invalid(&format!("set {set}: {why}")));
                    }
                };
            return Ok(elements.iter().map(|e| held.contains(e)).collect());
        }
        let mut out = Vec::with_capacity(elements.len());
        for element in elements {
            let [((k, _), _, _)] = encode(key, element)?
                .try_into()
                .map_err(|_| invalid(&format!("element {element} is not a key of a {key} set")))?;
            let mut attrs = Vec::new();
            push_attr_str(&mut attrs, NFTA_SET_ELEM_LIST_TABLE, table);
            push_attr_str(&mut attrs, NFTA_SET_ELEM_LIST_SET, set);
            let list = begin_nest(&mut attrs, NFTA_SET_ELEM_LIST_ELEMENTS);
            let at = begin_nest(&mut attrs, NFTA_LIST_ELEM);
            let kn = begin_nest(&mut attrs, NFTA_SET_ELEM_KEY);
            push_attr(&mut attrs, NFTA_DATA_VALUE, &k);
            end_nest(&mut attrs, kn)?;
            end_nest(&mut attrs, at)?;
            end_nest(&mut attrs, list)?;
            match self.request(super::NFT_MSG_GETSETELEM, false, NFPROTO_INET, &attrs) {
                Ok(answers) => out.push(!answers.is_empty()),
                Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOENT as i32) => {
                    out.push(false);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

/// The kernel elements of `element` in a set of `key`: ((key, key end), interval end,
/// interval open).
type Encoded = ((Vec<u8>, Option<Vec<u8>>), bool, bool);

fn encode(key: SetKey, element: &Element) -> io::Result<Vec<Encoded>> {
    let bad = || invalid(&format!("element {element} does not belong in a {key} set"));
    let one = |b: Vec<u8>| vec![((b, None), false, false)];
    Ok(match (key, element) {
        (SetKey::V4Addr, Element::V4(n)) if n.prefix_len() == 32 => one(n.addr().octets().to_vec()),
        (SetKey::V6Addr, Element::V6(n)) if n.prefix_len() == 128 => {
            one(n.addr().octets().to_vec())
        }
        (SetKey::V4Net, Element::V4(n)) => interval(
            u128::from(u32::from(n.network())),
            u128::from(u32::from(n.broadcast())),
            4,
        ),
        (SetKey::V6Net, Element::V6(n)) => {
            interval(u128::from(n.network()), u128::from(n.broadcast()), 16)
        }
        (SetKey::Port, Element::Port(p)) => interval(u128::from(p.start), u128::from(p.end), 2),
        (SetKey::V4Port, Element::V4Port(n, p)) => {
            let k = |a: std::net::Ipv4Addr, port: u16| {
                [&a.octets()[..], &port.to_be_bytes(), &[0, 0]].concat()
            };
            vec![(
                (k(n.network(), p.start), Some(k(n.broadcast(), p.end))),
                false,
                false,
            )]
        }
        (SetKey::V6Port, Element::V6Port(n, p)) => {
            let k = |a: std::net::Ipv6Addr, port: u16| {
                [&a.octets()[..], &port.to_be_bytes(), &[0, 0]].concat()
            };
            vec![(
                (k(n.network(), p.start), Some(k(n.broadcast(), p.end))),
                false,
                false,
            )]
        }
        _ => return Err(bad()),
    })
}

/// Start (and end, key = last + 1) elements of the inclusive range `a..=b` of
/// `width`-byte keys.
fn interval(a: u128, b: u128, width: usize) -> Vec<Encoded> {
    let bytes = |n: u128| n.to_be_bytes()[16 - width..].to_vec();
    let max = if width >= 16 {
        u128::MAX
    } else {
        (1u128 << (8 * width)) - 1
    };
    if b == max {
        vec![((bytes(a), None), false, true)]
    } else {
        vec![
            ((bytes(a), None), false, false),
            ((bytes(b + 1), None), true, false),
        ]
    }
}

/// The message and the offending attribute's offset of an extended ack.
fn ext_ack(tlvs: &[u8]) -> (Option<String>, Option<u32>) {
    let (mut msg, mut offset) = (None, None);
    for (t, v) in crate::nflog::wire::Attrs::new(tlvs) {
        match t {
            NLMSGERR_ATTR_MSG => {
                msg = Some(
                    String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or(&[]))
                        .into_owned(),
                );
            }
            NLMSGERR_ATTR_OFFS => offset = ne32(v, 0),
            _ => {}
        }
    }
    (msg, offset)
}

fn push_msg(
    out: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[u8],
) {
    let len = NLMSG_HDRLEN + 4 + attrs.len();
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(family);
    out.push(0);
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(attrs);
    out.resize(out.len() + align4(len) - len, 0);
}

fn push_attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len() + align4(len) - len, 0);
}

fn begin_nest(out: &mut Vec<u8>, kind: u16) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    at
}

fn end_nest(out: &mut [u8], at: usize) -> io::Result<()> {
    let len = u16::try_from(out.len() - at).map_err(|_| invalid("attribute too long"))?;
    out[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_policy::PortRange;

    #[test]
    fn elements_are_encoded_as_nft_writes_them() {
        let v4 = |s: &str| Element::V4(s.parse().unwrap());
        let e = encode(SetKey::V4Net, &v4("198.51.101.0/24")).unwrap();
        assert_eq!(
            e,
            [
                ((vec![198, 51, 101, 0], None), false, false),
                ((vec![198, 51, 102, 0], None), true, false)
            ]
        );
        let e = encode(SetKey::V4Net, &v4("240.0.0.0/4")).unwrap();
        assert_eq!(e, [((vec![240, 0, 0, 0], None), false, true)]);
        let e = encode(SetKey::V4Addr, &v4("10.0.0.1/32")).unwrap();
        assert_eq!(e, [((vec![10, 0, 0, 1], None), false, false)]);
        assert!(encode(SetKey::V4Addr, &v4("10.0.0.0/8")).is_err());
        assert!(encode(SetKey::V6Net, &v4("10.0.0.0/8")).is_err());
        let e = encode(
            SetKey::Port,
            &Element::Port(PortRange::new(80, 65535).unwrap()),
        )
        .unwrap();
        assert_eq!(e, [((vec![0, 80], None), false, true)]);
        let e = encode(SetKey::V6Net, &Element::V6("ffff::/16".parse().unwrap())).unwrap();
        assert_eq!(e.len(), 1);
    }
}
