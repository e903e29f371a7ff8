//! Real packets for `from:` on high ports and for every port-based transport: a
//! restricted port >= 1024 accepts its sources only (v4 and v6, `replies: ports` and
//! `stateful`), other high ports keep taking replies, and udplite/sctp/dccp meet the
//! seed rule like tcp/udp (udplite through Python sockets; sctp and dccp, which this
//! kernel may not speak, as hand-made packets whose fate the witness table records).
//!
//! Fails without root unless `PORTCULLIS_SKIP_NETNS=1`.

#![allow(clippy::unwrap_used)]

mod lab;
mod raw;

use lab::{ACCEPT_WAIT, DROP_WAIT, Lab};
use portcullis_policy::Proto;
use portcullis_testkit::{TcpOutcome, UdpOutcome, probe, require_root_netns};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

const RESTRICTED: &str = "allow:\n  - smtp/tcp\n  - { port: 5432, proto: tcp, from: [10.77.1.2/32, \"fd77:0:0:1::2/128\"] }\n  - { port: 5353, proto: udp, from: [10.77.1.2/32, \"fd77:0:0:1::2/128\"] }\n";

fn other(v6: bool) -> IpAddr {
    if v6 { "fd77:0:0:1::3" } else { "10.77.1.3" }
        .parse()
        .unwrap()
}

fn lab_with_second_peer_address() -> Lab {
    let lab = Lab::pair();
    lab.topo.add_addr("peer", "eth0", "10.77.1.3/24").unwrap();
    lab.topo
        .add_addr("peer", "eth0", "fd77:0:0:1::3/64")
        .unwrap();
    lab
}

/// `replies`: "ports" or "stateful".
fn restricted_high_ports(replies: &str) {
    let lab = lab_with_second_peer_address();
    lab.apply_policy(&format!("replies: {replies}\n{RESTRICTED}"), &[]);
    let peer = lab.topo.ns("peer");
    for v6 in [false, true] {
        let host = lab.addr(0, "host", v6);
        let allowed = lab.addr(0, "peer", v6);
        let refused = other(v6);
        let _db = lab.tcp_server("host", host, 5432);
        let _high = lab.tcp_server("host", host, 5000);
        let _mdns = lab.udp_echo("host", host, 5353);
        let _remote = lab.tcp_server("peer", allowed, 8080);
        let ctx = format!("{replies} v6={v6}");
        let tcp = |src, port, wait| {
            probe::tcp_connect_from(peer, Some(src), SocketAddr::new(host, port), wait).unwrap()
        };
        let udp = |src, port, wait| {
            probe::udp_request_from(peer, Some(src), SocketAddr::new(host, port), wait).unwrap()
        };
        assert_eq!(
            tcp(allowed, 5432, ACCEPT_WAIT),
            TcpOutcome::Accepted,
            "{ctx}"
        );
        assert_eq!(tcp(refused, 5432, DROP_WAIT), TcpOutcome::TimedOut, "{ctx}");
        assert_eq!(
            udp(allowed, 5353, ACCEPT_WAIT),
            UdpOutcome::Answered,
            "{ctx}"
        );
        assert_eq!(udp(refused, 5353, DROP_WAIT), UdpOutcome::NoAnswer, "{ctx}");
        // Another high port: open in `ports` (replies), new connections denied in
        // `stateful`.
        let high = tcp(refused, 5000, ACCEPT_WAIT.min(Duration::from_millis(800)));
        let want = if replies == "ports" {
            TcpOutcome::Accepted
        } else {
            TcpOutcome::TimedOut
        };
        assert_eq!(high, want, "{ctx}: 5000");
        // The host's own connection: its replies come back to an ephemeral port.
        assert_eq!(
            lab.tcp("host", allowed, 8080, ACCEPT_WAIT),
            TcpOutcome::Accepted,
            "{ctx}: outbound"
        );
    }
    let guard = lab.nft(&["list", "chain", "inet", "portcullis", "guard"]);
    if replies == "ports" {
        // The refused sources were logged and counted by the restricted-port deny.
        let line = guard
            .lines()
            .find(|l| l.contains("tcp dport @restrict_tcp limit rate"))
            .unwrap_or_else(|| panic!("{guard}"));
        assert!(!line.contains("counter packets 0 "), "{line}");
        assert!(
            line.contains("log prefix \"pc r1 deny \" group 7 drop"),
            "{line}"
        );
        let line = guard
            .lines()
            .find(|l| l.contains("udp dport @restrict_udp limit rate"))
            .unwrap_or_else(|| panic!("{guard}"));
        assert!(!line.contains("counter packets 0 "), "{line}");
    } else {
        assert!(
            !guard.contains("restrict_"),
            "stateful needs no restrict sets:\n{guard}"
        );
    }
}

