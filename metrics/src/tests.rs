//! The endpoint against raw TCP clients: answers, refusals and the request bounds.

#![allow(clippy::unwrap_used)]

use super::*;
use prometheus_client::metrics::counter::Counter;

async fn start() -> (SocketAddr, Counter, tokio::sync::oneshot::Sender<()>) {
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut registry = Registry::default();
    let counter = Counter::<u64>::default();
    registry.register("portcullis_test_things", "Things", counter.clone());
    let registry = Arc::new(registry);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(
        listener,
        move || {
            let r = registry.clone();
            async move { encode(&r) }
        },
        async move {
            let _ = stopped.await;
        },
    ));
    (addr, counter, stop)
}

async fn request(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn get_metrics_returns_the_exposition_and_counts_move() {
    let (addr, counter, _stop) = start().await;
    let a = request(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n",
    )
    .await;
    assert!(a.starts_with("HTTP/1.1 200 OK\r\n"), "{a}");
    assert!(a.contains(CONTENT_TYPE), "{a}");
    assert!(a.contains("# TYPE portcullis_test_things counter\n"), "{a}");
    assert!(a.contains("portcullis_test_things_total 0\n"), "{a}");
    assert!(a.ends_with("# EOF\n"), "{a}");
    counter.inc_by(3);
    // Without OpenMetrics in Accept: the classic text format.
    let b = request(addr, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").await;
    assert!(b.contains(TEXT_CONTENT_TYPE), "{b}");
    assert!(
        b.contains("# TYPE portcullis_test_things_total counter\n"),
        "{b}"
    );
    assert!(b.contains("portcullis_test_things_total 3\n"), "{b}");
    assert!(!b.contains("# EOF"), "{b}");
}

#[tokio::test]
async fn other_paths_methods_and_garbage_are_refused() {
    let (addr, _c, _stop) = start().await;
    let a = request(addr, b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(a.starts_with("HTTP/1.1 404 "), "{a}");
    let b = request(
        addr,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
    )
    .await;
    assert!(b.starts_with("HTTP/1.1 405 "), "{b}");
    let c = request(addr, b"\x16\x03\x01 hello\r\n\r\n").await;
    assert!(c.starts_with("HTTP/1.1 400 "), "{c}");
    let head = request(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(!head.contains("# EOF"), "{head}");
}

#[tokio::test]
async fn an_oversized_head_gets_431_without_reading_it_all() {
    let (addr, _c, _stop) = start().await;
    let mut raw = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
    raw.extend(std::iter::repeat_n(b'a', MAX_REQUEST_BYTES * 2));
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The server answers after MAX_REQUEST_BYTES and closes; the rest may not be read.
    let _ = s.write_all(&raw).await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_the_request_timeout() {
    let (addr, _c, _stop) = start().await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
    // The server gives up after REQUEST_TIMEOUT; far longer means it never does.
    let mut out = Vec::new();
    let n = tokio::time::timeout(REQUEST_TIMEOUT * 4, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "closed without an answer");
}

#[test]
fn parse_request_lines() {
    assert_eq!(
        parse(b"GET /metrics HTTP/1.1\r\n\r\n", true),
        Request::Metrics {
            head_only: false,
            openmetrics: false
        }
    );
    assert_eq!(
        parse(
            b"GET /metrics HTTP/1.1\r\naccept: application/openmetrics-text\r\n\r\n",
            true
        ),
        Request::Metrics {
            head_only: false,
            openmetrics: true
        }
    );
    assert_eq!(parse(b"GET /metrics HTTP/2\r\n\r\n", true), Request::Bad);
    assert_eq!(parse(b"GET /metrics\r\n\r\n", true), Request::Bad);
    assert_eq!(
        parse(b"GET /metricsx HTTP/1.1\r\n\r\n", true),
        Request::NotFound
    );
    assert_eq!(parse(b"GET /metrics HTTP/1.1", false), Request::TooLarge);
}

#[test]
fn classic_text_renames_counter_families_and_drops_openmetrics_only_lines() {
    let om = "# HELP a_things Things.\n# TYPE a_things counter\na_things_total 2\n\
              # HELP a_dur Durations.\n# TYPE a_dur histogram\n# UNIT a_dur seconds\n\
              a_dur_sum 1.0\n# EOF\n";
    assert_eq!(
        classic_text(om),
        "# HELP a_things_total Things.\n# TYPE a_things_total counter\na_things_total 2\n\
         # HELP a_dur Durations.\n# TYPE a_dur histogram\na_dur_sum 1.0\n"
    );
}
