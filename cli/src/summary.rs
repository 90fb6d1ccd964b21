//! Short, bounded renderings for humans: JSON values as `{service: checkout, …}`,
//! free text on one line, times and durations. Every function here has an
//! upper bound on what it produces and on the work it does, whatever the size
//! of its input: a 256 KiB payload summarises in O(limit).

use std::borrow::Cow;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

/// The longest summary of one JSON payload in a timeline line.
pub const MAX_JSON_CHARS: usize = 120;
/// The longest error or reason text in a timeline line.
pub const MAX_TEXT_CHARS: usize = 200;

/// A string that refuses to grow past `max` chars; the last one becomes `…`.
struct Bounded {
    out: String,
    chars: usize,
    max: usize,
    full: bool,
}

impl Bounded {
    fn new(max: usize) -> Self {
        Self {
            out: String::new(),
            chars: 0,
            max: max.max(1),
            full: false,
        }
    }

    /// Appends what fits; returns false once the bound is reached.
    fn push(&mut self, s: &str) -> bool {
        for c in s.chars() {
            if !self.push_char(c) {
                return false;
            }
        }
        !self.full
    }

    fn push_char(&mut self, c: char) -> bool {
        if self.full {
            return false;
        }
        if self.chars >= self.max {
            self.full = true;
            return false;
        }
        self.out.push(c);
        self.chars += 1;
        true
    }

    fn finish(mut self) -> String {
        if self.full {
            self.out.pop();
            self.out.push('…');
        }
        self.out
    }
}

/// A compact, readable rendering of `value` of at most `max` chars: keys and
/// simple strings unquoted, `…` where it was cut.
pub fn json(value: &Value, max: usize) -> String {
    let mut b = Bounded::new(max);
    write_value(&mut b, value);
    b.finish()
}

fn write_value(b: &mut Bounded, value: &Value) -> bool {
    match value {
        Value::Null => b.push("null"),
        Value::Bool(x) => b.push(if *x { "true" } else { "false" }),
        Value::Number(n) => b.push(&n.to_string()),
        Value::String(s) => write_string(b, s),
        Value::Array(items) => {
            if !b.push("[") {
                return false;
            }
            for (i, item) in items.iter().enumerate() {
                if (i > 0 && !b.push(", ")) || !write_value(b, item) {
                    return false;
                }
            }
            b.push("]")
        }
        Value::Object(map) => {
            if !b.push("{") {
                return false;
            }
            // Keys sorted, so a summary reads the same whatever order the
            // map keeps (serde_json's preserve_order is on in this workspace).
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if (i > 0 && !b.push(", ")) || !write_string(b, k) || !b.push(": ") {
                    return false;
                }
                if !write_value(b, v) {
                    return false;
                }
            }
            b.push("}")
        }
    }
}

/// Strings that read unambiguously without quotes: identifiers, versions, paths.
fn is_plain(s: &str) -> bool {
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    (first.is_alphabetic() || first == '_' || first == '/')
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ':' | '@' | '#'))
        && !matches!(s, "true" | "false" | "null")
}

fn write_string(b: &mut Bounded, s: &str) -> bool {
    if is_plain(s) {
        return b.push(s);
    }
    if !b.push("\"") {
        return false;
    }
    for c in s.chars() {
        let ok = match c {
            '"' => b.push("\\\""),
            '\\' => b.push("\\\\"),
            '\n' => b.push("\\n"),
            '\r' => b.push("\\r"),
            '\t' => b.push("\\t"),
            c if c.is_control() => b.push(&format!("\\u{:04x}", c as u32)),
            c if is_unsafe(c) => b.push(&escaped(c)),
            c => b.push_char(c),
        };
        if !ok {
            return false;
        }
    }
    b.push("\"")
}

/// Whether `c` must not reach a terminal as it is: a control character
/// (C0, DEL, C1: cursor moves, line erases, colours, `\r` overwriting the
/// line) or a bidirectional override (it reorders what a person reads).
fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// How an unsafe character is shown: `\u{1b}`.
fn escaped(c: char) -> String {
    format!("\\u{{{:x}}}", c as u32)
}

