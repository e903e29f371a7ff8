//! `portcullis-os`: the operating-system plumbing the agent, the controller and the
//! trust crate share, so each exists once.
//!
//! - [`durable`]: writing a file that must survive a crash or a power cut (temporary file
//!   in the same directory with its mode set before any data, fsync, rename, directory
//!   fsync), with errors that name the path and the step that failed.
//! - [`signal`]: [`shutdown_signal`], the future a `run(.., shutdown)` service stops on
//!   (SIGTERM or SIGINT).
//!
//! No policy, no protocol, no logging of errors it returns: the caller decides.

pub mod durable;
pub mod signal;

pub use durable::{DurableError, write_atomic};
pub use signal::shutdown_signal;
