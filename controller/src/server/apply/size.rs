//! The oversized-policy refusal: a `Desired` must fit in one session message, or the
//! agent could not receive it; refused before anything is stored.

use portcullis_policy::HostPolicy;
use portcullis_proto::v1;

/// Room left in a session message for the rest of a `Desired` (revision, hash,
/// management entries).
const DESIRED_SLACK: usize = 256 << 10;

/// The encoded size of `policy` when a `Desired` carrying it would exceed the session
/// message limit.
pub(super) fn too_big_for_a_session(policy: &HostPolicy) -> Option<usize> {
    use prost::Message as _;
    let bytes = v1::HostPolicy::from(policy).encoded_len();
    (bytes + DESIRED_SLACK > portcullis_proto::DESIRED_MAX_MESSAGE_BYTES).then_some(bytes)
}

/// The operator's error for `host`, whose policy is `bytes` on the wire.
pub(super) fn too_big(host: &str, policy: &HostPolicy, bytes: usize) -> String {
    format!(
        "{host}: its policy is {bytes} bytes on the wire ({} `from:` networks and list entries), more than one session message carries ({} bytes); split the lists or shorten them",
        policy.allow.iter().map(|a| a.from.len()).sum::<usize>()
            + policy.lists.values().map(|l| l.len()).sum::<usize>(),
        portcullis_proto::DESIRED_MAX_MESSAGE_BYTES - DESIRED_SLACK
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_over_one_desired_is_too_big_and_a_million_addresses_is_not() {
        let list = |n: u128| portcullis_policy::AddrList {
            v4: Vec::new(),
            v6: (0..n).map(|i| ((0x2001_0db8u128 << 96) | i, 128)).collect(),
        };
        let with = |n| HostPolicy {
            lists: [("l".to_string(), std::sync::Arc::new(list(n)))].into(),
            ..HostPolicy::default()
        };
        // 1M v6 entries pack into 17 MB: one Desired carries them.
        assert_eq!(too_big_for_a_session(&with(1_000_000)), None);
        // 4M (two full list files) are 68 MB: refused, with the size.
        let bytes = too_big_for_a_session(&with(4_000_000)).unwrap();
        assert!(bytes > 4_000_000 * 17, "{bytes}");
        assert!(too_big("h1", &with(4_000_000), bytes).starts_with("h1: its policy is "));
    }
}
