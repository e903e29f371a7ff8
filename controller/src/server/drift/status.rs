//! Attestation for `status`: each host's stored drift columns, and the controller's own
//! verdict — the kernel hash an agent last read back must be the expected hash the
//! controller computed for the revision it runs, or the host has drifted, whatever the
//! agent says.

use super::{Shared, coexistence_from_json};
use crate::store;
use portcullis_policy::protocol::drift::{Attestation, DriftVerdict, status_drifted};
use portcullis_proto::v1;
use tonic::Status;

/// Fills the drift/attestation fields of `hosts` from the store.
pub async fn attest(shared: &Shared, hosts: &mut [v1::HostStatus]) -> Result<(), Status> {
    let rows = shared
        .store
        .call(store::drift::rows)
        .await
        .map_err(super::internal)?;
    for h in hosts.iter_mut() {
        let Some(row) = rows.get(&h.host) else {
            continue;
        };
        h.verified_unix_ms = row.verified_ms;
        h.drift_state = row.state.map_or("", DriftVerdict::as_str).to_owned();
        h.drift_diff = row.diff.clone();
        h.drift_detected_unix_ms = row.detected_ms;
        h.drift_healed_unix_ms = row.healed_ms;
        h.coexistence = coexistence_from_json(&row.coexistence_json);
        h.drifted = drifted(h);
    }
    Ok(())
}

/// Drift as the controller sees it ([`status_drifted`]): on the desired revision with a
/// kernel hash that is not the expected one (an absent table included), or the agent's
/// last report says so.
pub fn drifted(h: &v1::HostStatus) -> bool {
    status_drifted(&Attestation {
        desired_revision: h.desired_revision,
        applied_revision: h.applied_revision,
        expected_hash: &h.expected_hash,
        reported_hash: &h.reported_hash,
        last_report: h.drift_state.parse().ok(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn mismatch_is_drift_even_if_the_agent_is_silent() {
        let mut h = v1::HostStatus {
            desired_revision: 2,
            applied_revision: 2,
            expected_hash: "abc".into(),
            reported_hash: "abc".into(),
            ..Default::default()
        };
        assert!(!drifted(&h));
        h.reported_hash = String::new();
        assert!(drifted(&h), "table absent");
        h.reported_hash = "abc".into();
        h.drift_state = "drifted".into();
        assert!(drifted(&h), "report mode: agent reports drift");
        h.drift_state = "healed".into();
        assert!(!drifted(&h));
        // Rollout in progress: not drift.
        h.applied_revision = 1;
        h.reported_hash = "old".into();
        assert!(!drifted(&h));
    }
}
