//! Drift attestation on the controller: `DriftReport`s from agents, and the `Drift` admin
//! call that asks connected agents to verify now.

use super::Shared;
use portcullis_proto::v1;
use tonic::Status;

/// Outstanding verification requests (request id -> waiting admin call).
#[derive(Debug, Default)]
pub struct DriftState {}

/// Record an agent's drift report.
pub async fn on_report(
    _shared: &Shared,
    host: &str,
    report: v1::DriftReport,
) -> anyhow::Result<()> {
    tracing::info!(%host, in_sync = report.in_sync, healed = report.healed, "drift report");
    Ok(())
}

pub async fn drift(_shared: &Shared, _req: v1::DriftRequest) -> Result<v1::DriftResponse, Status> {
    Err(Status::unimplemented("drift is not implemented yet"))
}
