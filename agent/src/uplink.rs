//! The current session's outbound channel, shared by the session (which sets it while a
//! session is up) and the subsystems that report on their own (commit-confirm, drift loop,
//! denial pipeline). Lives apart from [`crate::session`] so those do not depend on it.

use portcullis_proto::v1;
use tokio::sync::{mpsc, watch};

/// The current session's outbound channel; `None` while disconnected.
pub type Uplink = watch::Receiver<Option<mpsc::Sender<v1::AgentMessage>>>;
