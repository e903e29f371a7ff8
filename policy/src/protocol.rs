//! The protocols of Portcullis as pure state machines and verdicts (sans-IO): each takes
//! what the I/O shell saw as events, with the time as a value, and answers with actions
//! for the shell to carry out. Nothing here reads a clock, does I/O, spawns or is async,
//! and nothing here knows the wire types (`portcullis-proto` converts).
//!
//! - [`outcome`]: how a host of a rollout ended, and its stored state, each with its one
//!   spelling.
//! - [`exchange`]: the controller's steps with one host in a wave (send, applied, back,
//!   confirm, give up).
//! - [`drift`]: the drift verdict from the kernel readback, the expected hash and the
//!   agent's report.

pub mod drift;
pub mod exchange;
pub mod outcome;
