//! The baseline for fleet-bench: a raw tonic mutual-TLS bidi server speaking the same
//! `Session` protocol with nothing else (no authorization, no store, no compile). It keeps
//! each stream's sender after the first message (`Hello`), pushes one message to every
//! stream on demand and counts the `Applied` acks.

use portcullis_proto::v1;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status, Streaming};

type Outbound = mpsc::Sender<Result<v1::ControllerMessage, Status>>;

/// Shared state of the raw server.
#[derive(Debug, Default)]
pub struct RawState {
    streams: Mutex<Vec<Outbound>>,
    acks: AtomicUsize,
    /// Notified on every ack.
    pub acked: Notify,
}

impl RawState {
    pub fn connected(&self) -> usize {
        self.lock().len()
    }

    pub fn acks(&self) -> usize {
        self.acks.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Outbound>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `msg` to every stream (cloned per recipient); returns how many took it.
    pub async fn push(&self, msg: &v1::ControllerMessage) -> usize {
        let streams: Vec<Outbound> = self.lock().clone();
        let mut sent = 0;
        for tx in streams {
            if tx.send(Ok(msg.clone())).await.is_ok() {
                sent += 1;
            }
        }
        sent
    }
}

/// The `Session` service of the raw server.
#[derive(Debug, Clone)]
pub struct RawSession {
    pub state: std::sync::Arc<RawState>,
}

type OutStream = Pin<Box<dyn Stream<Item = Result<v1::ControllerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl v1::session_server::Session for RawSession {
    type OpenStream = OutStream;

    async fn open(
        &self,
        request: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::OpenStream>, Status> {
        let mut inbound = request.into_inner();
        // The first message (Hello) opens the session, as with the controller.
        match inbound.next().await {
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e),
            None => return Err(Status::invalid_argument("no Hello")),
        }
        let (tx, rx) = mpsc::channel(16);
        self.state.lock().push(tx);
        let state = self.state.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = inbound.next().await {
                if matches!(m.msg, Some(v1::agent_message::Msg::Applied(_))) {
                    state.acks.fetch_add(1, Ordering::AcqRel);
                    state.acked.notify_one();
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
