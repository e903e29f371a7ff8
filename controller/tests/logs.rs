//! Component tests of the denial log over real mutual TLS: a fake agent sends
//! `DenialBatch`es, an admin client reads them back with `Logs` / `LogsTop`.

#![allow(clippy::unwrap_used)]

mod common;

use common::{FakeAgent as Agent, TestController, now_ms};
use portcullis_controller::server::logs::LogsConfig;
use portcullis_proto::v1;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt as _;
use tonic::Code;

fn entry(src: &str, proto: u32, dport: u32, count: u64, at_ms: i64) -> v1::DenialEntry {
    v1::DenialEntry {
        src: src.into(),
        dst: "10.0.0.1".into(),
        proto,
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
    let sent = entries.iter().map(|e| e.count).sum();
    v1::DenialBatch {
        seq,
        interval_start_unix_ms: now_ms() - 1000,
        interval_end_unix_ms: now_ms(),
        entries,
        seen: sent + 3,
        sent,
        dropped_by_agent: 1,
        socket_overruns: 2,
        has_kernel_suppressed: true,
        kernel_suppressed: 4,
        spool_dropped: 0,
        socket_lost: 5,
        epoch: 42,
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

fn srcs(rows: &[v1::DenialRow]) -> Vec<String> {
    rows.iter()
        .map(|r| format!("{}:{}", r.host, r.src))
        .collect()
}

#[tokio::test]
async fn batches_are_stored_acked_and_resends_not_double_counted() {
    let ctl = TestController::start().await;
    let mut a = Agent::open(&ctl, "web1").await;
    let t = now_ms();
    a.store(batch(
        0,
        vec![
            entry("192.0.2.1", 6, 22, 5, t - 2000),
            entry("192.0.2.2", 6, 23, 1, t - 1000),
        ],
    ))
    .await;
    a.store(batch(1, vec![entry("192.0.2.3", 17, 53, 2, t)]))
        .await;
    // A resend of seq 0 is acknowledged, not stored again; also after a reconnect.
    a.store(batch(0, vec![entry("192.0.2.1", 6, 22, 5, t - 2000)]))
        .await;
    drop(a);
    let mut a = Agent::open(&ctl, "web1").await;
    a.store(batch(1, vec![entry("192.0.2.3", 17, 53, 2, t)]))
        .await;

    let mut admin = ctl.admin("ops").await;
    let (rows, totals) = query(&mut admin, v1::LogsRequest::default()).await;
    assert_eq!(
        srcs(&rows),
        ["web1:192.0.2.3", "web1:192.0.2.2", "web1:192.0.2.1"],
        "newest first"
    );
    assert_eq!(rows[2].count, 5);
    assert_eq!(totals.len(), 1);
    let t = &totals[0];
    assert_eq!((t.stored, t.seen), (8, 14), "{t:?}");
    assert_eq!(
        (
            t.dropped_by_agent,
            t.socket_overruns,
            t.kernel_suppressed,
            t.socket_lost
        ),
        (2, 4, 8, 10)
    );
}

#[tokio::test]
async fn filters_by_host_port_proto_source_and_time() {
    let ctl = TestController::start().await;
    let t = now_ms();
    let mut web = Agent::open(&ctl, "web1").await;
    web.store(batch(
        1,
        vec![
            entry("192.0.2.10", 6, 22, 1, t - 3_600_000),
            entry("198.51.100.7", 6, 443, 1, t - 1000),
            entry("2001:db8:1::5", 17, 53, 1, t - 500),
        ],
    ))
    .await;
    let mut db = Agent::open(&ctl, "db1").await;
    db.store(batch(
        1,
        vec![
            entry("192.0.2.11", 6, 22, 1, t - 200),
            entry("203.0.113.9", 6, 5432, 1, t - 100),
        ],
    ))
    .await;
    let mut admin = ctl.admin("ops").await;
    let q = |f: fn(&mut v1::LogsRequest)| {
        let mut r = v1::LogsRequest::default();
        f(&mut r);
        r
    };
    let (rows, totals) = query(&mut admin, q(|r| r.host_pattern = "web*".into())).await;
    assert_eq!(rows.len(), 3);
    assert_eq!(
        totals.iter().map(|t| t.host.as_str()).collect::<Vec<_>>(),
        ["web1"]
    );
    let (rows, _) = query(&mut admin, q(|r| r.host_pattern = "web1:db1".into())).await;
    assert_eq!(rows.len(), 5);
    let (rows, _) = query(&mut admin, q(|r| r.port = 22)).await;
    assert_eq!(srcs(&rows), ["db1:192.0.2.11", "web1:192.0.2.10"]);
    let (rows, _) = query(&mut admin, q(|r| r.proto = 17)).await;
    assert_eq!(srcs(&rows), ["web1:2001:db8:1::5"]);
    let (rows, _) = query(&mut admin, q(|r| r.source_cidr = "192.0.2.0/24".into())).await;
    assert_eq!(srcs(&rows), ["db1:192.0.2.11", "web1:192.0.2.10"]);
    let (rows, _) = query(&mut admin, q(|r| r.source_cidr = "2001:db8::/32".into())).await;
    assert_eq!(srcs(&rows), ["web1:2001:db8:1::5"]);
    let (rows, _) = query(&mut admin, q(|r| r.source_cidr = "203.0.113.9".into())).await;
    assert_eq!(srcs(&rows), ["db1:203.0.113.9"]);
    let mut since = v1::LogsRequest {
        since_unix_ms: t - 600_000,
        port: 22,
        ..Default::default()
    };
    let (rows, _) = query(&mut admin, since.clone()).await;
    assert_eq!(srcs(&rows), ["db1:192.0.2.11"]);
    since.limit = 1;
    since.port = 0;
    let (rows, _) = query(&mut admin, since).await;
    assert_eq!(srcs(&rows), ["db1:203.0.113.9"], "limit keeps the newest");
    for bad in [
        v1::LogsRequest {
            source_cidr: "10.0.0.0/33".into(),
            ..Default::default()
        },
        v1::LogsRequest {
            host_pattern: "a::b".into(),
            ..Default::default()
        },
        v1::LogsRequest {
            port: 70_000,
            ..Default::default()
        },
    ] {
        let Err(err) = admin.logs(bad).await else {
            panic!("bad filter accepted")
        };
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }
}

#[tokio::test]
async fn follow_receives_a_new_row_within_two_seconds() {
    let ctl = TestController::start().await;
    let mut a = Agent::open(&ctl, "web1").await;
    a.store(batch(1, vec![entry("192.0.2.1", 6, 22, 1, now_ms())]))
        .await;
    let mut admin = ctl.admin("ops").await;
    let req = v1::LogsRequest {
        follow: true,
        port: 22,
        ..Default::default()
    };
    let mut s = admin.logs(req).await.unwrap().into_inner();
    let first = s.next().await.unwrap().unwrap();
    assert_eq!(first.rows.len(), 1);
    let started = Instant::now();
    // Not matching (port 23), then matching.
    a.store(batch(2, vec![entry("192.0.2.2", 6, 23, 1, now_ms())]))
        .await;
    a.store(batch(3, vec![entry("192.0.2.3", 6, 22, 7, now_ms())]))
        .await;
    let ev = tokio::time::timeout(Duration::from_secs(2), s.next())
        .await
        .expect("no live row within 2 s")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(srcs(&ev.rows), ["web1:192.0.2.3"]);
    assert_eq!(ev.rows[0].count, 7);
}

#[tokio::test]
async fn top_ranks_ports_and_sources_per_host() {
    let ctl = TestController::start().await;
    let t = now_ms();
    let mut a = Agent::open(&ctl, "web1").await;
    a.store(batch(
        1,
        vec![
            entry("192.0.2.1", 6, 22, 10, t),
            entry("192.0.2.2", 6, 22, 5, t),
            entry("192.0.2.2", 17, 53, 7, t),
            entry("192.0.2.3", 6, 3389, 1, t),
        ],
    ))
    .await;
    let mut b = Agent::open(&ctl, "db1").await;
    b.store(batch(1, vec![entry("192.0.2.9", 6, 5432, 3, t)]))
        .await;
    let mut admin = ctl.admin("ops").await;
    let req = v1::LogsRequest {
        top: 2,
        ..Default::default()
    };
    let top = admin.logs_top(req).await.unwrap().into_inner();
    let hosts: Vec<&str> = top.hosts.iter().map(|h| h.host.as_str()).collect();
    assert_eq!(hosts, ["db1", "web1"]);
    let web = &top.hosts[1];
    assert_eq!(web.total, 23);
    let items = |v: &[v1::TopItem]| {
        v.iter()
            .map(|i| (i.key.clone(), i.count))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        items(&web.ports),
        [("tcp/22".into(), 15), ("udp/53".into(), 7)]
    );
    assert_eq!(
        items(&web.sources),
        [("192.0.2.2".into(), 12), ("192.0.2.1".into(), 10)]
    );
    // A wide source CIDR is applied before ranking.
    let req = v1::LogsRequest {
        top: 5,
        source_cidr: "192.0.2.0/31".into(),
        host_pattern: "web1".into(),
        ..Default::default()
    };
    let top = admin.logs_top(req).await.unwrap().into_inner();
    assert_eq!(items(&top.hosts[0].sources), [("192.0.2.1".into(), 10)]);
}

#[tokio::test]
async fn malformed_or_oversized_batches_are_rejected_without_harm() {
    let ctl = TestController::start().await;
    let t = now_ms();
    let mut a = Agent::open(&ctl, "web1").await;
    a.store(batch(1, vec![entry("192.0.2.1", 6, 22, 1, t)]))
        .await;

    // Malformed address: the session ends with InvalidArgument, a later batch is ignored.
    a.send(batch(
        2,
        vec![
            entry("192.0.2.2", 6, 22, 1, t),
            entry("not-an-ip", 6, 22, 1, t),
        ],
    ))
    .await;
    a.send(batch(3, vec![entry("192.0.2.3", 6, 22, 1, t)]))
        .await;
    let err = a.next_ack().await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("seq 2") && err.message().contains("src"),
        "{}",
        err.message()
    );

    // Too many entries.
    let mut a = Agent::open(&ctl, "web1").await;
    a.send(batch(4, vec![entry("192.0.2.4", 6, 22, 1, t); 20_001]))
        .await;
    let err = a.next_ack().await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // Larger than the message limit: tonic refuses it before it is decoded.
    let mut a = Agent::open(&ctl, "web1").await;
    let mut huge = entry("192.0.2.5", 6, 22, 1, t);
    huge.ifname = "x".repeat(5 << 20);
    a.send(batch(5, vec![huge])).await;
    assert!(a.next_ack().await.is_err());

    // Absurd counters are clamped (see hostile_denials.rs), not fatal.
    let mut a = Agent::open(&ctl, "web1").await;
    let mut b = batch(6, vec![]);
    b.seen = u64::MAX;
    a.store(b).await;

    // The store is unharmed and the next good batch is stored.
    let mut a = Agent::open(&ctl, "web1").await;
    a.store(batch(7, vec![entry("192.0.2.7", 6, 22, 1, t)]))
        .await;
    let mut admin = ctl.admin("ops").await;
    let (rows, totals) = query(&mut admin, v1::LogsRequest::default()).await;
    assert_eq!(srcs(&rows), ["web1:192.0.2.7", "web1:192.0.2.1"]);
    assert_eq!(totals[0].stored, 2);
}

#[tokio::test]
async fn retention_deletes_old_rows_and_rows_over_the_limit() {
    let ctl = TestController::start_with_logs(LogsConfig {
        retention: Some(Duration::from_secs(3600)),
        max_rows: Some(3),
        sweep_interval: Duration::from_millis(100),
    })
    .await;
    let t = now_ms();
    let mut a = Agent::open(&ctl, "web1").await;
    a.store(batch(
        1,
        vec![
            entry("192.0.2.1", 6, 22, 1, t - 7_200_000),
            entry("192.0.2.2", 6, 22, 1, t - 100),
        ],
    ))
    .await;
    a.store(batch(
        2,
        (3..=6)
            .map(|i| entry(&format!("192.0.2.{i}"), 6, 22, 1, t))
            .collect(),
    ))
    .await;
    let mut admin = ctl.admin("ops").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (rows, totals) = query(&mut admin, v1::LogsRequest::default()).await;
        if rows.len() == 3 {
            let mut s = srcs(&rows);
            s.sort();
            assert_eq!(s, ["web1:192.0.2.4", "web1:192.0.2.5", "web1:192.0.2.6"]);
            assert_eq!(
                totals[0].stored, 6,
                "totals count what was stored, not what is kept"
            );
            break;
        }
        assert!(Instant::now() < deadline, "retention did not run: {rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
