//! Helpers shared by `tests/nflog.rs` and `benches/nflog.rs`: load an nft ruleset into a
//! namespace, read rule counters back, blast UDP from a namespace.

#![allow(dead_code)]

use anyhow::{Context, Result, bail};
use portcullis_testkit::NetNs;
use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};

/// `table inet pctest`: a rate-limited log rule for tcp/udp dport 0-1023 to `group`, then
/// the over-limit drop rule. `rate` is the limit per second, `burst` in packets.
pub fn ruleset(group: u16, rate: u64, burst: u64) -> String {
    format!(
        "table inet pctest {{\n\
         \x20 chain input {{\n\
         \x20   type filter hook input priority filter - 10; policy accept;\n\
         \x20   iifname != \"lo\" meta l4proto {{ tcp, udp }} th dport 0-1023 limit rate {rate}/second burst {burst} packets counter log prefix \"pc r42 deny \" group {group} drop\n\
         \x20   meta l4proto {{ tcp, udp }} th dport 0-1023 counter drop\n\
         \x20 }}\n\
         }}\n"
    )
}

/// `nft -f -` inside `ns`.
pub fn load(ns: &NetNs, text: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns.name(), "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn nft")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("nft -f failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Packet counters of the rules of `inet pctest input`, in rule order:
/// `[log rule (logged), drop rule (suppressed by the limit)]`.
pub fn counters(ns: &NetNs) -> Result<Vec<u64>> {
    let json = ns.run_ok("nft", &["-j", "list", "chain", "inet", "pctest", "input"])?;
    let v: serde_json::Value = serde_json::from_str(&json).context("nft -j output")?;
    let mut out = Vec::new();
    for item in v["nftables"].as_array().context("nftables array")? {
        let Some(exprs) = item["rule"]["expr"].as_array() else {
            continue;
        };
        for e in exprs {
            if let Some(p) = e["counter"]["packets"].as_u64() {
                out.push(p);
            }
        }
    }
    Ok(out)
}

/// Sends `n` UDP datagrams from `ns` to `dst` as fast as one thread can, returns the time taken.
pub fn blast_udp(
    ns: &NetNs,
    dst: SocketAddr,
    n: u64,
    payload: usize,
) -> Result<std::time::Duration> {
    ns.enter(move || -> Result<std::time::Duration> {
        let local: SocketAddr = if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse()?;
        let sock = UdpSocket::bind(local)?;
        sock.connect(dst)?;
        let buf = vec![0x5a_u8; payload];
        let start = std::time::Instant::now();
        let mut sent = 0;
        while sent < n {
            match sock.send(&buf) {
                Ok(_) => sent += 1,
                // ICMP errors are not expected (we drop), but a queued error must not stop us.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                Err(e) if e.raw_os_error() == Some(105) => std::thread::yield_now(), // ENOBUFS
                Err(e) => return Err(e.into()),
            }
        }
        Ok(start.elapsed())
    })?
}
