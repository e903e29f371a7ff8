//! Ansible's YAML inventory (`all:` with `hosts:`, `children:`, `vars:`), read into
//! [`InvData`] with every error located; and YAML/JSON values as Ansible's PyYAML types them
//! (for variables and `group_vars/` files). No I/O.

use crate::diag::Diagnostics;
use crate::inventory_data::{ALL, InvData, Vars};
use crate::inventory_range::{self, RangeError};
use crate::parse::suggest;
use crate::yaml::{Node, NodeKind};
use serde_json::Value;

const GROUP_KEYS: &[&str] = &["hosts", "children", "vars"];

pub(crate) struct YamlReader<'a> {
    pub file: &'a str,
    pub data: &'a mut InvData,
    pub diags: &'a mut Diagnostics,
    pub limit: usize,
    pub over_budget: bool,
}

/// A YAML (or JSON) value typed as PyYAML does: plain `1` an integer, `1.5` a float,
/// `true`/`yes`/`on` booleans (YAML 1.1), `null`/`~`/empty null; quoted text a string.
pub fn node_value(n: &Node) -> Value {
    match &n.kind {
        NodeKind::Null => Value::Null,
        NodeKind::Seq(items) => Value::Array(items.iter().map(node_value).collect()),
        NodeKind::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| (k.as_str().unwrap_or("").to_string(), node_value(v)))
                .collect(),
        ),
        NodeKind::Scalar(s) if n.quoted => Value::String(s.clone()),
        NodeKind::Scalar(s) => plain_scalar(s),
    }
}

fn plain_scalar(s: &str) -> Value {
    match s {
        "true" | "True" | "TRUE" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => {
            return Value::Bool(true);
        }
        "false" | "False" | "FALSE" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => {
            return Value::Bool(false);
        }
        _ => {}
    }
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = s.parse::<i64>() {
            return Value::from(i);
        }
    } else if digits.contains('.')
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && let Ok(f) = s.parse::<f64>()
        && let Some(n) = serde_json::Number::from_f64(f)
    {
        return Value::Number(n);
    }
    Value::String(s.to_string())
}

/// A mapping node's entries as variables; other shapes are reported.
pub(crate) fn node_vars(n: &Node, file: &str, what: &str, diags: &mut Diagnostics) -> Vars {
    match &n.kind {
        NodeKind::Null => Vars::new(),
        NodeKind::Map(_) => match node_value(n) {
            Value::Object(m) => m,
            _ => Vars::new(),
        },
        _ => {
            diags.push(n.diag(
                file,
                format!(
                    "{what}: expected a mapping of variables, found {}",
                    n.type_name()
                ),
            ));
            Vars::new()
        }
    }
}

