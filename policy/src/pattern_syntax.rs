//! The syntax of Ansible host patterns, as ansible-core 2.19 reads it: splitting a pattern
//! into terms (`split_host_pattern`), recognising a subscript (`web[0]`, `web[1:2]`,
//! `web[-1]`, `web[2:]`), and translating fnmatch globs (`*`, `?`, `[a-c]`, `[!a]`) to
//! regexes. Pure text functions: this module knows nothing of inventories.

use regex::Regex;
use std::sync::LazyLock;

/// Bytes of compiled program one regex may use (a 4 KiB pattern needs far less).
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

const ALNUM_RANGE: &str = r"\[(?:[a-z]:[a-z]|[0-9]+:[0-9]+)(?::[0-9]+)?\]";
const NUM_RANGE: &str = r"\[(?:[0-9]+:[0-9]+)(?::[0-9]+)?\]";
const HEX_RANGE: &str = r"\[(?:[0-9a-f]+:[0-9a-f]+)(?::[0-9]+)?\]";

fn compile(re: &str) -> Option<Regex> {
    regex::RegexBuilder::new(re)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .ok()
}

struct Address {
    bracketed_hostport: Option<Regex>,
    hostport: Option<Regex>,
    ipv4: Option<Regex>,
    ipv6: Option<Regex>,
    hostname: Option<Regex>,
}

/// Ansible's `parse_address` regexes (ansible/parsing/utils/addresses.py). The label's
/// look-behind `(?<![_-])` is written as "ends with a letter, digit or range".
static ADDRESS: LazyLock<Address> = LazyLock::new(|| {
    let i4 = format!("(?:[01]?[0-9]{{1,2}}|2[0-4][0-9]|25[0-5]|{NUM_RANGE})");
    let c = format!("(?:[0-9a-f]{{1,4}}|{HEX_RANGE})");
    let ipv6 = [
        format!("(?:{c}:){{7}}{c}"),
        format!("(?:{c}:){{1,6}}:"),
        format!("(?:{c}:)(?::{c}){{1,6}}"),
        format!("(?:{c}:){{2}}(?::{c}){{1,5}}"),
        format!("(?:{c}:){{3}}(?::{c}){{1,4}}"),
        format!("(?:{c}:){{4}}(?::{c}){{1,3}}"),
        format!("(?:{c}:){{5}}(?::{c}){{1,2}}"),
        format!("(?:{c}:){{6}}(?::{c})"),
        format!(":(?::{c}){{1,6}}"),
        format!("{c}?::"),
        format!("(?:0:){{6}}(?:{c}\\.){{3}}{c}"),
        format!("::(?:ffff:)?(?:{c}\\.){{3}}{c}"),
        format!("(?:0:){{5}}ffff:(?:{c}\\.){{3}}{c}"),
    ]
    .join("|");
    let label =
        format!("(?:(?:\\w|{ALNUM_RANGE})(?:[\\w-]|{ALNUM_RANGE})*)?(?:[^\\W_]|{ALNUM_RANGE})");
    Address {
        bracketed_hostport: compile(r"^\[(.+)\]:([0-9]+)$"),
        hostport: compile(r"^((?:[^:\[\]]|\[[^\]]*\])*):([0-9]+)$"),
        ipv4: compile(&format!("(?i)^(?:{i4}\\.){{3}}{i4}$")),
        ipv6: compile(&format!("(?i)^(?:{ipv6})$")),
        hostname: compile(&format!("(?i)^{label}(?:\\.{label})*$")),
    }
});

static TERMS: LazyLock<Option<Regex>> = LazyLock::new(|| compile(r"(?:[^\s:\[\]]|\[[^\]]*\])+"));

static SUBSCRIPT: LazyLock<Option<Regex>> =
    LazyLock::new(|| compile(r"(?s)^(.+)\[(?:(-?[0-9]+)|([0-9]+)([:-])([0-9]*))\]$"));

/// Whether `text` is a host address as Ansible's `parse_address(allow_ranges=True)` sees
/// it: a host name (ranges allowed), IPv4 or IPv6 address, with an optional `:port`.
pub fn is_address(text: &str) -> bool {
    let a = &*ADDRESS;
    let mut host = text;
    for re in [&a.bracketed_hostport, &a.hostport].into_iter().flatten() {
        if let Some(c) = re.captures(host)
            && let Some(m) = c.get(1)
        {
            host = m.as_str();
        }
    }
    [&a.ipv4, &a.ipv6, &a.hostname]
        .into_iter()
        .flatten()
        .any(|re| re.is_match(host))
}

/// Ansible's `split_host_pattern`: on `,` if there is one; else the whole pattern if it is
/// one address (IPv6, `host:port`, `web[1:3]`); else on `:` and whitespace, keeping
/// bracketed expressions whole. Terms are trimmed; empty terms are dropped.
pub fn split(pattern: &str) -> Vec<String> {
    let parts: Vec<&str> = if pattern.contains(',') {
        pattern.split(',').collect()
    } else if is_address(pattern) {
        vec![pattern]
    } else if let Some(re) = &*TERMS {
        re.find_iter(pattern).map(|m| m.as_str()).collect()
    } else {
        pattern.split(':').collect()
    };
    parts
        .into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// A subscript: one index (may be negative) or an inclusive range whose end `None` means
/// "to the last host".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscript {
    Index(i64),
    Range(usize, Option<usize>),
}

