//! `portcullis logs`: denied connection attempts collected from every agent, filtered by
//! host, port, protocol, source and time; `--follow` streams new ones live; `--top` ranks
//! the most denied ports and sources per host. Per-host loss counters are printed under
//! the table when non-zero (always in `--json`).
//!
//! Filters are checked here first (exit 2 with a message) and again by the controller.

use super::connect::ConnectArgs;
use super::output::{print_json, table, time_ms};
use crate::server::logs::validate::parse_source;
use crate::store::HostPattern;
use portcullis_proto::v1;
use serde_json::json;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio_stream::StreamExt as _;

/// Show denied connection attempts.
///
/// Examples:
///   portcullis logs --host 'web*' --port 22 --since 10m
///   portcullis logs --source 203.0.113.0/24 --proto tcp --limit 500 --json
///   portcullis logs --follow --host db1
///   portcullis logs --top --since 24h
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct LogsArgs {
    /// Hosts: a name, a glob (`web*`), unions `a:b` or `a,b`, exclusions `!name`
    #[arg(long, value_name = "PATTERN", value_parser = host_pattern)]
    pub host: Option<String>,
    /// Destination port that was denied
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Protocol: tcp, udp or a protocol number
    #[arg(long, value_parser = proto_number)]
    pub proto: Option<u32>,
    /// Source address or CIDR (IPv4 or IPv6), e.g. 203.0.113.0/24
    #[arg(long, value_name = "CIDR", value_parser = source_cidr)]
    pub source: Option<String>,
    /// Start of the window: a duration ago (`10m`, `2h`, `7d`) or an RFC 3339 time
    #[arg(long, value_name = "WHEN", value_parser = time_arg)]
    pub since: Option<i64>,
    /// End of the window: a duration ago or an RFC 3339 time (default: now)
    #[arg(long, value_name = "WHEN", value_parser = time_arg)]
    pub until: Option<i64>,
    /// Rows to show, newest first (at most 100000)
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub limit: u32,
    /// Keep streaming new denials as the controller stores them (Ctrl-C to stop)
    #[arg(long, short = 'f', conflicts_with = "top")]
    pub follow: bool,
    /// Rank the most denied ports and sources per host over the window (N each, default 10)
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "10",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub top: Option<u32>,
    /// Print JSON (with --follow: one JSON object per line)
    #[arg(long)]
    pub json: bool,
}

fn host_pattern(s: &str) -> Result<String, String> {
    HostPattern::parse(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

fn proto_number(s: &str) -> Result<u32, String> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(6),
        "udp" => Ok(17),
        n => n
            .parse::<u8>()
            .ok()
            .filter(|n| *n > 0)
            .map(u32::from)
            .ok_or_else(|| format!("{s:?} is not tcp, udp or a protocol number 1-255")),
    }
}

fn source_cidr(s: &str) -> Result<String, String> {
    parse_source(s).map(|n| n.to_string()).ok_or_else(|| {
        format!("{s:?} is not an address or CIDR (e.g. 192.0.2.0/24, 2001:db8::/32)")
    })
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `10m` (that long ago) or an RFC 3339 time, as Unix ms.
pub fn parse_time(s: &str, now_ms: i64) -> Result<i64, String> {
    if let Ok(d) = humantime::parse_duration(s) {
        let d = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        return Ok(now_ms.saturating_sub(d).max(1));
    }
    let t = humantime::parse_rfc3339_weak(s).map_err(|_| {
        format!("{s:?} is neither a duration ago (10m, 2h, 7d) nor an RFC 3339 time (2024-05-01T12:00:00Z)")
    })?;
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("{s:?} is before 1970"))?
        .as_millis();
    Ok(i64::try_from(ms).unwrap_or(i64::MAX).max(1))
}

fn time_arg(s: &str) -> Result<i64, String> {
    parse_time(s, now_ms())
}

impl LogsArgs {
    fn request(&self) -> v1::LogsRequest {
        v1::LogsRequest {
            host_pattern: self.host.clone().unwrap_or_default(),
            port: self.port.map(u32::from).unwrap_or(0),
            proto: self.proto.unwrap_or(0),
            source_cidr: self.source.clone().unwrap_or_default(),
            since_unix_ms: self.since.unwrap_or(0),
            until_unix_ms: self.until.unwrap_or(0),
            limit: self.limit,
            follow: self.follow,
            top: self.top.unwrap_or(0),
        }
    }
}

