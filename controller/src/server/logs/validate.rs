//! Bounds on an agent's `DenialBatch` before anything is stored: entry count, addresses that
//! parse (stored canonical), protocol/port ranges, short interface names, positive counts.
//! A batch that fails is rejected whole; nothing of it is stored. Numbers that are merely
//! absurd are clamped, not fatal: counters above [`MAX_COUNTER`] are stored as
//! `MAX_COUNTER` (so no sum of them can overflow a total), times ahead of the controller's
//! clock by more than a day are stored as now + 1 day. The aggregator's overflow entry
//! (`src` = [`OVERFLOW_SRC`], protocol 0, port 0: events past its key cap) is stored as is.
//!
//! Also turns a `LogsRequest` into a store filter. Pure: no I/O; the clock is a parameter.

use crate::store::{BatchCounters, DenialFilter, FilterError, HostBatch, HostPattern, NewDenial};
use ipnet::IpNet;
use portcullis_proto::v1;
use std::net::IpAddr;

/// Entries per batch, at most (the agent aggregates per second; 20k distinct tuples per
/// second per host is already a flood). 20k IPv6 entries encode to ~3 MB, under tonic's
/// default 4 MiB message limit, which rejects anything larger before it gets here.
pub const MAX_ENTRIES: usize = 20_000;
/// Counters and counts above this are absurd (a billion events/s for 10+ days).
pub const MAX_COUNTER: u64 = 1_000_000_000_000_000;
/// Interface names are at most 15 bytes on Linux; allow some slack for other encodings.
const MAX_IFNAME: usize = 32;
/// Times may run ahead of the controller's clock by this much (agent clock skew); later
/// ones are clamped to it.
pub const MAX_FUTURE_MS: i64 = 24 * 3600 * 1000;
/// The `src` of the agent aggregator's overflow entry (every event past its key cap).
pub const OVERFLOW_SRC: &str = "(other)";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("{0} entries is more than the {MAX_ENTRIES} allowed per batch")]
    TooManyEntries(usize),
    #[error("entry {index}: {field}: {message}")]
    Entry {
        index: usize,
        field: &'static str,
        message: String,
    },
}

/// A batch counter, clamped to [`MAX_COUNTER`] (a lie or a bug, but not worth the session).
fn counter(field: &'static str, value: u64) -> u64 {
    if value > MAX_COUNTER {
        tracing::debug!(field, value, "denial batch counter clamped");
    }
    value.min(MAX_COUNTER)
}

