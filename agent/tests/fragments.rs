//! IPv6 fragments under `replies: ports`, with real packets: there is no conntrack, so
//! nothing reassembles before our input hook and the guard sees each fragment alone.
//! Fragmented UDP datagrams and TCP SYNs to denied low ports must never reach the
//! transport layer (the deny rule takes their first fragment, which carries the ports);
//! the same fragments to an allowed port must (so the test can fail). Also the RFC 7112
//! case: a first fragment holding only extension headers, the transport header in the
//! second, whose first fragment shows nft no port at all. IPv4, reassembled before the
//! input hook, for comparison.
//!
//! Packets are made by hand (`raw`) and sent from a raw socket in `peer`. Fails without
//! root unless `PORTCULLIS_SKIP_NETNS=1`.

#![allow(clippy::unwrap_used)]

mod lab;
mod raw;

use lab::{ACCEPT_WAIT, Lab};
use portcullis_policy::Proto;
use portcullis_testkit::require_root_netns;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// Packets counted by the guard's deny rules (logging + over-limit), from `show --json`.
fn denied(lab: &Lab) -> u64 {
    lab::deny_packets(&lab.show_json())
}

fn v6(lab: &Lab, node: &str) -> Ipv6Addr {
    match lab.addr(0, node, true) {
        IpAddr::V6(a) => a,
        IpAddr::V4(_) => unreachable!(),
    }
}

/// A UDP or TCP segment after `ext` extension-header bytes, fragmented at `cuts`.
fn fragmented(
    lab: &Lab,
    proto: Proto,
    dport: u16,
    ext: usize,
    cuts: &[usize],
    id: u32,
) -> Vec<Vec<u8>> {
    let (src, dst) = (v6(lab, "peer"), v6(lab, "host"));
    // Zeros: a port read from the payload of a later fragment would be 0, a low port.
    let seg = raw::segment(
        proto,
        src.into(),
        dst.into(),
        20000 + dport,
        dport,
        &[0u8; 200],
    );
    let (next, inner) = if ext == 0 {
        (proto.number(), seg)
    } else {
        let mut inner = raw::dest_opts(proto.number(), ext);
        inner.extend(seg);
        (raw::DEST_OPTS, inner)
    };
    raw::fragments(src, dst, next, &inner, cuts, id)
}

