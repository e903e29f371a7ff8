//! [`NftDataplane`]: the real dataplane, driving the `nft` binary.
//!
//! One process per operation; scripts go through stdin (`nft -f -`), never through a
//! temporary file. Errors carry nft's stderr verbatim (it names the offending line). Each
//! process has a deadline ([`NftDataplane::with_timeout`], default 30 s): past it, it is
//! killed and the operation fails ([`super::child`]).
//!
//! [`Dataplane::read_table`] (the agent's verification) does not use `nft -j list table`,
//! whose cost at 10k set elements exceeds the apply's (nft decomposes the intervals and
//! renders every element as JSON), and avoids a second nft process per apply. It reads the
//! whole table, in the first of these ways that recognizes all of it:
//! 1. over netlink only ([`super::netlink_table`]): table, sets and elements, chains,
//!    rules, decoded exactly as nft would print them for the shapes we write;
//! 2. chains, rules and set declarations from `nft -j -t list ruleset inet` (terse:
//!    without named sets' elements; other tables skipped), each set's elements over
//!    netlink ([`super::netlink`]);
//! 3. `nft -j list table inet portcullis` ([`Dataplane::read_back`]).
//!
//! 1 and 2 are bracketed by the ruleset generation (retried if it moved) and answer only
//! for a table made entirely of our shapes; anything else (an unknown object or rule, an
//! element or option we would not write, a netlink error) goes on to the next way, so what
//! they return is what 3 would. Tests compare the three on the real kernel.
//!
//! [`Dataplane::update_elements`] (address-list deltas) does not run nft either: one
//! nfnetlink batch of element messages ([`super::netlink`]), all or nothing, then the
//! generation. [`Dataplane::has_elements`] asks the kernel by key for a hash set and
//! dumps an interval set.
//!
//! Cost (1,000,000 address-list elements, see `agent/tests/elements.rs`): the kernel's
//! dump of a *hash* set restarts its walk at every datagram (quadratic: 600k addresses
//! take ~7 s to dump), an interval set's dump is linear.

use super::netlink::{Decoded, ElementOp, NfTables};
use super::netlink_table;
use super::{
    DEFAULT_NFT_TIMEOUT, Dataplane, DataplaneError, KernelTable, SetChange, parse_table,
    run_bounded,
};
use portcullis_policy::render::delete_script;
use portcullis_policy::ruleset::{Element, SetKey};
use portcullis_policy::ruleset::{Rule, Set};
use portcullis_policy::{Ruleset, TABLE_NAME, parse_ruleset_readback};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

/// The longest [`Dataplane::read_chain`] may take (whatever the dataplane's deadline).
pub const CHAIN_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The real nftables dataplane (the `nft` binary, found on `PATH` by default).
#[derive(Debug, Clone)]
pub struct NftDataplane {
    nft: PathBuf,
    timeout: Duration,
}

impl Default for NftDataplane {
    fn default() -> Self {
        Self::new("nft")
    }
}

impl NftDataplane {
    /// A dataplane running the given `nft` binary.
    pub fn new(nft: impl Into<PathBuf>) -> Self {
        Self {
            nft: nft.into(),
            timeout: DEFAULT_NFT_TIMEOUT,
        }
    }

    /// The same dataplane with another deadline for each `nft` process.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// One `nft` process, killed (with its process group) at the deadline.
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<Output, DataplaneError> {
        run_bounded(&self.nft, args, stdin, self.timeout)
    }

    fn command_line(&self, args: &[&str]) -> String {
        format!("{} {}", self.nft.display(), args.join(" "))
    }

    /// Our table read entirely over netlink (no nft process; see [`super::netlink_table`]);
    /// `Err(why)` when it holds anything that module does not recognize, or on any
    /// error. [`Dataplane::read_table`] tries this first; public for tests and benchmarks.
    pub fn read_table_netlink(&self) -> Result<Option<KernelTable>, String> {
        let mut nl = NfTables::open().map_err(|e| format!("netlink: {e}"))?;
        read_netlink_consistent(&mut nl)
    }

