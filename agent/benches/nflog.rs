//! NFLOG benchmark (agent half of issue 4): events parsed per second on one core.
//!
//! (a) parse-only over synthesized kernel-shaped NFLOG batches (22 messages + NLMSG_DONE per
//!     buffer, like the kernel's default group buffer), against the crate's own parser;
//! (b) end-to-end in a netns pair: N UDP packets to a denied port, log limit 1M/s, reader
//!     thread + aggregator; then the same stream into ulogd2 (JSON and SQLite outputs) when
//!     it is installed.
//!
//! `cargo bench -p portcullis-agent --bench nflog` (root for (b); `NFLOG_BENCH_N`, default
//! 200000; `PORTCULLIS_SKIP_NETNS=1` runs (a) only). Prints markdown tables.

#[path = "nflog/e2e.rs"]
mod e2e;
use portcullis_agent::nflog;
#[path = "../tests/nflog_support/mod.rs"]
mod nflog_support;
#[path = "nflog/ulogd.rs"]
mod ulogd;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::nflog::{PacketNla, ULogMessage};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner};
use nflog::wire::{SynthPacket, encode_done, encode_packet, ip_packet};
use nflog::{Aggregator, ReaderStats, parse_buffer};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant, UNIX_EPOCH};

const PER_BATCH: usize = 22;
const RUNS: usize = 5;

fn main() {
    let n: u64 = std::env::var("NFLOG_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    println!("# NFLOG benchmark (agent), N = {n}\n");
    parse_only(n);
    if std::env::var("PORTCULLIS_SKIP_NETNS").is_ok_and(|v| v == "1") {
        println!("\n(end-to-end skipped: PORTCULLIS_SKIP_NETNS=1)");
        return;
    }
    if !portcullis_testkit::require_root_netns() {
        return;
    }
    let mut rows = vec![
        e2e::agent(
            n,
            "agent, default (nlbufsiz 16 KiB, qthresh 100)",
            e2e::default_cfg(),
        ),
        e2e::agent(n, "agent, kernel buffer 4 KiB", e2e::small_cfg()),
    ];
    rows.extend(ulogd::run(n, "JSON"));
    rows.extend(ulogd::run(n.min(20_000), "SQLITE3"));
    println!("\n## (b) end-to-end, netns pair, UDP flood to a denied port, log limit 1M/s\n");
    e2e::print(&rows);
}

fn buffers(n: u64) -> (Vec<Vec<u8>>, usize) {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut in_batch = 0;
    let ports = [22u16, 23, 25, 137, 139, 445, 111, 53];
    let mut msg_bytes = 0;
    for i in 0..n {
        let v6 = i % 4 == 3;
        let proto = if i % 2 == 0 { 17 } else { 6 };
        let (src, dst): (IpAddr, IpAddr) = if v6 {
            (
                Ipv6Addr::new(0xfd77, 0, 0, 1, 0, 0, (i >> 8) as u16, i as u16).into(),
                Ipv6Addr::new(0xfd77, 0, 0, 1, 0, 0, 0, 1).into(),
            )
        } else {
            (
                Ipv4Addr::new(10, 77, (i >> 8) as u8 % 4, i as u8).into(),
                Ipv4Addr::new(10, 77, 1, 1).into(),
            )
        };
        let mut payload = ip_packet(
            src,
            dst,
            proto,
            40_000 + (i % 1000) as u16,
            ports[(i % 8) as usize],
        );
        payload.resize(payload.len() + 32, 0x5a); // the datagram's data, within copy range 128
        let before = cur.len();
        let p = SynthPacket {
            group: 7,
            ifindex_in: 2,
            prefix: "pc r42 deny ",
            seq: Some(i as u32),
            timestamp: None,
            payload: &payload,
        };
        encode_packet(&mut cur, &p, true);
        msg_bytes = cur.len() - before;
        in_batch += 1;
        if in_batch == PER_BATCH {
            encode_done(&mut cur);
            out.push(std::mem::take(&mut cur));
            in_batch = 0;
        }
    }
    if !cur.is_empty() {
        encode_done(&mut cur);
        out.push(cur);
    }
    (out, msg_bytes)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time_runs(mut f: impl FnMut() -> u64, n: u64) -> Duration {
    let mut times = Vec::new();
    for _ in 0..RUNS {
        let start = Instant::now();
        let got = f();
        times.push(start.elapsed());
        assert_eq!(got, n, "every event parsed");
    }
    median(times)
}

fn parse_only(n: u64) {
    let (bufs, msg_bytes) = buffers(n);
    let bytes: usize = bufs.iter().map(Vec::len).sum();
    let ours = time_runs(
        || {
            let mut count = 0;
            for b in &bufs {
                parse_buffer(b, UNIX_EPOCH, |seq, ev| {
                    black_box((seq, ev.is_ok()));
                    count += 1;
                });
            }
            count
        },
        n,
    );
    let with_agg = time_runs(
        || {
            let mut agg = Aggregator::new("bench", Duration::from_secs(1));
            for b in &bufs {
                parse_buffer(b, UNIX_EPOCH, |_, ev| {
                    if let Ok(ev) = ev {
                        agg.push(ev);
                    }
                });
            }
            let batch = agg.drain(UNIX_EPOCH, &ReaderStats::default(), None);
            black_box(batch).map_or(0, |b| b.sent)
        },
        n,
    );
    let crate_parser = time_runs(|| crate_parse(&bufs), n);
    println!("## (a) parse-only, one core (median of {RUNS} runs)\n");
    println!(
        "{n} synthesized NFLOG messages ({msg_bytes} B each: 60/80 B of packet, prefix, \
         ifindex, hw header, seq), {} buffers of {PER_BATCH} + NLMSG_DONE, {:.1} MB.\n",
        bufs.len(),
        bytes as f64 / 1e6
    );
    println!("| parser | time | events/s | ns/event |");
    println!("|---|---|---|---|");
    for (name, d) in [
        ("portcullis `parse_buffer` (zero-copy)", ours),
        ("`parse_buffer` + `Aggregator::push`", with_agg),
        (
            "netlink-packet-netfilter 0.4 `deserialize` (allocating)",
            crate_parser,
        ),
    ] {
        println!(
            "| {name} | {:.1} ms | {:.0} | {:.0} |",
            d.as_secs_f64() * 1e3,
            n as f64 / d.as_secs_f64(),
            d.as_nanos() as f64 / n as f64
        );
    }
}

/// The crate's parser over the same buffers, extracting what we need (src/dst/ports/prefix).
fn crate_parse(bufs: &[Vec<u8>]) -> u64 {
    let mut count = 0;
    for b in bufs {
        let mut off = 0;
        while off < b.len() {
            let Ok(msg) = NetlinkMessage::<NetfilterMessage>::deserialize(&b[off..]) else {
                break;
            };
            let len = msg.header.length as usize;
            if let NetlinkPayload::InnerMessage(NetfilterMessage {
                inner: NetfilterMessageInner::ULog(ULogMessage::Packet(nlas)),
                ..
            }) = &msg.payload
            {
                for nla in nlas {
                    match nla {
                        PacketNla::Payload(p) => {
                            black_box(&p[..p.len().min(44)]);
                        }
                        PacketNla::Prefix(s) => {
                            black_box(s.to_string_lossy());
                        }
                        _ => {}
                    }
                }
                count += 1;
            }
            if len == 0 {
                break;
            }
            off += (len + 3) & !3;
        }
    }
    count
}
