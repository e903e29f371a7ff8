//! Address-list files, the big source lists of `from: { file: lists/partners.txt }`: one
//! address or prefix per line (v4 and v6 mixed), `#` comments, blank lines.
//!
//! Parsed into a compact form (sorted `(u32, prefix)` / `(u128, prefix)` pairs, no
//! per-element heap object), bounded in size and count, every bad line reported at
//! `file:line:column`. The caller reads the files and passes [`Source`]s named by the
//! path as written in the site file (relative to it); [`list_references`] says which
//! files a site or policy file names, and [`from_file_entry`] resolves one
//! `{ file: x }` of a `from:` against them for `parse`. This module must not do I/O.

use crate::diag::{Diagnostic, Diagnostics, Source};
use crate::parse::{Ctx, parse_cidr};
use crate::yaml::{Node, NodeKind};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::collections::{BTreeMap, BTreeSet};

/// Largest list file accepted (bytes).
pub const MAX_LIST_BYTES: usize = 64 << 20;
/// Most entries in one list file.
pub const MAX_LIST_ENTRIES: usize = 2_000_000;
/// Most list files named by one site.
pub const MAX_LIST_FILES: usize = 256;
/// Most bytes over every list file of one apply.
pub const MAX_TOTAL_LIST_BYTES: usize = 128 << 20;
/// Bad lines reported per file before the rest are only counted.
const MAX_LINE_ERRORS: usize = 50;

/// One list file's networks: v4 and v6 apart, each sorted and de-duplicated, host bits
/// clear (a bare address is a /32 or /128).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct AddrList {
    pub v4: Vec<(u32, u8)>,
    pub v6: Vec<(u128, u8)>,
}

impl AddrList {
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every network, v4 first, each family in ascending order.
    pub fn nets(&self) -> impl Iterator<Item = IpNet> + '_ {
        let v4 = self.v4.iter().filter_map(|&(a, p)| {
            Ipv4Net::new(std::net::Ipv4Addr::from(a), p)
                .ok()
                .map(IpNet::V4)
        });
        let v6 = self.v6.iter().filter_map(|&(a, p)| {
            Ipv6Net::new(std::net::Ipv6Addr::from(a), p)
                .ok()
                .map(IpNet::V6)
        });
        v4.chain(v6)
    }
}

/// Every list file of one apply, by the name the site file uses for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddrLists(BTreeMap<String, AddrList>);

/// No list files (what a site without `file:` entries gets).
pub static NO_LISTS: AddrLists = AddrLists(BTreeMap::new());