/// Agent-written text made safe for a terminal: every unsafe character
/// (control characters, `\r` and line breaks included, and bidirectional
/// overrides) shown escaped as `\u{1b}`, so it cannot erase a line, move
/// the cursor or fake output. Every human-readable output goes through this
/// (or [`text`], which uses it). Its output contains no unsafe character, so
/// escaping twice changes nothing.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe(c) {
            out.push_str(&escaped(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Free text on one line (line breaks and tabs become spaces, other unsafe
/// characters are escaped as by [`escape`]), at most `max` chars.
pub fn text(s: &str, max: usize) -> String {
    let mut b = Bounded::new(max);
    let mut last_space = false;
    for c in s.trim().chars() {
        let c = match c {
            '\n' | '\t' => ' ',
            c if c.is_whitespace() && !is_unsafe(c) => ' ',
            c => c,
        };
        if c == ' ' && last_space {
            continue;
        }
        last_space = c == ' ';
        let pushed = if is_unsafe(c) {
            b.push(&escaped(c))
        } else {
            b.push_char(c)
        };
        if !pushed {
            break;
        }
    }
    b.finish()
}

/// A JSON array of strings as `a, b`, or `-` when empty (not escaped).
pub fn list(items: &Value) -> String {
    let items: Vec<&str> = items
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

/// A JSON value for a person: a string as [`text`], anything else as [`json`].
pub fn value(v: &Value, max: usize) -> String {
    match v.as_str() {
        Some(s) => text(s, max),
        None => json(v, max),
    }
}

fn utc(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp_millis(ms)
}

/// `2025-06-01T12:00:00.123Z` (RFC 3339, milliseconds, UTC).
pub fn rfc3339_ms(ms: i64) -> String {
    utc(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("@{ms}ms"))
}

/// `12:00:00.123` (UTC).
pub fn clock(ms: i64) -> String {
    utc(ms)
        .map(|t| t.format("%H:%M:%S%.3f").to_string())
        .unwrap_or_else(|| format!("@{ms}ms"))
}

/// `2025-06-01` (UTC).
pub fn day(ms: i64) -> String {
    utc(ms)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "?".to_string())
}

/// `2025-06-01 12:00:00.123 UTC`.
pub fn datetime(ms: i64) -> String {
    utc(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string())
        .unwrap_or_else(|| format!("@{ms}ms"))
}

/// `12 ms`, `1.234 s`, `2 min 03 s`, `1 h 02 min`, `3 d 04 h`; negative with `-`.
pub fn duration(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let ms = ms.unsigned_abs();
    let body = if ms < 1_000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{}.{:03} s", ms / 1_000, ms % 1_000)
    } else if ms < 3_600_000 {
        format!("{} min {:02} s", ms / 60_000, (ms / 1_000) % 60)
    } else if ms < 86_400_000 {
        format!("{} h {:02} min", ms / 3_600_000, (ms / 60_000) % 60)
    } else {
        format!("{} d {:02} h", ms / 86_400_000, (ms / 3_600_000) % 24)
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_reads_like_the_docs() {
        assert_eq!(
            json(&json!({"service": "checkout", "version": "v2"}), 120),
            "{service: checkout, version: v2}"
        );
        assert_eq!(
            json(
                &json!({"msg": "hello world", "n": [1, 2.5, null, true], "s": "true"}),
                120
            ),
            r#"{msg: "hello world", n: [1, 2.5, null, true], s: "true"}"#
        );
        assert_eq!(json(&json!({}), 120), "{}");
        assert_eq!(json(&json!("a\"b\n"), 120), r#""a\"b\n""#);
    }

    #[test]
    fn json_is_bounded_with_an_ellipsis() {
        let big = json!({"service": "checkout", "blob": "x".repeat(300_000)});
        let s = json(&big, 40);
        assert_eq!(s.chars().count(), 40);
        assert!(s.starts_with("{blob: \"xxx"), "{s}");
        assert!(s.ends_with('…'));
        let exact = json(&json!("abc"), 3);
        assert_eq!(exact, "abc");
        assert_eq!(json(&json!("abcd"), 3), "ab…");
    }

    #[test]
    fn text_is_one_bounded_line() {
        assert_eq!(text("  two\n  lines ", 50), "two lines");
        assert_eq!(text("ééééé", 3), "éé…");
    }

    #[test]
    fn control_characters_are_escaped_everywhere() {
        let evil = "ok\x1b[2K\rrisk: low\u{9b}31m\u{202e}x";
        let want = "ok\\u{1b}[2K\\u{d}risk: low\\u{9b}31m\\u{202e}x";
        assert_eq!(text(evil, 100), want);
        assert_eq!(escape(evil), want);
        assert_eq!(escape(&escape(evil)), want);
        assert_eq!(escape("plain"), Cow::Borrowed("plain"));
        assert_eq!(
            json(&Value::String(evil.into()), 100),
            format!("\"{}\"", "ok\\u001b[2K\\rrisk: low\\u009b31m\\u{202e}x")
        );
    }

    #[test]
    fn times_and_durations() {
        let ms = 1_748_779_200_123; // 2025-06-01T12:00:00.123Z
        assert_eq!(rfc3339_ms(ms), "2025-06-01T12:00:00.123Z");
        assert_eq!(clock(ms), "12:00:00.123");
        assert_eq!(day(ms), "2025-06-01");
        assert_eq!(datetime(ms), "2025-06-01 12:00:00.123 UTC");
        assert_eq!(duration(12), "12 ms");
        assert_eq!(duration(1_234), "1.234 s");
        assert_eq!(duration(123_000), "2 min 03 s");
        assert_eq!(duration(3_720_000), "1 h 02 min");
        assert_eq!(duration(273_600_000), "3 d 04 h");
        assert_eq!(duration(-5), "-5 ms");
    }
}