impl YamlReader<'_> {
    pub fn root(&mut self, root: &Node) {
        match &root.kind {
            NodeKind::Null => {}
            NodeKind::Map(entries) => {
                for (key, body) in entries {
                    if let Some(name) = self.group_name(key) {
                        let g = self.data.group(name);
                        self.group(g, name, body);
                    }
                }
            }
            _ => self.diags.push(root.diag(
                self.file,
                format!(
                    "an inventory must be a mapping of groups (`all:`), found {}",
                    root.type_name()
                ),
            )),
        }
    }

    /// The entries of `node` if it is a mapping; `None` for null (nothing to read) and for
    /// anything else, which is reported as `what`, found <its type>.
    fn mapping_or_null<'n>(
        &mut self,
        node: &'n Node,
        what: impl FnOnce() -> String,
    ) -> Option<&'n [(Node, Node)]> {
        match &node.kind {
            NodeKind::Null => None,
            NodeKind::Map(e) => Some(e),
            _ => {
                let message = format!("{}, found {}", what(), node.type_name());
                self.diags.push(node.diag(self.file, message));
                None
            }
        }
    }

    fn group_name<'n>(&mut self, key: &'n Node) -> Option<&'n str> {
        match key.as_str() {
            Some(s) if !s.trim().is_empty() && !s.contains(char::is_whitespace) => Some(s),
            _ => {
                self.diags.push(key.diag(
                    self.file,
                    "expected a group name (a word without spaces) as key",
                ));
                None
            }
        }
    }

    fn group(&mut self, g: usize, name: &str, body: &Node) {
        let Some(entries) = self.mapping_or_null(body, || {
            format!("group `{name}`: expected a mapping with hosts/children/vars")
        }) else {
            return;
        };
        for (key, value) in entries {
            match key.as_str() {
                Some("hosts") => self.hosts_of(g, name, value),
                Some("children") => self.children_of(g, name, value),
                Some("vars") => {
                    let vars = node_vars(
                        value,
                        self.file,
                        &format!("group `{name}`: `vars`"),
                        self.diags,
                    );
                    self.data.groups[g].vars.extend(vars);
                }
                other => {
                    let k = other.unwrap_or("?");
                    let hint = suggest(k, GROUP_KEYS.iter().copied())
                        .map(|s| format!(" (did you mean `{s}`?)"))
                        .unwrap_or_default();
                    self.diags.push(key.diag(
                        self.file,
                        format!(
                            "group `{name}`: unknown key `{k}`{hint}; expected hosts, children or vars"
                        ),
                    ));
                }
            }
        }
    }

    fn hosts_of(&mut self, g: usize, group: &str, value: &Node) {
        let Some(entries) = self.mapping_or_null(value, || {
            format!("group `{group}`: `hosts` must be a mapping of host names")
        }) else {
            return;
        };
        for (key, vars) in entries {
            let Some(pattern) = key.as_str().filter(|s| !s.trim().is_empty()) else {
                self.diags
                    .push(key.diag(self.file, "expected a host name as key"));
                continue;
            };
            if self.over_budget {
                return;
            }
            let hv = node_vars(vars, self.file, &format!("host `{pattern}`"), self.diags);
            let Some(names) = self.expand(pattern, key) else {
                continue;
            };
            let (_, port) = inventory_range::split_port(pattern);
            for host in names {
                let h = self.data.host(&host, self.file, key.line, key.column);
                self.data.add_host(g, h);
                if let Some(p) = port {
                    self.data.hosts[h]
                        .vars
                        .insert("ansible_port".into(), p.into());
                }
                self.data.hosts[h].vars.extend(hv.clone());
            }
        }
    }

    /// The names a host key stands for (ranges expanded, `:port` removed), within budget.
    fn expand(&mut self, pattern: &str, key: &Node) -> Option<Vec<String>> {
        let (base, _) = inventory_range::split_port(pattern);
        let left = self.limit.saturating_sub(self.data.listed);
        match inventory_range::expand(base, left, self.limit) {
            Ok(n) => {
                self.data.listed = self.data.listed.saturating_add(n.len());
                Some(n)
            }
            Err(RangeError::Malformed(e)) => {
                self.diags.push(key.diag(self.file, e));
                None
            }
            Err(RangeError::OverBudget(e)) => {
                self.over_budget = true;
                self.diags.push(key.diag(self.file, e));
                None
            }
        }
    }

    fn children_of(&mut self, g: usize, group: &str, value: &Node) {
        let Some(entries) = self.mapping_or_null(value, || {
            format!("group `{group}`: `children` must be a mapping of groups")
        }) else {
            return;
        };
        for (key, body) in entries {
            let Some(child) = self.group_name(key) else {
                continue;
            };
            let c = self.data.group(child);
            if c == ALL {
                self.diags
                    .push(key.diag(self.file, "`all` cannot be a child of another group"));
                continue;
            }
            if let Err(e) = self.data.add_child(g, c) {
                self.diags.push(key.diag(self.file, e));
                continue;
            }
            self.group(c, child, body);
        }
    }
}