    /// Our table read as terse listing + netlink element dumps (see the module docs);
    /// `Err(why)` when it must be read with `nft -j list table` instead (which also
    /// reports any real failure). [`Dataplane::read_table`] is this, else that; public
    /// for tests and benchmarks.
    pub fn read_table_split(&self) -> Result<Option<KernelTable>, String> {
        const ATTEMPTS: usize = 3;
        let mut nl = NfTables::open().map_err(|e| format!("netlink: {e}"))?;
        let args = ["-j", "-t", "list", "ruleset", "inet"];
        for _ in 0..ATTEMPTS {
            let generation = nl.generation().map_err(|e| format!("netlink: {e}"))?;
            let output = self.run(&args, None).map_err(|e| e.to_string())?;
            if !output.status.success() {
                return Err(self.fail(&args, &output).to_string());
            }
            let json = std::str::from_utf8(&output.stdout).map_err(|e| e.to_string())?;
            let table = match parse_ruleset_readback(json).map_err(|e| e.to_string())? {
                None => None,
                Some((mut ruleset, counters)) => {
                    if !ruleset.unknown.is_empty()
                        || ruleset
                            .chains
                            .values()
                            .flat_map(|c| &c.rules)
                            .any(|r| matches!(r, Rule::Unknown { .. }))
                    {
                        return Err("objects or rules we do not write".to_owned());
                    }
                    for (name, set) in &mut ruleset.sets {
                        match nl.set_elements(TABLE_NAME, name, set.key) {
                            Ok(Decoded::Elements(elements)) => *set = Set::new(set.key, elements),
                            Ok(Decoded::Unrecognized(why)) => {
                                return Err(format!("set {name}: {why}"));
                            }
                            Err(e) => return Err(format!("set {name}: netlink: {e}")),
                        }
                    }
                    Some(KernelTable { ruleset, counters })
                }
            };
            if nl.generation().map_err(|e| format!("netlink: {e}"))? == generation {
                return Ok(table);
            }
        }
        Err(format!(
            "the ruleset changed during each of {ATTEMPTS} reads"
        ))
    }

    fn fail(&self, args: &[&str], output: &Output) -> DataplaneError {
        DataplaneError::Nft {
            command: self.command_line(args),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        }
    }
}

/// [`netlink_table::read`] between two equal ruleset generations (a few attempts).
pub(super) fn read_netlink_consistent(nl: &mut NfTables) -> Result<Option<KernelTable>, String> {
    const ATTEMPTS: usize = 3;
    for _ in 0..ATTEMPTS {
        let generation = nl.generation().map_err(|e| format!("netlink: {e}"))?;
        let table = netlink_table::read(nl).map_err(|e| format!("netlink: {e}"))??;
        if nl.generation().map_err(|e| format!("netlink: {e}"))? == generation {
            return Ok(table);
        }
    }
    Err(format!(
        "the ruleset changed during each of {ATTEMPTS} reads"
    ))
}

/// New address-list elements from which [`NftDataplane::replace`] stages them over
/// netlink: below it one `nft -f` is as fast.
pub const STAGE_MIN_ELEMENTS: usize = 16_384;

/// Elements per netlink transaction while staging (the sets are not referenced yet, so
/// they need not all go in one: this bounds the batch the agent builds).
const STAGE_BATCH_ELEMENTS: usize = 65_536;

