//! Ansible's INI inventory, as ansible-core's `ini` plugin reads it: `[group]` host lines
//! (`h1 ansible_host=10.0.0.1 x=1`, ranges, `h:2222`), `[group:children]`, `[group:vars]`,
//! hosts before any section in `ungrouped`, `#`/`;` comment lines. Values are typed like
//! Python's `ast.literal_eval` (`1` an integer, `True` a boolean, else text). No I/O.

use crate::diag::{Diagnostic, Diagnostics, Source};
use crate::inventory_data::{InvData, UNGROUPED};
use crate::inventory_range::{self, RangeError};
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(PartialEq, Clone, Copy)]
enum State {
    Hosts,
    Children,
    Vars,
}

/// Read `src` as INI into `data`; `limit` is the host-listing budget of the inventory.
pub(crate) fn read(src: &Source, data: &mut InvData, limit: usize, diags: &mut Diagnostics) {
    let file = src.name.as_str();
    let err = |line: usize, column: usize, m: String| Diagnostic {
        file: file.to_string(),
        line,
        column,
        message: m,
    };
    let mut group = UNGROUPED;
    let mut gname = "ungrouped".to_string();
    let mut state = State::Hosts;
    // Group named in `[x:children]` or `[x:vars]` before it is declared -> (line, parent).
    let mut pending: BTreeMap<String, (usize, usize, State, Vec<usize>)> = BTreeMap::new();
    for (n, raw) in src.text.lines().enumerate() {
        let lineno = n + 1;
        let line = raw.trim();
        let col = raw.len() - raw.trim_start().len() + 1;
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if line.starts_with('[') {
            let Some((name, kind)) = section(line) else {
                diags.push(err(lineno, col, format!(
                    "invalid section `{line}`: expected `[group]`, `[group:children]` or `[group:vars]` (no spaces)"
                )));
                continue;
            };
            state =
                match kind {
                    None | Some("hosts") => State::Hosts,
                    Some("children") => State::Children,
                    Some("vars") => State::Vars,
                    Some(other) => {
                        diags.push(err(lineno, col, format!(
                        "section `{line}` has unknown type `{other}`: expected children or vars"
                    )));
                        continue;
                    }
                };
            let known = data.has_group(name);
            group = data.group(name);
            gname = name.to_string();
            if !known && state == State::Vars {
                pending
                    .entry(name.to_string())
                    .or_insert((lineno, col, State::Vars, Vec::new()));
            }
            if state != State::Vars
                && let Some((_, _, was, parents)) = pending.remove(name)
                && was == State::Children
            {
                for p in parents {
                    if let Err(e) = data.add_child(p, group) {
                        diags.push(err(lineno, col, e));
                    }
                }
            }
            continue;
        }
        match state {
            State::Hosts => {
                let tokens = match shlex(line) {
                    Ok(t) => t,
                    Err(e) => {
                        diags.push(err(lineno, col, e));
                        continue;
                    }
                };
                let Some((pattern, assigns)) = tokens.split_first() else {
                    continue;
                };
                let mut vars = serde_json::Map::new();
                for t in assigns {
                    match t.split_once('=') {
                        Some((k, v)) => {
                            vars.insert(k.to_string(), literal(v));
                        }
                        None => diags.push(err(lineno, col, format!(
                            "host `{pattern}`: expected key=value host variable assignment, found `{t}`"
                        ))),
                    }
                }
                let (base, port) = inventory_range::split_port(pattern);
                if base.ends_with(':') && port.is_none() {
                    diags.push(err(lineno, col, format!(
                        "invalid host `{pattern}`: a name ending in `:` is not allowed (`:` is reserved for a port, `host:2222`)"
                    )));
                    continue;
                }
                let left = limit.saturating_sub(data.listed);
                let names = match inventory_range::expand(base, left, limit) {
                    Ok(n) => n,
                    Err(RangeError::Malformed(e)) => {
                        diags.push(err(lineno, col, e));
                        continue;
                    }
                    Err(RangeError::OverBudget(e)) => {
                        diags.push(err(lineno, col, e));
                        return;
                    }
                };
                data.listed = data.listed.saturating_add(names.len());
                for name in names {
                    let h = data.host(&name, file, lineno, col);
                    data.add_host(group, h);
                    if let Some(p) = port {
                        data.hosts[h].vars.insert("ansible_port".into(), p.into());
                    }
                    data.hosts[h].vars.extend(vars.clone());
                }
            }
            State::Vars => match line.split_once('=') {
                Some((k, v)) => {
                    data.groups[group]
                        .vars
                        .insert(k.trim().to_string(), literal(v.trim()));
                }
                None => diags.push(err(
                    lineno,
                    col,
                    format!("section `[{gname}:vars]`: expected key=value, found `{line}`"),
                )),
            },
            State::Children => {
                let child = line.split('#').next().unwrap_or("").trim();
                if child.is_empty() || child.contains([':', ']', ' ', '\t']) {
                    diags.push(err(
                        lineno,
                        col,
                        format!(
                            "section `[{gname}:children]`: expected a group name, found `{line}`"
                        ),
                    ));
                } else if data.has_group(child) {
                    let c = data.group(child);
                    if let Err(e) = data.add_child(group, c) {
                        diags.push(err(lineno, col, e));
                    }
                } else {
                    pending
                        .entry(child.to_string())
                        .or_insert((lineno, col, State::Children, Vec::new()))
                        .3
                        .push(group);
                }
            }
        }
    }
    for (name, (line, col, st, parents)) in pending {
        let m = if st == State::Vars {
            format!(
                "section `[{name}:vars]` is for group `{name}`, which is defined nowhere (Ansible refuses this too)"
            )
        } else {
            let parent = parents
                .last()
                .map(|p| data.groups[*p].name.clone())
                .unwrap_or_default();
            format!(
                "section `[{parent}:children]` names group `{name}`, which is defined nowhere: declare it with `[{name}]`"
            )
        };
        diags.push(err(line, col, m));
    }
}

