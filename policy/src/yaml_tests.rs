//! Unit tests of the spanned YAML loader and its budgets.
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

/// `&a1 [*a0, *a0, ...]` nested `levels` deep with `width` aliases a level.
fn alias_bomb(levels: usize, width: usize) -> String {
    let mut s = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for l in 1..=levels {
        let refs = vec![format!("*a{}", l - 1); width].join(", ");
        s.push_str(&format!("a{l}: &a{l} [{refs}]\n"));
    }
    s
}

#[test]
fn alias_bomb_is_refused_with_one_error() {
    let text = alias_bomb(6, 20);
    assert!(text.len() < 1000, "{}", text.len());
    let e = p(&text).unwrap_err();
    assert_eq!(e.len(), 1, "{e}");
    let limit = crate::budget::MAX_ALIAS_EXPANSIONS;
    assert_eq!(
        e.0[0].message,
        format!("too many alias expansions (limit {limit})")
    );
    // Located at the alias that crossed the limit: on `a4` (each `*a3` copies 88,421
    // nodes; the whole file would expand to 700 million).
    assert_eq!(e.0[0].line, 5, "{e}");
    assert!(e.to_string().starts_with("t.yml:5:"), "{e}");
}

#[test]
fn aliases_within_budget_are_expanded() {
    // A copied sequence counts its own node and its items: `a0` is 11 nodes, `a1` 34.
    let budget = Budget {
        max_alias_expansions: 11 * 3 + (11 * 3 + 1) * 3,
        ..Budget::default()
    };
    let n = parse_with(&Source::new("t.yml", alias_bomb(2, 3)), &budget).unwrap();
    assert_eq!(n.get("a2").unwrap().as_seq().unwrap().len(), 3);
    let tight = Budget {
        max_alias_expansions: 11 * 3 + (11 * 3 + 1) * 3 - 1,
        ..budget
    };
    let e = parse_with(&Source::new("t.yml", alias_bomb(2, 3)), &tight).unwrap_err();
    assert_eq!(e.len(), 1, "{e}");
}

#[test]
fn depth_nodes_and_size_are_bounded() {
    let deep = format!("{}x{}", "[".repeat(65), "]".repeat(65));
    let e = p(&deep).unwrap_err();
    assert_eq!(e.len(), 1, "{e}");
    assert_eq!(e.0[0].message, "nesting too deep (limit 64)");
    assert_eq!((e.0[0].line, e.0[0].column), (1, 65));
    assert!(p(&format!("{}x{}", "[".repeat(64), "]".repeat(64))).is_ok());

    let small = Budget {
        max_nodes: 5,
        max_document_bytes: 40,
        ..Budget::default()
    };
    let e = parse_with(&Source::new("t.yml", "[a, b, c, d, e]"), &small).unwrap_err();
    assert_eq!(e.0[0].message, "too many YAML nodes (limit 5)");
    assert!(parse_with(&Source::new("t.yml", "[a, b, c, d]"), &small).is_ok());
    let e = parse_with(&Source::new("t.yml", "#".repeat(41)), &small).unwrap_err();
    assert_eq!(e.len(), 1);
    assert_eq!(e.0[0].message, "document too large: 41 bytes (limit 40)");
}
