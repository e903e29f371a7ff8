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
use crate::model::HostPolicy;
use crate::parse::{Ctx, parse_cidr};
use crate::yaml::{Node, NodeKind};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

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
/// clear (a bare address is a /32 or /128). Serialized compactly (see [`AddrList::pack`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "Packed", try_from = "Packed")]
pub struct AddrList {
    pub v4: Vec<(u32, u8)>,
    pub v6: Vec<(u128, u8)>,
}

/// A sample, not every entry: policies are hash-map keys (one compile per distinct
/// policy), and hashing a million entries per lookup would cost more than the rest of an
/// apply. Equal lists hash equal; `==` still compares every entry.
impl std::hash::Hash for AddrList {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        fn sample<T: std::hash::Hash>(v: &[T], state: &mut impl std::hash::Hasher) {
            v.len().hash(state);
            let step = (v.len() / 64).max(1);
            v.iter().step_by(step).for_each(|e| e.hash(state));
            v.last().hash(state);
        }
        sample(&self.v4, state);
        sample(&self.v6, state);
    }
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

/// Bytes of one packed v4 entry: the address (big-endian) and the prefix length.
pub const PACKED_V4: usize = 5;
/// Bytes of one packed v6 entry.
pub const PACKED_V6: usize = 17;

/// The serialized form of an [`AddrList`]: the packed entries, base64 (a 1M-entry list is
/// a few MB of JSON, parsed in milliseconds, not a million strings).
#[derive(Serialize, Deserialize)]
struct Packed {
    #[serde(default)]
    v4: String,
    #[serde(default)]
    v6: String,
}

impl From<AddrList> for Packed {
    fn from(l: AddrList) -> Self {
        use base64::Engine as _;
        let (v4, v6) = l.pack();
        let b = base64::engine::general_purpose::STANDARD;
        Packed {
            v4: b.encode(v4),
            v6: b.encode(v6),
        }
    }
}

impl TryFrom<Packed> for AddrList {
    type Error = String;
    fn try_from(p: Packed) -> Result<Self, String> {
        use base64::Engine as _;
        let b = base64::engine::general_purpose::STANDARD;
        let v4 = b
            .decode(p.v4)
            .map_err(|e| format!("address list v4: {e}"))?;
        let v6 = b
            .decode(p.v6)
            .map_err(|e| format!("address list v6: {e}"))?;
        AddrList::unpack(&v4, &v6)
    }
}

impl AddrList {
    /// A list from networks in any order (sorted, de-duplicated, host bits cleared).
    pub fn from_nets(nets: impl IntoIterator<Item = IpNet>) -> Self {
        let mut l = AddrList::default();
        for n in nets {
            match n.trunc() {
                IpNet::V4(n) => l.v4.push((u32::from(n.network()), n.prefix_len())),
                IpNet::V6(n) => l.v6.push((u128::from(n.network()), n.prefix_len())),
            }
        }
        l.v4.sort_unstable();
        l.v4.dedup();
        l.v6.sort_unstable();
        l.v6.dedup();
        l
    }

    /// The entries packed: v4 as [`PACKED_V4`] bytes each (address big-endian, prefix
    /// length), v6 as [`PACKED_V6`] bytes each; in list order.
    pub fn pack(&self) -> (Vec<u8>, Vec<u8>) {
        let mut v4 = Vec::with_capacity(self.v4.len() * PACKED_V4);
        for &(a, p) in &self.v4 {
            v4.extend_from_slice(&a.to_be_bytes());
            v4.push(p);
        }
        let mut v6 = Vec::with_capacity(self.v6.len() * PACKED_V6);
        for &(a, p) in &self.v6 {
            v6.extend_from_slice(&a.to_be_bytes());
            v6.push(p);
        }
        (v4, v6)
    }

    /// Inverse of [`AddrList::pack`], for bytes from a peer or a file: refused unless
    /// every entry is a valid prefix with its host bits clear, in strictly ascending
    /// order (the one canonical form), and within [`MAX_LIST_ENTRIES`].
    pub fn unpack(v4: &[u8], v6: &[u8]) -> Result<AddrList, String> {
        if !v4.len().is_multiple_of(PACKED_V4) || !v6.len().is_multiple_of(PACKED_V6) {
            return Err("packed address list has a partial entry".into());
        }
        let n = v4.len() / PACKED_V4 + v6.len() / PACKED_V6;
        if n > MAX_LIST_ENTRIES {
            return Err(format!(
                "address list has {n} entries, more than {MAX_LIST_ENTRIES}"
            ));
        }
        let mut l = AddrList {
            v4: Vec::with_capacity(v4.len() / PACKED_V4),
            v6: Vec::with_capacity(v6.len() / PACKED_V6),
        };
        for c in v4.chunks_exact(PACKED_V4) {
            let a = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
            let p = c[4];
            let ok = p <= 32 && (p == 32 || a & (u32::MAX >> p) == 0);
            if !ok || l.v4.last().is_some_and(|&last| last >= (a, p)) {
                return Err(format!(
                    "packed address list: bad or unordered v4 entry {}/{p}",
                    std::net::Ipv4Addr::from(a)
                ));
            }
            l.v4.push((a, p));
        }
        for c in v6.chunks_exact(PACKED_V6) {
            let mut b = [0u8; 16];
            b.copy_from_slice(&c[..16]);
            let a = u128::from_be_bytes(b);
            let p = c[16];
            let ok = p <= 128 && (p == 128 || a & (u128::MAX >> p) == 0);
            if !ok || l.v6.last().is_some_and(|&last| last >= (a, p)) {
                return Err(format!(
                    "packed address list: bad or unordered v6 entry {}/{p}",
                    std::net::Ipv6Addr::from(a)
                ));
            }
            l.v6.push((a, p));
        }
        Ok(l)
    }

