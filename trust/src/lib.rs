//! `portcullis-trust`: what a client (agent, admin CLI) trusts about the controller.
//!
//! - [`list`]: the revocation list signed with the CA key at `portcullis ca revoke`
//!   (`revoked.txt` + `revoked.sig`), verified against the CA bundle, kept by agents
//!   in their state dir and only ever replaced by a list that revokes at least as much.
//! - [`client`]: TLS to the controller that refuses a revoked (or, by WebPKI, expired)
//!   controller certificate, as a tonic connector.
//!
//! No policy, no protocol logic; the controller side of revocation lives in the
//! controller crate.

pub mod client;
pub mod list;

pub use client::{client_config, connect, endpoint};
pub use list::{Revocations, Update};

use std::path::PathBuf;

/// Why a trust operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Writing a file failed (the path and the step are in it).
    #[error(transparent)]
    Write(#[from] portcullis_os::DurableError),
    #[error("{}: expected PEM: {why}", path.display())]
    Pem { path: PathBuf, why: String },
    #[error("{name}:{line}: expected a hex serial number, found `{text}`")]
    BadList {
        name: String,
        line: usize,
        text: String,
    },
    #[error("revocation list signature: expected hex of a DER ECDSA signature: {0}")]
    BadSignature(String),
    #[error("the revocation list is not signed by any certificate of the CA bundle")]
    NotSigned,
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        source: Box<TrustError>,
    },
    #[error("bad controller URL {0:?}: {1}")]
    Url(String, String),
    #[error("TLS configuration: {0}")]
    Tls(String),
}