fn addr(s: &str, allow_empty: bool) -> Result<String, String> {
    if allow_empty && s.is_empty() {
        return Ok(String::new());
    }
    s.parse::<IpAddr>()
        .map(|a| a.to_string())
        .map_err(|_| format!("{:?} is not an IP address", truncate(s)))
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

fn entry(e: v1::DenialEntry, now_ms: i64) -> Result<NewDenial, (&'static str, String)> {
    let overflow = e.src == OVERFLOW_SRC;
    if overflow && (e.proto != 0 || e.dport != 0) {
        return Err((
            "src",
            format!("{OVERFLOW_SRC:?} (the overflow entry) must have protocol 0 and port 0"),
        ));
    }
    let src = if overflow {
        OVERFLOW_SRC.to_string()
    } else {
        addr(&e.src, false).map_err(|m| ("src", m))?
    };
    let dst = addr(&e.dst, true).map_err(|m| ("dst", m))?;
    let proto = u8::try_from(e.proto).map_err(|_| ("proto", format!("{} > 255", e.proto)))?;
    let dport = u16::try_from(e.dport).map_err(|_| ("dport", format!("{} > 65535", e.dport)))?;
    if e.sport > 65_535 {
        return Err(("sport", format!("{} > 65535", e.sport)));
    }
    if e.ifname.len() > MAX_IFNAME || e.ifname.chars().any(char::is_control) {
        return Err((
            "ifname",
            format!("{:?} is not an interface name", truncate(&e.ifname)),
        ));
    }
    if e.count == 0 {
        return Err(("count", "0 is not a count of events".into()));
    }
    if e.revision > MAX_COUNTER {
        return Err(("revision", format!("{} is out of range", e.revision)));
    }
    if e.first_unix_ms <= 0 || e.first_unix_ms > e.last_unix_ms {
        return Err((
            "first_unix_ms/last_unix_ms",
            format!(
                "{}..{} is not a time range",
                e.first_unix_ms, e.last_unix_ms
            ),
        ));
    }
    let latest = now_ms.saturating_add(MAX_FUTURE_MS);
    Ok(NewDenial {
        src,
        dst,
        proto,
        dport,
        ifname: e.ifname,
        count: e.count.min(MAX_COUNTER),
        first_ms: e.first_unix_ms.min(latest),
        last_ms: e.last_unix_ms.min(latest),
        revision: e.revision,
        audit: e.audit,
    })
}

/// Check `batch` from `host` and convert it for the store.
pub fn host_batch(
    host: &str,
    batch: v1::DenialBatch,
    now_ms: i64,
) -> Result<HostBatch, BatchError> {
    if batch.entries.len() > MAX_ENTRIES {
        return Err(BatchError::TooManyEntries(batch.entries.len()));
    }
    let counters = BatchCounters {
        epoch: batch.epoch,
        seq: counter("seq", batch.seq),
        seen: counter("seen", batch.seen),
        dropped_by_agent: counter("dropped_by_agent", batch.dropped_by_agent),
        socket_overruns: counter("socket_overruns", batch.socket_overruns),
        socket_lost: counter("socket_lost", batch.socket_lost),
        kernel_suppressed: if batch.has_kernel_suppressed {
            counter("kernel_suppressed", batch.kernel_suppressed)
        } else {
            0
        },
        spool_dropped: counter("spool_dropped", batch.spool_dropped),
    };
    let rows = batch
        .entries
        .into_iter()
        .enumerate()
        .map(|(index, e)| {
            entry(e, now_ms).map_err(|(field, message)| BatchError::Entry {
                index,
                field,
                message,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(HostBatch {
        host: host.to_string(),
        counters,
        rows,
    })
}

/// Why a `LogsRequest` is not a valid filter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Host(#[from] FilterError),
    #[error("port {0} is not in 1..=65535")]
    Port(u32),
    #[error("protocol {0} is not a protocol number (6 tcp, 17 udp)")]
    Proto(u32),
    #[error("source {0:?} is not an address or CIDR (e.g. 192.0.2.0/24, 2001:db8::/32)")]
    Source(String),
    #[error("the window ends ({until}) before it starts ({since})")]
    Window { since: i64, until: i64 },
}

/// Parse an address or CIDR (`192.0.2.7` is `192.0.2.7/32`).
pub fn parse_source(s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>()
        .ok()
        .map(|n| n.trunc())
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// The store filter a request describes.
pub fn filter(req: &v1::LogsRequest) -> Result<DenialFilter, RequestError> {
    let port = match req.port {
        0 => None,
        p => Some(u16::try_from(p).map_err(|_| RequestError::Port(p))?),
    };
    let proto = match req.proto {
        0 => None,
        p => Some(u8::try_from(p).map_err(|_| RequestError::Proto(p))?),
    };
    let source = match req.source_cidr.trim() {
        "" => None,
        s => Some(parse_source(s).ok_or_else(|| RequestError::Source(s.to_string()))?),
    };
    let since_ms = (req.since_unix_ms > 0).then_some(req.since_unix_ms);
    let until_ms = (req.until_unix_ms > 0).then_some(req.until_unix_ms);
    if let (Some(since), Some(until)) = (since_ms, until_ms)
        && until < since
    {
        return Err(RequestError::Window { since, until });
    }
    Ok(DenialFilter {
        hosts: HostPattern::parse(&req.host_pattern)?,
        port,
        proto,
        source,
        since_ms,
        until_ms,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn e() -> v1::DenialEntry {
        v1::DenialEntry {
            src: "2001:DB8::1".into(),
            dst: "10.0.0.1".into(),
            proto: 6,
            dport: 22,
            sport: 40000,
            ifname: "eth0".into(),
            count: 2,
            first_unix_ms: 1_000,
            last_unix_ms: 2_000,
            revision: 3,
            audit: false,
        }
    }

    fn b(entries: Vec<v1::DenialEntry>) -> v1::DenialBatch {
        v1::DenialBatch {
            seq: 1,
            entries,
            ..Default::default()
        }
    }

    #[test]
    fn accepts_and_canonicalises() {
        let hb = host_batch("h1", b(vec![e()]), 10_000).unwrap();
        assert_eq!(hb.rows[0].src, "2001:db8::1");
        assert_eq!(hb.counters.seq, 1);
    }

    #[test]
    fn rejects_malformed_entries() {
        type Case = (fn(&mut v1::DenialEntry), &'static str);
        let cases: Vec<Case> = vec![
            (|e| e.src = "not-an-ip".into(), "src"),
            (|e| e.dport = 70_000, "dport"),
            (|e| e.proto = 300, "proto"),
            (|e| e.count = 0, "count"),
            (|e| e.ifname = "x".repeat(100), "ifname"),
            (|e| e.first_unix_ms = 3_000, "first_unix_ms"),
            (|e| e.first_unix_ms = 0, "first_unix_ms"),
            (|e| e.src = OVERFLOW_SRC.into(), "src"),
        ];
        for (mutate, field) in cases {
            let mut x = e();
            mutate(&mut x);
            let err = host_batch("h1", b(vec![e(), x]), 10_000).unwrap_err();
            assert!(
                matches!(&err, BatchError::Entry { index: 1, field: f, .. } if f.starts_with(field)),
                "{err}"
            );
        }
    }

    #[test]
    fn rejects_oversized_and_absurd_counters() {
        let big = b(vec![e(); MAX_ENTRIES + 1]);
        assert_eq!(
            host_batch("h1", big, 10_000).unwrap_err(),
            BatchError::TooManyEntries(MAX_ENTRIES + 1)
        );
    }

    #[test]
    fn clamps_absurd_counters_and_future_times() {
        let mut x = e();
        (x.count, x.last_unix_ms) = (u64::MAX, i64::MAX);
        let mut batch = b(vec![x]);
        (batch.seen, batch.sent, batch.spool_dropped) = (u64::MAX, u64::MAX, u64::MAX);
        let hb = host_batch("h1", batch, 10_000).unwrap();
        assert_eq!(hb.counters.seen, MAX_COUNTER);
        assert_eq!(hb.counters.spool_dropped, MAX_COUNTER);
        assert_eq!(hb.rows[0].count, MAX_COUNTER);
        assert_eq!(hb.rows[0].last_ms, 10_000 + MAX_FUTURE_MS);
        assert_eq!(hb.rows[0].first_ms, 1_000);
        let mut x = e();
        (x.first_unix_ms, x.last_unix_ms) = (i64::MAX - 1, i64::MAX);
        let hb = host_batch("h1", b(vec![x]), 10_000).unwrap();
        assert_eq!(hb.rows[0].first_ms, hb.rows[0].last_ms);
    }

    #[test]
    fn accepts_the_aggregator_overflow_entry() {
        let mut x = e();
        (x.src, x.dst, x.proto, x.dport, x.revision) =
            (OVERFLOW_SRC.into(), "0.0.0.0".into(), 0, 0, 0);
        let hb = host_batch("h1", b(vec![x]), 10_000).unwrap();
        assert_eq!(hb.rows[0].src, "(other)");
        assert_eq!((hb.rows[0].proto, hb.rows[0].dport), (0, 0));
    }

    #[test]
    fn request_filters() {
        let mut r = v1::LogsRequest {
            host_pattern: "web*".into(),
            port: 22,
            proto: 6,
            source_cidr: "192.0.2.9/24".into(),
            ..Default::default()
        };
        let f = filter(&r).unwrap();
        assert_eq!(f.source.unwrap().to_string(), "192.0.2.0/24");
        assert_eq!((f.port, f.proto), (Some(22), Some(6)));
        r.port = 70_000;
        assert_eq!(filter(&r), Err(RequestError::Port(70_000)));
        r.port = 0;
        r.source_cidr = "nope".into();
        assert!(matches!(filter(&r), Err(RequestError::Source(_))));
        r.source_cidr = String::new();
        (r.since_unix_ms, r.until_unix_ms) = (10, 5);
        assert!(matches!(filter(&r), Err(RequestError::Window { .. })));
    }
}
