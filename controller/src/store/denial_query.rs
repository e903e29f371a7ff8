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
use super::sql::{Arg, Db, Dialect, Row};
use crate::args;
use ipnet::IpNet;
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

    fn sql(&self, dialect: Dialect, clauses: &mut Vec<String>, args: &mut Vec<Arg<'static>>) {
        let term =
            |t: &String, args: &mut Vec<Arg<'static>>| match (t.contains(['*', '?']), dialect) {
                (false, _) => {
                    args.push(Arg::Text(t.clone().into()));
                    "host = ?"
                }
                (true, Dialect::Sqlite) => {
                    args.push(Arg::Text(t.clone().into()));
                    "host GLOB ?"
                }
                (true, Dialect::Postgres) => {
                    args.push(Arg::Text(glob_regex(t).into()));
                    "host ~ ?"
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

/// A `*`/`?` glob as an anchored POSIX regex (PostgreSQL has no GLOB).
fn glob_regex(glob: &str) -> String {
    let mut re = String::from("^");
    for c in glob.chars() {
        match c {
            '*' => re.push_str(".*"),
            '?' => re.push('.'),
            c if c.is_alphanumeric() || c == '_' || c == '-' => re.push(c),
            c => {
                re.push('\\');
                re.push(c);
            }
        }
    }
    re.push('$');
    re
}

/// `SUM(col)` as floating point, never an overflow error (see [`total_at`]).
pub fn total(db: &Db<'_>, col: &str) -> String {
    match db.dialect() {
        Dialect::Sqlite => format!("TOTAL({col})"),
        Dialect::Postgres => format!("CAST(COALESCE(SUM({col}), 0) AS DOUBLE PRECISION)"),
    }
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
    pub fn where_sql(
        &self,
        dialect: Dialect,
        max_id: Option<i64>,
    ) -> (String, Vec<Arg<'static>>, bool) {
        let (mut clauses, mut args) = (Vec::new(), Vec::new());
        self.hosts.sql(dialect, &mut clauses, &mut args);
        let mut push = |c: &str, v: Arg<'static>| {
            clauses.push(c.to_string());
            args.push(v);
        };
        if let Some(p) = self.port {
            push("dport = ?", Arg::Int(p.into()));
        }
        if let Some(p) = self.proto {
            push("proto = ?", Arg::Int(p.into()));
        }
        let mut post = false;
        if let Some(net) = &self.source {
            match exact_source(net) {
                Some(a) => push("src = ?", Arg::Text(a.into())),
                None => post = true,
            }
        }
        if let Some(t) = self.since_ms {
            push("last_ms >= ?", Arg::Int(t));
        }
        if let Some(t) = self.until_ms {
            push("last_ms <= ?", Arg::Int(t));
        }
        if let Some(id) = max_id {
            push("id <= ?", Arg::Int(id));
        }
        let sql = if clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", clauses.join(" AND "))
        };
        (sql, args, post)
    }
}

/// The columns [`record`] reads, in its order.
const COLUMNS: &str =
    "id, host, src, dst, proto, dport, ifname, count, first_ms, last_ms, revision, audit";

fn record(r: &Row<'_>) -> anyhow::Result<DenialRecord> {
    Ok(DenialRecord {
        id: r.get(0)?,
        host: r.get(1)?,
        denial: NewDenial {
            src: r.get(2)?,
            dst: r.get(3)?,
            proto: u8::try_from(r.get::<i64>(4)?).unwrap_or(0),
            dport: u16::try_from(r.get::<i64>(5)?).unwrap_or(0),
            ifname: r.get(6)?,
            count: u64::try_from(r.get::<i64>(7)?).unwrap_or(0),
            first_ms: r.get(8)?,
            last_ms: r.get(9)?,
            revision: u64::try_from(r.get::<i64>(10)?).unwrap_or(0),
            audit: r.get(11)?,
        },
    })
}

