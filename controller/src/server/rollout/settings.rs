//! What an `Apply` asks of a rollout: waves (`--serial`), the failure budget
//! (`--max-fail`) and the health gates. Parsed for every apply (a malformed one is the
//! operator's error, rollout or not); a rollout runs only when one is [`wanted`] (or for
//! a rollback).

use super::gates::Gates;
use portcullis_policy::rollout::{MaxFail, RolloutError, Serial};
use portcullis_proto::v1;
use tonic::Status;

/// A request's rollout settings, defaults where it gives none.
#[derive(Debug, Clone)]
pub struct Settings {
    pub serial: Serial,
    pub max_fail: MaxFail,
    pub gates: Gates,
}

impl Settings {
    pub fn from_request(req: &v1::ApplyRequest) -> Result<Self, Status> {
        let invalid = |e: RolloutError| Status::invalid_argument(e.to_string());
        let serial = if req.serial.is_empty() {
            Serial::default()
        } else {
            req.serial.parse().map_err(invalid)?
        };
        let max_fail = if req.max_fail.is_empty() {
            MaxFail::default()
        } else {
            req.max_fail.parse().map_err(invalid)?
        };
        let gates = Gates::from_request(
            req.max_denial_increase,
            req.denial_window_ms,
            req.denial_baseline_ms,
        )
        .map_err(Status::invalid_argument)?;
        Ok(Self {
            serial,
            max_fail,
            gates,
        })
    }
}

/// Whether the request asks for a rollout (waves, max-fail, confirmation or a denial
/// gate); otherwise it is a plain apply.
pub fn wanted(req: &v1::ApplyRequest) -> bool {
    !req.serial.is_empty()
        || !req.max_fail.is_empty()
        || req.confirm_timeout_ms > 0
        || req.max_denial_increase > 0.0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_apply_wants_no_rollout_and_a_malformed_setting_is_refused() {
        let plain = v1::ApplyRequest::default();
        assert!(!wanted(&plain));
        Settings::from_request(&plain).unwrap();
        let waves = v1::ApplyRequest {
            serial: "1".into(),
            ..Default::default()
        };
        assert!(wanted(&waves));
        Settings::from_request(&waves).unwrap();
        let bad = v1::ApplyRequest {
            max_denial_increase: -1.0,
            ..Default::default()
        };
        assert!(!wanted(&bad), "a negative gate asks for nothing ...");
        let err = Settings::from_request(&bad).unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "... but is refused"
        );
    }
}
