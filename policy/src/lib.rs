//! `portcullis-policy`: the pure core of Portcullis.
//!
//! Parsing (site file + Ansible YAML inventory, with file:line:column errors), validation,
//! host patterns, the policy model, `compile(policy, facts) -> Ruleset`, rendering to an
//! `nft -f` script, parsing the kernel's `nft -j list table` readback back into a
//! [`Ruleset`], the semantic diff, `plan`, the ruleset hash, rollout waves and the
//! anti-lockout evaluation of a compiled ruleset.
//!
//! This crate must not do I/O, use a clock, spawn threads or be async: every function takes
//! values and returns values, so it is tested with plain unit and property tests.

pub mod addrlist;
pub mod budget;
pub mod compile;
pub mod diag;
pub mod diff;
pub mod facts;
pub mod inventory;
mod inventory_data;
mod inventory_ini;
pub mod inventory_json;
mod inventory_range;
mod inventory_yaml;
pub mod lockout;
pub mod model;
pub mod parse;
pub mod pattern;
pub mod pattern_syntax;
pub mod protocol;
pub mod pyliteral;
pub mod readback;
pub mod render;
pub mod replay;
pub mod restrict;
pub mod rollout;
pub mod ruleset;
pub mod services;
pub mod site;
pub mod yaml;

pub use addrlist::{AddrList, AddrLists};
pub use budget::Budget;
pub use compile::{CompileError, compile};
pub use diag::{Diagnostic, Diagnostics, Source};
pub use diff::{Plan, RulesetDiff, diff, plan};
pub use facts::{Facts, InterfaceFacts};
pub use inventory::{GroupNode, HostEntry, Inventory, VarsDir, VarsDirs};
pub use model::{
    AllowEntry, DenyEntry, DriftMode, HostPolicy, InterfaceSel, LogLimit, Mode, PortRange, Proto,
    RateUnit, Replies,
};
pub use pattern::{PatternError, select, select_ordered};
pub use readback::{ReadbackError, RuleCounter, parse_readback, parse_ruleset_readback};
pub use ruleset::{Ruleset, RulesetHash, TABLE_NAME};
pub use site::{
    Fleet, PlaySummary, load_fleet, load_fleet_with_lists, load_host_policy,
    load_host_policy_with_lists,
};
