//! The `ansible-inventory --list` JSON shape (also what a dynamic inventory script prints):
//! reading it (groups with `hosts`/`children` lists and `vars`, `_meta.hostvars`), writing
//! it back from an [`Inventory`], and `ansible-inventory --graph`'s tree. No I/O.

use crate::diag::Diagnostics;
use crate::inventory::{GroupNode, Inventory};
use crate::inventory_data::InvData;
use crate::inventory_yaml::{node_value, node_vars};
use crate::yaml::{Node, NodeKind};
use serde_json::{Map, Value, json};
use std::collections::HashMap;

/// Whether a parsed document is in the list shape: `_meta`, or (in a JSON text) a group
/// whose `hosts` or `children` is a list.
pub(crate) fn is_list_shape(root: &Node, json: bool) -> bool {
    let Some(entries) = root.as_map() else {
        return false;
    };
    entries.iter().any(|(k, v)| {
        k.as_str() == Some("_meta")
            || json
                && ["hosts", "children"]
                    .iter()
                    .any(|s| v.get(s).is_some_and(|x| x.as_seq().is_some()))
    })
}

/// Read the list shape into `data`, as ansible-core's `script` plugin does.
pub(crate) fn read(root: &Node, file: &str, data: &mut InvData, diags: &mut Diagnostics) {
    let Some(entries) = root.as_map() else {
        diags.push(root.diag(file, "expected a JSON object of groups"));
        return;
    };
    let mut meta: Option<&Node> = None;
    // Portcullis's own transport (`to_transport`) records Ansible's order of groups and
    // hosts, which JSON object keys cannot carry; create them in that order first.
    if let Some((_, m)) = entries.iter().find(|(k, _)| k.as_str() == Some("_meta")) {
        for item in m
            .get(ORDER_GROUPS)
            .and_then(Node::as_seq)
            .unwrap_or_default()
        {
            if let Some(g) = item.as_str() {
                data.group(g);
            }
        }
        for item in m
            .get(ORDER_HOSTS)
            .and_then(Node::as_seq)
            .unwrap_or_default()
        {
            if let Some(h) = item.as_str() {
                data.host(h, file, item.line, item.column);
            }
        }
    }
    for (key, body) in entries {
        let Some(name) = key.as_str() else {
            diags.push(key.diag(file, "expected a group name as key"));
            continue;
        };
        if name == "_meta" {
            meta = body.get("hostvars");
            continue;
        }
        let g = data.group(name);
        let fields = ["hosts", "vars", "children"];
        let simple = body.as_map().is_some() && !fields.iter().any(|f| body.get(f).is_some());
        let hosts = match &body.kind {
            NodeKind::Map(_) if simple => {
                // `{"group": {"var": 1}}`: a host of the group's name with those vars.
                let h = data.host(name, file, key.line, key.column);
                data.add_host(g, h);
                data.groups[g]
                    .vars
                    .extend(node_vars(body, file, name, diags));
                continue;
            }
            NodeKind::Map(_) => body.get("hosts"),
            _ => Some(body),
        };
        if let Some(list) = hosts.filter(|h| !h.is_null()) {
            match list.as_seq() {
                Some(items) => {
                    for item in items {
                        match item.as_str() {
                            Some(h) => {
                                let hi = data.host(h, file, item.line, item.column);
                                data.add_host(g, hi);
                            }
                            None => diags.push(item.diag(file, "expected a host name")),
                        }
                    }
                }
                None => diags.push(list.diag(
                    file,
                    format!(
                        "group `{name}`: `hosts` must be a list of host names, found {}",
                        list.type_name()
                    ),
                )),
            }
        }
        if let Some(v) = body.get("vars") {
            let vars = node_vars(v, file, &format!("group `{name}`: `vars`"), diags);
            data.groups[g].vars.extend(vars);
        }
        if let Some(kids) = body.get("children").filter(|c| !c.is_null()) {
            let Some(items) = kids.as_seq() else {
                diags.push(kids.diag(
                    file,
                    format!("group `{name}`: `children` must be a list of group names"),
                ));
                continue;
            };
            for item in items {
                let Some(c) = item.as_str() else {
                    diags.push(item.diag(file, "expected a group name"));
                    continue;
                };
                let ci = data.group(c);
                if let Err(e) = data.add_child(g, ci) {
                    diags.push(item.diag(file, e));
                }
            }
        }
    }
    if let Some(hv) = meta.and_then(Node::as_map) {
        for (host, vars) in hv {
            let Some(h) = host.as_str() else { continue };
            let hi = data.host(h, file, host.line, host.column);
            if let Value::Object(m) = node_value(vars) {
                data.hosts[hi].vars.extend(m);
            }
        }
    }
}