    /// SHA-256 (hex) of the packed form: what a delta names as its base and result.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update((self.v4.len() as u64).to_be_bytes());
        for &(a, p) in &self.v4 {
            h.update(a.to_be_bytes());
            h.update([p]);
        }
        for &(a, p) in &self.v6 {
            h.update(a.to_be_bytes());
            h.update([p]);
        }
        hex::encode(h.finalize())
    }

    /// What `self -> new` adds and removes (both sorted): `(added, removed)`.
    pub fn diff(&self, new: &AddrList) -> (AddrList, AddrList) {
        let (a4, r4) = sorted_diff(&self.v4, &new.v4);
        let (a6, r6) = sorted_diff(&self.v6, &new.v6);
        (AddrList { v4: a4, v6: a6 }, AddrList { v4: r4, v6: r6 })
    }

    /// This list with `added` put in and `removed` taken out. Refused when `removed`
    /// holds an entry the list does not or `added` one it already holds: a delta against
    /// another base.
    pub fn apply_delta(&self, added: &AddrList, removed: &AddrList) -> Result<AddrList, String> {
        let v4 = sorted_apply(&self.v4, &added.v4, &removed.v4)
            .ok_or("the v4 delta does not fit this list")?;
        let v6 = sorted_apply(&self.v6, &added.v6, &removed.v6)
            .ok_or("the v6 delta does not fit this list")?;
        Ok(AddrList { v4, v6 })
    }
}

/// `(in new, not old; in old, not new)` of two sorted, de-duplicated vectors.
fn sorted_diff<T: Ord + Copy>(old: &[T], new: &[T]) -> (Vec<T>, Vec<T>) {
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < old.len() && j < new.len() {
        match old[i].cmp(&new[j]) {
            std::cmp::Ordering::Less => {
                removed.push(old[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                added.push(new[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                i += 1;
                j += 1;
            }
        }
    }
    removed.extend_from_slice(&old[i..]);
    added.extend_from_slice(&new[j..]);
    (added, removed)
}

/// `base + added - removed` (all sorted, de-duplicated); `None` when `added` meets `base`
/// or `removed` is not all in `base`.
fn sorted_apply<T: Ord + Copy>(base: &[T], added: &[T], removed: &[T]) -> Option<Vec<T>> {
    let mut out = Vec::with_capacity(base.len() + added.len());
    let (mut a, mut r) = (0, 0);
    for &x in base {
        while a < added.len() && added[a] < x {
            out.push(added[a]);
            a += 1;
        }
        if a < added.len() && added[a] == x {
            return None;
        }
        if r < removed.len() && removed[r] == x {
            r += 1;
            continue;
        }
        if r < removed.len() && removed[r] < x {
            return None;
        }
        out.push(x);
    }
    out.extend_from_slice(&added[a..]);
    (r == removed.len()).then_some(out)
}

/// Every list file of one apply, by the name the site file uses for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddrLists(BTreeMap<String, Arc<AddrList>>);

/// No list files (what a site without `file:` entries gets).
pub static NO_LISTS: AddrLists = AddrLists(BTreeMap::new());

impl AddrLists {
    pub fn get(&self, name: &str) -> Option<&Arc<AddrList>> {
        self.0.get(name)
    }

    /// Lists already parsed (a stored revision's, or a policy's), by name.
    pub fn from_map(lists: BTreeMap<String, Arc<AddrList>>) -> Self {
        AddrLists(lists)
    }

    /// Give `policy` the content of every list its entries name (and only those).
    pub fn attach(&self, policy: &mut HostPolicy) {
        let names = policy
            .allow
            .iter()
            .flat_map(|a| &a.lists)
            .chain(policy.deny.iter().flat_map(|d| &d.lists));
        policy.lists = names
            .filter_map(|n| Some((n.clone(), self.0.get(n)?.clone())))
            .collect();
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
                    out.insert(src.name.clone(), Arc::new(l));
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

/// `{ file: lists/x.txt }`: the name of that list file (parsed by the caller into
/// `cx.lists`), pushed to `out`. False (and an error) when the mapping or the file is not
/// right.
pub(crate) fn from_file_entry(
    entries: &[(Node, Node)],
    item: &Node,
    out: &mut Vec<String>,
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
        Some(_) => {
            out.push(name.to_string());
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
