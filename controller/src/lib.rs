//! `portcullis-controller`: the `portcullis` binary's library.
//!
//! - [`server`]: `serve` — gRPC over mutual TLS (Session for agents, Admin for operators),
//!   the SQLite [`store`], the registry of connected agents, rollout following.
//! - [`pki`] and [`identity`]: the CA, certificate issuance and revocation, peer identity
//!   from client certificates, TLS configurations.
//! - [`cli`]: the operator commands (one module per subcommand); `main.rs` only parses.

pub mod cli;
pub mod identity;
pub mod pki;
pub mod server;
pub mod store;
