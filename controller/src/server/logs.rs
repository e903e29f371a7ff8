//! Denial logs on the controller: store `DenialBatch`es (acknowledged once stored), serve
//! `Logs` (with `--follow`) and `LogsTop`.

use super::Shared;
use super::registry::Outbound;
use portcullis_proto::v1;
use std::pin::Pin;
use tokio_stream::Stream;
use tonic::Status;

pub type LogsStream = Pin<Box<dyn Stream<Item = Result<v1::LogsEvent, Status>> + Send>>;

/// Live `--follow` subscribers.
#[derive(Debug, Default)]
pub struct LogsState {}

pub async fn on_batch(
    _shared: &Shared,
    host: &str,
    batch: v1::DenialBatch,
    _tx: &Outbound,
) -> anyhow::Result<()> {
    tracing::debug!(%host, seq = batch.seq, "denial batch");
    Ok(())
}

pub async fn logs(_shared: &Shared, _req: v1::LogsRequest) -> Result<LogsStream, Status> {
    Err(Status::unimplemented("logs are not implemented yet"))
}

pub async fn top(_shared: &Shared, _req: v1::LogsRequest) -> Result<v1::LogsTopResponse, Status> {
    Err(Status::unimplemented("logs --top is not implemented yet"))
}
