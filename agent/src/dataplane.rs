//! The seam between the agent's logic and the kernel's nftables: the [`Dataplane`] trait.
//!
//! [`NftDataplane`] runs the `nft` binary: one `nft -f -` transaction per apply (the script
//! carries `add table` + `delete table` + the full table, so the kernel applies all of it or
//! nothing; no `nft -c` on this path), `nft -j list table inet portcullis` for readback
//! ([`Dataplane::read_back`]). [`Dataplane::read_table`] is the parsed readback the agent
//! verifies with; the nft dataplane reads the table over netlink there (see [`nft`]'s
//! docs).
//! [`FakeDataplane`] is an in-memory kernel for unit tests of the logic above it.
//!
//! Every `nft` the agent runs goes through this trait: the denial pipeline's over-limit
//! counter ([`Dataplane::read_chain`]), the drift loop's event path
//! ([`Dataplane::watch`], `nft monitor`) and coexistence findings
//! ([`Dataplane::read_ruleset`]) included.
//!
//! Implementations must only ever change `table inet portcullis`.

mod child;
mod fake;
#[doc(hidden)]
pub mod fuzzing;
mod netlink;
mod netlink_table;
mod nft;
pub mod nft_json;
mod nft_monitor;

pub use child::{DEFAULT_NFT_TIMEOUT, run_bounded};
pub use fake::{FakeDataplane, ReadbackMemo};
pub use nft::{NftDataplane, STAGE_MIN_ELEMENTS};

use futures::future::BoxFuture;
use portcullis_policy::ruleset::{Element, SetKey};
use portcullis_policy::{ReadbackError, RuleCounter, Ruleset, parse_readback};
use std::sync::Arc;
use tokio::sync::Notify;

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
    /// The process did not finish in time; it was killed (with its process group).
    #[error("`{command}` did not finish within {}; killed", humantime::format_duration(*.timeout))]
    Timeout {
        command: String,
        timeout: std::time::Duration,
    },
    #[error("`{command}` printed non-UTF-8 output")]
    Output { command: String },
    /// Only from [`FakeDataplane`]: an injected failure or an unsupported script.
    #[error("fake dataplane: {0}")]
    Fake(String),
    /// A netlink request to nf_tables failed (for an element transaction: nothing was
    /// changed; the message names the element the kernel refused when it said which).
    #[error("nf_tables netlink: {0}")]
    Netlink(String),
    /// This dataplane cannot do that (the caller falls back to a full replace).
    #[error("not supported by this dataplane: {0}")]
    Unsupported(String),
    /// The table was read but is not what `nft -j list table` prints for a table.
    #[error("cannot parse the kernel's table: {0}")]
    Readback(#[from] ReadbackError),
}

/// Our table as the kernel holds it: the normalized ruleset (what `compile` would produce
/// for it) and the rules' counter values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelTable {
    pub ruleset: Ruleset,
    pub counters: Vec<RuleCounter>,
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

    /// Our table, read back and parsed: by default [`Dataplane::read_back`] through
    /// [`parse_readback`]. An implementation may read it another way, but must return
    /// exactly what that would (the whole table, set elements included); `None` when the
    /// table does not exist.
    fn read_table(&self) -> Result<Option<KernelTable>, DataplaneError> {
        self.read_back()?.as_deref().map(parse_table).transpose()
    }

    /// One chain of our table with its rules' counters (the ruleset holds only that
    /// chain, no sets): cheap enough to read every second, e.g. the `guard` chain's
    /// over-limit counters for the denial pipeline. `None` when the table or the chain
    /// does not exist.
    fn read_chain(&self, chain: &str) -> Result<Option<KernelTable>, DataplaneError>;

    /// Follows ruleset changes (anyone's, ours included): `wake.notify_one()` on every
    /// change, until the returned future ends (the event source stopped or failed; the
    /// caller restarts it). Dropping the future stops watching.
    fn watch(&self, wake: Arc<Notify>) -> BoxFuture<'static, Result<(), DataplaneError>>;

    /// Deletes our table (and nothing else); succeeds when it is already absent.
    fn remove(&self) -> Result<(), DataplaneError>;

    /// `nft -j list ruleset`, read only: other tables, for coexistence findings. `None`
    /// when this dataplane cannot see other tables (the fake).
    fn read_ruleset(&self) -> Result<Option<String>, DataplaneError> {
        Ok(None)
    }

    /// Element additions and removals on existing sets of our table, all in one
    /// transaction (all or nothing; removing an absent element or adding a present one
    /// fails it). Returns the ruleset generation the transaction produced, when the
    /// dataplane knows it.
    fn update_elements(&self, changes: &[SetChange]) -> Result<Option<u32>, DataplaneError>;

    /// Whether each of `elements` is in set `set` (of `key`) right now, in order.
    fn has_elements(
        &self,
        set: &str,
        key: SetKey,
        elements: &[Element],
    ) -> Result<Vec<bool>, DataplaneError>;

    /// The ruleset generation now (it moves on every committed transaction, anyone's);
    /// `None` when the dataplane has none.
    fn generation(&self) -> Result<Option<u32>, DataplaneError> {
        Ok(None)
    }
}

/// The element changes of one set in [`Dataplane::update_elements`] (as `compile`
/// normalizes them: what the kernel holds element for element).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetChange {
    pub set: String,
    pub key: SetKey,
    pub add: Vec<Element>,
    pub remove: Vec<Element>,
}

/// `nft -j list table` output, parsed.
fn parse_table(json: &str) -> Result<KernelTable, DataplaneError> {
    let (ruleset, counters) = parse_readback(json)?;
    Ok(KernelTable { ruleset, counters })
}

/// `table` cut down to `chain` (its rules and counters, no sets), as
/// [`Dataplane::read_chain`] returns it; `None` without that chain.
fn only_chain(table: KernelTable, chain: &str) -> Option<KernelTable> {
    let KernelTable {
        mut ruleset,
        counters,
    } = table;
    let kept = ruleset.chains.remove(chain)?;
    ruleset.chains.clear();
    ruleset.chains.insert(chain.to_owned(), kept);
    ruleset.sets.clear();
    ruleset.unknown.clear();
    Some(KernelTable {
        ruleset,
        counters: counters.into_iter().filter(|c| c.chain == chain).collect(),
    })
}
