//! What every inventory format builds into, the way Ansible's `InventoryData` does: hosts
//! and groups in the order they were first named, each group's direct hosts and children,
//! variables, then `reconcile` (top groups under `all`, `ungrouped`) and the variable merge
//! of `group_vars/` and `host_vars/` in Ansible's precedence. Several sources (`-i a -i b`)
//! feed one `InvData`, as in Ansible. No I/O here.

use crate::inventory::{GroupNode, HostEntry, Inventory};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

pub(crate) type Vars = Map<String, Value>;

#[derive(Debug, Default, Clone)]
pub(crate) struct HostRec {
    pub name: String,
    pub vars: Vars,
    pub file: String,
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct GroupRec {
    pub name: String,
    pub hosts: Vec<usize>,
    host_set: HashSet<usize>,
    pub children: Vec<usize>,
    pub parents: Vec<usize>,
    pub vars: Vars,
}

/// `group_vars/` and `host_vars/` found beside one inventory source or the site file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VarsDir {
    /// Group name -> its variables (files merged in name order, later keys win).
    pub groups: BTreeMap<String, Vars>,
    pub hosts: BTreeMap<String, Vars>,
}

/// Every vars directory, by precedence class: those beside inventory sources (in `-i`
/// order), then those beside the site file (Ansible's "playbook" group_vars/host_vars).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VarsDirs {
    pub inventory: Vec<VarsDir>,
    pub playbook: Vec<VarsDir>,
}

#[derive(Debug, Clone)]
pub(crate) struct InvData {
    pub hosts: Vec<HostRec>,
    host_idx: HashMap<String, usize>,
    pub groups: Vec<GroupRec>,
    group_idx: HashMap<String, usize>,
    /// Host listings so far over every source (a range counts every name).
    pub listed: usize,
}

pub(crate) const ALL: usize = 0;
pub(crate) const UNGROUPED: usize = 1;

impl Default for InvData {
    fn default() -> Self {
        let mut d = InvData {
            hosts: Vec::new(),
            host_idx: HashMap::new(),
            groups: Vec::new(),
            group_idx: HashMap::new(),
            listed: 0,
        };
        d.group("all");
        d.group("ungrouped");
        // `ungrouped` is a child of `all` from the start, as in Ansible.
        let _ = d.add_child(ALL, UNGROUPED);
        d
    }
}

impl InvData {
    pub fn group(&mut self, name: &str) -> usize {
        if let Some(i) = self.group_idx.get(name) {
            return *i;
        }
        let i = self.groups.len();
        self.groups.push(GroupRec {
            name: name.to_string(),
            ..GroupRec::default()
        });
        self.group_idx.insert(name.to_string(), i);
        i
    }

    pub fn has_group(&self, name: &str) -> bool {
        self.group_idx.contains_key(name)
    }

    pub fn host(&mut self, name: &str, file: &str, line: usize, column: usize) -> usize {
        if let Some(i) = self.host_idx.get(name) {
            return *i;
        }
        let i = self.hosts.len();
        self.hosts.push(HostRec {
            name: name.to_string(),
            file: file.to_string(),
            line,
            column,
            ..HostRec::default()
        });
        self.host_idx.insert(name.to_string(), i);
        i
    }

    pub fn add_host(&mut self, group: usize, host: usize) {
        let g = &mut self.groups[group];
        if g.host_set.insert(host) {
            g.hosts.push(host);
        }
    }

    /// Make `child` a child of `parent`; a loop is refused with Ansible's message.
    pub fn add_child(&mut self, parent: usize, child: usize) -> Result<(), String> {
        if self.groups[parent].children.contains(&child) {
            return Ok(());
        }
        if parent == child || self.is_ancestor(child, parent) {
            return Err(format!(
                "group `{}` is a child of `{}` and also contains it (a cycle)",
                self.groups[child].name, self.groups[parent].name
            ));
        }
        self.groups[parent].children.push(child);
        self.groups[child].parents.push(parent);
        Ok(())
    }

    /// Whether `anc` is above `g` (through parents).
    fn is_ancestor(&self, anc: usize, g: usize) -> bool {
        let mut seen = HashSet::new();
        let mut todo = vec![g];
        while let Some(x) = todo.pop() {
            if x == anc {
                return true;
            }
            if seen.insert(x) {
                todo.extend(self.groups[x].parents.iter().copied());
            }
        }
        false
    }

