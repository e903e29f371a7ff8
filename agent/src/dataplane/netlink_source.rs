//! Decoding the address-list rules ([`Rule::SourceSet`]) from their expressions: `ip
//! saddr @set [meta l4proto P | P dport R] [limit ...] counter [log ...] <verdict>`, as
//! nft 1.0.x writes them, and nothing else. Part of `netlink_rule`; no requests.

use super::{
    BASE_NETWORK, BASE_TRANSPORT, CMP_EQ, Expr, META_L4PROTO, META_NFPROTO, REG_1, cmp, counter,
    limit, log_stmt, meta, named_lookup, payload, ports, proto, verdict,
};
use portcullis_policy::ruleset::{L3, LogSpec, Rule};
use std::collections::BTreeMap;

/// `meta nfproto ipv4|ipv6; payload saddr; lookup @set; ...`
pub(super) fn source_set(
    e: &[Expr<'_>],
    anonymous: &BTreeMap<String, bool>,
) -> Option<(Rule, (u64, u64))> {
    let [nf, nfc, addr, lk, rest @ ..] = e else {
        return None;
    };
    meta(nf, META_NFPROTO, REG_1)?;
    let l3 = match cmp(nfc, CMP_EQ)? {
        [2] => {
            payload(addr, REG_1, BASE_NETWORK, 12, 4)?;
            L3::Ip
        }
        [10] => {
            payload(addr, REG_1, BASE_NETWORK, 8, 16)?;
            L3::Ip6
        }
        _ => return None,
    };
    let set = named_lookup(lk, anonymous)?.to_owned();
    let (proto, port_range, rest) = match rest {
        [l4, l4c, dport, more @ ..] if meta(l4, META_L4PROTO, REG_1).is_some() => {
            let p = proto(cmp(l4c, CMP_EQ)?)?;
            if payload(dport, REG_1, BASE_TRANSPORT, 2, 2).is_some() {
                let (r, used) = ports(more)?;
                (Some(p), Some(r), &more[used..])
            } else {
                (Some(p), None, &rest[2..])
            }
        }
        _ => (None, None, rest),
    };
    let (log, c, v) = match rest {
        [c, v] => (None, c, v),
        [lim, c, log, v] => {
            let (prefix, group) = log_stmt(log)?;
            let spec = LogSpec {
                limit: limit(lim)?,
                group,
                prefix,
            };
            (Some(spec), c, v)
        }
        _ => return None,
    };
    Some((
        Rule::SourceSet {
            l3,
            set,
            proto,
            ports: port_range,
            log,
            verdict: verdict(v)?,
        },
        counter(c)?,
    ))
}