impl NftDataplane {
    /// A staged replace: the address-list sets the table does not hold yet are created
    /// empty (hash sets with a `size`, see [`Ruleset::staging_set_command`]) and filled
    /// over netlink while no rule refers to them (`nft -f` would parse
    /// every element: 6 of the 8 s of a million), then one `nft -f` transaction turns
    /// the table into `ruleset` around them ([`Ruleset::to_nft_swap_script`]): every
    /// other chain and set is flushed and deleted, the rest written. Traffic sees the
    /// old table until that commit and the new one after it, as with one `nft -f`.
    ///
    /// `Err(why)` when it cannot be done this way (too few new elements, a table with
    /// anything but our chains and sets, any failure on the way, after which what it
    /// staged is removed again): the caller then replaces the table in one `nft -f`.
    pub fn replace_staged(&self, ruleset: &Ruleset) -> Result<(), String> {
        let netlink = |e: std::io::Error| format!("netlink: {e}");
        let mut nl = NfTables::open().map_err(netlink)?;
        let before = netlink_table::inventory(&mut nl).map_err(netlink)??;
        let staged: BTreeSet<String> = ruleset
            .sets
            .iter()
            .filter(|(name, set)| {
                set.key.is_address()
                    && !set.elements.is_empty()
                    && !before.as_ref().is_some_and(|b| b.sets.contains(name))
            })
            .map(|(name, _)| name.clone())
            .collect();
        let new_elements: usize = staged.iter().map(|n| ruleset.sets[n].elements.len()).sum();
        if new_elements < STAGE_MIN_ELEMENTS {
            return Err(format!("{new_elements} new address-list elements"));
        }
        let mut create = format!("add table inet {TABLE_NAME}\n");
        for name in &staged {
            create.push_str(&ruleset.staging_set_command(name).unwrap_or_default());
        }
        self.apply(&create).map_err(|e| e.to_string())?;
        let loaded = staged.iter().try_for_each(|name| {
            let set = &ruleset.sets[name];
            let all: Vec<&Element> = set.elements.iter().collect();
            all.chunks(STAGE_BATCH_ELEMENTS).try_for_each(|chunk| {
                let ops: Vec<ElementOp<'_>> = chunk
                    .iter()
                    .map(|element| ElementOp {
                        set: name,
                        key: set.key,
                        element,
                        add: true,
                    })
                    .collect();
                nl.update_elements(TABLE_NAME, &ops).map_err(netlink)
            })
        });
        let swapped = loaded.and_then(|()| {
            let (chains, sets) = before
                .as_ref()
                .map(|b| (b.chains.as_slice(), b.sets.as_slice()))
                .unwrap_or_default();
            self.apply(&ruleset.to_nft_swap_script(chains, sets, &staged))
                .map_err(|e| e.to_string())
        });
        if let Err(why) = swapped {
            // Unreferenced, they change no verdict; remove them so the table is as it was.
            let undo = if before.is_none() {
                delete_script()
            } else {
                staged
                    .iter()
                    .map(|n| format!("delete set inet {TABLE_NAME} {n}\n"))
                    .collect()
            };
            if let Err(e) = self.apply(&undo) {
                tracing::warn!(error = %e, "removing the staged sets failed");
            }
            return Err(why);
        }
        tracing::debug!(
            sets = staged.len(),
            elements = new_elements,
            "table replaced around staged sets"
        );
        Ok(())
    }
}

impl Dataplane for NftDataplane {
    /// [`NftDataplane::replace_staged`] where it can, else one `nft -f`.
    fn replace(&self, ruleset: &Ruleset) -> Result<(), DataplaneError> {
        let listed: usize = ruleset
            .sets
            .values()
            .filter(|s| s.key.is_address())
            .map(|s| s.elements.len())
            .sum();
        if listed >= STAGE_MIN_ELEMENTS {
            match self.replace_staged(ruleset) {
                Ok(()) => return Ok(()),
                Err(why) => tracing::debug!(%why, "replacing the table in one nft transaction"),
            }
        }
        self.apply(&ruleset.to_nft_script())
    }

    fn apply(&self, script: &str) -> Result<(), DataplaneError> {
        let args = ["-f", "-"];
        let output = self.run(&args, Some(script))?;
        if !output.status.success() {
            return Err(self.fail(&args, &output));
        }
        tracing::debug!(bytes = script.len(), "nft transaction applied");
        Ok(())
    }

