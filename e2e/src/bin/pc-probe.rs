//! `pc-probe`: the lab's traffic tool (not part of the product).
//!
//! `pc-probe listen tcp:25,80 udp:53` — accept TCP (send a banner, close) and echo UDP on
//! those ports, on all addresses (v4 and v6), until killed.
//! `pc-probe check [--timeout 500ms] ADDR tcp:25,22 udp:53` — one line per port:
//! `open`, `refused` (RST / ICMP unreachable) or `no answer` (dropped).
//! Exit code 0 always when it could run; results are in the output (`--json` too).

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

fn parse_ports(spec: &str) -> Result<(String, Vec<u16>), String> {
    let (proto, ports) = spec
        .split_once(':')
        .ok_or_else(|| format!("{spec:?}: expected tcp:PORTS or udp:PORTS"))?;
    if proto != "tcp" && proto != "udp" {
        return Err(format!("{spec:?}: protocol must be tcp or udp"));
    }
    let ports = ports
        .split(',')
        .map(|p| {
            p.parse::<u16>()
                .map_err(|e| format!("{spec:?}: {p:?}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((proto.to_string(), ports))
}

fn listen(specs: &[String]) -> Result<(), String> {
    let mut handles = Vec::new();
    for spec in specs {
        let (proto, ports) = parse_ports(spec)?;
        for port in ports {
            let addr = SocketAddr::new(IpAddr::from([0u16; 8]), port);
            if proto == "tcp" {
                let l = TcpListener::bind(addr).map_err(|e| format!("tcp/{port}: {e}"))?;
                handles.push(std::thread::spawn(move || {
                    for mut s in l.incoming().flatten() {
                        let _ = s.write_all(b"pc-probe\n");
                    }
                }));
            } else {
                let s = UdpSocket::bind(addr).map_err(|e| format!("udp/{port}: {e}"))?;
                handles.push(std::thread::spawn(move || {
                    let mut buf = [0u8; 1500];
                    while let Ok((n, from)) = s.recv_from(&mut buf) {
                        let _ = s.send_to(&buf[..n], from);
                    }
                }));
            }
        }
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

fn check_tcp(addr: SocketAddr, timeout: Duration) -> &'static str {
    match TcpStream::connect_timeout(&addr, timeout) {
        Ok(mut s) => {
            let _ = s.set_read_timeout(Some(timeout));
            let mut b = [0u8; 16];
            let _ = s.read(&mut b);
            "open"
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => "refused",
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => "no answer",
        Err(_) => "no answer",
    }
}

fn check_udp(addr: SocketAddr, timeout: Duration) -> &'static str {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().unwrap_or(addr)
    } else {
        "[::]:0".parse().unwrap_or(addr)
    };
    let Ok(s) = UdpSocket::bind(bind) else {
        return "error";
    };
    let _ = s.set_read_timeout(Some(timeout));
    if s.connect(addr).is_err() || s.send(b"pc-probe").is_err() {
        return "error";
    }
    let mut buf = [0u8; 64];
    match s.recv(&mut buf) {
        Ok(_) => "open",
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => "refused",
        Err(_) => "no answer",
    }
}

fn check(args: &[String]) -> Result<(), String> {
    let mut timeout = Duration::from_millis(500);
    let mut json = false;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--timeout" => {
                let v = it.next().ok_or("--timeout needs a value like 500ms")?;
                let ms = v
                    .trim_end_matches("ms")
                    .parse::<u64>()
                    .map_err(|e| e.to_string())?;
                timeout = Duration::from_millis(ms);
            }
            "--json" => json = true,
            _ => rest.push(a.clone()),
        }
    }
    let (addr, specs) = rest
        .split_first()
        .ok_or("check needs ADDR and port specs")?;
    let ip: IpAddr = addr.parse().map_err(|e| format!("{addr:?}: {e}"))?;
    let mut results = Vec::new();
    for spec in specs {
        let (proto, ports) = parse_ports(spec)?;
        for port in ports {
            let sa = SocketAddr::new(ip, port);
            let r = if proto == "tcp" {
                check_tcp(sa, timeout)
            } else {
                check_udp(sa, timeout)
            };
            results.push((proto.clone(), port, r));
        }
    }
    for (proto, port, r) in &results {
        if json {
            println!(
                "{{\"addr\":\"{ip}\",\"proto\":\"{proto}\",\"port\":{port},\"result\":\"{r}\"}}"
            );
        } else {
            println!("{ip:<16} {proto}/{port:<5} {r}");
        }
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("listen") => listen(&args[1..]),
        Some("check") => check(&args[1..]),
        _ => Err("usage: pc-probe listen tcp:25,80 udp:53 | pc-probe check [--timeout 500ms] [--json] ADDR tcp:25 udp:53".into()),
    };
    if let Err(e) = result {
        eprintln!("pc-probe: {e}");
        std::process::exit(2);
    }
}
