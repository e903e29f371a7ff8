//! Ansible host ranges in inventory host names: `web[01:20]` (zero padding kept), `db-[a:f]`
//! (letters), `web[01:20:5]` (a step), `[:9]` (start 0), several ranges multiply; and the
//! `host:port` suffix (`h1:2222` sets `ansible_port`). The number of names is computed
//! before any is built, against the host-listing budget. Pure text functions.

/// Why a host key could not be expanded (the message names the host and the rule).
#[derive(Debug)]
pub(crate) enum RangeError {
    Malformed(String),
    OverBudget(String),
}

const LETTERS: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

enum Seq {
    Num {
        start: u64,
        end: u64,
        step: u64,
        width: usize,
    },
    Alpha {
        start: usize,
        end: usize,
        step: usize,
    },
}

impl Seq {
    fn len(&self) -> usize {
        match *self {
            Seq::Num {
                start, end, step, ..
            } => usize::try_from((end - start) / step + 1).unwrap_or(usize::MAX),
            Seq::Alpha { start, end, step } => (end - start) / step + 1,
        }
    }

    fn item(&self, i: usize) -> String {
        match *self {
            Seq::Num {
                start, step, width, ..
            } => format!("{:0width$}", start + step * i as u64),
            Seq::Alpha { start, step, .. } => {
                let k = start + step * i;
                LETTERS[k..=k].to_string()
            }
        }
    }
}

/// Split `name:port` (also `[v6]:port`) as Ansible's `parse_address` does.
pub(crate) fn split_port(text: &str) -> (&str, Option<u16>) {
    if let Some(rest) = text.strip_prefix('[')
        && let Some((host, port)) = rest.rsplit_once("]:")
        && let Ok(p) = port.parse()
    {
        return (host, Some(p));
    }
    if let Some((host, port)) = text.rsplit_once(':')
        && !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && outside_brackets_no_colon(host)
        && let Ok(p) = port.parse()
    {
        return (host, Some(p));
    }
    (text, None)
}

fn outside_brackets_no_colon(s: &str) -> bool {
    let mut depth = 0i32;
    for c in s.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ':' if depth == 0 => return false,
            _ => {}
        }
    }
    true
}

/// Expand every `[..]` range of `pattern`. More than `remaining` names is an error naming
/// `limit`, the budget of the whole inventory.
pub(crate) fn expand(
    pattern: &str,
    remaining: usize,
    limit: usize,
) -> Result<Vec<String>, RangeError> {
    let bad = |why: &str| {
        RangeError::Malformed(format!(
            "host `{pattern}`: {why}; a range looks like `web[01:20]`, `db-[a:f]` or `web[0:20:5]`"
        ))
    };
    let mut parts: Vec<(&str, Seq)> = Vec::new();
    let mut rest = pattern;
    while let Some(open) = rest.find('[') {
        let close = rest[open..]
            .find(']')
            .map(|i| open + i)
            .ok_or_else(|| bad("`[` without `]`"))?;
        let body = &rest[open + 1..close];
        let bounds: Vec<&str> = body.split(':').collect();
        if bounds.len() != 2 && bounds.len() != 3 {
            return Err(bad("a range must be begin:end or begin:end:step"));
        }
        let (beg, end) = (
            if bounds[0].is_empty() { "0" } else { bounds[0] },
            bounds[1],
        );
        if end.is_empty() {
            return Err(bad("the range has no end"));
        }
        let step: usize = match bounds.get(2) {
            None => 1,
            Some(s) => s
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| bad("the step must be a positive number"))?,
        };
        let padded = beg.len() > 1 && beg.starts_with('0');
        if padded && beg.len() != end.len() {
            return Err(bad(
                "a zero-padded range needs begin and end of equal length",
            ));
        }
        let seq = match (LETTERS.find(beg), LETTERS.find(end)) {
            (Some(s), Some(e)) if beg.len() == 1 && end.len() == 1 => {
                if s > e {
                    return Err(bad("the range must have begin <= end"));
                }
                Seq::Alpha {
                    start: s,
                    end: e,
                    step,
                }
            }
            _ => match (beg.parse::<u64>(), end.parse::<u64>()) {
                (Ok(s), Ok(e)) if s <= e => Seq::Num {
                    start: s,
                    end: e,
                    step: step as u64,
                    width: if padded { beg.len() } else { 0 },
                },
                (Ok(_), Ok(_)) => {
                    // Ansible silently yields no host here; an empty group is refused.
                    return Err(bad("the range must have begin <= end (it names no host)"));
                }
                _ => return Err(bad("begin and end must be numbers or single letters")),
            },
        };
        parts.push((&rest[..open], seq));
        rest = &rest[close + 1..];
    }
    let count = parts
        .iter()
        .fold(1usize, |n, (_, s)| n.saturating_mul(s.len()));
    if count > remaining {
        return Err(RangeError::OverBudget(format!(
            "host `{pattern}`: expands to {count} host names, too many host listings (limit {limit} per inventory)"
        )));
    }
    let mut out = vec![String::new()];
    for (prefix, seq) in parts {
        let mut next = Vec::with_capacity(out.len().saturating_mul(seq.len()));
        for head in &out {
            for i in 0..seq.len() {
                next.push(format!("{head}{prefix}{}", seq.item(i)));
            }
        }
        out = next;
    }
    for name in &mut out {
        name.push_str(rest);
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ex(p: &str) -> Vec<String> {
        expand(p, 1000, 1000).unwrap()
    }

    #[test]
    fn ranges() {
        assert_eq!(ex("web[01:03].x"), ["web01.x", "web02.x", "web03.x"]);
        assert_eq!(ex("db-[a:c]"), ["db-a", "db-b", "db-c"]);
        assert_eq!(ex("w[01:20:5]"), ["w01", "w06", "w11", "w16"]);
        assert_eq!(ex("h[:2]"), ["h0", "h1", "h2"]);
        assert_eq!(ex("r[1:2]n[a:b]"), ["r1na", "r1nb", "r2na", "r2nb"]);
        assert!(matches!(
            expand("w[1:3", 9, 9),
            Err(RangeError::Malformed(_))
        ));
        assert!(matches!(
            expand("w[01:3]", 9, 9),
            Err(RangeError::Malformed(_))
        ));
        assert!(matches!(
            expand("w[3:1]", 9, 9),
            Err(RangeError::Malformed(_))
        ));
        assert!(matches!(
            expand("w[0:99]", 9, 9),
            Err(RangeError::OverBudget(_))
        ));
    }

    #[test]
    fn ports() {
        assert_eq!(split_port("h1:2222"), ("h1", Some(2222)));
        assert_eq!(split_port("web[1:3]"), ("web[1:3]", None));
        assert_eq!(split_port("[fd77::1]:22"), ("fd77::1", Some(22)));
        assert_eq!(split_port("fd77::1"), ("fd77::1", None));
    }
}