    fn read_back(&self) -> Result<Option<String>, DataplaneError> {
        let args = ["-j", "list", "table", "inet", TABLE_NAME];
        let output = self.run(&args, None)?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            // ENOENT is how nft says "no such table"; anything else is a real failure.
            if stderr.contains("No such file or directory") {
                return Ok(None);
            }
            return Err(self.fail(&args, &output));
        }
        String::from_utf8(output.stdout)
            .map(Some)
            .map_err(|_| DataplaneError::Output {
                command: self.command_line(&args),
            })
    }

    fn read_table(&self) -> Result<Option<KernelTable>, DataplaneError> {
        let why = match self.read_table_netlink() {
            Ok(table) => return Ok(table),
            Err(why) => why,
        };
        tracing::debug!(%why, "reading table inet portcullis with nft -j -t + netlink");
        match self.read_table_split() {
            Ok(table) => Ok(table),
            Err(why) => {
                tracing::debug!(%why, "reading table inet portcullis with nft -j list table");
                self.read_back()?.as_deref().map(parse_table).transpose()
            }
        }
    }

    fn remove(&self) -> Result<(), DataplaneError> {
        self.apply(&delete_script())
    }

    /// One nf_tables transaction over netlink ([`NfTables::update_elements`]); the
    /// generation read right after it (a later one if someone else committed between).
    fn update_elements(&self, changes: &[SetChange]) -> Result<Option<u32>, DataplaneError> {
        let ops: Vec<ElementOp<'_>> = changes
            .iter()
            .flat_map(|c| {
                let op = move |add| {
                    move |element| ElementOp {
                        set: &c.set,
                        key: c.key,
                        element,
                        add,
                    }
                };
                c.remove
                    .iter()
                    .map(op(false))
                    .chain(c.add.iter().map(op(true)))
            })
            .collect();
        let netlink = |e: std::io::Error| DataplaneError::Netlink(e.to_string());
        let mut nl = NfTables::open().map_err(netlink)?;
        nl.update_elements(TABLE_NAME, &ops).map_err(netlink)?;
        tracing::debug!(elements = ops.len(), "element transaction committed");
        nl.generation().map(Some).map_err(netlink)
    }

    fn has_elements(
        &self,
        set: &str,
        key: SetKey,
        elements: &[Element],
    ) -> Result<Vec<bool>, DataplaneError> {
        let netlink = |e: std::io::Error| DataplaneError::Netlink(e.to_string());
        let mut nl = NfTables::open().map_err(netlink)?;
        nl.has_elements(TABLE_NAME, set, key, elements)
            .map_err(netlink)
    }

    fn generation(&self) -> Result<Option<u32>, DataplaneError> {
        let netlink = |e: std::io::Error| DataplaneError::Netlink(e.to_string());
        let mut nl = NfTables::open().map_err(netlink)?;
        nl.generation().map(Some).map_err(netlink)
    }

    /// `nft -j list chain inet portcullis CHAIN`, with a deadline of at most
    /// [`CHAIN_READ_TIMEOUT`] (it runs on periodic paths: a hung nft delays one reading,
    /// never more).
    fn read_chain(&self, chain: &str) -> Result<Option<KernelTable>, DataplaneError> {
        let args = ["-j", "list", "chain", "inet", TABLE_NAME, chain];
        let output = run_bounded(&self.nft, &args, None, self.timeout.min(CHAIN_READ_TIMEOUT))?;
        if !output.status.success() {
            // ENOENT: no such table or chain.
            if String::from_utf8_lossy(&output.stderr).contains("No such file or directory") {
                return Ok(None);
            }
            return Err(self.fail(&args, &output));
        }
        let json = std::str::from_utf8(&output.stdout).map_err(|_| DataplaneError::Output {
            command: self.command_line(&args),
        })?;
        Ok(super::only_chain(parse_table(json)?, chain))
    }

    /// `nft monitor` ([`super::nft_monitor`]).
    fn watch(
        &self,
        wake: std::sync::Arc<tokio::sync::Notify>,
    ) -> futures::future::BoxFuture<'static, Result<(), DataplaneError>> {
        Box::pin(super::nft_monitor::watch(self.nft.clone(), wake))
    }

    fn read_ruleset(&self) -> Result<Option<String>, DataplaneError> {
        let args = ["-j", "list", "ruleset"];
        let output = self.run(&args, None)?;
        if !output.status.success() {
            return Err(self.fail(&args, &output));
        }
        String::from_utf8(output.stdout)
            .map(Some)
            .map_err(|_| DataplaneError::Output {
                command: self.command_line(&args),
            })
    }
}
