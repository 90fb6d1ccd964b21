//! JSON arguments (`--input`, `--payload`): inline text, `@FILE` (YAML when
//! its name ends in `.yaml` or `.yml`, JSON otherwise), or `-` for stdin.
//! Reading is bounded, and every refusal says which argument, where in the
//! text, and what to pass instead. Nothing here touches the database.

use std::io::Read;
use std::path::PathBuf;

use mandate_engine::Limits;
use serde_json::Value;

/// Where a JSON argument comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Inline(String),
    File(PathBuf),
    Stdin,
}

impl Source {
    /// `@path` → file, `-` → stdin, anything else is the JSON itself (JSON
    /// text never starts with `@`).
    pub fn parse(arg: &str) -> Self {
        if arg == "-" {
            Self::Stdin
        } else if let Some(path) = arg.strip_prefix('@') {
            Self::File(PathBuf::from(path))
        } else {
            Self::Inline(arg.to_string())
        }
    }

    fn describe(&self, flag: &str) -> String {
        match self {
            Self::Inline(_) => flag.to_string(),
            Self::File(p) => format!("{flag} file {}", p.display()),
            Self::Stdin => format!("{flag} (stdin)"),
        }
    }
}

/// Reads and parses a JSON argument, refusing it (with a message for the
/// user) when it cannot be read, is not JSON, or is over the payload limit.
pub fn read_json(flag: &str, arg: &str, limits: &Limits) -> Result<Value, String> {
    let source = Source::parse(arg);
    let text = match &source {
        Source::Inline(text) => text.clone(),
        Source::File(path) if path.as_os_str().is_empty() => {
            return Err(format!(
                "{flag} @ needs a file name, e.g. {flag} @input.json"
            ));
        }
        Source::File(path) => {
            let file = std::fs::File::open(path).map_err(|e| {
                format!(
                    "cannot read {}: {e}. Check the path, or pass the JSON inline",
                    source.describe(flag)
                )
            })?;
            read_bounded(file, &source.describe(flag), limits)?
        }
        Source::Stdin => read_bounded(std::io::stdin().lock(), &source.describe(flag), limits)?,
    };
    match &source {
        Source::File(path) if is_yaml(path) => parse_yaml(&source.describe(flag), &text, limits),
        _ => parse_json(&source.describe(flag), &text, limits),
    }
}

/// A `.yaml` or `.yml` file name.
fn is_yaml(path: &std::path::Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
}

/// Parses YAML text (a plan file, say) into the JSON value it stands for,
/// with the same limits as JSON.
fn parse_yaml(origin: &str, text: &str, limits: &Limits) -> Result<Value, String> {
    check_raw_size(origin, text, limits)?;
    // The plan parser's: YAML (JSON is YAML too) by the file's name.
    let value = mandate_workflows::plan::parse_text(origin, text)?;
    limits
        .check_payload(&value)
        .map_err(|message| format!("{origin}: {message}"))?;
    Ok(value)
}

fn check_raw_size(origin: &str, text: &str, limits: &Limits) -> Result<(), String> {
    if text.len() > raw_limit(limits) {
        return Err(format!(
            "{origin} is {} bytes; task inputs and payloads are limited to {} bytes of JSON",
            text.len(),
            limits.max_payload_bytes
        ));
    }
    Ok(())
}

/// Most raw bytes read for one argument: generous enough for pretty-printed
/// JSON whose compact form is within the payload limit, bounded all the same.
fn raw_limit(limits: &Limits) -> usize {
    limits.max_payload_bytes.saturating_mul(4)
}

