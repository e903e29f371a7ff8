//! Every wire message decoded from arbitrary bytes, then converted to policy types where a
//! conversion exists (`HostPolicy`, `Facts`, and the messages that carry them).
//!
//! Checks: nothing panics; re-encoding a decoded message is stable (encode, decode,
//! encode gives the same bytes); a wire policy or facts value that converts converts back
//! to a wire value that converts to the same policy value. The table names every message
//! of `proto/portcullis.proto`; a message added there should be appended here (appended, so
//! that the selector bytes of the committed corpus keep their meaning).

use portcullis_policy::{Facts, HostPolicy};
use portcullis_proto::v1;
use prost::Message;

/// Decodes `bytes` as `M`; checks that re-encoding is stable.
fn decode<M: Message + Default>(bytes: &[u8]) -> Option<M> {
    let m = M::decode(bytes).ok()?;
    let once = m.encode_to_vec();
    let again = M::decode(once.as_slice()).expect("re-encoded message does not decode");
    assert_eq!(once, again.encode_to_vec(), "re-encoding is not stable");
    Some(m)
}

fn policy(w: &v1::HostPolicy) {
    if let Ok(p) = HostPolicy::try_from(w) {
        let back = v1::HostPolicy::from(&p);
        assert_eq!(
            HostPolicy::try_from(&back).as_ref(),
            Ok(&p),
            "policy round trip"
        );
    }
}

fn facts(w: &v1::Facts) {
    if let Ok(f) = Facts::try_from(w) {
        let back = v1::Facts::from(&f);
        assert_eq!(Facts::try_from(&back).as_ref(), Ok(&f), "facts round trip");
    }
}

fn plain<M: Message + Default>(bytes: &[u8]) {
    let _ = decode::<M>(bytes);
}

fn host_policy(bytes: &[u8]) {
    if let Some(w) = decode::<v1::HostPolicy>(bytes) {
        policy(&w);
    }
}

fn facts_msg(bytes: &[u8]) {
    if let Some(w) = decode::<v1::Facts>(bytes) {
        facts(&w);
    }
}

fn desired(bytes: &[u8]) {
    if let Some(p) = decode::<v1::Desired>(bytes).and_then(|d| d.policy) {
        policy(&p);
    }
}

fn hello(bytes: &[u8]) {
    if let Some(f) = decode::<v1::Hello>(bytes).and_then(|h| h.facts) {
        facts(&f);
    }
}

fn agent_message(bytes: &[u8]) {
    if let Some(v1::agent_message::Msg::Hello(h)) =
        decode::<v1::AgentMessage>(bytes).and_then(|m| m.msg)
        && let Some(f) = h.facts
    {
        facts(&f);
    }
}

fn controller_message(bytes: &[u8]) {
    if let Some(v1::controller_message::Msg::Desired(d)) =
        decode::<v1::ControllerMessage>(bytes).and_then(|m| m.msg)
        && let Some(p) = d.policy
    {
        policy(&p);
    }
}

/// Every message of `proto/portcullis.proto` by name, with its check.
pub const MESSAGES: &[(&str, fn(&[u8]))] = &[
    ("PortRange", plain::<v1::PortRange>),
    ("AllowEntry", plain::<v1::AllowEntry>),
    ("Interface", plain::<v1::Interface>),
    ("LogLimit", plain::<v1::LogLimit>),
    ("HostPolicy", host_policy),
    ("InterfaceFacts", plain::<v1::InterfaceFacts>),
    ("Facts", facts_msg),
    ("AgentMessage", agent_message),
    ("Hello", hello),
    ("Applied", plain::<v1::Applied>),
    ("Heartbeat", plain::<v1::Heartbeat>),
    ("RuleHits", plain::<v1::RuleHits>),
    ("CoexistenceFinding", plain::<v1::CoexistenceFinding>),
    ("DriftReport", plain::<v1::DriftReport>),
    ("DenialEntry", plain::<v1::DenialEntry>),
    ("DenialBatch", plain::<v1::DenialBatch>),
    ("Reverted", plain::<v1::Reverted>),
    ("ControllerMessage", controller_message),
    ("Desired", desired),
    ("DenialAck", plain::<v1::DenialAck>),
    ("VerifyNow", plain::<v1::VerifyNow>),
    ("Confirm", plain::<v1::Confirm>),
    ("Revert", plain::<v1::Revert>),
    ("ApplyRequest", plain::<v1::ApplyRequest>),
    ("ApplyEvent", plain::<v1::ApplyEvent>),
    ("HostCheck", plain::<v1::HostCheck>),
    ("ReplayFinding", plain::<v1::ReplayFinding>),
    ("CheckResult", plain::<v1::CheckResult>),
    ("ApplyAccepted", plain::<v1::ApplyAccepted>),
    ("HostResult", plain::<v1::HostResult>),
    ("StatusRequest", plain::<v1::StatusRequest>),
    ("HostStatus", plain::<v1::HostStatus>),
    ("StatusResponse", plain::<v1::StatusResponse>),
    ("HistoryRequest", plain::<v1::HistoryRequest>),
    ("RevisionInfo", plain::<v1::RevisionInfo>),
    ("HistoryResponse", plain::<v1::HistoryResponse>),
    ("DriftRequest", plain::<v1::DriftRequest>),
    ("HostDrift", plain::<v1::HostDrift>),
    ("DriftResponse", plain::<v1::DriftResponse>),
    ("LogsRequest", plain::<v1::LogsRequest>),
    ("DenialRow", plain::<v1::DenialRow>),
    ("HostLogTotals", plain::<v1::HostLogTotals>),
    ("LogsEvent", plain::<v1::LogsEvent>),
    ("TopItem", plain::<v1::TopItem>),
    ("HostTop", plain::<v1::HostTop>),
    ("LogsTopResponse", plain::<v1::LogsTopResponse>),
    ("Wave", plain::<v1::Wave>),
    ("WaveStarted", plain::<v1::WaveStarted>),
    ("WaveFinished", plain::<v1::WaveFinished>),
    ("RolloutFinished", plain::<v1::RolloutFinished>),
    ("RollbackRequest", plain::<v1::RollbackRequest>),
    ("RolloutAbortRequest", plain::<v1::RolloutAbortRequest>),
    ("RolloutAbortResponse", plain::<v1::RolloutAbortResponse>),
    ("RolloutsRequest", plain::<v1::RolloutsRequest>),
    ("RolloutHost", plain::<v1::RolloutHost>),
    ("RolloutInfo", plain::<v1::RolloutInfo>),
    ("RolloutsResponse", plain::<v1::RolloutsResponse>),
    // Added after the first corpus: appended so that its selector bytes keep their meaning.
    ("Management", plain::<v1::Management>),
    ("ControllerCounters", plain::<v1::ControllerCounters>),
    ("SignedRevocations", plain::<v1::SignedRevocations>),
];

/// The index of message `name` in [`MESSAGES`] (the selector byte of an input).
pub fn index(name: &str) -> Option<u8> {
    MESSAGES
        .iter()
        .position(|(n, _)| *n == name)
        .and_then(|i| u8::try_from(i).ok())
}
