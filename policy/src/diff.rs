//! Semantic diff of two rulesets, and `plan(desired, actual) -> Plan`.
//!
//! Pure comparison of values; it must not render scripts or decide how to apply. The
//! diff reads as "what applying `desired` would change in `actual`": `+` is in desired
//! only, `-` in actual only, `~` changed. Rules are aligned per chain by a longest common
//! subsequence, so one inserted rule is one insertion, not a cascade of changes. Rule
//! indices are 0-based positions (as in `RuleCounter`); `Display` prints them 1-based
//! ("rule 3" is the third rule).

use crate::ruleset::{BaseChain, Chain, Rule, Ruleset, Set};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Above this many cells the rule alignment falls back to "remove all, add all" for the
/// differing middle of a chain (only a foreign table stuffed with rules gets there).
const LCS_MAX_CELLS: usize = 1_000_000;

/// One semantic change. Rules and elements are carried in nft syntax.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    SetAdded {
        set: String,
        key: String,
    },
    SetRemoved {
        set: String,
        key: String,
    },
    SetKeyChanged {
        set: String,
        from: String,
        to: String,
    },
    ElementAdded {
        set: String,
        element: String,
    },
    ElementRemoved {
        set: String,
        element: String,
    },
    ChainAdded {
        chain: String,
        base: Option<String>,
    },
    ChainRemoved {
        chain: String,
    },
    /// `field` is `hook`, `priority`, `policy`, or `base` (regular <-> base chain).
    ChainChanged {
        chain: String,
        field: String,
        from: String,
        to: String,
    },
    RuleAdded {
        chain: String,
        index: usize,
        rule: String,
    },
    RuleRemoved {
        chain: String,
        index: usize,
        rule: String,
    },
    /// `index` is the rule's position in desired.
    RuleChanged {
        chain: String,
        index: usize,
        from: String,
        to: String,
    },
    /// An object only readback knows (see `Ruleset::unknown`).
    UnknownAdded {
        object: String,
        json: String,
    },
    UnknownRemoved {
        object: String,
        json: String,
    },
    UnknownChanged {
        object: String,
        from: String,
        to: String,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RulesetDiff {
    pub changes: Vec<Change>,
}

impl RulesetDiff {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
    pub fn len(&self) -> usize {
        self.changes.len()
    }
}

/// What to do to get from the kernel's table to the desired one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "plan", rename_all = "snake_case")]
pub enum Plan {
    /// The kernel already holds exactly the desired ruleset.
    Unchanged,
    /// Our table is absent: create it.
    Create(Ruleset),
    /// Our table differs: replace it (atomically, whole table) with `to`.
    Replace { to: Ruleset, diff: RulesetDiff },
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

pub fn diff(desired: &Ruleset, actual: &Ruleset) -> RulesetDiff {
    let mut out = Vec::new();
    for name in keys(&desired.sets, &actual.sets) {
        diff_set(
            &mut out,
            name,
            desired.sets.get(name),
            actual.sets.get(name),
        );
    }
    for name in keys(&desired.chains, &actual.chains) {
        diff_chain(
            &mut out,
            name,
            desired.chains.get(name),
            actual.chains.get(name),
        );
    }
    for name in keys(&desired.unknown, &actual.unknown) {
        let object = name.clone();
        match (desired.unknown.get(name), actual.unknown.get(name)) {
            (Some(d), None) => out.push(Change::UnknownAdded {
                object,
                json: d.clone(),
            }),
            (None, Some(a)) => out.push(Change::UnknownRemoved {
                object,
                json: a.clone(),
            }),
            (Some(d), Some(a)) if d != a => out.push(Change::UnknownChanged {
                object,
                from: a.clone(),
                to: d.clone(),
            }),
            _ => {}
        }
    }
    RulesetDiff { changes: out }
}

fn keys<'a, V>(a: &'a BTreeMap<String, V>, b: &'a BTreeMap<String, V>) -> BTreeSet<&'a String> {
    a.keys().chain(b.keys()).collect()
}

fn diff_set(out: &mut Vec<Change>, name: &str, d: Option<&Set>, a: Option<&Set>) {
    let set = name.to_string();
    let empty = BTreeSet::new();
    let (d_elems, a_elems) = match (d, a) {
        (Some(d), None) => {
            let key = d.key.to_string();
            out.push(Change::SetAdded {
                set: set.clone(),
                key,
            });
            (&*d.elements, &empty)
        }
        (None, Some(a)) => {
            let key = a.key.to_string();
            out.push(Change::SetRemoved {
                set: set.clone(),
                key,
            });
            (&empty, &*a.elements)
        }
        (Some(d), Some(a)) => {
            if d.key != a.key {
                out.push(Change::SetKeyChanged {
                    set: set.clone(),
                    from: a.key.to_string(),
                    to: d.key.to_string(),
                });
            }
            (&*d.elements, &*a.elements)
        }
        (None, None) => return,
    };
    for e in a_elems.difference(d_elems) {
        let element = e.to_string();
        out.push(Change::ElementRemoved {
            set: set.clone(),
            element,
        });
    }
    for e in d_elems.difference(a_elems) {
        let element = e.to_string();
        out.push(Change::ElementAdded {
            set: set.clone(),
            element,
        });
    }
}

fn diff_chain(out: &mut Vec<Change>, name: &str, d: Option<&Chain>, a: Option<&Chain>) {
    let chain = name.to_string();
    let (d_rules, a_rules): (&[Rule], &[Rule]) = match (d, a) {
        (Some(d), None) => {
            let base = d.base.as_ref().map(ToString::to_string);
            out.push(Change::ChainAdded {
                chain: chain.clone(),
                base,
            });
            (&d.rules, &[])
        }
        (None, Some(a)) => {
            out.push(Change::ChainRemoved {
                chain: chain.clone(),
            });
            (&[], &a.rules)
        }
        (Some(d), Some(a)) => {
            diff_base(out, name, d.base.as_ref(), a.base.as_ref());
            (&d.rules, &a.rules)
        }
        (None, None) => return,
    };
    diff_rules(out, name, d_rules, a_rules);
}

fn diff_base(out: &mut Vec<Change>, name: &str, d: Option<&BaseChain>, a: Option<&BaseChain>) {
    let mut push = |field: &str, from: String, to: String| {
        out.push(Change::ChainChanged {
            chain: name.to_string(),
            field: field.to_string(),
            from,
            to,
        })
    };
    match (d, a) {
        (Some(d), Some(a)) => {
            if d.hook != a.hook {
                push("hook", a.hook.clone(), d.hook.clone());
            }
            if d.priority != a.priority {
                push("priority", a.priority.to_string(), d.priority.to_string());
            }
            if d.policy != a.policy {
                push("policy", a.policy.to_string(), d.policy.to_string());
            }
        }
        (d, a) if d != a => {
            let text = |b: Option<&BaseChain>| b.map_or("regular".to_string(), |b| b.to_string());
            push("base", text(a), text(d));
        }
        _ => {}
    }
}

/// Edit script between `a` (actual) and `d` (desired).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Same,
    Del(usize),
    Ins(usize),
}

fn align(d: &[Rule], a: &[Rule]) -> Vec<Op> {
    let pre = d.iter().zip(a).take_while(|(x, y)| x == y).count();
    let suf = d[pre..]
        .iter()
        .rev()
        .zip(a[pre..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (dm, am) = (&d[pre..d.len() - suf], &a[pre..a.len() - suf]);
    let (n, m) = (am.len(), dm.len());
    let mut ops = vec![Op::Same; pre];
    if n.saturating_mul(m) > LCS_MAX_CELLS {
        ops.extend((0..n).map(|i| Op::Del(pre + i)));
        ops.extend((0..m).map(|j| Op::Ins(pre + j)));
    } else {
        // lcs[i][j]: LCS length of am[i..] and dm[j..].
        let mut lcs = vec![vec![0usize; m + 1]; n + 1];
        for i in (0..n).rev() {
            for j in (0..m).rev() {
                lcs[i][j] = if am[i] == dm[j] {
                    lcs[i + 1][j + 1] + 1
                } else {
                    lcs[i + 1][j].max(lcs[i][j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < n || j < m {
            if i < n && j < m && am[i] == dm[j] {
                ops.push(Op::Same);
                (i, j) = (i + 1, j + 1);
            } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
                ops.push(Op::Ins(pre + j));
                j += 1;
            } else {
                ops.push(Op::Del(pre + i));
                i += 1;
            }
        }
    }
    ops.extend(std::iter::repeat_n(Op::Same, suf));
    ops
}

fn diff_rules(out: &mut Vec<Change>, name: &str, d: &[Rule], a: &[Rule]) {
    let chain = || name.to_string();
    let ops = align(d, a);
    // Each run of edits between two unchanged rules: pair removals with insertions as
    // changes, the rest are plain removals/insertions.
    for run in ops.split(|op| *op == Op::Same) {
        let dels: Vec<usize> = run
            .iter()
            .filter_map(|o| match o {
                Op::Del(i) => Some(*i),
                _ => None,
            })
            .collect();
        let ins: Vec<usize> = run
            .iter()
            .filter_map(|o| match o {
                Op::Ins(j) => Some(*j),
                _ => None,
            })
            .collect();
        for (&i, &j) in dels.iter().zip(&ins) {
            out.push(Change::RuleChanged {
                chain: chain(),
                index: j,
                from: a[i].to_string(),
                to: d[j].to_string(),
            });
        }
        for &i in dels.iter().skip(ins.len()) {
            out.push(Change::RuleRemoved {
                chain: chain(),
                index: i,
                rule: a[i].to_string(),
            });
        }
        for &j in ins.iter().skip(dels.len()) {
            out.push(Change::RuleAdded {
                chain: chain(),
                index: j,
                rule: d[j].to_string(),
            });
        }
    }
}

mod display;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
