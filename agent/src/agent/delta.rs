//! List deltas: when a new policy differs from the one in force only in the content of
//! its address lists, the kernel is changed by element additions and removals in one
//! transaction ([`crate::dataplane::Dataplane::update_elements`]) instead of a table
//! rewrite, and the rules stay as they are (their log prefix names the revision that
//! built them; the hash masks it, so it attests the same table).
//!
//! Pure: [`list_delta`] says which elements change, or `None` when the change is not one
//! (a set would appear or disappear, anything but list content changed, or a prefix
//! overlaps another so that the normalized interval set would be more than the
//! difference); the caller then replaces the table as usual.

use crate::dataplane::SetChange;
use crate::state::{ListChange, RecordDelta, SetPatch};
use portcullis_policy::HostPolicy;
use portcullis_policy::addrlist::AddrList;
use portcullis_policy::compile::{
    ADDRESS_SET_KINDS, address_set_name, list_elements, shard_count, shard_name, shard_of,
};
use portcullis_policy::ruleset::{DENY_SET_PREFIX, Element, LIST_SET_PREFIX, Ruleset, Set, SetKey};
use std::collections::BTreeMap;
use std::sync::Arc;

/// `policy` but for list contents (and `management`, which is not compiled).
fn shape(policy: &HostPolicy) -> HostPolicy {
    HostPolicy {
        lists: BTreeMap::new(),
        management: None,
        ..policy.clone()
    }
}

/// A list delta: the kernel's element changes, and the same as the last-known-good
/// journal records them (with the lists' own changes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListDelta {
    pub sets: Vec<SetChange>,
    pub record: RecordDelta,
}

/// The element changes turning the table of `old` (compiled as `old_rs`) into that of
/// `new`, if only list contents differ; `None` when a full apply is needed. No set
/// changes: nothing changes.
pub(crate) fn list_delta(
    old: &HostPolicy,
    old_rs: &Ruleset,
    new: &HostPolicy,
) -> Option<ListDelta> {
    if shape(old) != shape(new) || !old.lists.keys().eq(new.lists.keys()) {
        return None;
    }
    let mut changes = Vec::new();
    let mut record = RecordDelta::default();
    for (name, new_list) in &new.lists {
        let old_list = old.lists.get(name)?;
        if Arc::ptr_eq(old_list, new_list) || old_list == new_list {
            continue;
        }
        let (added, removed) = old_list.diff(new_list);
        record.lists.insert(
            name.clone(),
            ListChange {
                added: added.clone(),
                removed: removed.clone(),
            },
        );
        let allow = new.allow.iter().any(|a| a.lists.contains(name));
        let deny = new.deny.iter().any(|d| d.lists.contains(name));
        let bases = [(allow, LIST_SET_PREFIX), (deny, DENY_SET_PREFIX)];
        for (_, prefix) in bases.iter().filter(|(used, _)| *used) {
            let base = address_set_name(prefix, name);
            for (_, key, suffix) in ADDRESS_SET_KINDS {
                let add = list_elements(&added, key);
                let remove = list_elements(&removed, key);
                if add.is_empty() && remove.is_empty() {
                    continue;
                }
                // Hash sets are sharded by count: a change of shard count renames them.
                let k = if key.interval() {
                    1
                } else {
                    let k = shard_count(kind_len(old_list, key));
                    if shard_count(kind_len(new_list, key)) != k {
                        return None;
                    }
                    k
                };
                let mut by_shard: BTreeMap<usize, (Vec<Element>, Vec<Element>)> = BTreeMap::new();
                for e in add {
                    by_shard.entry(shard_of(&e, k)).or_default().0.push(e);
                }
                for e in remove {
                    by_shard.entry(shard_of(&e, k)).or_default().1.push(e);
                }
                for (i, (add, remove)) in by_shard {
                    let set_name = shard_name(&base, suffix, k, i);
                    // A set that does not exist yet, or would be left empty, changes the
                    // rules: a full apply.
                    let set = old_rs.sets.get(&set_name).filter(|s| s.key == key)?;
                    if set.elements.len() + add.len() <= remove.len() {
                        return None;
                    }
                    if key.interval()
                        && !prefixes_stand_alone(&set.elements, &add, &remove, new_list)
                    {
                        return None;
                    }
                    if remove.iter().any(|e| !set.elements.contains(e))
                        || add.iter().any(|e| set.elements.contains(e))
                    {
                        return None;
                    }
                    let set = |elements: &[Element]| Set {
                        key,
                        elements: Arc::new(elements.iter().cloned().collect()),
                    };
                    record.sets.insert(
                        set_name.clone(),
                        SetPatch {
                            add: set(&add),
                            remove: set(&remove),
                        },
                    );
                    changes.push(SetChange {
                        set: set_name,
                        key,
                        add,
                        remove,
                    });
                }
            }
        }
    }
    Some(ListDelta {
        sets: changes,
        record,
    })
}

