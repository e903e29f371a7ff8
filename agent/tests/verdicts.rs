//! Property, on the real kernel: for generated policies (the shared `model` generators,
//! a fixed seed so a failure repeats), the compiled ruleset applied in a namespace gives
//! every probe packet the verdict of the independent model of the seed rule. Probes are
//! hand-made packets of all five transports from eight sources (v4 and v6), sent from
//! `peer`; the witness table behind ours records which got through.
//!
//! Fails without root unless `PORTCULLIS_SKIP_NETNS=1`.

#![allow(clippy::unwrap_used)]

mod lab;
#[path = "../../policy/tests/model/mod.rs"]
mod model;
mod raw;

use lab::Lab;
use portcullis_policy::{Facts, compile};
use portcullis_testkit::require_root_netns;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::net::IpAddr;
use std::time::Duration;

const POLICIES: u16 = 40;
const PROBES: u16 = 48;

#[test]
fn kernel_verdicts_equal_the_model() {
    if !require_root_netns() {
        return;
    }
    let lab = Lab::pair();
    let (host, peer) = (lab.topo.ns("host"), lab.topo.ns("peer"));
    // Probes come from addresses the host has no route to: no reverse-path filter.
    for conf in ["all", "default", "eth0"] {
        raw::sysctl(host, &format!("net/ipv4/conf/{conf}/rp_filter"), "0");
    }
    lab.nft_script(raw::WITNESS);
    let dst = |v6| lab.addr(0, "host", v6);
    // Neighbour discovery first: a burst to an unresolved neighbour is mostly dropped.
    for v6 in [false, true] {
        let src = lab.addr(0, "peer", v6);
        raw::send(
            peer,
            dst(v6),
            &[raw::packet(
                portcullis_policy::Proto::Udp,
                src,
                dst(v6),
                9,
                9,
            )],
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7u8; 32]);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    let mut checked = 0;
    for n in 0..POLICIES {
        let policy = model::policy().new_tree(&mut runner).unwrap().current();
        let rs = compile(&policy, &Facts::default(), u64::from(n) + 1).unwrap();
        lab.nft_script(&rs.to_nft_script());
        raw::witness_reset(host);
        let packet = model::packet_for(&policy);
        let probes: Vec<(u16, model::Packet)> = (0..PROBES)
            .map(|i| {
                (
                    20000 + n * 100 + i,
                    packet.new_tree(&mut runner).unwrap().current(),
                )
            })
            .collect();
        for v6 in [false, true] {
            let packets: Vec<Vec<u8>> = probes
                .iter()
                .filter(|(_, p)| p.src.is_ipv6() == v6)
                .map(|(sport, p)| raw::packet(p.proto, p.src, dst(v6), *sport, p.dport))
                .collect();
            raw::send(peer, dst(v6), &packets);
        }
        std::thread::sleep(Duration::from_millis(150));
        let seen = raw::witness_seen(host);
        for (sport, p) in &probes {
            let want = model::accepts(&policy, p);
            let got = seen.contains(sport);
            assert_eq!(
                got,
                want,
                "policy {n}: {} {} -> {}/{} (sport {sport}): kernel {}, model {}\n{}",
                p.proto,
                p.src,
                dst(p.src.is_ipv6()),
                p.dport,
                if got { "accepted" } else { "dropped" },
                if want { "accepts" } else { "drops" },
                rs.to_nft_script()
            );
            checked += 1;
        }
    }
    let at: IpAddr = dst(false);
    assert_eq!(checked, usize::from(POLICIES * PROBES), "probes to {at}");
}
