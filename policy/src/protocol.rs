//! Protocol cores without I/O: each exchange with a deadline is a state machine with an
//! enum state and `handle(event, now) -> Vec<Action>`, in the style of firezone's connlib.
//! The async code in `agent` and `controller` turns I/O into events and actions into I/O.
//!
//! Nothing here reads a clock, does I/O or spawns: time is passed in as a value.

pub mod confirm;
