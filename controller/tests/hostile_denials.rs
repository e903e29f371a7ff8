//! A hostile agent's denial batches (issue 10, item 5), over real mutual TLS: counters at
//! u64::MAX and sums past i64::MAX must not break `logs` / `logs --top` for every host,
//! times far in the future are clamped (not fatal), the aggregator's `(other)` overflow
//! entry is stored, and `--log-max-rows` retention is fair per host.

#![allow(clippy::unwrap_used)]

mod common;

use common::{FakeAgent, TestController, now_ms};
use portcullis_controller::server::logs::LogsConfig;
use portcullis_proto::v1;
use std::time::{Duration, Instant, SystemTime};
use tokio_stream::StreamExt as _;

const MAX_COUNTER: u64 = 1_000_000_000_000_000;

/// A fake agent whose waits give up after 10 s.
async fn open(ctl: &TestController, host: &str) -> FakeAgent {
    FakeAgent::open(ctl, host)
        .await
        .within(Duration::from_secs(10))
}

fn entry(src: &str, dport: u32, count: u64, at_ms: i64) -> v1::DenialEntry {
    v1::DenialEntry {
        src: src.into(),
        dst: "10.0.0.1".into(),
        proto: 6,
        dport,
        sport: 40_000,
        ifname: "eth0".into(),
        count,
        first_unix_ms: at_ms - 500,
        last_unix_ms: at_ms,
        revision: 1,
        audit: false,
    }
}

fn batch(seq: u64, entries: Vec<v1::DenialEntry>) -> v1::DenialBatch {
    let sent = entries.iter().fold(0u64, |a, e| a.saturating_add(e.count));
    v1::DenialBatch {
        seq,
        entries,
        seen: sent,
        sent,
        epoch: 7,
        ..Default::default()
    }
}

type Admin = v1::admin_client::AdminClient<tonic::transport::Channel>;

async fn query(
    admin: &mut Admin,
    req: v1::LogsRequest,
) -> (Vec<v1::DenialRow>, Vec<v1::HostLogTotals>) {
    let mut s = admin.logs(req).await.unwrap().into_inner();
    let (mut rows, mut totals) = (Vec::new(), Vec::new());
    while let Some(e) = s.next().await {
        let e = e.unwrap();
        rows.extend(e.rows);
        totals.extend(e.totals);
    }
    (rows, totals)
}

