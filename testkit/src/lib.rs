//! `portcullis-testkit`: the harness for tests with real packets.
//!
//! - [`NetNs`]: a network namespace created with `ip netns add` under a unique name
//!   (`pct-<pid>-<n>`) and deleted on drop, also when the test panics.
//! - [`Bridge`]: a switch namespace with `br0` that namespaces are plugged into (fleets);
//!   [`terminate`] stops a child process (SIGTERM, then SIGKILL).
//! - [`Topology`]: two or more namespaces joined by veth pairs, addressed from
//!   10.77.0.0/16 and fd77::/16 (IPv6 with `nodad`, so addresses are usable at once).
//! - [`probe`]: TCP connect probes that tell Accepted / Refused (RST) / TimedOut (dropped)
//!   apart, a TCP listener, a UDP echo server and a UDP request/answer probe, all run inside
//!   a namespace on a thread that entered it with `setns`.
//! - [`require_root_netns`]: the gate every netns test starts with.
//! - [`write_executable`]: a script file written so that executing it cannot race a fork.
//! - [`postgres`]: a throwaway PostgreSQL cluster (or the one `PORTCULLIS_TEST_PG` names)
//!   for tests of the PostgreSQL store; [`require_postgres`] is its gate, and
//!   [`postgres::require_dedicated`] gives a test a cluster of its own to stop and restart.
//!
//! This crate must only touch namespaces it created and only use 10.77.0.0/16, fd77::/16
//! and loopback addresses. It never changes the caller's own namespace.

mod bridge;
mod exec;
mod gate;
mod netns;
pub mod postgres;
pub mod probe;
mod topology;

pub use bridge::{Bridge, terminate};
pub use exec::write_executable;
pub use gate::require_root_netns;
pub use netns::NetNs;
pub use postgres::require_postgres;
pub use probe::{TcpOutcome, TcpServer, UdpEcho, UdpOutcome};
pub use topology::{Endpoint, Link, Topology, TopologyBuilder};
