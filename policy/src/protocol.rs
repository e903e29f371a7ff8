//! The protocols of Portcullis as pure state machines and verdicts (sans-IO), in the style
//! of firezone's connlib: each takes what the I/O shell saw as events, with the time as a
//! value, and answers with actions for the shell to carry out. Nothing here reads a clock,
//! does I/O, spawns or is async, and nothing here knows the wire types
//! (`portcullis-proto` converts).
//!
//! - [`confirm`]: the agent's side of commit-confirmed (`Desired` with a deadline, applied,
//!   reconnect, `Confirm` or revert at the deadline); driven by `agent/src/confirm.rs`.
//! - [`exchange`]: the controller's steps with one host in a wave (send, applied, back,
//!   confirm, give up); driven by the rollout engine.
//! - [`outcome`]: how a host of a rollout ended, and its stored state, each with its one
//!   spelling.
//! - [`drift`]: the drift verdict from the kernel readback, the expected hash and the
//!   agent's report.

pub mod confirm;
pub mod drift;
pub mod exchange;
pub mod outcome;
