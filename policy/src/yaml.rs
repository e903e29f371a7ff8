//! A small spanned YAML tree built from `saphyr-parser` events.
//!
//! Every node carries the 1-based line and column where it starts, and scalars keep the
//! text exactly as written (`22`, `"22"` and `yes` are all just text here): typing is done
//! by the callers, explicitly, never by YAML 1.1 magic. Duplicate mapping keys are errors.
//! This module must not interpret the policy or the inventory, and does no I/O.

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

/// Parse one YAML document into a [`Node`] tree.
///
/// An empty text gives a [`NodeKind::Null`] node at 1:1. Syntax errors, more than one
/// document, unknown aliases and duplicate keys are reported with file:line:column.
pub fn parse(src: &Source) -> Result<Node, Diagnostics> {
    let file = src.name.as_str();
    let mut diags = Diagnostics::default();
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: BTreeMap<usize, Node> = BTreeMap::new();
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
        let done: Option<(Node, usize)> = match event {
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
                Some((node, anchor))
            }
            Event::Alias(id) => match anchors.get(&id) {
                Some(n) => Some((n.clone(), 0)),
                None => {
                    diags.push(err_at(&span, "alias to an unknown anchor".into()));
                    return Err(diags.finish());
                }
            },
            Event::SequenceStart(anchor, _) => {
                stack.push(Frame::Seq(
                    Node::new(NodeKind::Null, &span),
                    Vec::new(),
                    anchor,
                ));
                None
            }
            Event::MappingStart(anchor, _) => {
                stack.push(Frame::Map(
                    Node::new(NodeKind::Null, &span),
                    Vec::new(),
                    None,
                    anchor,
                    HashMap::new(),
                ));
                None
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq(mut node, items, anchor)) => {
                    node.kind = NodeKind::Seq(items);
                    Some((node, anchor))
                }
                Some(Frame::Map(mut node, entries, _, anchor, _)) => {
                    node.kind = NodeKind::Map(entries);
                    Some((node, anchor))
                }
                None => None,
            },
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => None,
        };
        let Some((node, anchor)) = done else { continue };
        if anchor != 0 {
            anchors.insert(anchor, node.clone());
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
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Node, Diagnostics> {
        parse(&Source::new("t.yml", text))
    }

    #[test]
    fn spans_and_raw_scalars() {
        let n = p("a: 22\nb: \"22\"\nc: yes\nd:\n  - x\n  - {k: ~}\n").unwrap();
        let a = n.get("a").unwrap();
        assert_eq!(
            (a.as_str(), a.line, a.column, a.quoted),
            (Some("22"), 1, 4, false)
        );
        let b = n.get("b").unwrap();
        assert_eq!(
            (b.as_str(), b.line, b.column, b.quoted),
            (Some("22"), 2, 4, true)
        );
        assert_eq!(n.get("c").unwrap().as_str(), Some("yes"));
        let d = n.get("d").unwrap().as_seq().unwrap();
        assert_eq!((d[0].line, d[0].column), (5, 5));
        assert!(d[1].get("k").unwrap().is_null());
        let (k, _) = &d[1].as_map().unwrap()[0];
        assert_eq!((k.line, k.column), (6, 6));
    }

    #[test]
    fn empty_is_null() {
        assert!(p("").unwrap().is_null());
        assert!(p("# only a comment\n").unwrap().is_null());
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let e = p("a: 1\nb:\n  x: 1\n  x: 2\na: 3\n").unwrap_err();
        assert_eq!(e.len(), 2);
        assert_eq!((e.0[0].line, e.0[0].column), (4, 3));
        assert!(
            e.0[0]
                .message
                .contains("duplicate key `x` (first defined at 3:3)")
        );
        assert_eq!((e.0[1].line, e.0[1].column), (5, 1));
    }

    #[test]
    fn syntax_error_has_location() {
        let e = p("a: [1, 2\nb: 3\n").unwrap_err();
        assert_eq!(e.len(), 1);
        assert!(e.0[0].message.starts_with("YAML syntax error"), "{e}");
        assert_eq!(e.0[0].file, "t.yml");
        assert!(e.0[0].line >= 1);
    }

    #[test]
    fn two_documents_rejected() {
        let e = p("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(e.0[0].line, 2);
    }

    #[test]
    fn anchors_and_aliases() {
        let n = p("a: &x [1, 2]\nb: *x\n").unwrap();
        assert_eq!(n.get("b").unwrap().as_seq().unwrap().len(), 2);
    }
}