#[test]
fn restricted_high_port_accepts_only_its_sources_with_replies_ports() {
    if !require_root_netns() {
        return;
    }
    restricted_high_ports("ports");
}

#[test]
fn restricted_high_port_accepts_only_its_sources_with_replies_stateful() {
    if !require_root_netns() {
        return;
    }
    restricted_high_ports("stateful");
}

/// A UDP-Lite request from `peer` to `host:port`, answered by a UDP-Lite echo in `host`
/// (Python: the standard library speaks IPPROTO_UDPLITE). True when answered.
fn udplite(lab: &Lab, host: IpAddr, port: u16, wait: Duration) -> bool {
    let fam = if host.is_ipv4() {
        "AF_INET"
    } else {
        "AF_INET6"
    };
    let server = format!(
        "import socket\ns = socket.socket(socket.{fam}, socket.SOCK_DGRAM, 136)\ns.bind(('{host}', {port}))\ns.settimeout({t})\ntry:\n    d, a = s.recvfrom(100)\n    s.sendto(d, a)\nexcept OSError:\n    pass\n",
        t = wait.as_secs_f64() + 1.0
    );
    let client = format!(
        "import socket, sys\ns = socket.socket(socket.{fam}, socket.SOCK_DGRAM, 136)\ns.settimeout({t})\ns.sendto(b'lite', ('{host}', {port}))\ntry:\n    s.recv(100)\n    print('answered')\nexcept OSError:\n    print('silent')\n",
        t = wait.as_secs_f64()
    );
    let mut srv = lab
        .topo
        .ns("host")
        .command("python3")
        .args(["-c", &server])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out = lab
        .topo
        .ns("peer")
        .run_ok("python3", &["-c", &client])
        .unwrap();
    let _ = srv.wait();
    out.trim() == "answered"
}

#[test]
fn udplite_meets_the_seed_rule() {
    if !require_root_netns() {
        return;
    }
    let lab = Lab::pair();
    // The case: udp/137 is denied by the seed, and so must udplite/137 be.
    lab.apply_policy("allow:\n  - domain/udp\n  - 53/udplite\n", &[]);
    for v6 in [false, true] {
        let host = lab.addr(0, "host", v6);
        assert!(!udplite(&lab, host, 137, DROP_WAIT), "udplite/137 v6={v6}");
        assert!(udplite(&lab, host, 53, ACCEPT_WAIT), "udplite/53 v6={v6}");
        assert!(
            udplite(&lab, host, 5000, ACCEPT_WAIT),
            "udplite/5000 v6={v6}"
        );
    }
    lab.apply_policy("replies: stateful\nallow:\n  - 53/udplite\n", &[]);
    let host = lab.addr(0, "host", false);
    assert!(
        !udplite(&lab, host, 5000, DROP_WAIT),
        "stateful: new udplite/5000"
    );
    assert!(udplite(&lab, host, 53, ACCEPT_WAIT), "stateful: udplite/53");
}

