//! A small spanned YAML tree built from `saphyr-parser` events.
//!
//! Every node carries the 1-based line and column where it starts, and scalars keep the
//! text exactly as written (`22`, `"22"` and `yes` are all just text here): typing is done
//! by the callers, explicitly, never by YAML 1.1 magic. Duplicate mapping keys are errors.
//! The [`Budget`] (document size, nesting depth, nodes, alias expansions) is enforced event
//! by event, before an alias is copied, so an alias bomb costs nothing but one error.
//! This module must not interpret the policy or the inventory, and does no I/O.

use crate::budget::Budget;
use crate::diag::{Diagnostic, Diagnostics, Source};
use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use std::collections::{BTreeMap, HashMap};

/// What a node holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// A scalar as written (quotes removed, escapes resolved).
    Scalar(String),
    Seq(Vec<Node>),
    /// Entries in document order; keys are unique (checked by [`parse`]).
    Map(Vec<(Node, Node)>),
    /// An empty value, `~` or `null` written plainly.
    Null,
}

/// A YAML node with the position (1-based line and column) of its first character.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: NodeKind,
    pub line: usize,
    pub column: usize,
    /// The scalar was written quoted (`"22"`, `'x'`) or as a block scalar.
    pub quoted: bool,
}

impl Node {
    fn new(kind: NodeKind, span: &Span) -> Self {
        Self {
            kind,
            line: span.start.line(),
            column: span.start.col() + 1,
            quoted: false,
        }
    }

    /// The scalar text, if this is a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.kind {
            NodeKind::Seq(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.kind {
            NodeKind::Map(v) => Some(v),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.kind, NodeKind::Null)
    }

    /// The value of key `key` in a mapping (keys are unique).
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// A short name of the node's type, for "expected X, found Y" messages.
    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            NodeKind::Scalar(_) => "a scalar",
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a mapping",
            NodeKind::Null => "nothing (null)",
        }
    }

    /// A diagnostic located at this node.
    pub fn diag(&self, file: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: file.to_string(),
            line: self.line,
            column: self.column,
            message: message.into(),
        }
    }
}

enum Frame {
    Seq(Node, Vec<Node>, usize),
    /// The mapping node, its entries, a key waiting for its value, its anchor, and the
    /// entry index of each scalar/null key (duplicate detection in O(1): inventories
    /// have mappings of thousands of hosts).
    Map(
        Node,
        Vec<(Node, Node)>,
        Option<Node>,
        usize,
        HashMap<Option<String>, usize>,
    ),
}

/// Parse one YAML document into a [`Node`] tree within the default [`Budget`].
///
/// An empty text gives a [`NodeKind::Null`] node at 1:1. Syntax errors, more than one
/// document, unknown aliases and duplicate keys are reported with file:line:column.
pub fn parse(src: &Source) -> Result<Node, Diagnostics> {
    parse_with(src, &Budget::default())
}