/// `ansible-inventory --list`: every group with its direct `hosts` (not for `all`) and
/// `children` (empty lists left out, groups left with nothing too), and every host's
/// merged variables under `_meta.hostvars` (hosts without variables left out).
pub fn to_list(inv: &Inventory) -> Value {
    let mut out = Map::new();
    let mut hostvars = Map::new();
    for name in &inv.host_order {
        if let Some(h) = inv.hosts.get(name).filter(|h| !h.vars.is_empty()) {
            hostvars.insert(
                name.clone(),
                Value::Object(h.vars.clone().into_iter().collect()),
            );
        }
    }
    out.insert(
        "_meta".into(),
        json!({ "hostvars": hostvars, "profile": "inventory_legacy" }),
    );
    for g in &inv.tree {
        let mut body = Map::new();
        if !g.children.is_empty() {
            body.insert("children".into(), json!(g.children));
        }
        if !g.hosts.is_empty() && g.name != "all" {
            body.insert("hosts".into(), json!(g.hosts));
        }
        if !body.is_empty() {
            out.insert(g.name.clone(), Value::Object(body));
        }
    }
    Value::Object(out)
}

const ORDER_GROUPS: &str = "portcullis_group_order";
const ORDER_HOSTS: &str = "portcullis_host_order";

/// [`to_list`] plus the inventory order of groups and hosts under `_meta` (ignored by
/// Ansible), so that reading it back gives the same subscripts: what `portcullis apply`
/// sends the controller, which stores it with the revision.
pub fn to_transport(inv: &Inventory) -> String {
    let mut v = to_list(inv);
    if let Some(meta) = v.get_mut("_meta").and_then(Value::as_object_mut) {
        let groups: Vec<&str> = inv.tree.iter().map(|g| g.name.as_str()).collect();
        meta.insert(ORDER_GROUPS.into(), json!(groups));
        meta.insert(ORDER_HOSTS.into(), json!(inv.host_order));
    }
    // Hosts listed in `all` itself come first in `all`'s host order (`all[0]`).
    if let Some(all) = inv
        .tree
        .iter()
        .find(|g| g.name == "all")
        .filter(|g| !g.hosts.is_empty())
        && let Some(body) = v.get_mut("all").and_then(Value::as_object_mut)
    {
        body.insert("hosts".into(), json!(all.hosts));
    }
    v.to_string()
}

/// `ansible-inventory --graph [GROUP]`: `@group:` lines, children then hosts (not those of
/// `all`) in inventory order, each level indented by `  |`; `None` if there is no such
/// group.
pub fn graph(inv: &Inventory, group: &str) -> Option<String> {
    let by: HashMap<&str, &GroupNode> = inv.tree.iter().map(|g| (g.name.as_str(), g)).collect();
    let mut out = String::new();
    walk(by.get(group)?, 0, &by, &mut out);
    Some(out)
}

fn line(out: &mut String, depth: usize, name: &str) {
    if depth > 0 {
        out.push_str(&"  |".repeat(depth));
        out.push_str("--");
    }
    out.push_str(name);
    out.push('\n');
}

fn walk(g: &GroupNode, depth: usize, by: &HashMap<&str, &GroupNode>, out: &mut String) {
    line(out, depth, &format!("@{}:", g.name));
    for c in &g.children {
        if let Some(child) = by.get(c.as_str()) {
            walk(child, depth + 1, by, out);
        }
    }
    if g.name != "all" {
        for h in &g.hosts {
            line(out, depth + 1, h);
        }
    }
}