pub async fn run(args: LogsArgs, conn: &ConnectArgs) -> anyhow::Result<i32> {
    if let (Some(s), Some(u)) = (args.since, args.until)
        && u < s
    {
        crate::eoutln!(
            "error: --until ({}) is before --since ({})",
            time_ms(u),
            time_ms(s)
        );
        return Ok(super::exit::INVALID);
    }
    let mut client = conn.admin().await?;
    let req = args.request();
    if args.top.is_some() {
        return match client.logs_top(req).await {
            Ok(r) => print_top(&r.into_inner(), args.json).map(|()| super::exit::OK),
            Err(s) => Ok(fail(&s)),
        };
    }
    let mut stream = match client.logs(req).await {
        Ok(r) => r.into_inner(),
        Err(s) => return Ok(fail(&s)),
    };
    let first = match stream.next().await {
        Some(Ok(e)) => e,
        Some(Err(s)) => return Ok(fail(&s)),
        None => v1::LogsEvent::default(),
    };
    let totals = first.totals.clone();
    let mut rows = first.rows;
    if !args.follow {
        while let Some(e) = stream.next().await {
            match e {
                Ok(e) => rows.extend(e.rows),
                Err(s) => return Ok(fail(&s)),
            }
        }
        print_rows(&rows, &totals, args.json)?;
        return Ok(super::exit::OK);
    }
    // Follow: the recent rows oldest first, then each new row as it is stored.
    rows.reverse();
    if args.json {
        crate::outln!(
            "{}",
            json!({ "totals": totals.iter().map(totals_json).collect::<Vec<_>>() })
        );
    } else {
        crate::out!("{}", follow_line(&HEADER.map(String::from)));
    }
    let print = |rows: &[v1::DenialRow]| {
        for r in rows {
            if args.json {
                println!("{}", row_json(r));
            } else {
                crate::out!("{}", follow_line(&cells(r)));
            }
        }
    };
    print(&rows);
    if !args.json {
        print_loss(&totals);
    }
    while let Some(e) = stream.next().await {
        match e {
            Ok(e) => {
                if e.missed_batches > 0 {
                    crate::eoutln!(
                        "warning: fell behind, {} stored batches not shown",
                        e.missed_batches
                    );
                }
                print(&e.rows);
            }
            Err(s) => return Ok(fail(&s)),
        }
    }
    Ok(super::exit::OK)
}

fn fail(s: &tonic::Status) -> i32 {
    crate::eoutln!("error: {}", s.message());
    super::connect::status_exit(s)
}

const HEADER: [&str; 7] = ["TIME", "HOST", "SOURCE", "PROTO/PORT", "COUNT", "IF", "REV"];
const FOLLOW_WIDTHS: [usize; 6] = [20, 16, 24, 11, 7, 10];

fn follow_line(cells: &[String]) -> String {
    let mut out = String::new();
    for (i, c) in cells.iter().enumerate() {
        let c = super::output::term(c);
        match FOLLOW_WIDTHS.get(i) {
            Some(w) => out.push_str(&format!("{c:<w$}  ")),
            None => out.push_str(&c),
        }
    }
    out.push('\n');
    out
}

pub fn proto_name(p: u32) -> String {
    u8::try_from(p)
        .ok()
        .and_then(portcullis_policy::Proto::from_number)
        .map_or_else(|| format!("proto{p}"), |p| p.to_string())
}

fn cells(r: &v1::DenialRow) -> Vec<String> {
    vec![
        time_ms(r.last_unix_ms),
        r.host.clone(),
        r.src.clone(),
        format!("{}/{}", proto_name(r.proto), r.dport),
        r.count.to_string(),
        if r.ifname.is_empty() {
            "-".into()
        } else {
            r.ifname.clone()
        },
        format!("r{}{}", r.revision, if r.audit { " audit" } else { "" }),
    ]
}

fn row_json(r: &v1::DenialRow) -> serde_json::Value {
    json!({
        "host": r.host, "src": r.src, "dst": r.dst, "proto": proto_name(r.proto),
        "dport": r.dport, "ifname": r.ifname, "count": r.count,
        "first_unix_ms": r.first_unix_ms, "last_unix_ms": r.last_unix_ms,
        "revision": r.revision, "audit": r.audit,
    })
}

fn totals_json(t: &v1::HostLogTotals) -> serde_json::Value {
    json!({
        "host": t.host, "seen": t.seen, "stored": t.stored,
        "dropped_by_agent": t.dropped_by_agent, "socket_overruns": t.socket_overruns,
        "kernel_suppressed": t.kernel_suppressed, "spool_dropped": t.spool_dropped,
        "socket_lost": t.socket_lost,
    })
}