/// [`parse`] within `budget`. Exceeding a limit stops the parse with exactly one error,
/// located where the limit was crossed.
pub fn parse_with(src: &Source, budget: &Budget) -> Result<Node, Diagnostics> {
    let file = src.name.as_str();
    let mut diags = Diagnostics::default();
    if src.text.len() > budget.max_document_bytes {
        diags.push(Diagnostic {
            file: file.to_string(),
            line: 1,
            column: 1,
            message: format!(
                "document too large: {} bytes (limit {})",
                src.text.len(),
                budget.max_document_bytes
            ),
        });
        return Err(diags);
    }
    let mut stack: Vec<Frame> = Vec::new();
    // Nodes in each open collection so far (parallel to `stack`), for anchor sizes.
    let mut sizes: Vec<usize> = Vec::new();
    // Each anchored node and its size in nodes (what one alias to it copies).
    let mut anchors: BTreeMap<usize, (Node, usize)> = BTreeMap::new();
    let mut nodes = 0usize;
    let mut expanded = 0usize;
    let mut root: Option<Node> = None;
    let mut documents = 0usize;
    let err_at = |span: &Span, msg: String| Diagnostic {
        file: file.to_string(),
        line: span.start.line(),
        column: span.start.col() + 1,
        message: msg,
    };

    for item in Parser::new_from_str(&src.text) {
        let (event, span) = match item {
            Ok(x) => x,
            Err(e) => {
                let m = e.marker();
                diags.push(Diagnostic {
                    file: file.to_string(),
                    line: m.line(),
                    column: m.col() + 1,
                    message: format!("YAML syntax error: {}", e.info()),
                });
                return Err(diags.finish());
            }
        };
        let over = |what: &str, limit: usize| {
            let mut d = Diagnostics::default();
            d.push(err_at(&span, format!("{what} (limit {limit})")));
            Err(d)
        };
        if matches!(
            event,
            Event::Scalar(..) | Event::SequenceStart(..) | Event::MappingStart(..)
        ) {
            nodes = nodes.saturating_add(1);
            if nodes > budget.max_nodes {
                return over("too many YAML nodes", budget.max_nodes);
            }
        }
        let done: Option<(Node, usize, usize)> = match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    diags.push(err_at(
                        &span,
                        "more than one YAML document (`---`) in this file; expected exactly one"
                            .into(),
                    ));
                    return Err(diags.finish());
                }
                None
            }
            Event::Scalar(text, style, anchor, _tag) => {
                let plain = style == ScalarStyle::Plain;
                let kind = if plain && matches!(&*text, "" | "~" | "null" | "Null" | "NULL") {
                    NodeKind::Null
                } else {
                    NodeKind::Scalar(text.into_owned())
                };
                let mut node = Node::new(kind, &span);
                node.quoted = !plain;
                Some((node, anchor, 1))
            }
            Event::Alias(id) => match anchors.get(&id) {
                Some((n, size)) => {
                    expanded = expanded.saturating_add(*size);
                    if expanded > budget.max_alias_expansions {
                        return over("too many alias expansions", budget.max_alias_expansions);
                    }
                    nodes = nodes.saturating_add(*size);
                    if nodes > budget.max_nodes {
                        return over("too many YAML nodes", budget.max_nodes);
                    }
                    Some((n.clone(), 0, *size))
                }
                None => {
                    diags.push(err_at(&span, "alias to an unknown anchor".into()));
                    return Err(diags.finish());
                }
            },
            Event::SequenceStart(anchor, _) => {
                if stack.len() >= budget.max_depth {
                    return over("nesting too deep", budget.max_depth);
                }
                sizes.push(0);
                stack.push(Frame::Seq(
                    Node::new(NodeKind::Null, &span),
                    Vec::new(),
                    anchor,
                ));
                None
            }
            Event::MappingStart(anchor, _) => {
                if stack.len() >= budget.max_depth {
                    return over("nesting too deep", budget.max_depth);
                }
                sizes.push(0);
                stack.push(Frame::Map(
                    Node::new(NodeKind::Null, &span),
                    Vec::new(),
                    None,
                    anchor,
                    HashMap::new(),
                ));
                None
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let size = sizes.pop().unwrap_or(0).saturating_add(1);
                match stack.pop() {
                    Some(Frame::Seq(mut node, items, anchor)) => {
                        node.kind = NodeKind::Seq(items);
                        Some((node, anchor, size))
                    }
                    Some(Frame::Map(mut node, entries, _, anchor, _)) => {
                        node.kind = NodeKind::Map(entries);
                        Some((node, anchor, size))
                    }
                    None => None,
                }
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => None,
        };
        let Some((node, anchor, size)) = done else {
            continue;
        };
        if let Some(open) = sizes.last_mut() {
            *open = open.saturating_add(size);
        }
        if anchor != 0 {
            anchors.insert(anchor, (node.clone(), size));
        }
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame::Seq(_, items, _)) => items.push(node),
            Some(Frame::Map(_, entries, pending, _, index)) => match pending.take() {
                None => *pending = Some(node),
                Some(key) => {
                    let id = match &key.kind {
                        NodeKind::Scalar(s) => Some(Some(s.clone())),
                        NodeKind::Null => Some(None),
                        _ => None,
                    };
                    let first = id.and_then(|id| match index.entry(id) {
                        std::collections::hash_map::Entry::Occupied(o) => entries.get(*o.get()),
                        std::collections::hash_map::Entry::Vacant(v) => {
                            v.insert(entries.len());
                            None
                        }
                    });
                    if let Some((first, _)) = first {
                        diags.push(key.diag(
                            file,
                            format!(
                                "duplicate key `{}` (first defined at {}:{})",
                                key_text(&key),
                                first.line,
                                first.column
                            ),
                        ));
                    }
                    entries.push((key, node));
                }
            },
        }
    }
    if !diags.is_empty() {
        return Err(diags.finish());
    }
    Ok(root.unwrap_or(Node {
        kind: NodeKind::Null,
        line: 1,
        column: 1,
        quoted: false,
    }))
}

fn key_text(n: &Node) -> String {
    match &n.kind {
        NodeKind::Scalar(s) => s.clone(),
        NodeKind::Null => "null".into(),
        _ => n.type_name().into(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "yaml_tests.rs"]
mod tests;
