//! Property: for random (policy, packet) pairs, the verdict of the compiled ruleset
//! (evaluated by `policy::lockout`, rule by rule) equals the verdict of an independent
//! model of the seed rule (`model`). The real-kernel twin is `agent/tests/verdicts.rs`.
#![allow(clippy::unwrap_used)]

mod model;

use portcullis_policy::lockout::{Flow, verdict};
use portcullis_policy::ruleset::Verdict;
use portcullis_policy::{Facts, compile};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn compiled_verdict_equals_the_model(
        (p, packets) in model::policy().prop_flat_map(|p| {
            let packets = prop::collection::vec(model::packet_for(&p), 1..16);
            (Just(p), packets)
        })
    ) {
        let rs = compile(&p, &Facts::default(), 1).unwrap();
        for pkt in packets {
            let flow = Flow {
                proto: pkt.proto,
                src: pkt.src,
                dport: pkt.dport,
                iif: "eth0".into(),
                established: false,
            };
            let kernel = verdict(&rs, &flow) == Verdict::Accept;
            prop_assert_eq!(kernel, model::accepts(&p, &pkt), "{:?}\n{}", pkt, rs.to_nft_script());
        }
    }
}
