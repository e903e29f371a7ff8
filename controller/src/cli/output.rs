//! Output helpers for the CLI: aligned tables, times, JSON.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Print rows as a left-aligned table with a header; the last column is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
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
}
