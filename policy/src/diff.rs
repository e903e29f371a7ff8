//! Semantic diff of two rulesets and `plan` (WIP).

use crate::ruleset::Ruleset;
use serde::Serialize;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RulesetDiff {
    pub changes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Unchanged,
    Create(Ruleset),
    Replace { to: Ruleset, diff: RulesetDiff },
}

pub fn diff(_desired: &Ruleset, _actual: &Ruleset) -> RulesetDiff {
    RulesetDiff::default()
}

pub fn plan(desired: &Ruleset, actual: Option<&Ruleset>) -> Plan {
    match actual {
        None => Plan::Create(desired.clone()),
        Some(a) if a == desired => Plan::Unchanged,
        Some(a) => Plan::Replace {
            to: desired.clone(),
            diff: diff(desired, a),
        },
    }
}
