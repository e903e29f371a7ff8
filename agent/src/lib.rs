//! `portcullis-agent` library: everything the agent binary and the controller session do
//! on a host.
//!
//! - [`dataplane`]: the [`Dataplane`] seam (`nft` for real, an in-memory fake for tests).
//! - [`agent`]: [`Agent`] — reconcile (compile, apply one transaction, read back, compare,
//!   hash, persist last-known-good), verify, show, remove.
//! - [`facts`]: links, addresses, default-route interface and hostname over rtnetlink,
//!   behind [`facts::FactSource`] (fixed facts for tests and the fleet simulator).
//! - [`state`]: the state dir and its atomically written last-known-good record.
//! - [`durable`]: the one atomic, fsynced write every safety record goes through.
//! - [`report`]: the serializable results of those operations.
//! - [`session`]: `run` — the mutual-TLS session with the controller (fail-static,
//!   reconnect with jittered backoff).
//! - [`failover`]: the controller list and which controller is tried next (pure).
//! - [`dial`]: TLS to one controller address, revocation checked.
//! - [`restore`]: `restore` at boot (last-known-good, else the fail-closed minimal policy).
//! - [`confirm`]: commit-confirmed, the driver of `portcullis_policy::protocol::confirm`
//!   (pending revert persisted, reverts on its own).
//! - [`uplink`]: the session's outbound channel the subsystems report through;
//!   [`clock`]: the wall clock.
//! - [`nflog`] and [`denials`]: denied packets from NFLOG, aggregated, counted, spooled
//!   on disk and sent to the controller.
//! - [`drift`]: the drift loop (nft events + timer, heal with backoff, coexistence).
//! - [`cli`]: the standalone subcommands (`apply`, `show`, `verify`, `remove`).
//!
//! The policy logic itself lives in `portcullis-policy`; this crate only does I/O around it
//! and touches no nftables table but `inet portcullis`.

pub mod agent;
pub mod cli;
pub mod clock;
pub mod conditions;
pub mod confirm;
pub mod dataplane;
pub mod denials;
pub mod dial;
pub mod drift;
pub mod durable;
pub mod facts;
pub mod failover;
pub mod metrics;
pub mod nflog;
pub mod report;
pub mod restore;
pub mod session;
pub mod state;
#[cfg(test)]
mod testing;
pub mod uplink;

pub use agent::{Agent, AgentError};
pub use dataplane::{Dataplane, DataplaneError, FakeDataplane, KernelTable, NftDataplane};
pub use report::{AppliedReport, ShowReport, VerifyReport, VerifyStatus};
pub use state::{DEFAULT_STATE_DIR, LastKnownGood, StateDir};
