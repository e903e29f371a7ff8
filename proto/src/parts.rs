//! Big address lists in pieces: a `Desired` whose lists' packed bytes exceed
//! [`PART_BYTES`] goes out as [`v1::ListPart`]s followed by the `Desired` with those fields
//! empty ([`split`]), and the agent puts it back together ([`Reassembly`]).
//!
//! Why: a gRPC stream's encode buffer keeps the capacity of the largest message it ever
//! encoded. A 1M-entry list is a 5.6 MB `Desired`; a controller that sent one to 1,000
//! sessions kept 5.6 GB. In parts no message is bigger than [`PART_BYTES`] (plus a few
//! bytes), and the parts are slices of the shared list bytes, so splitting copies nothing.
//!
//! Only for agents that announce [`crate::CAPABILITY_LIST_PARTS`]; others get the whole
//! message as before.

use crate::v1;
use prost::bytes::{Bytes, BytesMut};

/// The largest `data` of one part.
pub const PART_BYTES: usize = 32 << 10;

/// The messages that carry `desired`: itself when its lists fit in one part, else its
/// lists' packed fields in parts of at most `part_bytes`, then `desired` with those
/// fields empty and `in_parts` set.
pub fn split(mut desired: v1::Desired, part_bytes: usize) -> Vec<v1::ControllerMessage> {
    let part_bytes = part_bytes.max(1);
    let lists = desired.policy.as_mut().map(|p| &mut p.lists);
    let total: usize = lists
        .as_ref()
        .map(|l| l.iter().map(packed_len).sum())
        .unwrap_or(0);
    let mut out = Vec::new();
    if let Some(lists) = lists
        && total > part_bytes
    {
        out.reserve(total / part_bytes + lists.len() * 4 + 1);
        for list in lists.iter_mut() {
            if packed_len(list) == 0 {
                continue;
            }
            let name = list.name.clone();
            for (field, bytes) in fields_mut(list) {
                let data = std::mem::take(bytes);
                let mut at = 0;
                while at < data.len() {
                    let end = (at + part_bytes).min(data.len());
                    out.push(message(v1::controller_message::Msg::ListPart(
                        v1::ListPart {
                            name: name.clone(),
                            field: field as i32,
                            data: data.slice(at..end),
                        },
                    )));
                    at = end;
                }
            }
            list.in_parts = true;
        }
    }
    out.push(message(v1::controller_message::Msg::Desired(desired)));
    out
}

fn message(msg: v1::controller_message::Msg) -> v1::ControllerMessage {
    v1::ControllerMessage { msg: Some(msg) }
}

fn packed_len(l: &v1::AddressList) -> usize {
    l.v4.len() + l.v6.len() + l.removed_v4.len() + l.removed_v6.len()
}

fn fields_mut(l: &mut v1::AddressList) -> [(v1::ListField, &mut Bytes); 4] {
    [
        (v1::ListField::V4, &mut l.v4),
        (v1::ListField::V6, &mut l.v6),
        (v1::ListField::RemovedV4, &mut l.removed_v4),
        (v1::ListField::RemovedV6, &mut l.removed_v6),
    ]
}

/// Parts that do not add up to a `Desired` the agent can take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartError {
    #[error("list parts of more than {limit} bytes before one Desired")]
    TooLarge { limit: usize },
    #[error("list parts for more than {limit} list fields before one Desired")]
    TooMany { limit: usize },
    #[error("a list part without a valid field ({0})")]
    Field(i32),
    #[error("list {name:?} was sent in parts but also carries its own bytes")]
    Doubled { name: String },
}

/// Staged parts of the next `Desired` (an agent session holds one). Bounded: at most
/// `limit_bytes` bytes in all and [`MAX_STAGED_FIELDS`] (list, field) pairs; a peer
/// that sends more gets an error (the session should end, as on an oversized message).
#[derive(Debug)]
pub struct Reassembly {
    staged: Vec<(String, v1::ListField, BytesMut)>,
    bytes: usize,
    limit_bytes: usize,
}

/// (list, field) pairs staged at most before one `Desired` (four per list).
pub const MAX_STAGED_FIELDS: usize = 4 * 1024;

