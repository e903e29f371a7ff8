//! The operator CLI: one module per subcommand. Connection settings ([`connect::ConnectArgs`],
//! flattened into each subcommand that talks to the controller, and only those) are flags,
//! env vars, or `~/.config/portcullis/cli.toml`, in that order of precedence.

pub mod apply;
pub mod apply_check;
pub mod ca;
pub mod connect;
pub mod drift;
pub mod history;
pub mod inventory;
pub mod logs;
pub mod output;
pub mod rollout;
pub mod serve;
pub mod status;

/// Exit codes scripts can rely on.
pub mod exit {
    /// Everything asked for happened.
    pub const OK: i32 = 0;
    /// The request was valid but did not fully succeed (a host failed or is still pending).
    pub const INCOMPLETE: i32 = 1;
    /// Invalid input (policy errors, bad flags); nothing was changed.
    pub const INVALID: i32 = 2;
    /// The controller could not be reached or refused us (TLS, certificate, permission).
    pub const UNREACHABLE: i32 = 4;
    /// A rollout halted and not every host it changed could be rolled back.
    pub const HALTED: i32 = 5;
    /// A rollout halted on failures and every host it changed was rolled back.
    pub const ROLLED_BACK: i32 = 6;
    /// A rollout was stopped by `portcullis rollout abort`.
    pub const ABORTED: i32 = 7;
    /// `drift`: drift found on at least one host (drifted, or healed during the check).
    pub const DRIFT_FOUND: i32 = 2;
    /// `drift`: no drift found, but some hosts did not answer.
    pub const HOSTS_UNREACHABLE: i32 = 3;
    /// `apply --check`: something would change (or a host cannot be checked).
    pub const CHANGES: i32 = 2;
}
