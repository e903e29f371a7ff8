//! `Display` for changes, diffs and plans: what `--check --diff` prints. Text only.

use super::{Change, Plan, RulesetDiff, diff};
use crate::ruleset::{Ruleset, TABLE_NAME};
use std::fmt;

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::SetAdded { set, key } => write!(f, "+ set {set} type {key}"),
            Change::SetRemoved { set, key } => write!(f, "- set {set} type {key}"),
            Change::SetKeyChanged { set, from, to } => write!(f, "~ set {set} type {from} -> {to}"),
            Change::ElementAdded { set, element } => write!(f, "+ set {set} element {element}"),
            Change::ElementRemoved { set, element } => write!(f, "- set {set} element {element}"),
            Change::ChainAdded {
                chain,
                base: Some(b),
            } => write!(f, "+ chain {chain}: {b}"),
            Change::ChainAdded { chain, base: None } => write!(f, "+ chain {chain}"),
            Change::ChainRemoved { chain } => write!(f, "- chain {chain}"),
            Change::ChainChanged {
                chain,
                field,
                from,
                to,
            } => {
                write!(f, "~ chain {chain} {field} {from} -> {to}")
            }
            Change::RuleAdded { chain, index, rule } => {
                write!(f, "+ chain {chain} rule {}: {rule}", index + 1)
            }
            Change::RuleRemoved { chain, index, rule } => {
                write!(f, "- chain {chain} rule {}: {rule}", index + 1)
            }
            Change::RuleChanged {
                chain,
                index,
                from,
                to,
            } => {
                write!(
                    f,
                    "~ chain {chain} rule {}: {from}\n      -> {to}",
                    index + 1
                )
            }
            Change::UnknownAdded { object, json } => write!(f, "+ unrecognized {object}: {json}"),
            Change::UnknownRemoved { object, json } => {
                write!(f, "- unrecognized {object}: {json}")
            }
            Change::UnknownChanged { object, from, to } => {
                write!(f, "~ unrecognized {object}: {from}\n      -> {to}")
            }
        }
    }
}

/// One change per line.
impl fmt::Display for RulesetDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.changes {
            writeln!(f, "{c}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Plan::Unchanged => writeln!(f, "table inet {TABLE_NAME}: no changes"),
            Plan::Create(r) => {
                writeln!(
                    f,
                    "create table inet {TABLE_NAME} ({} sets, {} elements, {} chains, {} rules)",
                    r.sets.len(),
                    r.element_count(),
                    r.chains.len(),
                    r.rule_count()
                )?;
                write!(f, "{}", diff(r, &Ruleset::default()))
            }
            Plan::Replace { diff, .. } => {
                writeln!(
                    f,
                    "replace table inet {TABLE_NAME} ({} changes)",
                    diff.len()
                )?;
                write!(f, "{diff}")
            }
        }
    }
}
