//! Real packet probes, run inside a namespace on a thread that entered it with `setns`.
//!
//! - [`tcp_connect`]: Accepted (handshake done and our listener's banner read), Refused
//!   (RST: nothing listens and nothing dropped the SYN), TimedOut (no answer: dropped),
//!   Stalled (handshake done but no banner: data dropped after the SYN-ACK).
//! - [`TcpServer`]: a listener that writes a banner to each connection and counts them.
//! - [`UdpEcho`] + [`udp_request`]: a datagram echo and a client that waits for the answer.
//!
//! Servers stop and join their thread on drop. Timeouts are the caller's: keep them short
//! (300-500 ms) where "dropped" is the expected answer.

use crate::NetNs;
use anyhow::{Context, Result, anyhow, bail};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// What a [`TcpServer`] writes to every accepted connection.
pub const BANNER: &[u8] = b"portcullis-testkit\n";
const POLL: Duration = Duration::from_millis(2);

/// The result of a TCP connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpOutcome {
    /// Handshake completed and the listener's banner arrived.
    Accepted,
    /// The peer answered with a RST (no listener, and the SYN was not dropped).
    Refused,
    /// No answer within the timeout: the SYN (or the SYN-ACK) was dropped.
    TimedOut,
    /// Handshake completed but no banner arrived within the timeout.
    Stalled,
}

/// The result of a UDP request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpOutcome {
    /// The echo came back.
    Answered,
    /// ICMP port unreachable came back (nothing listens, nothing dropped it).
    Refused,
    /// Nothing came back within the timeout.
    NoAnswer,
}

/// Connects from `ns` to `dst` (source address chosen by routing).
pub fn tcp_connect(ns: &NetNs, dst: SocketAddr, timeout: Duration) -> Result<TcpOutcome> {
    tcp_connect_from(ns, None, dst, timeout)
}

/// Connects from `ns` to `dst`, from source address `src` if given.
pub fn tcp_connect_from(
    ns: &NetNs,
    src: Option<IpAddr>,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<TcpOutcome> {
    ns.enter(move || tcp_connect_here(src, dst, timeout))?
}

fn tcp_connect_here(src: Option<IpAddr>, dst: SocketAddr, timeout: Duration) -> Result<TcpOutcome> {
    let socket = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))
        .context("tcp socket")?;
    if let Some(src) = src {
        socket
            .bind(&SockAddr::from(SocketAddr::new(src, 0)))
            .with_context(|| format!("bind {src}"))?;
    }
    match socket.connect_timeout(&SockAddr::from(dst), timeout) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Ok(TcpOutcome::Refused),
        Err(e) if is_timeout(&e) => return Ok(TcpOutcome::TimedOut),
        Err(e) => return Err(e).with_context(|| format!("connect {dst}")),
    }
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; BANNER.len()];
    match stream.read_exact(&mut buf) {
        Ok(()) if buf == BANNER => Ok(TcpOutcome::Accepted),
        Ok(()) => bail!("{dst} answered with a foreign banner {buf:?}"),
        Err(e) if is_timeout(&e) => Ok(TcpOutcome::Stalled),
        Err(e) => Err(e).with_context(|| format!("read banner from {dst}")),
    }
}

/// Sends one datagram from `ns` to `dst` and waits for the echo.
pub fn udp_request(ns: &NetNs, dst: SocketAddr, timeout: Duration) -> Result<UdpOutcome> {
    udp_request_from(ns, None, dst, timeout)
}

