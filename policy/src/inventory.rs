//! Ansible inventories: the formats ansible-core reads (YAML, INI, the `--list` JSON of
//! `ansible-inventory` and of dynamic inventory scripts), chosen like Ansible's plugins (by
//! extension, then by content, with a hint when the guess looks wrong), several sources
//! merged in order, and `group_vars/`/`host_vars/` applied in Ansible's precedence.
//!
//! Produces the host -> groups and group -> hosts relations (a host belongs to every ancestor
//! of the groups it is listed in, to `all`, and to `ungrouped` if nothing else), the
//! inventory order of hosts and groups (for pattern subscripts), and each host's merged
//! variables. Every error is located. This module must not read files or run scripts (the
//! binaries do, and pass [`Source`]s and [`VarsDirs`]), nor evaluate patterns.

use crate::budget::Budget;
use crate::diag::{Diagnostic, Diagnostics, Source};
use crate::inventory_data::InvData;
pub use crate::inventory_data::{VarsDir, VarsDirs};
use crate::inventory_yaml::YamlReader;
use crate::yaml::{self, NodeKind};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// One inventory host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostEntry {
    /// Every group the host belongs to, including ancestors, `all` and maybe `ungrouped`.
    pub groups: BTreeSet<String>,
    /// Its variables merged as Ansible does (group vars by depth, group_vars/, host vars).
    pub vars: BTreeMap<String, Value>,
    /// The `ansible_host` variable, if set.
    pub ansible_host: Option<String>,
    /// Where the host is first listed.
    pub file: String,
    pub line: usize,
    pub column: usize,
}

/// One group as written: its direct hosts and children in inventory order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupNode {
    pub name: String,
    pub hosts: Vec<String>,
    pub children: Vec<String>,
    /// The group's own variables (from the inventory source).
    pub vars: BTreeMap<String, Value>,
}

/// A parsed inventory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inventory {
    pub hosts: BTreeMap<String, HostEntry>,
    /// Group name -> every host in it (transitively). Always has `all` and `ungrouped`.
    pub groups: BTreeMap<String, BTreeSet<String>>,
    /// Hosts in the order Ansible first saw them.
    pub host_order: Vec<String>,
    /// Groups in the order Ansible first saw them (`all`, `ungrouped`, then as named).
    pub tree: Vec<GroupNode>,
}

// JSON numbers are never NaN (serde_json refuses them), so equality is total.
impl Eq for HostEntry {}
impl Eq for GroupNode {}
impl Eq for Inventory {}

impl Inventory {
    /// Parse one inventory text (format guessed from its name and content).
    pub fn parse(src: &Source) -> Result<Inventory, Diagnostics> {
        Self::parse_with(src, &Budget::default())
    }

    /// [`Inventory::parse`] within `budget` (document limits and host listings).
    pub fn parse_with(src: &Source, budget: &Budget) -> Result<Inventory, Diagnostics> {
        Self::load(std::slice::from_ref(src), &VarsDirs::default(), budget)
    }

    /// Several inventory sources, in order, into one inventory (as `-i a -i b`), then the
    /// `group_vars/`/`host_vars/` of `dirs`. The host-listing budget covers all sources.
    pub fn load(
        sources: &[Source],
        dirs: &VarsDirs,
        budget: &Budget,
    ) -> Result<Inventory, Diagnostics> {
        let mut data = InvData::default();
        let mut diags = Diagnostics::default();
        for src in sources {
            read_source(src, budget, &mut data, &mut diags);
        }
        if !diags.is_empty() {
            return Err(diags.finish());
        }
        Ok(data.finish(dirs))
    }

    /// All host names.
    pub fn host_names(&self) -> BTreeSet<String> {
        self.hosts.keys().cloned().collect()
    }
}

/// One `group_vars/` or `host_vars/` file: a YAML (or JSON) mapping of variables.
pub fn vars_file(src: &Source) -> Result<serde_json::Map<String, Value>, Diagnostics> {
    let root = yaml::parse(src)?;
    let mut d = Diagnostics::default();
    let vars = crate::inventory_yaml::node_vars(&root, &src.name, "a variables file", &mut d);
    if !d.is_empty() {
        return Err(d.finish());
    }
    Ok(vars)
}