/// `[name]` or `[name:kind]`, optionally followed by a `#` comment.
fn section(line: &str) -> Option<(&str, Option<&str>)> {
    let close = line.find(']')?;
    let after = line[close + 1..].trim_start();
    if !(after.is_empty() || after.starts_with('#')) {
        return None;
    }
    let inner = &line[1..close];
    let (name, kind) = match inner.split_once(':') {
        Some((n, k)) => (n, Some(k)),
        None => (inner, None),
    };
    let ok_name = !name.is_empty() && !name.contains(char::is_whitespace);
    let ok_kind =
        kind.is_none_or(|k| !k.is_empty() && k.chars().all(|c| c.is_alphanumeric() || c == '_'));
    (ok_name && ok_kind).then_some((name, kind))
}

/// POSIX `shlex.split(line, comments=True)`: whitespace separates, quotes group, `\`
/// escapes, `#` outside quotes ends the line.
fn shlex(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_token = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_token {
                    out.push(std::mem::take(&mut cur));
                    in_token = false;
                }
            }
            '#' => break,
            '\\' => {
                in_token = true;
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '\'' | '"' => {
                in_token = true;
                let mut closed = false;
                while let Some(n) = chars.next() {
                    if n == c {
                        closed = true;
                        break;
                    }
                    if c == '"' && n == '\\' && matches!(chars.peek(), Some('"' | '\\')) {
                        if let Some(e) = chars.next() {
                            cur.push(e);
                        }
                        continue;
                    }
                    cur.push(n);
                }
                if !closed {
                    return Err(format!("no closing quotation ({c}) in `{line}`"));
                }
            }
            c => {
                in_token = true;
                cur.push(c);
            }
        }
    }
    if in_token {
        out.push(cur);
    }
    Ok(out)
}

/// A value as Python's `ast.literal_eval` reads it (see [`crate::pyliteral`]); text that is
/// not a literal (`10.0.0.1`, `web`) stays text, as in Ansible.
pub(crate) fn literal(v: &str) -> Value {
    crate::pyliteral::parse(v.trim()).unwrap_or_else(|| Value::String(v.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn shlex_and_literals() {
        assert_eq!(shlex("h1 a=1 b='x y' # c").unwrap(), ["h1", "a=1", "b=x y"]);
        assert!(shlex("h1 a='x").is_err());
        assert_eq!(literal("1"), Value::from(1));
        assert_eq!(literal("True"), Value::Bool(true));
        assert_eq!(literal("10.0.0.1"), Value::from("10.0.0.1"));
        assert_eq!(literal("1.5"), Value::from(1.5));
        assert_eq!(literal("'q'"), Value::from("q"));
        assert_eq!(literal("yes"), Value::from("yes"));
    }

    #[test]
    fn sections() {
        assert_eq!(section("[web]"), Some(("web", None)));
        assert_eq!(
            section("[web:children] # x"),
            Some(("web", Some("children")))
        );
        assert_eq!(section("[web prod]"), None);
    }
}