impl Reassembly {
    /// Staging at most `limit_bytes` (the agent's largest accepted `Desired`).
    pub fn new(limit_bytes: usize) -> Self {
        Self {
            staged: Vec::new(),
            bytes: 0,
            limit_bytes,
        }
    }

    /// Bytes staged now.
    pub fn staged_bytes(&self) -> usize {
        self.bytes
    }

    /// Stage one part. On error everything staged is dropped.
    pub fn part(&mut self, p: v1::ListPart) -> Result<(), PartError> {
        let r = self.stage(p);
        if r.is_err() {
            self.clear();
        }
        r
    }

    fn stage(&mut self, p: v1::ListPart) -> Result<(), PartError> {
        let field = match v1::ListField::try_from(p.field) {
            Ok(v1::ListField::Unspecified) | Err(_) => return Err(PartError::Field(p.field)),
            Ok(f) => f,
        };
        self.bytes = self.bytes.saturating_add(p.data.len());
        if self.bytes > self.limit_bytes {
            return Err(PartError::TooLarge {
                limit: self.limit_bytes,
            });
        }
        // Parts of one field come in a row: the last entry is the usual match.
        if let Some((_, _, buf)) = self
            .staged
            .iter_mut()
            .rev()
            .find(|(n, f, _)| *n == p.name && *f == field)
        {
            buf.extend_from_slice(&p.data);
            return Ok(());
        }
        if self.staged.len() >= MAX_STAGED_FIELDS {
            return Err(PartError::TooMany {
                limit: MAX_STAGED_FIELDS,
            });
        }
        self.staged
            .push((p.name, field, BytesMut::from(&p.data[..])));
        Ok(())
    }

    /// Fill the lists of `desired` marked `in_parts` from the staged parts (a field with
    /// no part is empty) and drop all staged parts; returns how many staged fields no
    /// list asked for (dropped).
    pub fn complete(&mut self, desired: &mut v1::Desired) -> Result<usize, PartError> {
        let mut staged = std::mem::take(&mut self.staged);
        self.bytes = 0;
        let Some(policy) = desired.policy.as_mut() else {
            return Ok(staged.len());
        };
        for list in policy.lists.iter_mut().filter(|l| l.in_parts) {
            if packed_len(list) != 0 {
                return Err(PartError::Doubled {
                    name: list.name.clone(),
                });
            }
            list.in_parts = false;
            let name = list.name.clone();
            for (field, bytes) in fields_mut(list) {
                if let Some(i) = staged
                    .iter()
                    .position(|(n, f, _)| *n == name && *f == field)
                {
                    *bytes = staged.swap_remove(i).2.freeze();
                }
            }
        }
        Ok(staged.len())
    }