fn ext(name: &str) -> &str {
    let base = name.rsplit('/').next().unwrap_or(name);
    base.rsplit_once('.').map_or("", |(_, e)| e)
}

/// Whether the first significant line reads like INI (`[group]`, `host k=v`).
fn looks_like_ini(text: &str) -> bool {
    let Some(first) = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with(['#', ';']) && *l != "---")
    else {
        return false;
    };
    (first.starts_with('[') && first.ends_with(']') && !first.contains(", "))
        || (!first.contains(':') && (first.contains('=') || !first.contains(' ')))
}

fn looks_like_yaml(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .is_some_and(|l| l == "---" || l.ends_with(':') || l.starts_with('{'))
}

fn hint(mut d: Diagnostics, text: String) -> Diagnostics {
    if let Some(first) = d.0.first_mut() {
        first.message.push_str(&format!(" (hint: {text})"));
    }
    d
}

/// Read one source into `data`, choosing the format as Ansible's plugins would.
fn read_source(src: &Source, budget: &Budget, data: &mut InvData, diags: &mut Diagnostics) {
    if src.text.len() > budget.max_document_bytes {
        diags.push(Diagnostic {
            file: src.name.clone(),
            line: 1,
            column: 1,
            message: format!(
                "document too large: {} bytes (limit {})",
                src.text.len(),
                budget.max_document_bytes
            ),
        });
        return;
    }
    let e = ext(&src.name);
    // A JSON object (a dynamic inventory's answer, `--list` output) is read as such.
    let json = src.text.trim_start().starts_with('{');
    let yaml_ext = json || matches!(e, "yml" | "yaml" | "json" | "");
    if !yaml_ext {
        // Ansible's yaml plugin only takes .yml/.yaml/.json or no extension.
        let mut d = Diagnostics::default();
        crate::inventory_ini::read(src, data, budget.max_range_hosts, &mut d);
        if !d.is_empty() && looks_like_yaml(&src.text) {
            d = hint(d, "the file was read as INI because of its extension; it looks like YAML, name it .yml".into());
        }
        diags.extend(d);
        return;
    }
    let root = match yaml::parse_with(src, budget) {
        Ok(root) => root,
        Err(yerr) => {
            if json || !matches!(e, "" | "yml" | "yaml") || !looks_like_ini(&src.text) {
                let h = if looks_like_ini(&src.text) {
                    Some(format!(
                        "this looks like an INI inventory; name it `{}.ini` or drop the extension",
                        src.name.trim_end_matches(&format!(".{e}"))
                    ))
                } else {
                    None
                };
                diags.extend(match h {
                    Some(h) => hint(yerr, h),
                    None => yerr,
                });
                return;
            }
            let mut d = Diagnostics::default();
            crate::inventory_ini::read(src, data, budget.max_range_hosts, &mut d);
            if !d.is_empty() {
                let y = yerr
                    .0
                    .first()
                    .map(|x| format!("{}:{}: {}", x.line, x.column, x.message))
                    .unwrap_or_default();
                d = hint(d, format!("read as INI because it is not valid YAML ({y})"));
            }
            diags.extend(d);
            return;
        }
    };
    if !matches!(root.kind, NodeKind::Map(_) | NodeKind::Null) && e.is_empty() {
        // Valid YAML but not a mapping (e.g. a bare host list): Ansible falls back to INI.
        crate::inventory_ini::read(src, data, budget.max_range_hosts, diags);
        return;
    }
    if crate::inventory_json::is_list_shape(&root, json) {
        crate::inventory_json::read(&root, &src.name, data, diags);
        return;
    }
    let mut r = YamlReader {
        file: &src.name,
        data,
        diags,
        limit: budget.max_range_hosts,
        over_budget: false,
    };
    r.root(&root);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "inventory_tests.rs"]
mod tests;