/// Entries of `list` that go to sets of `key`.
fn kind_len(list: &AddrList, key: SetKey) -> usize {
    match key {
        SetKey::V4Addr => list.v4.iter().filter(|e| e.1 == 32).count(),
        SetKey::V4Net => list.v4.iter().filter(|e| e.1 != 32).count(),
        SetKey::V6Addr => list.v6.iter().filter(|e| e.1 == 128).count(),
        SetKey::V6Net => list.v6.iter().filter(|e| e.1 != 128).count(),
        SetKey::Port | SetKey::V4Port | SetKey::V6Port => 0,
    }
}

/// The inclusive address range of a prefix element, as `u128`.
fn range(e: &Element) -> Option<(u128, u128)> {
    match e {
        Element::V4(n) => Some((
            u128::from(u32::from(n.network())),
            u128::from(u32::from(n.broadcast())),
        )),
        Element::V6(n) => Some((u128::from(n.network()), u128::from(n.broadcast()))),
        _ => None,
    }
}

/// Whether adding `add` to and removing `remove` from the interval set `set` gives its
/// normalized form for `list` (no element inside another): no added prefix overlaps
/// another element or added prefix, and no removed prefix covered a list entry that
/// normalization had left out.
fn prefixes_stand_alone(
    set: &std::collections::BTreeSet<Element>,
    add: &[Element],
    remove: &[Element],
    list: &AddrList,
) -> bool {
    let mut ranges: Vec<(u128, u128)> = Vec::new();
    for e in add {
        let Some(r) = range(e) else { return false };
        ranges.push(r);
        // The element at or before this one's start (the only one that can cover it, as
        // the set's elements are disjoint), and any starting inside it.
        let before = set.range(..=e.clone()).next_back().and_then(range);
        if before.is_some_and(|(_, end)| end >= r.0) {
            return false;
        }
        let after = set.range(e.clone()..).next().and_then(range);
        if after.is_some_and(|(start, _)| start <= r.1) {
            return false;
        }
    }
    ranges.sort_unstable();
    if ranges.windows(2).any(|w| w[1].0 <= w[0].1) {
        return false;
    }
    // A removed prefix may have hidden entries of the list inside it.
    remove.iter().all(|e| {
        let Some((lo, hi)) = range(e) else {
            return false;
        };
        let inside = |a: u128| lo <= a && a <= hi;
        match e {
            Element::V4(n) => {
                let start = list.v4.partition_point(|&(a, _)| u128::from(a) < lo);
                !list.v4[start..]
                    .iter()
                    .take_while(|&&(a, _)| inside(u128::from(a)))
                    .any(|&(_, p)| p > n.prefix_len())
            }
            Element::V6(n) => {
                let start = list.v6.partition_point(|&(a, _)| a < lo);
                !list.v6[start..]
                    .iter()
                    .take_while(|&&(a, _)| inside(a))
                    .any(|&(_, p)| p > n.prefix_len())
            }
            _ => false,
        }
    })
}