    /// Drop what is staged (the session ended).
    pub fn clear(&mut self) {
        self.staged.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn list(name: &str, v4: usize, v6: usize) -> v1::AddressList {
        v1::AddressList {
            name: name.into(),
            v4: Bytes::from((0..v4).map(|i| (i % 251) as u8).collect::<Vec<_>>()),
            v6: Bytes::from((0..v6).map(|i| (i % 241) as u8).collect::<Vec<_>>()),
            digest: format!("d-{name}"),
            ..Default::default()
        }
    }

    fn desired(lists: Vec<v1::AddressList>) -> v1::Desired {
        v1::Desired {
            revision: 7,
            request_id: 42,
            policy: Some(v1::HostPolicy {
                lists,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn reassemble(msgs: Vec<v1::ControllerMessage>) -> Result<v1::Desired, PartError> {
        let mut r = Reassembly::new(1 << 20);
        for m in msgs {
            match m.msg.unwrap() {
                v1::controller_message::Msg::ListPart(p) => r.part(p)?,
                v1::controller_message::Msg::Desired(mut d) => {
                    r.complete(&mut d)?;
                    return Ok(d);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        panic!("no Desired")
    }

    #[test]
    fn small_lists_go_whole() {
        let d = desired(vec![list("a", 50, 34)]);
        let msgs = split(d.clone(), 100);
        assert_eq!(msgs.len(), 1);
        assert_eq!(reassemble(msgs).unwrap(), d);
    }

    #[test]
    fn big_lists_go_in_bounded_parts_and_come_back_identical() {
        let mut d = desired(vec![
            list("a", 1000, 17 * 30),
            list("b", 0, 0),
            list("c", 5, 0),
        ]);
        d.policy.as_mut().unwrap().lists[2].removed_v4 = Bytes::from_static(&[1, 2, 3, 4, 32]);
        let msgs = split(d.clone(), 64);
        let parts = msgs.len() - 1;
        // 1000/64 → 16, 510/64 → 8, 5 → 1, 5 → 1.
        assert_eq!(parts, 16 + 8 + 1 + 1);
        for m in &msgs[..parts] {
            let Some(v1::controller_message::Msg::ListPart(p)) = &m.msg else {
                panic!("{m:?}")
            };
            assert!(p.data.len() <= 64 && !p.data.is_empty());
        }
        let Some(v1::controller_message::Msg::Desired(last)) = &msgs[parts].msg else {
            panic!()
        };
        let l = &last.policy.as_ref().unwrap().lists;
        assert!(l[0].in_parts && !l[1].in_parts && l[2].in_parts);
        assert!(l.iter().all(|l| packed_len(l) == 0));
        assert_eq!(reassemble(msgs).unwrap(), d);
    }

    #[test]
    fn parts_share_the_list_bytes() {
        let d = desired(vec![list("a", 1000, 0)]);
        let base = d.policy.as_ref().unwrap().lists[0].v4.as_ptr();
        let msgs = split(d, 100);
        let Some(v1::controller_message::Msg::ListPart(p)) = &msgs[1].msg else {
            panic!()
        };
        assert_eq!(p.data.as_ptr(), base.wrapping_add(100));
    }

    #[test]
    fn a_missing_part_leaves_the_field_short_and_the_digest_check_catches_it() {
        let d = desired(vec![list("a", 300, 0)]);
        let mut msgs = split(d.clone(), 100);
        msgs.remove(1);
        let got = reassemble(msgs).unwrap();
        let l = &got.policy.as_ref().unwrap().lists[0];
        assert_eq!(l.v4.len(), 200);
        assert!(!l.in_parts);
        assert_ne!(got, d);
    }

    #[test]
    fn a_peer_sending_too_much_is_refused_and_nothing_stays_staged() {
        let mut r = Reassembly::new(100);
        let part = |name: &str, n: usize| v1::ListPart {
            name: name.into(),
            field: v1::ListField::V4 as i32,
            data: Bytes::from(vec![0; n]),
        };
        r.part(part("a", 60)).unwrap();
        assert_eq!(r.staged_bytes(), 60);
        assert_eq!(
            r.part(part("a", 41)),
            Err(PartError::TooLarge { limit: 100 })
        );
        assert_eq!(r.staged_bytes(), 0);
        let mut r = Reassembly::new(usize::MAX);
        for i in 0..MAX_STAGED_FIELDS {
            r.part(part(&i.to_string(), 0)).unwrap();
        }
        assert_eq!(
            r.part(part("one more", 0)),
            Err(PartError::TooMany {
                limit: MAX_STAGED_FIELDS
            })
        );
        let bad = v1::ListPart {
            field: 99,
            ..part("a", 1)
        };
        assert_eq!(r.part(bad), Err(PartError::Field(99)));
    }

    #[test]
    fn a_list_in_parts_that_carries_bytes_too_is_refused() {
        let mut d = desired(vec![list("a", 10, 0)]);
        d.policy.as_mut().unwrap().lists[0].in_parts = true;
        let mut r = Reassembly::new(1 << 20);
        assert!(matches!(r.complete(&mut d), Err(PartError::Doubled { .. })));
    }

    #[test]
    fn parts_left_over_are_dropped_with_the_desired() {
        let mut r = Reassembly::new(1 << 20);
        r.part(v1::ListPart {
            name: "ghost".into(),
            field: v1::ListField::V6 as i32,
            data: Bytes::from_static(&[1; 17]),
        })
        .unwrap();
        let mut d = desired(vec![list("a", 10, 0)]);
        let before = d.clone();
        assert_eq!(r.complete(&mut d), Ok(1));
        assert_eq!(d, before);
        assert_eq!(r.staged_bytes(), 0);
    }
}