#[test]
fn every_transport_is_judged_by_port_and_icmp_passes() {
    if !require_root_netns() {
        return;
    }
    let lab = Lab::pair();
    let host_ns = lab.topo.ns("host");
    lab.apply_policy(
        "allow:\n  - 5000/sctp\n  - { port: 6000, proto: dccp, from: [10.77.1.2/32] }\n  - { port: 7000, proto: sctp, from: [\"fd77:0:0:1::2/128\"] }\n",
        &[],
    );
    lab.nft_script(raw::WITNESS);
    // (proto, dport, expected through)
    let cases = [
        (Proto::Sctp, 22, false),
        (Proto::Sctp, 5000, true),
        (Proto::Sctp, 7000, true), // v6 from the allowed source; v4: restricted
        (Proto::Sctp, 40000, true),
        (Proto::Dccp, 22, false),
        (Proto::Dccp, 6000, true), // v4 from the allowed source; v6: restricted
        (Proto::Dccp, 40000, true),
        (Proto::Udplite, 137, false),
        (Proto::Tcp, 23, false),
        (Proto::Udp, 137, false),
    ];
    for v6 in [false, true] {
        raw::witness_reset(host_ns);
        let (src, dst) = (lab.addr(0, "peer", v6), lab.addr(0, "host", v6));
        let packets: Vec<Vec<u8>> = cases
            .iter()
            .enumerate()
            .map(|(i, (proto, dport, _))| raw::packet(*proto, src, dst, 20000 + i as u16, *dport))
            .collect();
        raw::send(lab.topo.ns("peer"), dst, &packets);
        std::thread::sleep(Duration::from_millis(200));
        let seen = raw::witness_seen(host_ns);
        for (i, (proto, dport, through)) in cases.iter().enumerate() {
            let restricted_here = (*proto == Proto::Sctp && *dport == 7000 && !v6)
                || (*proto == Proto::Dccp && *dport == 6000 && v6);
            let want = *through && !restricted_here;
            assert_eq!(
                seen.contains(&(20000 + i as u16)),
                want,
                "{proto}/{dport} v6={v6}: {seen:?}"
            );
        }
    }
    // ICMP echo (and ND, which the v6 probes above needed) never meets a deny rule.
    for v6 in [false, true] {
        let host = lab.addr(0, "host", v6);
        let out = lab
            .topo
            .ns("peer")
            .run_ok("python3", &["-c", &echo_script(host)])
            .unwrap();
        assert_eq!(out.trim(), "reply", "icmp echo to {host}");
    }
    let guard = lab.nft(&["list", "chain", "inet", "portcullis", "guard"]);
    assert!(guard.contains("meta l4proto { tcp, udp, dccp, sctp, udplite } th dport 0-1023"));
}

/// Python: one ICMP / ICMPv6 echo request to `host` from a raw socket; prints `reply`
/// when the echo reply comes back.
fn echo_script(host: IpAddr) -> String {
    let (fam, proto, kind, want) = if host.is_ipv4() {
        ("AF_INET", 1, 8, 0)
    } else {
        ("AF_INET6", 58, 128, 129)
    };
    format!(
        "import socket, struct, time
def csum(b):
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    s = (s & 0xffff) + (s >> 16); s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
s = socket.socket(socket.{fam}, socket.SOCK_RAW, {proto})
s.settimeout(2)
msg = struct.pack('!BBHHH', {kind}, 0, 0, 0x5043, 1) + b'portcullis'
if {proto} == 1:
    msg = msg[:2] + struct.pack('!H', csum(msg)) + msg[4:]
s.sendto(msg, ('{host}', 0))
end = time.time() + 2
while time.time() < end:
    try:
        d = s.recv(200)
    except OSError:
        break
    if {proto} == 1:
        d = d[(d[0] & 15) * 4:]
    if d[0] == {want} and d[4:6] == b'PC':
        print('reply'); break
else:
    print('none')
"
    )
}
