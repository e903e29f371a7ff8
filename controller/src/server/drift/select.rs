//! Which known hosts a `drift` pattern names: Ansible patterns resolved against the newest
//! revision's inventory, with known hosts missing from it (agents that connected but were
//! never targeted) added as ungrouped hosts, so globs and names still reach them.

use portcullis_policy::inventory::{HostEntry, Inventory};
use portcullis_policy::{Source, pattern};
use std::collections::BTreeSet;

/// The selected hosts (sorted), or a message for the operator.
pub fn hosts(
    known: &[String],
    inventory: Option<&(String, String)>,
    pat: &str,
) -> Result<BTreeSet<String>, String> {
    let mut inv = inventory
        .and_then(|(name, yaml)| Inventory::parse(&Source::new(name, yaml)).ok())
        .unwrap_or_default();
    for group in ["all", "ungrouped"] {
        inv.groups.entry(group.to_owned()).or_default();
    }
    for h in known {
        if !inv.hosts.contains_key(h) {
            let entry = HostEntry {
                groups: ["all", "ungrouped"]
                    .map(str::to_owned)
                    .into_iter()
                    .collect(),
                ..HostEntry::default()
            };
            inv.hosts.insert(h.clone(), entry);
            for group in ["all", "ungrouped"] {
                inv.groups
                    .entry(group.to_owned())
                    .or_default()
                    .insert(h.clone());
            }
        }
    }
    let pat = if pat.trim().is_empty() { "all" } else { pat };
    // Inventory hosts that never connected are selected too: they show as unreachable.
    pattern::select(&inv, pat).map_err(|e| e.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const INV: &str = "all:\n  children:\n    web:\n      hosts:\n        h2:\n        h3:\n    mail:\n      hosts:\n        h1:\n";

    fn known() -> Vec<String> {
        ["h1", "h2", "h3", "stray"].map(str::to_owned).to_vec()
    }

    #[test]
    fn groups_globs_and_hosts_outside_the_inventory() {
        let inv = ("inventory.yml".to_owned(), INV.to_owned());
        let sel = |p: &str| {
            hosts(&known(), Some(&inv), p)
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>()
        };
        assert_eq!(sel(""), ["h1", "h2", "h3", "stray"]);
        assert_eq!(sel("web"), ["h2", "h3"]);
        assert_eq!(sel("web:!h3"), ["h2"]);
        assert_eq!(sel("st*"), ["stray"]);
        assert!(hosts(&known(), Some(&inv), "nosuch").is_err());
    }

    #[test]
    fn without_an_inventory_names_and_globs_work() {
        let sel = hosts(&known(), None, "h*").unwrap();
        assert_eq!(sel.len(), 3);
    }
}
