//! RFC 8785 (JSON Canonicalization Scheme) bytes written straight from a
//! borrowed [`serde_json::Value`]: the bytes every event hash covers.
//!
//! Byte for byte what `serde_json_canonicalizer` 0.3 writes (the histories
//! already stored were hashed with it, and must keep verifying; the tests
//! compare the two on generated values), without its costs: that crate
//! serializes through serde, buffers each object's entries and re-parses
//! every key as JSON to sort it, and `canonical_bytes` used to deep-clone
//! the payload into a wrapper document first. Here nothing is cloned: keys
//! are sorted as borrowed strings and written once.
//!
//! The rules (RFC 8785 §3.2): no whitespace; object members sorted by the
//! UTF-16 code units of their names; strings escaped as JSON requires and no
//! more (`\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, other controls as
//! `\u00xx`); every number written as the ECMAScript `Number.toString` of
//! its IEEE-754 double (`ryu-js`), so integers beyond 2^53 lose precision
//! exactly as they would in JavaScript.

use std::cmp::Ordering;

use serde_json::Value;

/// The canonical bytes of `value`.
pub fn to_vec(value: &Value) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(256);
    write_value(&mut out, value)?;
    Ok(out)
}

/// Appends the canonical bytes of `value` to `out`.
pub fn write_value(out: &mut Vec<u8>, value: &Value) -> Result<(), String> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            // A u64 beyond i64 is beyond 2^53 too: it goes through the double.
            if let Some(i) = n.as_i64() {
                write_int(out, i)?;
            } else {
                let f = n
                    .as_f64()
                    .ok_or_else(|| format!("number {n} has no IEEE-754 double"))?;
                write_number(out, f)?;
            }
        }
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_unstable_by(|a, b| utf16_cmp(a.0, b.0));
            out.push(b'{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, k);
                out.push(b':');
                write_value(out, v)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// 2^53: integers up to it in magnitude are doubles exactly, and
/// ECMAScript writes them as their decimal digits.
const MAX_SAFE_INT: u64 = 1 << 53;

/// An integer as ECMAScript writes its double: its digits when the double
/// holds it exactly (the common case: seqs, times, counts, without a trip
/// through the shortest-double formatter), otherwise as [`write_number`].
pub fn write_int(out: &mut Vec<u8>, i: i64) -> Result<(), String> {
    if i.unsigned_abs() <= MAX_SAFE_INT {
        out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
        Ok(())
    } else {
        write_number(out, i as f64)
    }
}

/// A number as ECMAScript writes its double.
pub fn write_number(out: &mut Vec<u8>, f: f64) -> Result<(), String> {
    if !f.is_finite() {
        return Err("NaN and +/-Infinity are not permitted in JSON".into());
    }
    let mut buffer = ryu_js::Buffer::new();
    out.extend_from_slice(buffer.format_finite(f).as_bytes());
    Ok(())
}

/// A JSON string, escaped as RFC 8785 (and serde_json) escape it.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if short.is_empty() {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xf) as usize],
            ]);
        } else {
            out.extend_from_slice(short);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Orders member names by their UTF-16 code units (RFC 8785 §3.2.3). For
/// ASCII names that is byte order; otherwise it differs from UTF-8 byte
/// order only between supplementary-plane characters and U+E000–U+FFFF.
pub(crate) fn utf16_cmp(a: &str, b: &str) -> Ordering {
    if a.is_ascii() && b.is_ascii() {
        a.as_bytes().cmp(b.as_bytes())
    } else {
        a.encode_utf16().cmp(b.encode_utf16())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn same_as_the_crate(v: &Value) {
        let ours = to_vec(v).unwrap();
        let theirs = serde_json_canonicalizer::to_vec(v).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&theirs),
            "for {v}"
        );
    }

    #[test]
    fn rfc_8785_examples() {
        // RFC 8785 §3.2.2.3 numbers and §3.2.3 sorting.
        let v: Value = serde_json::from_str(
            r#"{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001],
                "string":"\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
                "literals":[null,true,false]}"#,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(to_vec(&v).unwrap()).unwrap(),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
        let sorting: Value = serde_json::from_str(
            r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh",
                "1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#,
        )
        .unwrap();
        // (Read back from the text: a parsed map may reorder its keys.)
        let text = String::from_utf8(to_vec(&sorting).unwrap()).unwrap();
        let at = |k: &str| text.find(&format!("\"{k}\":")).unwrap();
        let order = [
            "\\r",
            "1",
            "\u{80}",
            "\u{f6}",
            "\u{20ac}",
            "\u{1f600}",
            "\u{fb33}",
        ];
        assert!(
            order.windows(2).all(|w| at(w[0]) < at(w[1])),
            "members out of UTF-16 order: {text}"
        );
        same_as_the_crate(&v);
        same_as_the_crate(&sorting);
    }

    /// A small deterministic generator (xorshift), so a failure reproduces.
    struct Gen(u64);
    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
            &xs[(self.next() % xs.len() as u64) as usize]
        }
        fn string(&mut self) -> String {
            let parts = [
                "a", "Z", "é", "€", "😀", "\u{fb33}", "\u{e000}", "\u{ffff}", "\"", "\\", "/",
                "\n", "\r", "\t", "\u{8}", "\u{c}", "\u{0}", "\u{1f}", "\u{7f}", "\u{2028}", " ",
                "key", "<script>",
            ];
            let n = self.next() % 6;
            (0..n).map(|_| *self.pick(&parts)).collect()
        }
        fn number(&mut self) -> Value {
            match self.next() % 10 {
                0 => json!(self.next() as i64),
                1 => json!(self.next()),
                2 => json!((self.next() % 2_000) as i64 - 1_000),
                3 => json!(9_007_199_254_740_993u64),
                4 => json!(-0.0),
                5 => json!(f64::from_bits(self.next() >> 2)),
                6 => json!((self.next() % 1_000_000) as f64 / 1_000.0),
                7 => json!(1e21),
                // The edges of the integers written as digits (2^53).
                8 => self
                    .pick(&[
                        json!(9_007_199_254_740_992i64),
                        json!(-9_007_199_254_740_992i64),
                        json!(9_007_199_254_740_992u64),
                        json!(-9_007_199_254_740_993i64),
                        json!(i64::MIN),
                        json!(u64::MAX),
                    ])
                    .clone(),
                _ => json!(5e-7),
            }
        }
        fn value(&mut self, depth: u32) -> Value {
            let kind = if depth == 0 {
                self.next() % 4
            } else {
                self.next() % 6
            };
            match kind {
                0 => Value::Null,
                1 => json!(self.next().is_multiple_of(2)),
                2 => self.number(),
                3 => Value::String(self.string()),
                4 => (0..self.next() % 5)
                    .map(|_| self.value(depth - 1))
                    .collect(),
                _ => Value::Object(
                    (0..self.next() % 6)
                        .map(|_| (self.string(), self.value(depth - 1)))
                        .collect(),
                ),
            }
        }
    }

    #[test]
    fn matches_serde_json_canonicalizer_on_generated_values() {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        for _ in 0..5_000 {
            let v = g.value(4);
            if v.to_string().contains("NaN") {
                continue;
            }
            same_as_the_crate(&v);
        }
    }

    /// The serializer over typed values writes the same bytes as the
    /// `Value` path, and an event payload's two forms are those of
    /// `to_parts` (its canonical bytes and its compact text).
    #[test]
    fn the_typed_serializer_writes_the_value_paths_bytes() {
        use crate::event::EventPayload;
        let mut g = Gen(0x2545_f491_4f6c_dd1d);
        for _ in 0..5_000 {
            let v = g.value(4);
            if v.to_string().contains("NaN") {
                continue;
            }
            let ours = crate::jcs_ser::to_vec(&v).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&to_vec(&v).unwrap()),
                "for {v}"
            );
            let p = EventPayload::SignalReceived {
                name: g.string(),
                payload: v,
                sender: "user:x".into(),
            };
            let (canonical, text) = p.payload_forms().unwrap();
            let (_, parts) = p.to_parts();
            assert_eq!(canonical, to_vec(&parts).unwrap(), "for {parts}");
            assert_eq!(text, parts.to_string());
        }
        // Typed values that a `Value` writes its own way: non-finite floats
        // are null, u64 past i64 and i128 go through the double, integer
        // keys are names, and of two members with one name the later wins.
        #[derive(serde::Serialize)]
        struct Typed {
            nan: f64,
            inf: f32,
            big: u64,
            wide: i128,
            none: Option<u8>,
            keys: std::collections::BTreeMap<i32, &'static str>,
            bytes: serde_bytes_like::Bytes,
            unit: (),
            tuple: (u8, &'static str),
            e: E,
            n: E,
            t: E,
            s: E,
        }
        #[derive(serde::Serialize)]
        enum E {
            Unit,
            New(u8),
            Tuple(u8, u8),
            Struct { z: u8, a: u8 },
        }
        mod serde_bytes_like {
            pub struct Bytes(pub Vec<u8>);
            impl serde::Serialize for Bytes {
                fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                    s.serialize_bytes(&self.0)
                }
            }
        }
        let t = Typed {
            nan: f64::NAN,
            inf: f32::INFINITY,
            big: u64::MAX,
            wide: -(1i128 << 60),
            none: None,
            keys: [(10, "ten"), (-2, "minus two"), (3, "three")].into(),
            bytes: serde_bytes_like::Bytes(vec![0, 255]),
            unit: (),
            tuple: (1, "é"),
            e: E::Unit,
            n: E::New(7),
            t: E::Tuple(1, 2),
            s: E::Struct { z: 1, a: 2 },
        };
        let via_value = serde_json::to_value(&t).unwrap();
        assert_eq!(
            String::from_utf8(crate::jcs_ser::to_vec(&t).unwrap()).unwrap(),
            String::from_utf8(to_vec(&via_value).unwrap()).unwrap()
        );
        let dup = DupKeys;
        struct DupKeys;
        impl serde::Serialize for DupKeys {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(None)?;
                m.serialize_entry("b", &1)?;
                m.serialize_entry("a", &2)?;
                m.serialize_entry("b", &3)?;
                m.end()
            }
        }
        assert_eq!(
            crate::jcs_ser::to_vec(&dup).unwrap(),
            to_vec(&serde_json::to_value(&dup).unwrap()).unwrap()
        );
    }

    #[test]
    fn refuses_what_json_cannot_hold() {
        let mut out = Vec::new();
        assert!(write_number(&mut out, f64::NAN).is_err());
        assert!(write_number(&mut out, f64::INFINITY).is_err());
    }
}
