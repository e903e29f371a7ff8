//! `portcullis-proto`: the wire protocol between controller, agents and the operator CLI.
//!
//! Holds the generated gRPC code (`v1`), conversions between wire messages and the
//! `portcullis-policy` types, and the one place where conversion errors become
//! `tonic::Status` codes. Nothing else: no I/O, no business logic.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("portcullis.v1");
}

pub mod convert;
pub mod parts;
pub mod protocol;

pub use convert::ProtoError;

/// The protocol version this build speaks (sent in `Hello`).
pub const PROTOCOL_VERSION: u32 = v1::ProtocolVersion::V1 as u32;

/// Protocol versions a controller of this build accepts.
pub const ACCEPTED_PROTOCOL_VERSIONS: &[u32] = &[PROTOCOL_VERSION];

/// The largest message either side of `Session.Open` sends or accepts (a `DenialBatch` of
/// 20,000 IPv6 entries is ~3 MB); the controller and the agent both set it explicitly.
pub const SESSION_MAX_MESSAGE_BYTES: usize = 4 << 20;

/// Largest controller message an agent accepts (and a controller sends): a `Desired`
/// may carry full address lists (2M entries of 17 bytes at most, packed).
pub const DESIRED_MAX_MESSAGE_BYTES: usize = 64 << 20;

/// `Hello.capabilities`: the agent enforces `deny:` entries and address lists (and takes
/// their deltas). A policy with either is never sent to an agent without it.
pub const CAPABILITY_DENY_LISTS: &str = "deny-lists";

/// `Hello.capabilities`: the agent takes big address lists as `ListPart`s before the
/// `Desired` ([`parts`]).
pub const CAPABILITY_LIST_PARTS: &str = "list-parts";