impl AddrLists {
    pub fn get(&self, name: &str) -> Option<&AddrList> {
        self.0.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Parse every list file, checking the per-apply budgets. All problems of all files
    /// are reported.
    pub fn parse(sources: &[Source]) -> Result<AddrLists, Diagnostics> {
        let mut diags = Diagnostics::default();
        if sources.len() > MAX_LIST_FILES {
            diags.push(at(
                &sources[MAX_LIST_FILES].name,
                0,
                0,
                format!(
                    "too many list files: {} (at most {MAX_LIST_FILES})",
                    sources.len()
                ),
            ));
            return Err(diags);
        }
        let total: usize = sources.iter().map(|s| s.text.len()).sum();
        if total > MAX_TOTAL_LIST_BYTES {
            diags.push(at(
                &sources[0].name,
                0,
                0,
                format!(
                    "the list files are {total} bytes together, more than the {MAX_TOTAL_LIST_BYTES} allowed"
                ),
            ));
            return Err(diags);
        }
        let mut out = BTreeMap::new();
        for src in sources {
            if let Err(e) = check_name(&src.name) {
                diags.push(at(&src.name, 0, 0, e));
                continue;
            }
            if out.contains_key(&src.name) {
                diags.push(at(&src.name, 0, 0, "list file given twice".to_string()));
                continue;
            }
            match parse_list(src) {
                Ok(l) => {
                    out.insert(src.name.clone(), l);
                }
                Err(e) => diags.extend(e),
            }
        }
        if diags.is_empty() {
            Ok(AddrLists(out))
        } else {
            Err(diags.finish())
        }
    }
}

fn at(file: &str, line: usize, column: usize, message: String) -> Diagnostic {
    Diagnostic {
        file: file.to_string(),
        line,
        column,
        message,
    }
}

/// A list file name as a site file may write it: a relative path, no `..`.
pub fn check_name(name: &str) -> Result<(), String> {
    let bad = name.is_empty()
        || name.starts_with('/')
        || name.contains('\0')
        || name.contains('\\')
        || name.split('/').any(|c| c == "..");
    if bad {
        return Err(format!(
            "list file name `{name}` must be a relative path below the site file's directory (no `/` at the start, no `..`)"
        ));
    }
    Ok(())
}

/// Parse one list file. Bad lines are reported at `file:line:column` with the text found.
pub fn parse_list(src: &Source) -> Result<AddrList, Diagnostics> {
    let mut diags = Diagnostics::default();
    if src.text.len() > MAX_LIST_BYTES {
        diags.push(at(
            &src.name,
            0,
            0,
            format!(
                "list file is {} bytes, more than the {MAX_LIST_BYTES} allowed",
                src.text.len()
            ),
        ));
        return Err(diags);
    }
    let mut list = AddrList::default();
    let mut bad = 0usize;
    for (i, raw) in src.text.lines().enumerate() {
        let body = raw.split_once('#').map_or(raw, |(b, _)| b);
        let item = body.trim();
        if item.is_empty() {
            continue;
        }
        let column = body.len() - body.trim_start().len() + 1;
        if item.contains(char::is_whitespace) {
            bad += 1;
            if bad <= MAX_LINE_ERRORS {
                diags.push(at(
                    &src.name,
                    i + 1,
                    column,
                    format!("expected one address or prefix per line, found `{item}`"),
                ));
            }
            continue;
        }
        match parse_cidr(item) {
            Ok(IpNet::V4(n)) => list.v4.push((u32::from(n.network()), n.prefix_len())),
            Ok(IpNet::V6(n)) => list.v6.push((u128::from(n.network()), n.prefix_len())),
            Err(e) => {
                bad += 1;
                if bad <= MAX_LINE_ERRORS {
                    diags.push(at(&src.name, i + 1, column, e));
                }
            }
        }
        if list.len() > MAX_LIST_ENTRIES {
            diags.push(at(
                &src.name,
                i + 1,
                1,
                format!("list file has more than {MAX_LIST_ENTRIES} entries"),
            ));
            return Err(diags);
        }
    }
    if bad > MAX_LINE_ERRORS {
        diags.push(at(
            &src.name,
            0,
            0,
            format!("{} more bad lines not shown", bad - MAX_LINE_ERRORS),
        ));
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    list.v4.sort_unstable();
    list.v4.dedup();
    list.v6.sort_unstable();
    list.v6.dedup();
    Ok(list)
}

/// The list files a parsed site or policy file names (`file:` under any `from:`), for
/// the caller to read before loading it.
pub fn list_references(root: &Node) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    walk(root, &mut out);
    out
}

/// `{ file: lists/x.txt }`: the networks of that list file (parsed by the caller into
/// `cx.lists`). False (and an error) when the mapping or the file is not right.
pub(crate) fn from_file_entry(
    entries: &[(Node, Node)],
    item: &Node,
    out: &mut Vec<IpNet>,
    cx: &mut Ctx<'_>,
) -> bool {
    let mut file = None;
    for (k, v) in entries {
        match k.as_str() {
            Some("file") => file = Some(v),
            _ => {
                cx.unknown_key(k, "`from` list file", &["file"]);
                return false;
            }
        }
    }
    let Some(v) = file else {
        cx.err(
            item,
            "a `from` mapping needs `file: <path of an address list>`",
        );
        return false;
    };
    let Some(name) = v.as_str().map(str::trim) else {
        cx.err(v, format!("`file` must be a path, found {}", v.type_name()));
        return false;
    };
    if let Err(e) = check_name(name) {
        cx.err(v, e);
        return false;
    }
    match cx.lists.get(name) {
        Some(list) => {
            out.extend(list.nets());
            true
        }
        None => {
            cx.err(
                v,
                format!(
                    "list file `{name}` was not read: the CLI reads every `from: {{ file }}` relative to the site file and sends it with the apply"
                ),
            );
            false
        }
    }
}

/// [`list_references`] of a site or policy file's text; none when it is not valid YAML
/// (loading it reports that).
pub fn references_in(src: &Source) -> BTreeSet<String> {
    crate::yaml::parse(src)
        .map(|root| list_references(&root))
        .unwrap_or_default()
}

fn walk(node: &Node, out: &mut BTreeSet<String>) {
    match &node.kind {
        NodeKind::Seq(items) => items.iter().for_each(|n| walk(n, out)),
        NodeKind::Map(entries) => {
            for (k, v) in entries {
                if k.as_str() == Some("from") {
                    from_files(v, out);
                }
                walk(v, out);
            }
        }
        _ => {}
    }
}

fn from_files(v: &Node, out: &mut BTreeSet<String>) {
    let items: &[Node] = match &v.kind {
        NodeKind::Seq(items) => items,
        _ => std::slice::from_ref(v),
    };
    for item in items {
        if let Some(f) = item.get("file").and_then(Node::as_str) {
            out.insert(f.trim().to_string());
        }
    }
}

#[cfg(test)]
#[path = "addrlist_tests.rs"]
mod tests;
