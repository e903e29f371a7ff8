//! Denial log reads: the filter behind `portcullis logs` (host pattern, port, protocol,
//! source CIDR, time window), turned into one parameterised SQL query that the
//! (host, last_ms), (dport, last_ms) and (last_ms) indexes serve, plus the `--top` ranking,
//! and the per-host reads of `apply --check --replay` and the rollout's denial gate.
//!
//! A source CIDR that is one address is matched in SQL; a wider one is matched on the parsed
//! address while reading (addresses are stored as canonical text). The same filter also
//! matches single rows in memory for `--follow`. Order is deterministic: newest first, then
//! row id.

use super::denials::{DenialRecord, NewDenial};
use ipnet::IpNet;
use rusqlite::types::Value;
use rusqlite::{Connection, params, params_from_iter};
use std::collections::BTreeMap;
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error(
        "host pattern `{pattern}`: term `{term}` is not supported here (use names, `*`/`?` globs, `a:b` unions and `!name` exclusions)"
    )]
    HostTerm { pattern: String, term: String },
    #[error("host pattern `{0}` has an empty term (check for `::` or a trailing `:`)")]
    EmptyTerm(String),
}

/// Host names or globs, unioned, minus exclusions; empty (or `all`/`*`) selects every host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostPattern {
    include: Vec<String>,
    exclude: Vec<String>,
}

impl HostPattern {
    /// Parse `web*`, `h1:h2`, `h1,h2`, `all:!db*`. Groups are not resolved: logs keep the
    /// host name the agent's certificate carries.
    pub fn parse(pattern: &str) -> Result<Self, FilterError> {
        let p = pattern.trim();
        let mut out = Self::default();
        if p.is_empty() {
            return Ok(out);
        }
        let sep = if p.contains(',') { ',' } else { ':' };
        for term in p.split(sep).map(str::trim) {
            let (exclude, name) = match term.strip_prefix('!') {
                Some(n) => (true, n),
                None => (false, term),
            };
            if name.is_empty() {
                return Err(FilterError::EmptyTerm(pattern.to_string()));
            }
            if name.starts_with(['&', '~']) || name.contains(['[', ']']) {
                return Err(FilterError::HostTerm {
                    pattern: pattern.to_string(),
                    term: term.to_string(),
                });
            }
            match (exclude, name) {
                (false, "all" | "*") => out.include.push("*".into()),
                (false, n) => out.include.push(n.into()),
                (true, n) => out.exclude.push(n.into()),
            }
        }
        if out.include.iter().any(|t| t == "*") {
            out.include.clear();
        }
        Ok(out)
    }

    pub fn matches(&self, host: &str) -> bool {
        let m = |t: &String| portcullis_policy::pattern::glob(t, host);
        (self.include.is_empty() || self.include.iter().any(m)) && !self.exclude.iter().any(m)
    }

    fn sql(&self, clauses: &mut Vec<String>, args: &mut Vec<Value>) {
        let term = |t: &String, args: &mut Vec<Value>| {
            args.push(Value::Text(t.clone()));
            if t.contains(['*', '?']) {
                "host GLOB ?"
            } else {
                "host = ?"
            }
        };
        if !self.include.is_empty() {
            let ors: Vec<&str> = self.include.iter().map(|t| term(t, args)).collect();
            clauses.push(format!("({})", ors.join(" OR ")));
        }
        for t in &self.exclude {
            clauses.push(format!("NOT {}", term(t, args)));
        }
    }
}

/// What `portcullis logs` asks for. `None` means "any".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DenialFilter {
    pub hosts: HostPattern,
    pub port: Option<u16>,
    pub proto: Option<u8>,
    pub source: Option<IpNet>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
}

fn source_matches(net: &IpNet, src: &str) -> bool {
    src.parse::<IpAddr>().is_ok_and(|a| net.contains(&a))
}

fn exact_source(net: &IpNet) -> Option<String> {
    (net.prefix_len() == net.max_prefix_len()).then(|| net.addr().to_string())
}

impl DenialFilter {
    /// Does a stored row match (for live `--follow` rows)?
    pub fn matches(&self, host: &str, d: &NewDenial) -> bool {
        self.hosts.matches(host)
            && self.port.is_none_or(|p| d.dport == p)
            && self.proto.is_none_or(|p| d.proto == p)
            && self
                .source
                .as_ref()
                .is_none_or(|n| source_matches(n, &d.src))
            && self.since_ms.is_none_or(|t| d.last_ms >= t)
            && self.until_ms.is_none_or(|t| d.last_ms <= t)
    }