#[tokio::test]
async fn counters_at_u64_max_do_not_break_logs_for_everyone() {
    let ctl = TestController::start().await;
    let t = now_ms();
    let mut good = open(&ctl, "good").await;
    good.store(batch(1, vec![entry("192.0.2.1", 22, 3, t)]))
        .await;

    // 10,000 entries at the largest count accepted so far: their SUM() is 1e19 > i64::MAX;
    // one more at u64::MAX, and every batch counter at u64::MAX.
    let mut evil = open(&ctl, "evil").await;
    let mut entries: Vec<v1::DenialEntry> = (0..10_000u32)
        .map(|i| entry(&format!("10.9.{}.{}", i / 256, i % 256), 23, MAX_COUNTER, t))
        .collect();
    entries.push(entry("198.51.100.1", 23, u64::MAX, t));
    let mut b = batch(1, entries);
    (
        b.seen,
        b.sent,
        b.dropped_by_agent,
        b.socket_overruns,
        b.socket_lost,
        b.spool_dropped,
    ) = (u64::MAX, u64::MAX, u64::MAX, u64::MAX, u64::MAX, u64::MAX);
    (b.has_kernel_suppressed, b.kernel_suppressed) = (true, u64::MAX);
    evil.store(b.clone()).await;
    for seq in 2..=4 {
        b.seq = seq;
        b.entries.truncate(10);
        evil.store(b.clone()).await;
    }

    let mut admin = ctl.admin("ops").await;
    let top = admin
        .logs_top(v1::LogsRequest::default())
        .await
        .expect("logs --top works for everyone")
        .into_inner();
    let good_top = top.hosts.iter().find(|h| h.host == "good").unwrap();
    assert_eq!(good_top.total, 3);
    let evil_top = top.hosts.iter().find(|h| h.host == "evil").unwrap();
    assert!(evil_top.total >= 10_000 * MAX_COUNTER, "{}", evil_top.total);

    let (rows, totals) = query(
        &mut admin,
        v1::LogsRequest {
            host_pattern: "good".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(totals.iter().find(|t| t.host == "good").unwrap().stored, 3);
    let (_, totals) = query(&mut admin, v1::LogsRequest::default()).await;
    let evil_totals = totals.iter().find(|t| t.host == "evil").unwrap();
    assert!(evil_totals.seen >= 4 * MAX_COUNTER && evil_totals.seen < u64::MAX);
    // The good host's next batch is still stored and counted exactly.
    good.store(batch(2, vec![entry("192.0.2.2", 22, 2, t)]))
        .await;
    let top = admin
        .logs_top(v1::LogsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        top.hosts.iter().find(|h| h.host == "good").unwrap().total,
        5
    );
}

#[tokio::test]
async fn future_times_are_clamped_and_the_overflow_entry_is_stored() {
    let ctl = TestController::start().await;
    let t = now_ms();
    let mut a = open(&ctl, "h1").await;
    let ten_years = 10 * 365 * 24 * 3_600_000;
    let overflow = v1::DenialEntry {
        src: "(other)".into(),
        dst: "0.0.0.0".into(),
        proto: 0,
        dport: 0,
        sport: 0,
        ifname: "eth0".into(),
        count: 12_345,
        first_unix_ms: t - 1_000,
        last_unix_ms: t,
        revision: 0,
        audit: false,
    };
    a.store(batch(
        1,
        vec![entry("192.0.2.1", 22, 1, t + ten_years), overflow],
    ))
    .await;
    let mut admin = ctl.admin("ops").await;
    let (rows, _) = query(&mut admin, v1::LogsRequest::default()).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    let future = rows.iter().find(|r| r.src == "192.0.2.1").unwrap();
    assert!(
        future.last_unix_ms <= now_ms() + 24 * 3_600_000,
        "{future:?}"
    );
    let other = rows.iter().find(|r| r.src == "(other)").unwrap();
    assert_eq!((other.count, other.dport, other.proto), (12_345, 0, 0));
    // The session is alive: the next batch is acknowledged.
    a.store(batch(2, vec![entry("192.0.2.2", 22, 1, t)])).await;
}

#[tokio::test]
async fn row_retention_is_fair_per_host() {
    let ctl = TestController::start_with_logs(LogsConfig {
        retention: None,
        max_rows: Some(20),
        sweep_interval: Duration::from_millis(100),
    })
    .await;
    let t = now_ms();
    let mut quiet = open(&ctl, "quiet").await;
    quiet
        .store(batch(
            1,
            (1..=3)
                .map(|i| entry(&format!("192.0.2.{i}"), 22, 1, t - 60_000))
                .collect(),
        ))
        .await;
    // A flood after the quiet host's (older) rows: global oldest-first would delete them.
    let mut loud = open(&ctl, "loud").await;
    loud.store(batch(
        1,
        (0..500u32)
            .map(|i| entry(&format!("10.1.{}.{}", i / 256, i % 256), 23, 1, t))
            .collect(),
    ))
    .await;
    let mut admin = ctl.admin("ops").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let req = v1::LogsRequest {
            limit: 1_000,
            ..Default::default()
        };
        let (rows, _) = query(&mut admin, req).await;
        let of = |h: &str| rows.iter().filter(|r| r.host == h).count();
        if rows.len() <= 20 {
            assert_eq!(of("quiet"), 3, "the quiet host keeps its history");
            assert_eq!(of("loud"), 17);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "retention did not run: {} rows",
            rows.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_agents_own_overflow_entry_is_valid_and_stored() {
    use portcullis_agent::nflog::{Action, Aggregator, DenialEvent, ReaderStats};
    let ctl = TestController::start().await;
    let at = SystemTime::now() - Duration::from_secs(1);
    // The agent's aggregator with a cap of 2 keys: the third key goes to `(other)`.
    let mut agg = Aggregator::new("h1", Duration::from_secs(1)).with_max_entries(2);
    for port in [22u16, 23, 25, 110] {
        agg.push(DenialEvent {
            ts: at,
            ifindex_in: 1,
            ifname: None,
            src: "192.0.2.9".parse().unwrap(),
            dst: "10.0.0.1".parse().unwrap(),
            proto: 6,
            sport: 40_000,
            dport: port,
            prefix: "pc r1 deny ".into(),
            revision: Some(1),
            action: Action::Deny,
        });
    }
    let aggregated = agg
        .drain(SystemTime::now(), &ReaderStats::default(), None)
        .unwrap();
    let mut wire = portcullis_agent::denials::wire_batch(aggregated);
    wire.seq = 1;
    assert!(wire.entries.iter().any(|e| e.src == "(other)"), "{wire:?}");
    let mut a = open(&ctl, "h1").await;
    a.store(wire).await;
    let mut admin = ctl.admin("ops").await;
    let (rows, totals) = query(&mut admin, v1::LogsRequest::default()).await;
    let other = rows.iter().find(|r| r.src == "(other)").unwrap();
    assert_eq!((other.count, other.dport), (2, 0));
    assert_eq!(totals[0].stored, 4);
}