/// Ansible's `_split_subscript`: `expr[N]`, `expr[-N]`, `expr[A:B]`, `expr[A:]` (and the
/// removed `expr[A-B]`, still read as a range). Regexes (`~`) never have one; `web[:3]`
/// is not a subscript (the start is required), so it stays an fnmatch class.
pub fn split_subscript(term: &str) -> (&str, Option<Subscript>) {
    if term.starts_with('~') {
        return (term, None);
    }
    let Some(c) = SUBSCRIPT.as_ref().and_then(|re| re.captures(term)) else {
        return (term, None);
    };
    let expr = c.get(1).map_or(term, |m| m.as_str());
    if let Some(idx) = c.get(2) {
        return match idx.as_str().parse() {
            Ok(i) => (expr, Some(Subscript::Index(i))),
            Err(_) => (term, None),
        };
    }
    let start = c.get(3).and_then(|m| m.as_str().parse().ok());
    let end = c.get(5).map(|m| m.as_str()).unwrap_or("");
    match (start, end) {
        (Some(s), "") => (expr, Some(Subscript::Range(s, None))),
        (Some(s), e) => match e.parse::<usize>() {
            Ok(e) => (expr, Some(Subscript::Range(s, Some(e)))),
            Err(_) => (term, None),
        },
        _ => (term, None),
    }
}

/// Python's `fnmatch.translate` as a Rust regex: `*` any run, `?` one character, `[..]` a
/// class (`!` negates, a leading `]` is literal, reversed ranges match nothing, an
/// unclosed `[` is literal). Anchored at both ends, `.` matches newlines.
pub fn fnmatch_regex(pat: &str) -> String {
    let chars: Vec<char> = pat.chars().collect();
    let mut out = String::from("(?s)^");
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' => {
                out.push_str(".*");
                while chars.get(i) == Some(&'*') {
                    i += 1;
                }
            }
            '?' => out.push('.'),
            '[' => {
                let mut j = i;
                if chars.get(j) == Some(&'!') {
                    j += 1;
                }
                if chars.get(j) == Some(&']') {
                    j += 1;
                }
                while j < chars.len() && chars[j] != ']' {
                    j += 1;
                }
                if j >= chars.len() {
                    out.push_str(r"\[");
                } else {
                    out.push_str(&class(&chars[i..j]));
                    i = j + 1;
                }
            }
            c => out.push_str(&regex::escape(&c.to_string())),
        }
    }
    out.push('$');
    out
}

/// One fnmatch class body (between `[` and `]`) as a regex.
fn class(body: &[char]) -> String {
    let (negate, body) = match body.first() {
        Some('!') => (true, &body[1..]),
        _ => (false, body),
    };
    let mut ranges: Vec<(char, char)> = Vec::new();
    let mut k = 0;
    while k < body.len() {
        if k + 2 < body.len() && body[k + 1] == '-' {
            ranges.push((body[k], body[k + 2]));
            k += 3;
        } else {
            ranges.push((body[k], body[k]));
            k += 1;
        }
    }
    ranges.retain(|(lo, hi)| lo <= hi);
    if ranges.is_empty() {
        // `[]`-like empty class never matches; `[!]` matches any one character.
        return if negate {
            ".".into()
        } else {
            "[^\\s\\S]".into()
        };
    }
    let mut s = String::from(if negate { "[^" } else { "[" });
    for (lo, hi) in ranges {
        s.push_str(&format!("\\x{{{:x}}}", lo as u32));
        if hi != lo {
            s.push_str(&format!("-\\x{{{:x}}}", hi as u32));
        }
    }
    s.push(']');
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn splitting_like_ansible() {
        assert_eq!(split("prod:!staging"), ["prod", "!staging"]);
        assert_eq!(split("a, b ,,c"), ["a", "b", "c"]);
        assert_eq!(split("web[1:2]"), ["web[1:2]"]);
        assert_eq!(split("web[1:2]:db"), ["web[1:2]", "db"]);
        assert_eq!(split("fe80::1"), ["fe80::1"]);
        assert_eq!(split("web:22"), ["web:22"]);
        assert_eq!(split("a b:c"), ["a", "b", "c"]);
        assert_eq!(split("mail:"), ["mail"]);
        // With a comma, `:` no longer separates.
        assert_eq!(split("a,b:!c"), ["a", "b:!c"]);
    }

    #[test]
    fn subscripts() {
        assert_eq!(
            split_subscript("web[0]"),
            ("web", Some(Subscript::Index(0)))
        );
        assert_eq!(
            split_subscript("web[-1]"),
            ("web", Some(Subscript::Index(-1)))
        );
        assert_eq!(
            split_subscript("web[1:2]"),
            ("web", Some(Subscript::Range(1, Some(2))))
        );
        assert_eq!(
            split_subscript("web[2:]"),
            ("web", Some(Subscript::Range(2, None)))
        );
        assert_eq!(split_subscript("web[:3]"), ("web[:3]", None));
        assert_eq!(split_subscript("~web[0]"), ("~web[0]", None));
        assert_eq!(split_subscript("db-[ab]"), ("db-[ab]", None));
    }

    #[test]
    fn fnmatch_classes() {
        let m = |p: &str, t: &str| Regex::new(&fnmatch_regex(p)).unwrap().is_match(t);
        assert!(m("web0[1-2]*", "web01.x") && !m("web0[1-2]*", "web03"));
        assert!(m("db-[!a]", "db-b") && !m("db-[!a]", "db-a"));
        assert!(m("a[]]b", "a]b") && m("x[", "x[") && !m("[z-a]", "z"));
        assert!(m("*.example", "a.example") && !m("*.example", "a.examples"));
        assert!(m("a.b", "a.b") && !m("a.b", "aXb") && m("h?", "h1"));
    }
}