    /// The WHERE clause and its arguments, and whether rows still need the source post-filter.
    pub fn where_sql(&self, max_id: Option<i64>) -> (String, Vec<Value>, bool) {
        let (mut clauses, mut args) = (Vec::new(), Vec::new());
        self.hosts.sql(&mut clauses, &mut args);
        let mut push = |c: &str, v: Value| {
            clauses.push(c.to_string());
            args.push(v);
        };
        if let Some(p) = self.port {
            push("dport = ?", Value::Integer(p.into()));
        }
        if let Some(p) = self.proto {
            push("proto = ?", Value::Integer(p.into()));
        }
        let mut post = false;
        if let Some(net) = &self.source {
            match exact_source(net) {
                Some(a) => push("src = ?", Value::Text(a)),
                None => post = true,
            }
        }
        if let Some(t) = self.since_ms {
            push("last_ms >= ?", Value::Integer(t));
        }
        if let Some(t) = self.until_ms {
            push("last_ms <= ?", Value::Integer(t));
        }
        if let Some(id) = max_id {
            push("id <= ?", Value::Integer(id));
        }
        let sql = if clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", clauses.join(" AND "))
        };
        (sql, args, post)
    }
}

/// The newest `limit` matching rows (newest first), only rows with id <= `max_id` if given.
pub fn query_denials(
    conn: &Connection,
    filter: &DenialFilter,
    limit: usize,
    max_id: Option<i64>,
) -> anyhow::Result<Vec<DenialRecord>> {
    let (wh, args, post) = filter.where_sql(max_id);
    let mut sql = format!(
        "SELECT id, host, src, dst, proto, dport, ifname, count, first_ms, last_ms, revision, audit
         FROM denials{wh} ORDER BY last_ms DESC, id DESC"
    );
    if !post {
        sql.push_str(&format!(" LIMIT {limit}"));
    }
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(params_from_iter(args))?;
    let mut out = Vec::new();
    while out.len() < limit {
        let Some(r) = rows.next()? else { break };
        let src: String = r.get(2)?;
        if post
            && !filter
                .source
                .as_ref()
                .is_some_and(|n| source_matches(n, &src))
        {
            continue;
        }
        out.push(DenialRecord {
            id: r.get(0)?,
            host: r.get(1)?,
            denial: NewDenial {
                src,
                dst: r.get(3)?,
                proto: u8::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
                dport: u16::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
                ifname: r.get(6)?,
                count: u64::try_from(r.get::<_, i64>(7)?).unwrap_or(0),
                first_ms: r.get(8)?,
                last_ms: r.get(9)?,
                revision: u64::try_from(r.get::<_, i64>(10)?).unwrap_or(0),
                audit: r.get(11)?,
            },
        });
    }
    Ok(out)
}

/// Top denied ports and sources of one host over the window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostTopRecord {
    pub host: String,
    /// Events (sum of counts) in the window.
    pub total: u64,
    /// ((proto, port), events), most first, then by protocol and port.
    pub ports: Vec<((u8, u16), u64)>,
    /// (source, events), most first, then by address text.
    pub sources: Vec<(String, u64)>,
}

type Tally<K> = BTreeMap<String, BTreeMap<K, u64>>;