/// Sends one datagram from `ns` (from `src` if given) to `dst` and waits for the echo.
pub fn udp_request_from(
    ns: &NetNs,
    src: Option<IpAddr>,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<UdpOutcome> {
    ns.enter(move || udp_request_here(src, dst, timeout))?
}

fn udp_request_here(src: Option<IpAddr>, dst: SocketAddr, timeout: Duration) -> Result<UdpOutcome> {
    let local = src.unwrap_or(match dst {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    });
    let socket = UdpSocket::bind(SocketAddr::new(local, 0)).context("udp bind")?;
    socket
        .connect(dst)
        .with_context(|| format!("udp connect {dst}"))?;
    socket.set_read_timeout(Some(timeout))?;
    let payload = format!(
        "probe-{}-{:?}",
        std::process::id(),
        std::time::Instant::now()
    );
    socket.send(payload.as_bytes()).context("udp send")?;
    let mut buf = [0u8; 512];
    loop {
        match socket.recv(&mut buf) {
            Ok(n) if &buf[..n] == payload.as_bytes() => return Ok(UdpOutcome::Answered),
            Ok(_) => continue, // a stale answer to someone else's probe: keep waiting
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Ok(UdpOutcome::Refused),
            Err(e) if is_timeout(&e) => return Ok(UdpOutcome::NoAnswer),
            Err(e) => return Err(e).with_context(|| format!("udp recv from {dst}")),
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock)
}

/// A thread inside a namespace serving until dropped.
#[derive(Debug)]
struct Worker {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<()>>>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take()
            && let Ok(Err(e)) = handle.join()
        {
            eprintln!("testkit: server thread failed: {e:#}");
        }
    }
}

/// A TCP listener inside a namespace; writes [`BANNER`] to each connection.
#[derive(Debug)]
pub struct TcpServer {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    _worker: Worker,
}

impl TcpServer {
    /// Binds `addr` inside `ns` (e.g. `10.77.1.1:25`, or `[::]:25` for both families) and
    /// serves until dropped. Binding errors are returned here.
    pub fn start(ns: &NetNs, addr: SocketAddr) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel();
        let (stop2, accepted2) = (stop.clone(), accepted.clone());
        let handle = ns.spawn(move || {
            let listener = match TcpListener::bind(addr).and_then(|l| {
                l.set_nonblocking(true)?;
                Ok(l)
            }) {
                Ok(l) => {
                    let _ = tx.send(Ok(l.local_addr()));
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return Ok(());
                }
            };
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        accepted2.fetch_add(1, Ordering::Relaxed);
                        let _ = stream.write_all(BANNER);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL),
                    Err(e) => return Err(e).context("accept"),
                }
            }
            Ok(())
        })?;
        let worker = Worker {
            stop,
            handle: Some(handle),
        };
        let bound = rx
            .recv()
            .map_err(|_| anyhow!("listener thread for {addr} died"))?
            .and_then(|r| r)
            .with_context(|| format!("tcp listen {addr} in {}", ns.name()))?;
        Ok(Self {
            addr: bound,
            accepted,
            _worker: worker,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// A UDP echo server inside a namespace.
#[derive(Debug)]
pub struct UdpEcho {
    addr: SocketAddr,
    answered: Arc<AtomicUsize>,
    _worker: Worker,
}

impl UdpEcho {
    /// Binds `addr` inside `ns` and echoes every datagram back until dropped.
    pub fn start(ns: &NetNs, addr: SocketAddr) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel();
        let (stop2, answered2) = (stop.clone(), answered.clone());
        let handle = ns.spawn(move || {
            let socket = match UdpSocket::bind(addr).and_then(|s| {
                s.set_read_timeout(Some(Duration::from_millis(20)))?;
                Ok(s)
            }) {
                Ok(s) => {
                    let _ = tx.send(Ok(s.local_addr()));
                    s
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return Ok(());
                }
            };
            let mut buf = [0u8; 2048];
            while !stop2.load(Ordering::Relaxed) {
                match socket.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        if socket.send_to(&buf[..n], from).is_ok() {
                            answered2.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) if is_timeout(&e) => {}
                    Err(e) => return Err(e).context("udp recv"),
                }
            }
            Ok(())
        })?;
        let worker = Worker {
            stop,
            handle: Some(handle),
        };
        let bound = rx
            .recv()
            .map_err(|_| anyhow!("echo thread for {addr} died"))?
            .and_then(|r| r)
            .with_context(|| format!("udp bind {addr} in {}", ns.name()))?;
        Ok(Self {
            addr: bound,
            answered,
            _worker: worker,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Datagrams echoed so far.
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_millis(400);

    #[test]
    fn loopback_probes_tell_outcomes_apart() {
        if !crate::require_root_netns() {
            return;
        }
        let ns = NetNs::new().expect("ns");
        for lo in [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ] {
            let server = TcpServer::start(&ns, SocketAddr::new(lo, 2525)).expect("listen");
            let got = tcp_connect(&ns, server.local_addr(), SHORT).expect("probe");
            assert_eq!(got, TcpOutcome::Accepted);
            assert_eq!(server.accepted(), 1);
            let got = tcp_connect(&ns, SocketAddr::new(lo, 2526), SHORT).expect("probe");
            assert_eq!(got, TcpOutcome::Refused);

            let echo = UdpEcho::start(&ns, SocketAddr::new(lo, 5353)).expect("echo");
            let got = udp_request(&ns, echo.local_addr(), SHORT).expect("udp");
            assert_eq!(got, UdpOutcome::Answered);
            let got = udp_request(&ns, SocketAddr::new(lo, 5354), SHORT).expect("udp");
            assert_eq!(got, UdpOutcome::Refused);
        }
    }

    #[test]
    fn dropped_packets_time_out() {
        if !crate::require_root_netns() {
            return;
        }
        let ns = NetNs::new().expect("ns");
        let rules = "table inet t {\n chain i {\n type filter hook input priority 0;\n \
                     tcp dport 2727 drop\n udp dport 2727 drop\n }\n}\n";
        let mut nft = ns.command("nft");
        nft.args(["-f", "-"]).stdin(std::process::Stdio::piped());
        let mut child = nft.spawn().expect("nft");
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(rules.as_bytes()).expect("write");
        }
        assert!(child.wait().expect("wait").success());
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let _server = TcpServer::start(&ns, SocketAddr::new(lo, 2727)).expect("listen");
        let _echo = UdpEcho::start(&ns, SocketAddr::new(lo, 2727)).expect("echo");
        let dst = SocketAddr::new(lo, 2727);
        assert_eq!(
            tcp_connect(&ns, dst, SHORT).expect("tcp"),
            TcpOutcome::TimedOut
        );
        assert_eq!(
            udp_request(&ns, dst, SHORT).expect("udp"),
            UdpOutcome::NoAnswer
        );
    }
}