/// Waits until `f()` is true or `wait` passed; the last value.
fn eventually(wait: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > wait {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn fragments_to_denied_ports_never_reach_the_listener() {
    if !require_root_netns() {
        return;
    }
    let lab = Lab::pair();
    lab.apply_policy("allow:\n  - domain/udp\n  - smtp/tcp\n", &[]);
    let host = lab.topo.ns("host");
    let peer = lab.topo.ns("peer");
    let dst = IpAddr::V6(v6(&lab, "host"));
    let echo53 = lab.udp_echo("host", dst, 53);
    let echo137 = lab.udp_echo("host", dst, 137);
    let _smtp = lab.tcp_server("host", dst, 25);
    let _ssh = lab.tcp_server("host", dst, 22);

    // Allowed port first: the fragments are reassembled and answered (the test can fail).
    let reasm = raw::snmp6(host, "Ip6ReasmOKs");
    raw::send(
        peer,
        dst,
        &fragmented(&lab, Proto::Udp, 53, 0, &[64, 128], 1),
    );
    let ok = eventually(ACCEPT_WAIT, || echo53.answered() == 1);
    assert!(ok, "udp/53 in fragments");
    assert_eq!(raw::snmp6(host, "Ip6ReasmOKs"), reasm + 1);
    raw::send(peer, dst, &fragmented(&lab, Proto::Tcp, 25, 0, &[64], 2));
    assert!(
        eventually(ACCEPT_WAIT, || raw::snmp6(host, "Ip6ReasmOKs") == reasm + 2),
        "tcp/25"
    );

    // Denied ports: the first fragment is dropped (and counted), the rest waits for it
    // in the reassembly queue until it times out.
    let before = denied(&lab);
    let reasm = raw::snmp6(host, "Ip6ReasmOKs");
    raw::send(
        peer,
        dst,
        &fragmented(&lab, Proto::Udp, 137, 0, &[64, 128], 3),
    );
    raw::send(peer, dst, &fragmented(&lab, Proto::Tcp, 22, 0, &[64], 4));
    // The trailing fragments alone, in the other order too.
    let mut reversed = fragmented(&lab, Proto::Udp, 137, 0, &[64, 128], 5);
    reversed.reverse();
    raw::send(peer, dst, &reversed);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(echo137.answered(), 0, "udp/137 reached the listener");
    assert_eq!(
        raw::snmp6(host, "Ip6ReasmOKs"),
        reasm,
        "a denied datagram was reassembled"
    );
    assert_eq!(
        denied(&lab),
        before + 3,
        "one first fragment per datagram is denied"
    );
}

#[test]
fn first_fragments_without_the_transport_header_never_reach_the_listener() {
    if !require_root_netns() {
        return;
    }
    let lab = Lab::pair();
    lab.apply_policy("allow:\n  - domain/udp\n", &[]);
    let host = lab.topo.ns("host");
    let peer = lab.topo.ns("peer");
    let dst = IpAddr::V6(v6(&lab, "host"));
    let echo137 = lab.udp_echo("host", dst, 137);
    let echo53 = lab.udp_echo("host", dst, 53);
    let _ssh = lab.tcp_server("host", dst, 22);
    let reasm = raw::snmp6(host, "Ip6ReasmOKs");
    let fails = raw::snmp6(host, "Ip6ReasmFails");
    let problems = raw::snmp6(host, "Icmp6OutParmProblems");
    // 64 bytes of destination options; the first fragment carries 48 of them and nothing
    // else, so nft sees no port in it (and none in the later ones, which have offsets).
    for (proto, port, id) in [
        (Proto::Udp, 137, 11),
        (Proto::Tcp, 22, 12),
        (Proto::Udp, 53, 13),
    ] {
        raw::send(
            peer,
            dst,
            &fragmented(&lab, proto, port, 64, &[48, 128], id),
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    // The kernel refuses such a first fragment itself (RFC 7112; ICMPv6 parameter
    // problem): even the allowed port gets nothing, and nothing is reassembled.
    assert_eq!(
        echo137.answered(),
        0,
        "udp/137 behind a header-only first fragment"
    );
    assert_eq!(echo53.answered(), 0, "the kernel dropped it, not our rules");
    assert_eq!(raw::snmp6(host, "Ip6ReasmOKs"), reasm);
    // One parameter problem per datagram, from the kernel's fragment handler.
    assert_eq!(raw::snmp6(host, "Icmp6OutParmProblems"), problems + 3);
    assert_eq!(raw::snmp6(host, "Ip6ReasmFails"), fails, "never queued");
}

/// IPv4 reassembles before the input hook (`ip_local_deliver`), so our rules judge whole
/// datagrams and need no fragment rule; this shows it (the payload would read as port 0).
#[test]
fn ipv4_fragments_are_judged_by_their_first_fragment() {
    if !require_root_netns() {
        return;
    }
    let lab = Lab::pair();
    lab.apply_policy("allow:\n  - domain/udp\n", &[]);
    let peer = lab.topo.ns("peer");
    let (IpAddr::V4(src), IpAddr::V4(dst)) =
        (lab.addr(0, "peer", false), lab.addr(0, "host", false))
    else {
        unreachable!()
    };
    let echo53 = lab.udp_echo("host", dst.into(), 53);
    let echo137 = lab.udp_echo("host", dst.into(), 137);
    let datagram = |dport: u16, id: u16| {
        let seg = raw::segment(
            Proto::Udp,
            src.into(),
            dst.into(),
            20000 + dport,
            dport,
            &[0u8; 200],
        );
        raw::fragments_v4(src, dst, 17, &seg, &[64, 128], id)
    };
    let before = denied(&lab);
    raw::send(peer, dst.into(), &datagram(53, 1));
    assert!(
        eventually(ACCEPT_WAIT, || echo53.answered() == 1),
        "udp/53 in fragments"
    );
    raw::send(peer, dst.into(), &datagram(137, 2));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(echo137.answered(), 0, "udp/137 in fragments");
    assert_eq!(
        denied(&lab),
        before + 1,
        "the first fragment of udp/137 only"
    );
}