fn ranked<K: Ord + Clone>(m: &BTreeMap<K, u64>, n: usize) -> Vec<(K, u64)> {
    let mut v: Vec<(K, u64)> = m.iter().map(|(k, c)| (k.clone(), *c)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

/// Per host (sorted): total events and the `n` most denied ports and sources.
pub fn top_denials(
    conn: &Connection,
    filter: &DenialFilter,
    n: usize,
) -> anyhow::Result<Vec<HostTopRecord>> {
    let (wh, args, post) = filter.where_sql(None);
    let (mut ports, mut sources): (Tally<(u8, u16)>, Tally<String>) = Default::default();
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    let mut add = |host: String, src: Option<String>, port: Option<(u8, u16)>, c: u64| {
        if let Some(p) = port {
            let e = ports.entry(host.clone()).or_default().entry(p).or_default();
            *e = e.saturating_add(c);
            let t = totals.entry(host.clone()).or_default();
            *t = t.saturating_add(c);
        }
        if let Some(s) = src {
            let e = sources.entry(host).or_default().entry(s).or_default();
            *e = e.saturating_add(c);
        }
    };
    let get = total_at;
    let port_of = |r: &rusqlite::Row<'_>| -> rusqlite::Result<(u8, u16)> {
        Ok((
            u8::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
            u16::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
        ))
    };
    if post {
        // A CIDR wider than one address: group finely in SQL, filter and fold here.
        let sql = format!(
            "SELECT host, proto, dport, src, TOTAL(count) FROM denials{wh}
             GROUP BY host, src, proto, dport"
        );
        let mut stmt = conn.prepare(&sql)?;
        let mut rows = stmt.query(params_from_iter(args))?;
        while let Some(r) = rows.next()? {
            let src: String = r.get(3)?;
            if filter
                .source
                .as_ref()
                .is_some_and(|n| source_matches(n, &src))
            {
                let c = get(r, 4)?;
                add(r.get(0)?, Some(src), Some(port_of(r)?), c);
            }
        }
    } else {
        let sql = format!(
            "SELECT host, proto, dport, TOTAL(count) FROM denials{wh} GROUP BY host, proto, dport"
        );
        let mut stmt = conn.prepare(&sql)?;
        let mut rows = stmt.query(params_from_iter(args.iter()))?;
        while let Some(r) = rows.next()? {
            let c = get(r, 3)?;
            add(r.get(0)?, None, Some(port_of(r)?), c);
        }
        let sql = format!("SELECT host, src, TOTAL(count) FROM denials{wh} GROUP BY host, src");
        let mut stmt = conn.prepare(&sql)?;
        let mut rows = stmt.query(params_from_iter(args.iter()))?;
        while let Some(r) = rows.next()? {
            let c = get(r, 2)?;
            add(r.get(0)?, Some(r.get(1)?), None, c);
        }
    }
    Ok(totals
        .into_iter()
        .map(|(host, total)| HostTopRecord {
            ports: ports.get(&host).map(|m| ranked(m, n)).unwrap_or_default(),
            sources: sources.get(&host).map(|m| ranked(m, n)).unwrap_or_default(),
            host,
            total,
        })
        .collect())
}

/// One `(proto, source, port, interface)` group of a host's denial log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenialGroup {
    pub proto: u8,
    pub src: String,
    pub dport: u16,
    pub ifname: String,
    pub count: u64,
    pub last_ms: i64,
}

/// The host's logged packets since `since_ms`, grouped, most packets first, at most
/// `limit` groups (the second value: whether more exist).
pub fn denial_groups(
    c: &Connection,
    host: &str,
    since_ms: i64,
    limit: usize,
) -> anyhow::Result<(Vec<DenialGroup>, bool)> {
    let mut st = c.prepare_cached(
        "SELECT proto, src, dport, ifname, TOTAL(count), MAX(last_ms) FROM denials
         WHERE host = ?1 AND last_ms >= ?2
         GROUP BY proto, src, dport, ifname ORDER BY TOTAL(count) DESC LIMIT ?3",
    )?;
    let rows = st.query_map(
        params![host, since_ms, i64::try_from(limit + 1).unwrap_or(i64::MAX)],
        |r| {
            Ok(DenialGroup {
                proto: u8::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                src: r.get(1)?,
                dport: u16::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                ifname: r.get(3)?,
                count: total_at(r, 4)?,
                last_ms: r.get(5)?,
            })
        },
    )?;
    let mut v: Vec<DenialGroup> = rows.collect::<Result<_, _>>()?;
    let more = v.len() > limit;
    v.truncate(limit);
    Ok((v, more))
}

/// Packets a host logged as denied (or would-deny, in audit mode) with their last
/// occurrence in `[from_ms, to_ms)`.
pub fn logged_between(c: &Connection, host: &str, from_ms: i64, to_ms: i64) -> anyhow::Result<u64> {
    Ok(c.prepare_cached(
        "SELECT TOTAL(count) FROM denials
             WHERE host = ?1 AND last_ms >= ?2 AND last_ms < ?3",
    )?
    .query_row(params![host, from_ms, to_ms], |r| total_at(r, 0))?)
}

