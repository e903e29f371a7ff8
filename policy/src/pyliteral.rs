//! The subset of Python's `ast.literal_eval` that Ansible's INI inventory applies to every
//! value: integers (`1`, `-2`, `1_000`), floats (`1.5`), `True`/`False`/`None`, quoted
//! strings with escapes, lists, tuples (as lists) and dicts, nested up to
//! [`MAX_DEPTH`]. Anything else (`10.0.0.1`, `web`, `yes`) is not a literal: the caller keeps
//! the text. Pure; no I/O.

use serde_json::{Map, Number, Value};

/// Nesting of lists/dicts in one value (the YAML budget's depth).
pub const MAX_DEPTH: usize = crate::budget::MAX_DEPTH;

/// The value of `code` as a Python literal, or `None` if it is not one. A trailing
/// `# comment` is ignored, as Python does.
pub fn parse(code: &str) -> Option<Value> {
    let mut p = P {
        s: code.as_bytes(),
        i: 0,
    };
    let v = p.value(0)?;
    p.ws();
    (p.i == p.s.len() || p.s[p.i] == b'#').then_some(v)
}

struct P<'a> {
    s: &'a [u8],
    i: usize,
}

impl P<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        self.ws();
        if self.s.get(self.i) == Some(&b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Option<Value> {
        self.ws();
        match *self.s.get(self.i)? {
            b'[' | b'(' if depth < MAX_DEPTH => {
                let close = if self.s[self.i] == b'[' { b']' } else { b')' };
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    if self.eat(close) {
                        return Some(Value::Array(items));
                    }
                    items.push(self.value(depth + 1)?);
                    if !self.eat(b',') {
                        return self.eat(close).then_some(Value::Array(items));
                    }
                }
            }
            b'{' if depth < MAX_DEPTH => {
                self.i += 1;
                let mut map = Map::new();
                loop {
                    if self.eat(b'}') {
                        return Some(Value::Object(map));
                    }
                    let key = match self.value(depth + 1)? {
                        Value::String(s) => s,
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => if b { "True" } else { "False" }.to_string(),
                        _ => return None,
                    };
                    if !self.eat(b':') {
                        return None;
                    }
                    let v = self.value(depth + 1)?;
                    map.insert(key, v);
                    if !self.eat(b',') {
                        return self.eat(b'}').then_some(Value::Object(map));
                    }
                }
            }
            q @ (b'\'' | b'"') => self.string(q),
            _ => self.atom(),
        }
    }

    fn string(&mut self, q: u8) -> Option<Value> {
        self.i += 1;
        let mut out = Vec::new();
        while let Some(&c) = self.s.get(self.i) {
            self.i += 1;
            match c {
                c if c == q => return String::from_utf8(out).ok().map(Value::String),
                b'\\' => {
                    let e = *self.s.get(self.i)?;
                    self.i += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'0' => out.push(0),
                        b'\\' | b'\'' | b'"' => out.push(e),
                        other => out.extend([b'\\', other]),
                    }
                }
                c => out.push(c),
            }
        }
        None
    }

    fn atom(&mut self) -> Option<Value> {
        let start = self.i;
        while self.i < self.s.len()
            && (self.s[self.i].is_ascii_alphanumeric() || b"+-._".contains(&self.s[self.i]))
        {
            self.i += 1;
        }
        let w = std::str::from_utf8(&self.s[start..self.i]).ok()?;
        match w {
            "True" => return Some(Value::Bool(true)),
            "False" => return Some(Value::Bool(false)),
            "None" => return Some(Value::Null),
            _ => {}
        }
        let digits = w.strip_prefix(['-', '+']).unwrap_or(w);
        let ok_underscores =
            !digits.starts_with('_') && !digits.ends_with('_') && !digits.contains("__");
        if !digits.is_empty()
            && ok_underscores
            && digits.bytes().all(|b| b.is_ascii_digit() || b == b'_')
        {
            let clean = w.replace('_', "");
            // Python reads a leading zero (`010`) as a syntax error; Ansible keeps the text.
            if digits.len() > 1 && digits.starts_with('0') && digits.bytes().any(|b| b != b'0') {
                return None;
            }
            return clean.parse::<i64>().ok().map(Value::from);
        }
        if digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            && digits.matches('.').count() == 1
            && digits.len() > 1
        {
            return w
                .parse::<f64>()
                .ok()
                .and_then(Number::from_f64)
                .map(Value::Number);
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn literals() {
        assert_eq!(parse("1"), Some(json!(1)));
        assert_eq!(parse("-2 # c"), Some(json!(-2)));
        assert_eq!(parse("1_000"), Some(json!(1000)));
        assert_eq!(parse("1.5"), Some(json!(1.5)));
        assert_eq!(parse("True"), Some(json!(true)));
        assert_eq!(parse("'a\\'b'"), Some(json!("a'b")));
        assert_eq!(parse("[80, 443]"), Some(json!([80, 443])));
        assert_eq!(parse("(1,)"), Some(json!([1])));
        assert_eq!(
            parse("{'a': 1, \"b\": [True, None]}"),
            Some(json!({"a": 1, "b": [true, null]}))
        );
        for not in [
            "10.0.0.1", "web", "yes", "[1, 2", "010", "1__0", "{1}", "'x' y",
        ] {
            assert_eq!(parse(not), None, "{not}");
        }
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(parse(&deep), None);
    }
}