    /// Ansible's `reconcile_inventory`: parentless groups go under `all`; a host in no
    /// group (or only `all`) joins `ungrouped`; one in another group leaves it.
    fn reconcile(&mut self) {
        for g in 1..self.groups.len() {
            if self.groups[g].parents.is_empty() {
                let _ = self.add_child(ALL, g);
            }
        }
        let mut direct: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); self.hosts.len()];
        for (gi, g) in self.groups.iter().enumerate() {
            for h in &g.hosts {
                direct[*h].insert(gi);
            }
        }
        for (h, gs) in direct.iter().enumerate() {
            let others = gs.iter().any(|g| *g != ALL && *g != UNGROUPED);
            if gs.contains(&UNGROUPED) {
                if others {
                    let u = &mut self.groups[UNGROUPED];
                    u.hosts.retain(|x| *x != h);
                    u.host_set.remove(&h);
                }
            } else if !others {
                self.add_host(UNGROUPED, h);
            }
        }
    }

    /// Longest path from `all` (Ansible's group depth, used to order group variables).
    fn depths(&self) -> Vec<usize> {
        let mut depth = vec![0usize; self.groups.len()];
        let mut order = vec![ALL];
        let mut indeg: Vec<usize> = self.groups.iter().map(|g| g.parents.len()).collect();
        let mut k = 0;
        while k < order.len() {
            let g = order[k];
            k += 1;
            for c in &self.groups[g].children {
                depth[*c] = depth[*c].max(depth[g] + 1);
                indeg[*c] = indeg[*c].saturating_sub(1);
                if indeg[*c] == 0 {
                    order.push(*c);
                }
            }
        }
        depth
    }

    /// Reconcile, merge variables, and build the [`Inventory`].
    pub fn finish(mut self, dirs: &VarsDirs) -> Inventory {
        self.reconcile();
        let depth = self.depths();
        let priority = |g: &GroupRec| {
            g.vars
                .get("ansible_group_priority")
                .and_then(|v| v.as_i64().or_else(|| v.as_str()?.trim().parse().ok()))
                .unwrap_or(1)
        };
        // Ancestors (including itself) of each group, and each host's groups.
        let mut member: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); self.hosts.len()];
        for gi in 0..self.groups.len() {
            let mut seen = BTreeSet::new();
            let mut todo = vec![gi];
            while let Some(x) = todo.pop() {
                if seen.insert(x) {
                    todo.extend(self.groups[x].parents.iter().copied());
                }
            }
            for h in &self.groups[gi].hosts {
                member[*h].extend(seen.iter().copied());
            }
        }
        let mut groups: BTreeMap<String, BTreeSet<String>> = self
            .groups
            .iter()
            .map(|g| (g.name.clone(), BTreeSet::new()))
            .collect();
        let mut hosts = BTreeMap::new();
        for (hi, h) in self.hosts.iter().enumerate() {
            let mut gs: Vec<usize> = member[hi].iter().copied().filter(|g| *g != ALL).collect();
            gs.sort_by(|a, b| {
                let (ga, gb) = (&self.groups[*a], &self.groups[*b]);
                (depth[*a], priority(ga), &ga.name).cmp(&(depth[*b], priority(gb), &gb.name))
            });
            let names: Vec<&str> = gs.iter().map(|g| self.groups[*g].name.as_str()).collect();
            let mut vars = self.groups[ALL].vars.clone();
            for g in &gs {
                combine(&mut vars, &self.groups[*g].vars);
            }
            for layer in [&dirs.inventory, &dirs.playbook] {
                for d in layer {
                    combine_opt(&mut vars, d.groups.get("all"));
                }
            }
            for layer in [&dirs.inventory, &dirs.playbook] {
                for d in layer {
                    for g in &names {
                        combine_opt(&mut vars, d.groups.get(*g));
                    }
                }
            }
            combine(&mut vars, &h.vars);
            for layer in [&dirs.inventory, &dirs.playbook] {
                for d in layer {
                    combine_opt(&mut vars, d.hosts.get(&h.name));
                }
            }
            let mut set: BTreeSet<String> = names.iter().map(|s| s.to_string()).collect();
            set.insert("all".into());
            for g in &set {
                groups.entry(g.clone()).or_default().insert(h.name.clone());
            }
            let ansible_host = vars.get("ansible_host").and_then(scalar_text);
            hosts.insert(
                h.name.clone(),
                HostEntry {
                    groups: set,
                    vars: vars.into_iter().collect(),
                    ansible_host,
                    file: h.file.clone(),
                    line: h.line,
                    column: h.column,
                },
            );
        }
        let name = |i: &usize| self.hosts[*i].name.clone();
        let gname = |i: &usize| self.groups[*i].name.clone();
        let tree = self
            .groups
            .iter()
            .map(|g| GroupNode {
                name: g.name.clone(),
                hosts: g.hosts.iter().map(name).collect(),
                children: g.children.iter().map(gname).collect(),
                vars: g.vars.clone().into_iter().collect(),
            })
            .collect();
        Inventory {
            host_order: self.hosts.iter().map(|h| h.name.clone()).collect(),
            hosts,
            groups,
            tree,
        }
    }
}

/// Ansible's default `hash_behaviour = replace`: a later top-level key replaces.
fn combine(into: &mut Vars, from: &Vars) {
    for (k, v) in from {
        into.insert(k.clone(), v.clone());
    }
}

fn combine_opt(into: &mut Vars, from: Option<&Vars>) {
    if let Some(f) = from {
        combine(into, f);
    }
}

/// A scalar variable as text (`ansible_host: 10.0.0.1`, or a number).
pub(crate) fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}
