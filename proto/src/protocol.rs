//! Conversions between the wire enums and the protocol types of `portcullis-policy`
//! ([`HostOutcome`], [`DriftVerdict`], a `DriftReport`'s verdict fields). The wire's
//! `UNSPECIFIED` is no value of the policy types: it converts to `None`.

use crate::v1;
use portcullis_policy::protocol::drift::{self, DriftVerdict};
use portcullis_policy::protocol::outcome::HostOutcome;

impl From<HostOutcome> for v1::HostOutcome {
    fn from(o: HostOutcome) -> Self {
        match o {
            HostOutcome::Applied => Self::Applied,
            HostOutcome::Confirmed => Self::Confirmed,
            HostOutcome::Failed => Self::Failed,
            HostOutcome::HashMismatch => Self::HashMismatch,
            HostOutcome::Disconnected => Self::Disconnected,
            HostOutcome::Reverted => Self::Reverted,
            HostOutcome::Offline => Self::Offline,
            HostOutcome::Unconfirmed => Self::Unconfirmed,
            HostOutcome::RolledBack => Self::RolledBack,
            HostOutcome::GateFailed => Self::GateFailed,
            HostOutcome::Skipped => Self::Skipped,
        }
    }
}

/// The outcome a `HostResult.outcome` names (`None`: unspecified or unknown).
pub fn host_outcome(wire: i32) -> Option<HostOutcome> {
    let o = match v1::HostOutcome::try_from(wire).ok()? {
        v1::HostOutcome::Unspecified => return None,
        v1::HostOutcome::Applied => HostOutcome::Applied,
        v1::HostOutcome::Confirmed => HostOutcome::Confirmed,
        v1::HostOutcome::Failed => HostOutcome::Failed,
        v1::HostOutcome::HashMismatch => HostOutcome::HashMismatch,
        v1::HostOutcome::Disconnected => HostOutcome::Disconnected,
        v1::HostOutcome::Reverted => HostOutcome::Reverted,
        v1::HostOutcome::Offline => HostOutcome::Offline,
        v1::HostOutcome::Unconfirmed => HostOutcome::Unconfirmed,
        v1::HostOutcome::RolledBack => HostOutcome::RolledBack,
        v1::HostOutcome::GateFailed => HostOutcome::GateFailed,
        v1::HostOutcome::Skipped => HostOutcome::Skipped,
    };
    Some(o)
}

/// The wire has no "heal suppressed" verdict: it is drift (with a note saying why).
impl From<DriftVerdict> for v1::DriftState {
    fn from(v: DriftVerdict) -> Self {
        match v {
            DriftVerdict::InSync => Self::InSync,
            DriftVerdict::Drifted | DriftVerdict::HealSuppressed => Self::Drifted,
            DriftVerdict::Healed => Self::Healed,
            DriftVerdict::Unreachable => Self::Unreachable,
        }
    }
}

/// The verdict a `HostDrift.state` names (`None`: unspecified or unknown).
pub fn drift_verdict(wire: i32) -> Option<DriftVerdict> {
    let v = match v1::DriftState::try_from(wire).ok()? {
        v1::DriftState::Unspecified => return None,
        v1::DriftState::InSync => DriftVerdict::InSync,
        v1::DriftState::Drifted => DriftVerdict::Drifted,
        v1::DriftState::Healed => DriftVerdict::Healed,
        v1::DriftState::Unreachable => DriftVerdict::Unreachable,
    };
    Some(v)
}

/// The verdict fields of an agent's report.
pub fn drift_report(r: &v1::DriftReport) -> drift::Report<'_> {
    drift::Report {
        revision: r.revision,
        in_sync: r.in_sync,
        kernel_hash: &r.kernel_hash,
        diff: &r.diff,
        healed: r.healed,
        heal_suppressed: r.heal_suppressed,
        heal_error: &r.heal_error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_outcomes_round_trip_through_the_wire() {
        for o in HostOutcome::ALL {
            let wire = v1::HostOutcome::from(*o) as i32;
            assert_eq!(host_outcome(wire), Some(*o), "{o}");
            // The wire's names are the same words.
            let name = v1::HostOutcome::from(*o).as_str_name();
            assert_eq!(name, format!("HOST_OUTCOME_{}", o.as_str().to_uppercase()));
        }
        assert_eq!(host_outcome(0), None);
        assert_eq!(host_outcome(99), None);
    }

    #[test]
    fn drift_verdicts_round_trip_except_the_held_back_heal() {
        for v in DriftVerdict::ALL {
            let wire = v1::DriftState::from(*v) as i32;
            let back = if *v == DriftVerdict::HealSuppressed {
                DriftVerdict::Drifted
            } else {
                *v
            };
            assert_eq!(drift_verdict(wire), Some(back), "{v}");
        }
        assert_eq!(drift_verdict(0), None);
        assert_eq!(drift_verdict(99), None);
    }

    #[test]
    fn a_report_reads_as_its_verdict_fields() {
        let r = v1::DriftReport {
            revision: 3,
            in_sync: false,
            kernel_hash: "k".into(),
            diff: vec!["rule added".into()],
            heal_suppressed: true,
            heal_error: "e".into(),
            ..Default::default()
        };
        let d = drift_report(&r);
        assert_eq!((d.revision, d.in_sync, d.kernel_hash), (3, false, "k"));
        assert_eq!(
            (d.diff.len(), d.healed, d.heal_suppressed, d.heal_error),
            (1, false, true, "e")
        );
        assert_eq!(drift::reported(&d), DriftVerdict::HealSuppressed);
    }
}