fn read_bounded(reader: impl Read, origin: &str, limits: &Limits) -> Result<String, String> {
    let max = raw_limit(limits);
    let mut bytes = Vec::new();
    reader
        .take(max as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {origin}: {e}"))?;
    if bytes.len() > max {
        return Err(format!(
            "{origin} is larger than {max} bytes; task inputs and payloads are limited to {} bytes of JSON",
            limits.max_payload_bytes
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "{origin} is not UTF-8 text (invalid byte at offset {}); JSON must be UTF-8",
            e.utf8_error().valid_up_to()
        )
    })
}

/// Parses JSON text, naming the line and column of a syntax error, and checks
/// the engine's payload limit.
pub fn parse_json(origin: &str, text: &str, limits: &Limits) -> Result<Value, String> {
    check_raw_size(origin, text, limits)?;
    let value: Value = serde_json::from_str(text).map_err(|e| {
        let hint = if text.trim().is_empty() {
            " (it is empty)"
        } else {
            ""
        };
        format!(
            "{origin} is not valid JSON{hint}: {} at line {}, column {}. \
             Pass a JSON value such as '{{\"service\":\"checkout\"}}' (quote it for the shell), @FILE, or - for stdin",
            strip_position(&e.to_string()),
            e.line(),
            e.column()
        )
    })?;
    limits
        .check_payload(&value)
        .map_err(|message| format!("{origin}: {message}"))?;
    Ok(value)
}

/// serde_json appends " at line L column C" to its messages; we say it our way.
fn strip_position(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(i) => &message[..i],
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sources() {
        assert_eq!(Source::parse("-"), Source::Stdin);
        assert_eq!(
            Source::parse("@in.json"),
            Source::File(PathBuf::from("in.json"))
        );
        assert_eq!(
            Source::parse("{\"a\":1}"),
            Source::Inline("{\"a\":1}".into())
        );
    }

    #[test]
    fn inline_json_parses() {
        let v = read_json(
            "--input",
            r#"{"service":"checkout","version":"v2"}"#,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(v, json!({"service": "checkout", "version": "v2"}));
    }

    #[test]
    fn malformed_json_names_line_and_column() {
        let err =
            read_json("--input", "{\n  \"a\": 1,\n  oops\n}", &Limits::default()).unwrap_err();
        assert!(err.contains("--input is not valid JSON"), "{err}");
        assert!(err.contains("line 3, column 3"), "{err}");
        assert!(
            !err.contains("at line 3 column"),
            "position said twice: {err}"
        );
        let empty = read_json("--input", "  ", &Limits::default()).unwrap_err();
        assert!(empty.contains("it is empty"), "{empty}");
    }

    #[test]
    fn files_are_read_and_missing_files_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.json");
        std::fs::write(&path, "{\"x\": [1, 2]}").unwrap();
        let v = read_json(
            "--input",
            &format!("@{}", path.display()),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(v, json!({"x": [1, 2]}));
        let missing = dir.path().join("nope.json");
        let err = read_json(
            "--input",
            &format!("@{}", missing.display()),
            &Limits::default(),
        )
        .unwrap_err();
        assert!(err.contains("cannot read --input file"), "{err}");
        assert!(err.contains("nope.json"), "{err}");
        assert!(
            read_json("--input", "@", &Limits::default())
                .unwrap_err()
                .contains("file name")
        );
    }

    #[test]
    fn yaml_files_are_read_by_their_name() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["in.yaml", "in.YML"] {
            let path = dir.path().join(name);
            std::fs::write(&path, "agent: a\nsteps:\n  - {id: s, tool: test.echo}\n").unwrap();
            let v = read_json(
                "--input",
                &format!("@{}", path.display()),
                &Limits::default(),
            )
            .unwrap();
            assert_eq!(
                v,
                json!({"agent": "a", "steps": [{"id": "s", "tool": "test.echo"}]})
            );
        }
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, "steps: [unclosed\n").unwrap();
        let err = read_json(
            "--input",
            &format!("@{}", bad.display()),
            &Limits::default(),
        )
        .unwrap_err();
        assert!(err.contains("--input file"), "{err}");
        assert!(err.contains("bad.yaml is not valid YAML"), "{err}");
        assert!(err.contains("line 1"), "{err}");
        // Any other name is JSON, as before.
        let json_file = dir.path().join("in.txt");
        std::fs::write(&json_file, "a: 1").unwrap();
        let err = read_json(
            "--input",
            &format!("@{}", json_file.display()),
            &Limits::default(),
        )
        .unwrap_err();
        assert!(err.contains("not valid JSON"), "{err}");
    }

    #[test]
    fn oversized_input_is_refused_not_truncated() {
        let limits = Limits {
            max_payload_bytes: 64,
            ..Limits::default()
        };
        let big = serde_json::to_string(&json!({"s": "x".repeat(100)})).unwrap();
        let err = read_json("--input", &big, &limits).unwrap_err();
        assert!(err.contains("exceeds the limit of 64 bytes"), "{err}");
        let huge = format!("\"{}\"", "y".repeat(1000));
        let err = read_json("--input", &huge, &limits).unwrap_err();
        assert!(err.contains("limited to 64 bytes"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.json");
        std::fs::write(&path, &huge).unwrap();
        let err = read_json("--input", &format!("@{}", path.display()), &limits).unwrap_err();
        assert!(err.contains("larger than 256 bytes"), "{err}");
    }
}