/// Run `sql` (selecting [`COLUMNS`]) and keep at most `limit` rows that pass the
/// source post-filter when `post`.
fn matching(
    conn: &Db<'_>,
    sql: &str,
    args: &[Arg<'_>],
    filter: &DenialFilter,
    post: bool,
    limit: usize,
) -> anyhow::Result<Vec<DenialRecord>> {
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    conn.each(sql, args, |r| {
        let rec = record(r)?;
        if post
            && !filter
                .source
                .as_ref()
                .is_some_and(|n| source_matches(n, &rec.denial.src))
        {
            return Ok(true);
        }
        out.push(rec);
        Ok(out.len() < limit)
    })?;
    Ok(out)
}

/// The newest `limit` matching rows (newest first), only rows with id <= `max_id` if given.
pub fn query_denials(
    conn: &Db<'_>,
    filter: &DenialFilter,
    limit: usize,
    max_id: Option<i64>,
) -> anyhow::Result<Vec<DenialRecord>> {
    let (wh, args, post) = filter.where_sql(conn.dialect(), max_id);
    let mut sql = format!("SELECT {COLUMNS} FROM denials{wh} ORDER BY last_ms DESC, id DESC");
    if !post {
        sql.push_str(&format!(" LIMIT {limit}"));
    }
    matching(conn, &sql, &args, filter, post, limit)
}

/// Matching rows stored after row `after_id`, oldest first, scanning at most `scan` rows
/// (a `--follow` reader's next page; the last id scanned is the next `after_id`).
/// Returns (rows, last id scanned, whether `scan` rows were scanned: more may follow).
pub fn query_denials_after(
    conn: &Db<'_>,
    filter: &DenialFilter,
    after_id: i64,
    scan: usize,
) -> anyhow::Result<(Vec<DenialRecord>, i64, bool)> {
    let page = conn.query(
        &format!("SELECT {COLUMNS} FROM denials WHERE id > ?1 ORDER BY id LIMIT ?2"),
        args![after_id, scan],
        record,
    )?;
    let last = page.last().map_or(after_id, |r| r.id);
    let full = page.len() >= scan;
    let rows = page
        .into_iter()
        .filter(|r| filter.matches(&r.host, &r.denial))
        .collect();
    Ok((rows, last, full))
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
    conn: &Db<'_>,
    filter: &DenialFilter,
    n: usize,
) -> anyhow::Result<Vec<HostTopRecord>> {
    let (wh, args, post) = filter.where_sql(conn.dialect(), None);
    let sum = total(conn, "count");
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
    let port_of = |r: &Row<'_>| -> anyhow::Result<(u8, u16)> {
        Ok((
            u8::try_from(r.get::<i64>(1)?).unwrap_or(0),
            u16::try_from(r.get::<i64>(2)?).unwrap_or(0),
        ))
    };
    if post {
        // A CIDR wider than one address: group finely in SQL, filter and fold here.
        let sql = format!(
            "SELECT host, proto, dport, src, {sum} FROM denials{wh}
             GROUP BY host, src, proto, dport"
        );
        conn.each(&sql, &args, |r| {
            let src: String = r.get(3)?;
            if filter
                .source
                .as_ref()
                .is_some_and(|n| source_matches(n, &src))
            {
                let c = get(r, 4)?;
                add(r.get(0)?, Some(src), Some(port_of(r)?), c);
            }
            Ok(true)
        })?;
    } else {
        let sql = format!(
            "SELECT host, proto, dport, {sum} FROM denials{wh} GROUP BY host, proto, dport"
        );
        conn.each(&sql, &args, |r| {
            let c = get(r, 3)?;
            add(r.get(0)?, None, Some(port_of(r)?), c);
            Ok(true)
        })?;
        let sql = format!("SELECT host, src, {sum} FROM denials{wh} GROUP BY host, src");
        conn.each(&sql, &args, |r| {
            let c = get(r, 2)?;
            add(r.get(0)?, Some(r.get(1)?), None, c);
            Ok(true)
        })?;
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
    c: &Db<'_>,
    host: &str,
    since_ms: i64,
    limit: usize,
) -> anyhow::Result<(Vec<DenialGroup>, bool)> {
    let sum = total(c, "count");
    let mut v = c.query(
        &format!(
            "SELECT proto, src, dport, ifname, {sum}, MAX(last_ms) FROM denials
             WHERE host = ?1 AND last_ms >= ?2
             GROUP BY proto, src, dport, ifname ORDER BY {sum} DESC LIMIT ?3"
        ),
        args![host, since_ms, limit + 1],
        |r| {
            Ok(DenialGroup {
                proto: u8::try_from(r.get::<i64>(0)?).unwrap_or(0),
                src: r.get(1)?,
                dport: u16::try_from(r.get::<i64>(2)?).unwrap_or(0),
                ifname: r.get(3)?,
                count: total_at(r, 4)?,
                last_ms: r.get(5)?,
            })
        },
    )?;
    let more = v.len() > limit;
    v.truncate(limit);
    Ok((v, more))
}

/// Packets a host logged as denied (or would-deny, in audit mode) with their last
/// occurrence in `[from_ms, to_ms)`.
pub fn logged_between(c: &Db<'_>, host: &str, from_ms: i64, to_ms: i64) -> anyhow::Result<u64> {
    c.query_one(
        &format!(
            "SELECT {} FROM denials WHERE host = ?1 AND last_ms >= ?2 AND last_ms < ?3",
            total(c, "count")
        ),
        args![host, from_ms, to_ms],
        |r| total_at(r, 0),
    )
}

/// A `TOTAL(count)` column as a count. SQLite's `SUM()` of integers fails the whole query
/// with "integer overflow" past i64::MAX (one hostile host's rows would break `logs --top`,
/// replay and the denial gate for every host); `TOTAL()` sums in floating point, exact up
/// to 2^53, and the conversion saturates.
pub fn total_at(r: &Row<'_>, i: usize) -> anyhow::Result<u64> {
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
        crate::store::testing::each_engine(|store| store.call_sync(sums_past_i64_max));
    }

    fn sums_past_i64_max(c: &Db<'_>) -> anyhow::Result<()> {
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
        crate::store::store_batches(c, &[batch])?;
        let total = logged_between(c, "evil", 0, 2_000)?;
        assert!(total >= 9_000_000_000_000_000_000, "{total}");
        let (groups, more) = denial_groups(c, "evil", 0, 5)?;
        assert!(more && groups.len() == 5);
        let top = top_denials(c, &f(), 3)?;
        assert_eq!(top[0].ports[0].1, top[0].total);
        assert!(top[0].total >= 9_000_000_000_000_000_000);
        Ok(())
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
        assert_eq!(
            f().where_sql(Dialect::Sqlite, None),
            (String::new(), vec![], false)
        );
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
        let (sql, args, post) = filter.where_sql(Dialect::Sqlite, Some(9));
        assert_eq!(
            sql,
            " WHERE (host GLOB ? OR host = ?) AND NOT host = ? AND dport = ? AND proto = ? \
             AND src = ? AND last_ms >= ? AND last_ms <= ? AND id <= ?"
        );
        assert!(!post);
        assert_eq!(args.len(), 9);
        assert_eq!(args[5], Arg::Text("192.0.2.7".into()));
        let (sql, args, _) = filter.where_sql(Dialect::Postgres, Some(9));
        assert!(sql.starts_with(" WHERE (host ~ ? OR host = ?)"), "{sql}");
        assert_eq!(args[0], Arg::Text("^web.*$".into()));
        assert_eq!(glob_regex("a.b?*"), "^a\\.b..*$");
    }

    #[test]
    fn wide_cidr_is_post_filtered() {
        let filter = DenialFilter {
            source: Some("2001:db8::/32".parse().unwrap()),
            ..f()
        };
        let (sql, args, post) = filter.where_sql(Dialect::Sqlite, None);
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