/// One line per host with a non-zero loss counter.
pub fn loss_lines(totals: &[v1::HostLogTotals]) -> Vec<String> {
    totals
        .iter()
        .filter_map(|t| {
            let parts: Vec<String> = [
                ("dropped by agent", t.dropped_by_agent),
                ("socket overruns", t.socket_overruns),
                ("lost in socket", t.socket_lost),
                ("kernel suppressed", t.kernel_suppressed),
                ("batches dropped from spool", t.spool_dropped),
            ]
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
            (!parts.is_empty())
                .then(|| format!("  {}: {}", super::output::term(&t.host), parts.join(", ")))
        })
        .collect()
}

fn print_loss(totals: &[v1::HostLogTotals]) {
    let lines = loss_lines(totals);
    if !lines.is_empty() {
        crate::outln!("\nnot stored (counted, since the first batch):");
        for l in lines {
            crate::outln!("{l}");
        }
    }
}

fn print_rows(
    rows: &[v1::DenialRow],
    totals: &[v1::HostLogTotals],
    json: bool,
) -> anyhow::Result<()> {
    if json {
        return print_json(&json!({
            "rows": rows.iter().map(row_json).collect::<Vec<_>>(),
            "totals": totals.iter().map(totals_json).collect::<Vec<_>>(),
        }));
    }
    if rows.is_empty() {
        crate::outln!("no denials match");
    } else {
        let cells: Vec<Vec<String>> = rows.iter().map(cells).collect();
        crate::out!("{}", table(&HEADER, &cells));
    }
    print_loss(totals);
    Ok(())
}

fn print_top(resp: &v1::LogsTopResponse, json: bool) -> anyhow::Result<()> {
    let items = |v: &[v1::TopItem]| -> Vec<serde_json::Value> {
        v.iter()
            .map(|i| json!({ "key": i.key, "count": i.count }))
            .collect()
    };
    if json {
        let hosts: Vec<_> = resp
            .hosts
            .iter()
            .map(|h| json!({ "host": h.host, "total": h.total, "ports": items(&h.ports), "sources": items(&h.sources) }))
            .collect();
        return print_json(&json!({ "hosts": hosts }));
    }
    if resp.hosts.is_empty() {
        crate::outln!("no denials match");
        return Ok(());
    }
    let mut rows = Vec::new();
    for h in &resp.hosts {
        for (rank, i) in (1..).zip(&h.ports) {
            rows.push(vec![
                h.host.clone(),
                "port".into(),
                rank.to_string(),
                i.key.clone(),
                i.count.to_string(),
                h.total.to_string(),
            ]);
        }
        for (rank, i) in (1..).zip(&h.sources) {
            rows.push(vec![
                h.host.clone(),
                "source".into(),
                rank.to_string(),
                i.key.clone(),
                i.count.to_string(),
                h.total.to_string(),
            ]);
        }
    }
    crate::out!(
        "{}",
        table(
            &["HOST", "KIND", "RANK", "KEY", "EVENTS", "HOST TOTAL"],
            &rows
        )
    );
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_time("10m", 1_000_000).unwrap(), 400_000);
        assert_eq!(
            parse_time("2024-05-01T00:00:00Z", 0).unwrap(),
            1_714_521_600_000
        );
        assert!(parse_time("yesterday", 0).is_err());
    }

    #[test]
    fn filters() {
        assert_eq!(proto_number("TCP").unwrap(), 6);
        assert_eq!(proto_number("udp").unwrap(), 17);
        assert!(proto_number("icmpx").is_err() && proto_number("0").is_err());
        assert_eq!(source_cidr("192.0.2.9/24").unwrap(), "192.0.2.0/24");
        assert_eq!(source_cidr("2001:db8::1").unwrap(), "2001:db8::1/128");
        assert!(source_cidr("10.0.0.0/33").is_err());
        assert!(host_pattern("web*:!web3").is_ok() && host_pattern("a::b").is_err());
    }

    #[test]
    fn loss_only_when_non_zero() {
        let t = vec![
            v1::HostLogTotals {
                host: "h1".into(),
                seen: 5,
                stored: 5,
                ..Default::default()
            },
            v1::HostLogTotals {
                host: "h2".into(),
                kernel_suppressed: 7,
                spool_dropped: 1,
                ..Default::default()
            },
        ];
        assert_eq!(
            loss_lines(&t),
            vec!["  h2: kernel suppressed 7, batches dropped from spool 1"]
        );
    }
}