/// One line per changed set, for the apply report: `set deny_ab12..._v4a: +1 -0`.
pub(crate) fn describe(changes: &[SetChange]) -> Vec<String> {
    changes
        .iter()
        .map(|c| {
            format!(
                "set {}: +{} -{} (list delta)",
                c.set,
                c.add.len(),
                c.remove.len()
            )
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use portcullis_policy::{DenyEntry, Facts, compile};

    fn policy(nets: &[&str]) -> HostPolicy {
        let list = AddrList::from_nets(nets.iter().map(|s| s.parse().unwrap()));
        HostPolicy {
            deny: vec![DenyEntry {
                proto: None,
                ports: None,
                from: vec![],
                lists: vec!["b.txt".into()],
                label: "deny".into(),
            }],
            lists: BTreeMap::from([("b.txt".to_string(), Arc::new(list))]),
            ..HostPolicy::default()
        }
    }

    fn facts() -> Facts {
        Facts {
            hostname: "h".into(),
            ..Facts::default()
        }
    }

    /// The delta from `a` to `b`, checked against compiling `b` when there is one.
    fn delta(a: &[&str], b: &[&str]) -> Option<Vec<SetChange>> {
        let (pa, pb) = (policy(a), policy(b));
        let ra = compile(&pa, &facts(), 1).unwrap();
        let d = list_delta(&pa, &ra, &pb)?;
        let rb = compile(&pb, &facts(), 2).unwrap();
        let got = d.record.patch_ruleset(&ra).unwrap();
        assert_eq!(got.sets, rb.sets, "the patched sets are the compiled ones");
        assert_eq!(got.hash(), rb.hash());
        assert_eq!(
            d.record.patch_policy(&pa).unwrap(),
            pb,
            "the journal's list changes"
        );
        Some(d.sets)
    }

    #[test]
    fn an_address_added_and_removed_is_two_element_changes() {
        let c = delta(
            &["192.0.2.1/32", "192.0.2.2/32", "10.0.0.0/8"],
            &["192.0.2.1/32", "192.0.2.3/32", "10.0.0.0/8"],
        )
        .unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].add.len(), c[0].remove.len()), (1, 1));
        assert!(c[0].set.ends_with("_v4a"));
        assert_eq!(delta(&["192.0.2.1/32"], &["192.0.2.1/32"]).unwrap(), vec![]);
    }

    #[test]
    fn big_hash_sets_are_sharded_and_a_delta_touches_one_shard() {
        let many: Vec<String> = (0..40_000u32)
            .map(|i| format!("{}/32", std::net::Ipv4Addr::from(0x0b00_0000 + i)))
            .collect();
        let mut more = many.clone();
        more.push("203.0.113.77/32".into());
        let a: Vec<&str> = many.iter().map(String::as_str).collect();
        let b: Vec<&str> = more.iter().map(String::as_str).collect();
        let rs = compile(&policy(&a), &facts(), 1).unwrap();
        let shards: Vec<_> = rs.sets.keys().filter(|n| n.contains("_v4a_2_")).collect();
        assert_eq!(shards.len(), 2, "{:?}", rs.sets.keys().collect::<Vec<_>>());
        assert!(
            rs.sets
                .values()
                .all(|s| s.elements.len() <= portcullis_policy::compile::SHARD_ELEMENTS)
        );
        let c = delta(&a, &b).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].add.len(), 1);
        // Growing past a shard boundary renames the sets: a full apply.
        let huge: Vec<String> = (0..70_000u32)
            .map(|i| format!("{}/32", std::net::Ipv4Addr::from(0x0b00_0000 + i)))
            .collect();
        let h: Vec<&str> = huge.iter().map(String::as_str).collect();
        assert!(delta(&a, &h).is_none());
    }

    #[test]
    fn prefixes_that_do_not_touch_others_are_deltas() {
        let c = delta(
            &["10.0.0.0/8", "192.0.2.1/32", "fd77::/16"],
            &[
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.0.2.1/32",
                "fd77::/16",
                "fd78::/16",
            ],
        )
        .unwrap();
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn what_changes_the_rules_or_overlaps_is_a_full_apply() {
        // A new family (a set that did not exist), a set left empty.
        assert!(
            delta(
                &["192.0.2.1/32", "10.0.0.0/8"],
                &["192.0.2.1/32", "10.0.0.0/8", "fd77::1/128"]
            )
            .is_none()
        );
        assert!(delta(&["192.0.2.1/32", "10.0.0.0/8"], &["10.0.0.0/8"]).is_none());
        // A prefix inside or around another, or uncovering a hidden one.
        assert!(
            delta(
                &["10.0.0.0/8", "192.0.2.1/32"],
                &["10.0.0.0/8", "10.1.0.0/16", "192.0.2.1/32"]
            )
            .is_none()
        );
        assert!(
            delta(
                &["10.1.0.0/16", "192.0.2.1/32"],
                &["10.1.0.0/16", "10.0.0.0/8", "192.0.2.1/32"]
            )
            .is_none()
        );
        assert!(
            delta(
                &["10.0.0.0/8", "10.1.0.0/16", "11.0.0.0/8"],
                &["10.1.0.0/16", "11.0.0.0/8"]
            )
            .is_none()
        );
        // Anything but list content.
        let (pa, mut pb) = (policy(&["192.0.2.1/32"]), policy(&["192.0.2.2/32"]));
        pb.deny[0].proto = Some(portcullis_policy::Proto::Tcp);
        let ra = compile(&pa, &facts(), 1).unwrap();
        assert!(list_delta(&pa, &ra, &pb).is_none());
    }
}
