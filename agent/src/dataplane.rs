//! The seam between the agent's logic and the kernel's nftables: the [`Dataplane`] trait.
//!
//! [`NftDataplane`] runs the `nft` binary: one `nft -f -` transaction per apply (the script
//! carries `add table` + `delete table` + the full table, so the kernel applies all of it or
//! nothing; no `nft -c` on this path), `nft -j list table inet portcullis` for readback.
//! [`FakeDataplane`] is an in-memory kernel for unit tests of the logic above it.
//!
//! Implementations must only ever touch `table inet portcullis`.

mod fake;
mod nft;
pub mod nft_json;

pub use fake::FakeDataplane;
pub use nft::NftDataplane;

use portcullis_policy::Ruleset;

/// Why a dataplane operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// `nft` ran and refused: nothing was applied (the batch is atomic).
    #[error("`{command}` failed ({status}): {stderr}")]
    Nft {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("`{command}` printed non-UTF-8 output")]
    Output { command: String },
    /// Only from [`FakeDataplane`]: an injected failure or an unsupported script.
    #[error("fake dataplane: {0}")]
    Fake(String),
}

/// Where the agent's logic meets nftables. Every method touches only our table.
pub trait Dataplane: Send + Sync + std::fmt::Debug {
    /// Runs one nft script as one transaction: all of it applies, or none of it.
    fn apply(&self, script: &str) -> Result<(), DataplaneError>;

    /// Replaces `table inet portcullis` with `ruleset` in one transaction.
    fn replace(&self, ruleset: &Ruleset) -> Result<(), DataplaneError> {
        self.apply(&ruleset.to_nft_script())
    }

    /// `nft -j list table inet portcullis`; `None` when the table does not exist.
    fn read_back(&self) -> Result<Option<String>, DataplaneError>;

    /// Deletes our table (and nothing else); succeeds when it is already absent.
    fn remove(&self) -> Result<(), DataplaneError>;

    /// `nft -j list ruleset`, read only: other tables, for coexistence findings. `None`
    /// when this dataplane cannot see other tables (the fake).
    fn read_ruleset(&self) -> Result<Option<String>, DataplaneError> {
        Ok(None)
    }
}