/// A `TOTAL(count)` column as a count. SQLite's `SUM()` of integers fails the whole query
/// with "integer overflow" past i64::MAX (one hostile host's rows would break `logs --top`,
/// replay and the denial gate for every host); `TOTAL()` sums in floating point, exact up
/// to 2^53, and the conversion saturates.
fn total_at(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<u64> {
    let v: f64 = r.get(i)?;
    // `as` saturates (and maps NaN to 0).
    Ok(v.max(0.0) as u64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn f() -> DenialFilter {
        DenialFilter::default()
    }

    #[test]
    fn sums_past_i64_max_do_not_fail_the_queries() {
        let mut c = Connection::open_in_memory().unwrap();
        super::super::migrations::migrate(&mut c).unwrap();
        let row = |i: u32| NewDenial {
            src: format!("10.0.{}.{}", i / 256, i % 256),
            dst: "10.0.0.1".into(),
            proto: 6,
            dport: 22,
            ifname: "eth0".into(),
            count: 1_000_000_000_000_000,
            first_ms: 1_000,
            last_ms: 1_000,
            revision: 1,
            audit: false,
        };
        // 10,000 x 1e15 = 1e19 > i64::MAX: SQLite's SUM() would fail every one of these.
        let batch = crate::store::HostBatch {
            host: "evil".into(),
            counters: crate::store::BatchCounters::default(),
            rows: (0..10_000).map(row).collect(),
        };
        crate::store::store_batches(&mut c, &[batch]).unwrap();
        let total = logged_between(&c, "evil", 0, 2_000).unwrap();
        assert!(total >= 9_000_000_000_000_000_000, "{total}");
        let (groups, more) = denial_groups(&c, "evil", 0, 5).unwrap();
        assert!(more && groups.len() == 5);
        let top = top_denials(&c, &f(), 3).unwrap();
        assert_eq!(top[0].ports[0].1, top[0].total);
        assert!(top[0].total >= 9_000_000_000_000_000_000);
    }

    #[test]
    fn host_patterns() {
        let p = HostPattern::parse("web*:db1:!web3").unwrap();
        assert!(p.matches("web1") && p.matches("db1"));
        assert!(!p.matches("web3") && !p.matches("db2"));
        assert!(HostPattern::parse("all").unwrap().matches("x"));
        assert_eq!(HostPattern::parse("").unwrap(), HostPattern::default());
        assert!(HostPattern::parse("a::b").is_err());
        assert!(HostPattern::parse("web[12]").is_err());
        assert!(HostPattern::parse("a:&b").is_err());
    }

    #[test]
    fn empty_filter_has_no_where() {
        assert_eq!(f().where_sql(None), (String::new(), vec![], false));
    }

    #[test]
    fn builds_parameterised_where() {
        let filter = DenialFilter {
            hosts: HostPattern::parse("web*,h1,!web3").unwrap(),
            port: Some(22),
            proto: Some(6),
            source: Some("192.0.2.7/32".parse().unwrap()),
            since_ms: Some(100),
            until_ms: Some(200),
        };
        let (sql, args, post) = filter.where_sql(Some(9));
        assert_eq!(
            sql,
            " WHERE (host GLOB ? OR host = ?) AND NOT host = ? AND dport = ? AND proto = ? \
             AND src = ? AND last_ms >= ? AND last_ms <= ? AND id <= ?"
        );
        assert!(!post);
        assert_eq!(args.len(), 9);
        assert_eq!(args[5], Value::Text("192.0.2.7".into()));
    }

    #[test]
    fn wide_cidr_is_post_filtered() {
        let filter = DenialFilter {
            source: Some("2001:db8::/32".parse().unwrap()),
            ..f()
        };
        let (sql, args, post) = filter.where_sql(None);
        assert!(sql.is_empty() && args.is_empty() && post);
        let mut d = NewDenial {
            src: "2001:db8::5".into(),
            dst: "::1".into(),
            proto: 17,
            dport: 53,
            ifname: String::new(),
            count: 1,
            first_ms: 5,
            last_ms: 5,
            revision: 0,
            audit: false,
        };
        assert!(filter.matches("h", &d));
        d.src = "2001:db9::5".into();
        assert!(!filter.matches("h", &d));
        d.src = "192.0.2.1".into();
        assert!(!filter.matches("h", &d));
    }
}
