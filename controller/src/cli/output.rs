//! Output helpers for the CLI: aligned tables, times, JSON, and terminal safety.
//!
//! Terminal safety: much of what the CLI prints comes from agents (errors, diffs, notes,
//! versions, host names, denial prefixes), and any agent may be hostile. Human output goes
//! through [`term`] / [`term_lines`] (directly, through [`table`], or through the
//! [`out!`](crate::out) / [`outln!`](crate::outln) / [`eoutln!`](crate::eoutln) macros), which
//! show control characters (C0, DEL, C1: every ANSI/OSC escape starts with ESC or CSI) and
//! bidirectional overrides escaped as `\u{1b}`. JSON output is escaped by serde instead.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Whether `c` must not reach a terminal raw (with `keep_newline`, `\n` may).
fn unsafe_char(c: char, keep_newline: bool) -> bool {
    (c.is_control() && !(keep_newline && c == '\n'))
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn escape(s: &str, keep_newline: bool) -> Cow<'_, str> {
    if !s.chars().any(|c| unsafe_char(c, keep_newline)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c, keep_newline) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// One line of untrusted text made safe for a terminal: every control character, line
/// breaks and tabs included, and every bidi override is shown escaped (`\u{1b}`).
pub fn term(s: &str) -> Cow<'_, str> {
    escape(s, false)
}

/// Like [`term`] but keeps line breaks (multi-line diffs and reports).
pub fn term_lines(s: &str) -> Cow<'_, str> {
    escape(s, true)
}

/// `print!` through [`term_lines`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        print!("{}", $crate::cli::output::term_lines(&format!($($arg)*)))
    };
}

/// `println!` through [`term_lines`].
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        println!("{}", $crate::cli::output::term_lines(&format!($($arg)*)))
    };
}

/// `eprintln!` through [`term_lines`].
#[macro_export]
macro_rules! eoutln {
    ($($arg:tt)*) => {
        eprintln!("{}", $crate::cli::output::term_lines(&format!($($arg)*)))
    };
}

/// Print rows as a left-aligned table with a header; the last column is not padded. Cells
/// are passed through [`term`] (one line each, no terminal escapes).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| term(c).into_owned()).collect())
        .collect();
    let rows = &rows;
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                out.push_str(c);
            } else {
                out.push_str(c);
                let pad = widths[i].saturating_sub(c.chars().count()) + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// RFC 3339 (seconds) for a Unix time in ms; "never" for 0.
pub fn time_ms(ms: i64) -> String {
    if ms <= 0 {
        return "never".into();
    }
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// "3s ago" style age for a Unix time in ms; "never" for 0.
pub fn ago_ms(ms: i64) -> String {
    if ms <= 0 {
        return "never".into();
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let age = now.saturating_sub(u128::try_from(ms).unwrap_or(0));
    let secs = u64::try_from(age / 1000).unwrap_or(u64::MAX);
    format!(
        "{} ago",
        humantime::format_duration(Duration::from_secs(secs))
    )
}

/// First 12 hex digits of a hash, "-" if empty.
pub fn short_hash(h: &str) -> String {
    if h.is_empty() {
        "-".into()
    } else {
        h.chars().take(12).collect()
    }
}

pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["HOST", "STATE"],
            &[
                vec!["h1".into(), "ok".into()],
                vec!["host-2".into(), "x".into()],
            ],
        );
        assert_eq!(t, "HOST    STATE\nh1      ok\nhost-2  x\n");
    }

    #[test]
    fn untrusted_text_cannot_reach_the_terminal_raw() {
        // Colour, cursor up + erase line, an OSC title, a C1 CSI, a bidi override.
        let evil = "ok\x1b[31mred\x1b[1A\x1b[2K\x1b]0;pwned\x07\u{9b}2J\u{202e}txt";
        let safe = term(evil);
        assert!(
            !safe.chars().any(|c| c.is_control() || c == '\u{202e}'),
            "{safe}"
        );
        assert_eq!(
            safe,
            "ok\\u{1b}[31mred\\u{1b}[1A\\u{1b}[2K\\u{1b}]0;pwned\\u{7}\\u{9b}2J\\u{202e}txt"
        );
        assert_eq!(term("a\nb\tc"), "a\\u{a}b\\u{9}c");
        assert_eq!(term_lines("a\nb\x1b"), "a\nb\\u{1b}");
        assert!(matches!(term("plain host-1 ünïcode"), Cow::Borrowed(_)));
        let t = table(
            &["HOST", "ERROR"],
            &[vec!["h1\x1b[2J".into(), "x\ny".into()]],
        );
        assert_eq!(t, "HOST         ERROR\nh1\\u{1b}[2J  x\\u{a}y\n");
    }
}
